"""Prometheus collectors: the one module-level state allowed. Labels stay bounded (reasons, partitions, never a
session id)."""

from __future__ import annotations

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
)

from logbert_core.build import build_info
from streamer import decode as _decode

LINES_CONSUMED = Counter("logad_lines_consumed_total", "Kafka records consumed from the input topic")
LINES_REJECTED = Counter("logad_lines_rejected_total", "Records sent to the dead-letter topic, by reason", ["reason"])
PARSE_SECONDS = Histogram("logad_parse_seconds", "Time to decode, parse and look up templates for one batch",
                          buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
TEMPLATES_KNOWN = Gauge("logad_templates_known", "Templates in the loaded model's vocabulary")
LINES_UNSEEN_TEMPLATE = Counter("logad_lines_unseen_template_total", "Lines whose template the model never saw")
TEMPLATES_NEW = Counter("logad_templates_new_total",
                        "New templates this worker registered first in the shared registry")
TEMPLATES_NEW_CAPPED = Counter("logad_templates_new_capped_total",
                               "Lines whose new template was not registered because the registry is at its cap")
SESSIONS_OPEN = Gauge("logad_sessions_open", "Sessions open in Redis (not yet idle-closed), all workers of the "
                      "active bundle's prefix")
SESSIONS_REFUSED = Counter("logad_sessions_refused_total",
                           "Session entries not stored because session.max_open sessions were open; their lines go "
                           "to the dead-letter topic with reason session_cap")
SESSIONS_EVICTED = Counter("logad_sessions_evicted_total",
                           "Closed sessions forgotten before session.closed_ttl_s because more than session.max_closed "
                           "were kept (oldest first)")
REDIS_MEMORY = Gauge("logad_redis_used_memory_bytes",
                     "Redis used_memory (INFO memory), polled every redis.memory_poll_s")
REDIS_MAXMEMORY = Gauge("logad_redis_maxmemory_bytes", "Redis maxmemory (INFO memory; 0: no limit)")
ANOMALIES_SUPPRESSED = Counter("logad_anomalies_suppressed_total",
                               "Anomaly events not published because detector.max_events_per_minute were published "
                               "for their minute (counted, acknowledged and committed as published ones)")
STORMS = Counter("logad_anomaly_storms_total", "Storm summary events published (one per storm of events past "
                 "detector.max_events_per_minute)")
OUTAGE_SECONDS = Gauge("logad_outage_seconds", "How long Redis or the broker has been failing or hanging now, from "
                       "the start of the first failed call (0: no outage); the worker exits 3 past "
                       "detector.outage_budget_s")
PREMATURE_WAITING = Gauge("logad_premature_end_waiting",
                          "Closed sessions whose verdict that they stopped (premature_end, or an unfinished "
                          "unseen_template_set) is held in Redis until the log has gone on for the rest horizon "
                          "(all workers)")
SESSIONS_CLOSED = Counter("logad_sessions_closed_total", "Sessions closed after the idle timeout by this worker")
WINDOWS_SCORED = Counter("logad_windows_scored_total", "Windows scored by this worker", ["cause"])
WINDOWS_MODEL_SKIPPED = Counter("logad_windows_model_skipped_total",
                                "Windows scored by this worker whose length the model rules were never calibrated on "
                                "(fewer than 10 normal training sessions had such windows): only the exact rules "
                                "judged them")
SCORE_BATCH = Histogram("logad_score_batch_windows", "Windows per scoring batch",
                        buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
SCORE_SECONDS = Histogram("logad_score_seconds", "Time to score one batch of windows",
                          buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
JOB_WAIT_SECONDS = Histogram("logad_score_queue_wait_seconds",
                             "Time a batch of cut windows waited for the scorer thread (behind the jobs before it)",
                             buckets=_WAIT_BUCKETS)
FLUSH_SECONDS = Histogram("logad_publish_flush_seconds",
                          "Time to send a job's events and dead letters and wait for the broker to have them all",
                          buckets=_WAIT_BUCKETS)
COMMIT_SECONDS = Histogram("logad_offset_commit_seconds",
                           "Time of one synchronous commit of input offsets (the consume loop waits for it)",
                           buckets=_WAIT_BUCKETS)
SWEEP_SECONDS = Histogram("logad_sweep_seconds",
                          "Time of one sweep: closing idle sessions in Redis and handing their windows to the scorer",
                          buckets=_WAIT_BUCKETS)
SESSIONS_EXPIRED = Counter("logad_sessions_expired_total",
                           "Sessions whose Redis entries expired (session.ttl_s) before a sweep closed them: their "
                           "last window was never scored")
SWEEPS_DEFERRED = Counter("logad_sweeps_deferred_total",
                          "Sweeps that were due but waited: the worker had not read what its partitions held at the "
                          "last catch-up check, or the broker did not answer")
SCORE_CACHE_HITS = Counter("logad_score_cache_hits_total",
                           "Windows whose score came from the scorer's cache of recent distinct windows")
SCORE_CACHE_WARMED = Counter("logad_score_cache_warmed_total",
                             "Windows scored into the cache ahead of need: the bundle's most frequent training "
                             "windows, at start-up and for a new bundle")
ANOMALIES = Counter("logad_anomalies_published_total", "Anomaly events published to the output topic")
FUTURE_ENTRIES = Counter("logad_future_timestamps_total",
                         "Session entries stamped more than a day ahead of the worker's clock: windowed as usual, "
                         "but they do not move the watermark premature_end judges silence by")
WATERMARK = Gauge("logad_watermark_timestamp_seconds",
                  "Latest log timestamp (Unix seconds) among the lines this worker has stored")
PREMATURE_HELD = Counter("logad_premature_end_held_total",
                         "Verdicts that a session stopped (premature_end, or an unfinished unseen_template_set) held "
                         "because the log had not gone on past the session for the rest horizon yet (published once "
                         "it has, dropped if the session comes back)")
PREMATURE_CONFIRMED = Counter("logad_premature_end_confirmed_total",
                              "Held stop verdicts published: the log went on for the rest horizon without the session")
PREMATURE_DROPPED = Counter("logad_premature_end_dropped_total",
                            "Held stop verdicts dropped because their session came back")
CONSUMER_LAG = Gauge("logad_consumer_lag", "Records behind the end of the input topic", ["partition"])
REDIS_ERRORS = Counter("logad_redis_errors_total", "Failed Redis round trips (retried with back-off)")
BROKER_ERRORS = Counter("logad_broker_errors_total", "Failed broker operations (retried with back-off)")
READY = Gauge("logad_ready", "1 when partitions are assigned, the model is loaded and Redis and the broker answer")
MODEL = Info("logad_model", "The loaded model bundle")
RELOADS = Counter("logad_model_reloads_total", "Model bundle changes seen, by outcome", ["outcome"])

# Bounded label values exist from the start (at 0), so rate() and absent-series alerts work before the first event.
for _reason in _decode.REASONS + ("format_mismatch", "no_session_key", "bad_timestamp", "parse_error", "session_cap"):
    LINES_REJECTED.labels(_reason)
for _cause in ("full", "idle"):
    WINDOWS_SCORED.labels(_cause)

# -- logad serve: its own registry, so /metrics of the API shows the API (and the process), not idle detector series --
SERVE_REGISTRY = CollectorRegistry(auto_describe=True)
for _c in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    SERVE_REGISTRY.register(_c)
SERVE_REQUESTS = Counter("logad_serve_requests_total", "HTTP requests answered, by route and status code",
                         ["route", "code"], registry=SERVE_REGISTRY)
SERVE_REQUEST_SECONDS = Histogram("logad_serve_request_seconds", "Time to answer one request, by route", ["route"],
                                  buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
                                  registry=SERVE_REGISTRY)
SERVE_LINES = Counter("logad_serve_lines_total", "Lines received by POST /detect", registry=SERVE_REGISTRY)
SERVE_LINES_REJECTED = Counter("logad_serve_lines_rejected_total", "Lines of /detect requests that could not be "
                               "parsed, by reason", ["reason"], registry=SERVE_REGISTRY)
SERVE_SESSIONS = Counter("logad_serve_sessions_total", "Sessions judged by POST /detect, by verdict", ["verdict"],
                         registry=SERVE_REGISTRY)
SERVE_WINDOWS = Counter("logad_serve_windows_scored_total", "Windows scored by POST /detect", registry=SERVE_REGISTRY)
SERVE_MODEL = Info("logad_serve_model", "The model bundle loaded by logad serve", registry=SERVE_REGISTRY)

# -- every process (logad run, alerts forward, serve): the build it runs, as logad_build_info{version, python, torch} 1
BUILD = Info("logad_build", "The logad build this process runs: package, python and torch versions")
SERVE_BUILD = Info("logad_build", "The logad build this process runs: package, python and torch versions",
                   registry=SERVE_REGISTRY)
for _info in (BUILD, SERVE_BUILD):
    _info.info(build_info())
