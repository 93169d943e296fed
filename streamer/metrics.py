"""Prometheus collectors: the one module-level state allowed. Labels stay bounded (reasons, partitions, never a
session id)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info

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
SESSIONS_OPEN = Gauge("logad_sessions_open", "Sessions open in Redis (not yet idle-closed)")
SESSIONS_CLOSED = Counter("logad_sessions_closed_total", "Sessions closed after the idle timeout by this worker")
WINDOWS_SCORED = Counter("logad_windows_scored_total", "Windows scored by this worker", ["cause"])
SCORE_BATCH = Histogram("logad_score_batch_windows", "Windows per scoring batch",
                        buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
SCORE_SECONDS = Histogram("logad_score_seconds", "Time to score one batch of windows",
                          buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
ANOMALIES = Counter("logad_anomalies_published_total", "Anomaly events published to the output topic")
CONSUMER_LAG = Gauge("logad_consumer_lag", "Records behind the end of the input topic", ["partition"])
REDIS_ERRORS = Counter("logad_redis_errors_total", "Failed Redis round trips (retried with back-off)")
BROKER_ERRORS = Counter("logad_broker_errors_total", "Failed broker operations (retried with back-off)")
READY = Gauge("logad_ready", "1 when partitions are assigned, the model is loaded and Redis and the broker answer")
MODEL = Info("logad_model", "The loaded model bundle")
RELOADS = Counter("logad_model_reloads_total", "Model bundle changes seen, by outcome", ["outcome"])
