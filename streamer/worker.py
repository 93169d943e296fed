"""``logad run``: one consumer-group member, wiring Kafka, the parser, Redis windows, the scorer and the output.

Order of effects for every consumed batch (the at-least-once contract):

1. decode and parse every record; bad ones become dead-letter records (never dropped, never a crash);
2. append the batch's entries to Redis in one atomic round trip; full windows are cut into ``pending`` (the script
   runs while the loop parses the next batch; its reply is read before anything of the batch goes further);
3. score the cut windows, publish anomaly events, publish dead-letter records, flush the producer;
4. ``ack`` the published windows in Redis;
5. commit the batch's input offsets (with the other batches done since the last commit, at most every
   ``kafka.commit_interval_ms``).

Steps 3-4 run on a scorer thread (``Scoring``), so the consume loop reads and parses the next batches while the
model runs; step 5 stays on the consume thread and commits a batch only once its job and every job before it are
done (jobs finish in submission order). At most ``detector.score_queue`` jobs wait; a full queue blocks the loop.
Before the worker stops, every job in flight finishes and the done ones commit; before partitions are revoked they
finish without a commit (the next owner replays those records, which adds nothing).

A crash anywhere before 5 replays the batch: appends are idempotent, already-cut windows wait in ``pending`` under a
lease until a worker publishes them, and event ids derive from content, so a replay adds nothing new. Idle sessions
are closed by a periodic sweep that any worker may run (claims are atomic in Redis). Infrastructure errors are
retried with exponential back-off and jitter and nothing is committed meanwhile; past ``outage_budget_s`` the
worker stops with ``OutageError``. SIGTERM/SIGINT stop consumption; the batch in hand finishes and commits first.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import logging
import math
import os
import queue
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import redis
import torch
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata

from logbert_core.bundle import Bundle, BundleError, load_bundle
from logbert_core.config import Settings
from logbert_core.judge import Verdict
from logbert_core.windows import window_keys
from streamer import metrics as m
from streamer.backoff import Backoff
from streamer.engine import Engine, check_bundle_settings, resolve_device
from streamer.errors import OutageError, StartupError
from streamer.events import EventContext, build_event, build_storm_event, frame_event
from streamer.kafka_clients import client_settings, detector_consumer, event_producer
from streamer.kafka_io import EventProducer
from streamer.lines import PARSE_ERROR, LinePipeline, Parsed
from streamer.rdkafka import ConfluentConsumer, ConfluentProducer
from streamer.windows import CutWindow, PendingAppend, WindowStore, client_for, left_in

__all__ = ["PARSE_ERROR", "Backoff", "Engine", "LinePipeline", "Parsed", "Worker", "check_bundle_settings",
           "resolve_device"]

log = logging.getLogger(__name__)
SESSION_CAP = "session_cap"  # dead-letter reason of a line that would have opened a session past session.max_open

# A line stamped further ahead of the wall clock than this is windowed as usual but does not move the watermark:
# one such line (a bad clock, a typo'd year) would otherwise tell premature_end that every session has been quiet
# for years. A day covers any time zone a log may be written in and read as UTC.
_MAX_FUTURE_S = 86_400.0

_MAX_WATERMARK = r"""
-- KEYS[1]: the group's watermark; ARGV[1]: a worker's; ARGV[2]: the latest plausible time. Keeps the larger and
-- returns it (as a string); a stored value past ARGV[2] (left by a version that did not check) is replaced.
local new = tonumber(ARGV[1])
local old = tonumber(redis.call('GET', KEYS[1]) or '-inf')
if old > tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1])
  old = -math.huge
end
if new > old then
  redis.call('SET', KEYS[1], ARGV[1])
  return ARGV[1]
end
return redis.call('GET', KEYS[1]) or '-inf'
"""


def _ms(stamp: str) -> int:
    """Milliseconds since the epoch of an event's ISO 8601 ``detected_at``."""
    return round(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1000)


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


def _text(value: bytes | str) -> str:
    """A Redis reply as text (redis-py returns bytes unless the client decodes responses)."""
    return value.decode() if isinstance(value, bytes) else value


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def on_partitions_revoked(self, revoked: Any) -> None:
        # The batches in flight finish (events published, windows acked) but are not committed: kafka-python 3 runs
        # this callback on the consumer's network loop, where a commit cannot be made (librdkafka runs it inside
        # poll; the same rule keeps both clients alike). The next owner replays them, which adds nothing (appends
        # are idempotent, their windows are acked). A failure is raised by the loop.
        log.info("partitions revoked: %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in revoked))
        for tp in revoked:  # their new owner reports their lag: a value kept here would count it twice, frozen
            try:
                m.CONSUMER_LAG.remove(str(tp.partition))
            except KeyError:
                pass
        try:
            self.worker.finish_append()
        except OutageError:
            pass  # still in flight: the loop retries it and raises
        self.worker.settle(wait=True, raise_errors=False, commit=False)

    def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("partitions assigned: %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))
        self.worker.assigned = set(assigned)


@dataclass(eq=False)
class Job:
    """Work for the scorer thread: windows to score and publish with the batch's dead letters, then the input
    offsets to commit once that is done (None for a sweep)."""

    engine: Engine
    windows: Sequence[CutWindow]
    messages: list[Any]
    offsets: dict[TopicPartition, OffsetAndMetadata] | None
    # held premature_end events among ``messages`` whose quiet is now seen: forgotten in Redis once published
    ends: list[tuple[str, str]] = field(default_factory=list)
    end_events: int | None = None  # how many of ``ends`` are published (the rest were past the rate limit)
    done: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.monotonic)
    error: BaseException | None = None


class Scoring:
    """Runs jobs in submission order on one thread, off the consume loop (torch releases the GIL while it computes).

    ``depth`` jobs may wait; ``submit`` blocks while the queue is full. With ``depth`` 0 a job runs in the caller at
    submit. A job with nothing to publish never waits in the queue: its offsets go with the last job in flight.
    After a job fails, later jobs are not run and carry its error, so nothing after it gets committed.
    ``completed`` is called from the consume thread only. ``call`` queues work that only saves time later (warming
    a score cache): it runs in order with the jobs, and its errors are logged, not handed on.
    """

    def __init__(self, run: Callable[[Job], None], depth: int) -> None:
        self._run = run
        self._jobs: deque[Job] = deque()  # submitted and not yet handed back by completed()
        self.failed: BaseException | None = None
        self._queue: queue.Queue[Job | Callable[[], None] | None] | None = None
        self._thread: threading.Thread | None = None
        if depth > 0:
            self._queue = queue.Queue(maxsize=depth)
            self._thread = threading.Thread(target=self._loop, name="logad-scorer", daemon=True)
            self._thread.start()

    def submit(self, job: Job) -> None:
        if self._queue is not None and not job.windows and not job.messages and not job.ends and self.failed is None:
            # Nothing to publish (most consumed batches: sessions rarely fill a window). Such a job is done as soon
            # as the jobs before it are, so it never goes to the thread, where it would cost a wake-up and a GIL
            # hand-off: its offsets join the last job in flight and are committed with it (or, when that job fails,
            # not at all), or it is done now when nothing is ahead of it.
            last = self._jobs[-1] if self._jobs else None
            if last is not None and not last.done.is_set():
                if job.offsets:
                    last.offsets = {**(last.offsets or {}), **job.offsets}
                return
            job.done.set()
            self._jobs.append(job)
            return
        self._jobs.append(job)
        if self._queue is None:
            self._execute(job)
        else:
            self._queue.put(job)

    def call(self, fn: Callable[[], None]) -> None:
        if self._queue is None:
            self._call(fn)
        else:
            self._queue.put(fn)

    def completed(self, wait: bool = False) -> list[Job]:
        """Finished jobs in submission order, up to the first one still running (with ``wait``: all of them)."""
        out = []
        while self._jobs and (wait or self._jobs[0].done.is_set()):
            self._jobs[0].done.wait()
            out.append(self._jobs.popleft())
        return out

    def in_flight(self) -> int:
        return len(self._jobs)

    def close(self) -> None:
        if self._queue is not None and self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)

    def _execute(self, job: Job) -> None:
        if self.failed is not None:
            job.error = self.failed
        else:
            try:
                self._run(job)
            except BaseException as exc:  # handed to the consume thread, which raises it
                job.error = self.failed = exc
        # What is left to do with a finished job is its commit: let its windows and messages go now. A sweep that
        # closes a large burst submits job after job before the consume thread hands any back (``completed``), and
        # each would otherwise hold its windows until then.
        job.windows, job.messages, job.ends = (), [], []
        job.done.set()

    @staticmethod
    def _call(fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:
            log.exception("scorer thread: %s failed; going on without it", getattr(fn, "__name__", fn))

    def _loop(self) -> None:
        assert self._queue is not None
        while (item := self._queue.get()) is not None:
            if isinstance(item, Job):
                self._execute(item)
            else:
                self._call(item)


class Worker:
    """One detector process.

    Hot reload: between batches the worker looks for a new bundle, in the Redis pointer key
    ``<namespace>:model:current`` (a bundle directory; set by ``logad model use``) or, without a pointer, in the
    ``--model`` directory's own ``bundle.json``. A new bundle that loads and fits the settings becomes active for
    the next batch; the old one keeps sweeping its own open sessions and pending windows until none is left, so
    nothing is lost and nothing is scored twice. A bundle that fails is refused once, with a message, and the
    active one keeps running. Rolling back is pointing back.
    """

    def __init__(self, settings: Settings, bundle: Bundle, *, consumer: KafkaConsumer | None = None,
                 producer: EventProducer | ConfluentProducer | None = None, redis_client: redis.Redis | None = None,
                 bundle_dir: str | Path | None = None) -> None:
        self.s = settings
        ev = settings.event
        # what every event of this worker says about where it came from (the host is not in the event id)
        self.event_context = EventContext(log_family=settings.log.family,
                                          host=socket.gethostname() if ev.host is None else (ev.host or None),
                                          labels=tuple(sorted(ev.labels.items())),
                                          input_topic=settings.kafka.input_topic)
        self.stop_event = threading.Event()
        self.assigned: set[TopicPartition] = set()
        self.healthy = True  # False while an operation is retrying with back-off
        self.broker_ok = True  # False while the broker does not answer ListOffsets
        det = settings.detector
        self.device = resolve_device(det.device)
        if det.num_threads:
            torch.set_num_threads(det.num_threads)
        elif self.device.type == "cpu":
            # One core stays with the consume loop (Python, the GIL) and the clients; measured on 2 cores, two
            # intra-op threads that share their cores with the loop, redis and the broker score 2-5x slower than one.
            torch.set_num_threads(max(1, min(torch.get_num_threads(), (os.cpu_count() or 2) - 1)))
        # one hung call may not spend the outage budget: the socket timeout is a fraction of it (config.py)
        timeout = settings.redis_socket_timeout_s()
        self.redis = redis_client or client_for(settings.redis.url, settings.redis.cluster, socket_timeout=timeout,
                                                socket_connect_timeout=timeout)
        # a separate client with a short timeout for /ready, so a hung Redis cannot hang the probe
        self._probe = client_for(settings.redis.url, settings.redis.cluster, socket_timeout=1, socket_connect_timeout=1)
        self.engine = Engine.build(settings, bundle, self.device, self.redis)
        self.draining: list[Engine] = []
        self.bundle_dir = Path(bundle_dir) if bundle_dir is not None else None
        self.pointer_key = f"{settings.redis.namespace}:model:current"
        # version -> directory of every bundle whose sessions may still be in Redis: a worker that starts after a
        # switch (a restart, a new --model) finds the bundles it must still drain here (``_resume_draining``)
        self.bundles_key = f"{settings.redis.namespace}:bundles"
        self._active_dir = self.bundle_dir
        # the group's watermark: the largest safe watermark any worker has reported (``caught_up``)
        self._group_watermark = self.redis.register_script(_MAX_WATERMARK)
        self.group_watermark_key = f"{settings.redis.namespace}:watermark"
        self._refused: set[str] = set()
        self._last_reload_check = time.monotonic()
        self._consumer = consumer
        self._producer = producer
        self.kafka_kwargs = client_settings(settings.kafka, settings.kafka.client)  # KafkaSettingsError: exit 2
        self.backoff = Backoff(det.outage_budget_s, self.stop_event, self._set_healthy, on_give_up=self._give_up,
                               try_s={"redis": timeout, "kafka": settings.kafka_request_timeout_s()})
        self._beat = time.monotonic()  # the last sign of progress of the consume loop or the scorer (``liveness``)
        m.OUTAGE_SECONDS.set_function(self.backoff.outage_s)  # read at scrape time
        self._last_sweep = 0.0
        self._last_catch_up_check = 0.0
        self._ends_seen: tuple[float, dict[TopicPartition, int]] | None = None  # (when, end offsets) last check
        self.stats = {"consumed": 0, "rejected": 0, "windows": 0, "anomalies": 0, "reloads": 0, "refused": 0,
                      "suppressed": 0, "storms": 0}
        self.scoring = Scoring(self._run_job, det.score_queue)
        self._done_offsets: dict[TopicPartition, OffsetAndMetadata] = {}  # done, not committed yet (``settle``)
        self._last_commit = 0.0
        self._ends_in_flight: set[tuple[str, str]] = set()  # (bundle version, session): confirmed, not yet dropped
        self._refreeze = False  # a released bundle was unfrozen: freeze the heap again when no job holds it
        self._appending: tuple[Engine, Parsed, PendingAppend] | None = None  # the batch whose append is in flight
        # the latest log timestamp among the lines this worker has put in Redis: how far the log has gone on
        self.watermark = -math.inf
        self.partition_watermark: dict[TopicPartition, float] = {}  # the same per partition (its last line)
        self._future_warned = False  # a line stamped far ahead of the clock was logged once
        self._cap_warned = False  # a session refused at session.max_open was logged once
        self._trim_stop = threading.Event()  # ends the malloc_trim thread (``_start_trimmer``)
        # how far the log has gone on for sure: the watermark, held back to the last line read of any partition
        # that still had lines to read at the last catch-up check (``caught_up``); premature_end judges by it
        self.safe_watermark = -math.inf
        self._announce()

    @property
    def bundle(self) -> Bundle:
        return self.engine.bundle

    @property
    def store(self) -> WindowStore:
        return self.engine.store

    def _announce(self) -> None:
        b = self.engine.bundle
        m.TEMPLATES_KNOWN.set(b.vocab.size - 4)
        m.MODEL.info({"version": b.version, "device": str(self.device)})

    # -- hot reload ----------------------------------------------------------------------------------------------
    def _wanted_bundle(self) -> Path | None:
        """Where the bundle to run lives now: the Redis pointer if set, else the --model directory."""
        t0 = time.monotonic()
        try:
            pointer = self.redis.get(self.pointer_key)
        except redis.RedisError:
            self._redis_failed(t0)
            return None  # checked again next time; the batch path handles Redis outages
        if pointer:
            return Path(_text(pointer))
        return self.bundle_dir

    def maybe_reload(self) -> bool:
        """Switch to a new bundle if one was pointed to or written; returns whether it switched."""
        self._last_reload_check = time.monotonic()
        where = self._wanted_bundle()
        if where is None:
            return False
        try:
            doc = json.loads((where / "bundle.json").read_text())
            if not isinstance(doc, dict):
                raise ValueError(f"bundle.json holds a JSON {type(doc).__name__}, not an object")
            version = doc.get("version")
        except (OSError, ValueError) as exc:
            key = f"{where}:unreadable"
            if key not in self._refused:
                self._refused.add(key)
                log.error("model bundle at %s is unreadable (%s); keeping %s", where, exc, self.bundle.version)
                m.RELOADS.labels("refused").inc()
            return False
        if version == self.bundle.version or f"{where}:{version}" in self._refused:
            return False
        try:
            engine = Engine.build(self.s, load_bundle(where), self.device, self.redis)
        except Exception as exc:  # a bundle that cannot serve is refused; it never takes the running worker down
            self._refused.add(f"{where}:{version}")
            expected = isinstance(exc, (BundleError, StartupError))
            log.error("refusing model bundle %s from %s: %s; keeping %s", version, where,
                      exc if expected else f"{type(exc).__name__}: {exc}", self.bundle.version,
                      exc_info=not expected)
            m.RELOADS.labels("refused").inc()
            return False
        old = self.engine
        if engine.bundle.version in {e.bundle.version for e in self.draining}:  # rollback to a draining bundle
            self.draining = [e for e in self.draining if e.bundle.version != engine.bundle.version]
            self._released()
        self.draining.append(old)
        self.engine = engine
        self._active_dir = where
        self._record_active()
        self.stats["reloads"] += 1
        m.RELOADS.labels("switched").inc()
        self._announce()
        self.warm(engine)
        log.warning("model switched from %s to %s; the old one finishes its open sessions", old.bundle.version,
                    engine.bundle.version)
        return True

    def _record_active(self) -> None:
        """Note where the active bundle lives, for workers that start after the next switch."""
        if self._active_dir is None:
            return
        where = str(self._active_dir.resolve())
        self.backoff.call("redis write", lambda: self.redis.hset(self.bundles_key, self.bundle.version, where),
                          (redis.RedisError,), m.REDIS_ERRORS)

    def _resume_draining(self) -> None:
        """Drain the bundles an earlier run switched away from and left with open sessions, pending windows or held
        stops: without this, a worker that starts after a switch would leave them in Redis, unscored, while their
        input offsets are long committed."""
        ns = self.s.redis.namespace
        known = self.backoff.call("redis read", lambda: self.redis.hgetall(self.bundles_key), (redis.RedisError,),
                                  m.REDIS_ERRORS)
        running = {self.bundle.version, *(e.bundle.version for e in self.draining)}
        for raw_version, raw_dir in sorted(known.items()):
            version, where = _text(raw_version), Path(_text(raw_dir))
            if version in running:
                continue
            left = self.backoff.call("redis read", lambda: left_in(self.redis, f"{ns}:{version}"),
                                     (redis.RedisError,), m.REDIS_ERRORS)
            if not any(left):
                self.backoff.call("redis write", lambda: self.redis.hdel(self.bundles_key, version),
                                  (redis.RedisError,), m.REDIS_ERRORS)
                continue
            what = f"{left[0]} open session(s), {left[1]} pending window(s), {left[2]} held stop(s)"
            try:
                bundle = load_bundle(where)
                if bundle.version != version:
                    raise BundleError(f"{where} now holds {bundle.version}")
                engine = Engine.build(self.s, bundle, self.device, self.redis)
            except Exception as exc:
                log.error("model %s, switched away from earlier, still has %s in Redis, but it cannot be loaded "
                          "from %s (%s): they stay unscored until a worker can load it there", version, what, where,
                          exc)
                continue
            self.draining.append(engine)
            log.warning("resuming the drain of model %s (from %s): %s", version, where, what)

    def warm(self, engine: Engine) -> None:
        """Score the bundle's most frequent training windows into the engine's score cache, on the scorer thread
        ahead of the jobs that follow: the first windows a worker closes then hit the cache as later ones do (a
        cold cache made the first second of closes the slowest, docs/performance.md)."""
        windows = engine.bundle.warm_windows
        if not self.s.detector.warm_cache or not windows or not engine.judge.scorer.cache_size:
            return

        def warm_score_cache() -> None:
            t0 = time.perf_counter()
            n = engine.judge.scorer.warm(windows)
            m.SCORE_CACHE_WARMED.inc(n)
            log.info("score cache of %s warmed with %d windows in %.2f s", engine.bundle.version, n,
                     time.perf_counter() - t0)

        self.scoring.call(warm_score_cache)

    # -- clients -------------------------------------------------------------------------------------------------
    @property
    def consumer(self) -> KafkaConsumer | ConfluentConsumer:
        if self._consumer is None:
            self._consumer = detector_consumer(self.s.kafka, self.kafka_kwargs, _Rebalance(self))
        return self._consumer

    @property
    def producer(self) -> EventProducer | ConfluentProducer:
        if self._producer is None:
            self._producer = event_producer(self.s.kafka, self.kafka_kwargs, self.s.kafka_request_timeout_s())
        return self._producer

    def _give_up(self) -> None:
        """The outage budget is spent: calls still waiting on a Redis socket (the other thread's) fail now rather
        than at their timeout."""
        self.stop_event.set()
        for client in (self.redis,):
            try:
                client.connection_pool.disconnect()
            except Exception:  # noqa: BLE001 (best effort on the way out; the error in hand is what is reported)
                pass

    def _redis_failed(self, since: float) -> None:
        """A Redis call made at ``since`` failed outside the back-off path: count it, and start the outage clock."""
        m.REDIS_ERRORS.inc()
        self.backoff.note_failure("redis", since)

    def liveness(self) -> tuple[bool, dict[str, object]]:
        """Alive unless an outage, or a stall of both the consume loop and the scorer, has lasted more than
        ``detector.health_fraction`` of the outage budget (``/health``)."""
        det = self.s.detector
        limit = det.health_fraction * det.outage_budget_s
        outage = self.backoff.outage_s()
        stalled = time.monotonic() - self._beat
        ok = outage <= limit and stalled <= limit
        return ok, {"outage_s": round(outage, 1), "stalled_s": round(stalled, 1), "limit_s": limit,
                    "budget_s": det.outage_budget_s}

    def _set_healthy(self, ok: bool) -> None:
        self.healthy = ok  # logad_ready is computed from readiness() at scrape time

    def readiness(self) -> tuple[bool, dict[str, object]]:
        """Ready: partitions assigned, model loaded, Redis answering, and no operation stuck in back-off."""
        try:
            redis_ok = bool(self._probe.ping())
        except redis.RedisError:
            redis_ok = False
        ok = redis_ok and self.broker_ok and bool(self.assigned) and self.healthy
        return ok, {"redis": redis_ok, "broker": self.broker_ok, "partitions": len(self.assigned),
                    "backing_off": not self.healthy,
                    "model_version": self.bundle.version}

    # -- the loop ------------------------------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: Any) -> None:
            log.info("signal %d: finishing the batch in hand, committing, stopping", signum)
            self.stop_event.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def run(self, max_idle_s: float | None = None) -> dict[str, int]:
        """Consume until stopped (or, with ``max_idle_s``, until the input stayed empty that long and no session
        is left open: used by the demo and tests)."""
        try:
            # a switch made while this worker was down: run the bundle pointed to now; drain what earlier runs left
            if not self.maybe_reload():
                self.warm(self.engine)  # on the scorer thread, while the consumer connects and joins its group
            self._record_active()
            self._resume_draining()
            # the broker may come up after us (compose, a rolling restart): connect with back-off within the budget
            consumer = self.backoff.call("broker connect", lambda: self.consumer, (KafkaError,), m.BROKER_ERRORS)
            # the producer connects now, not at the first anomaly: that event would wait for the bootstrap (~1 s)
            self.backoff.call("broker connect", lambda: self.producer, (KafkaError,), m.BROKER_ERRORS)
        except BaseException:  # no Redis or broker within the budget, or a signal meanwhile: let go of what is open
            self.stop_event.set()
            self.scoring.close()
            self.close()
            raise
        # An empty poll waits this long, so while the input is quiet, idle sessions are closed this late at worst.
        # kafka-python 3.0 needs >= 1 s: it drops a group join that completes while we are outside poll().
        poll_ms = 1000
        if isinstance(consumer, ConfluentConsumer):
            poll_ms = max(10, min(1000, int(self.s.detector.sweep_interval_s * 1000)))
        self._freeze_heap()
        self._start_trimmer()  # until run() returns
        self._start_memory_poll()  # until run() returns
        idle_since = time.monotonic()
        try:
            while not self.stop_event.is_set():
                self._beat = time.monotonic()
                batch = consumer.poll(timeout_ms=poll_ms, max_records=self.s.kafka.max_poll_records)
                records = [r for recs in batch.values() for r in recs]
                if records:
                    self.process(records)
                    idle_since = time.monotonic()
                else:
                    self.finish_append()
                self.settle()
                if self._refreeze and not self.scoring.in_flight():  # no job holds a released bundle any more
                    self._freeze_heap()
                now = time.monotonic()
                if now - self._last_reload_check >= self.s.detector.reload_interval_s:
                    self.maybe_reload()
                # Sessions are closed only by a worker that has caught up with its partitions: after a restart or
                # an outage the backlog may still hold the lines that keep a session open.
                interval = self.s.detector.sweep_interval_s
                due = now - self._last_sweep >= interval and \
                    now - self._last_catch_up_check >= max(interval / 2, 0.25)  # at most 4 ListOffsets a second
                if due and not self.caught_up():
                    m.SWEEPS_DEFERRED.inc()
                    due = False
                if due:
                    self.finish_append()  # every line read is in Redis before any session is judged idle
                    self._last_sweep = now
                    with m.SWEEP_SECONDS.time():  # a full scorer queue makes it wait too
                        swept = self.sweep()
                    if swept:
                        idle_since = now
                if max_idle_s is not None and time.monotonic() - idle_since > max_idle_s and self._all_done():
                    break
        except BaseException:
            self.stop_event.set()  # jobs retrying against an outage give up now
            try:
                self.finish_append()
            except (OutageError, redis.RedisError):
                pass  # not stored: not committed, replayed
            self.settle(wait=True, raise_errors=False)  # commit what finished; the rest is replayed
            raise
        else:
            self.finish_append()
            self.settle(wait=True)  # the batches in hand finish and commit first
        finally:
            self._trim_stop.set()
            self.scoring.close()
            self.close()
            gc.unfreeze()  # the process may go on (tests, an embedding application): collect as usual again
        return dict(self.stats)

    def _all_done(self) -> bool:
        """No session open and no window pending under any bundle (False while Redis does not answer)."""
        t0 = time.monotonic()
        try:
            return not any(e.store.open_sessions() or e.store.pending() for e in (self.engine, *self.draining))
        except redis.RedisError:
            self._redis_failed(t0)
            return False

    def _start_memory_poll(self) -> threading.Thread | None:
        """A daemon thread that reads Redis ``INFO memory`` and the open sessions every ``redis.memory_poll_s``
        (with the probe's 1 s client, so a hung Redis costs the thread, not the loop)."""
        interval = self.s.redis.memory_poll_s
        if not interval:
            return None
        done = self._trim_stop  # set when run() returns, as for the trimmer

        def poll() -> None:
            try:
                info = self._probe.info("memory")
                m.REDIS_MEMORY.set(float(info.get("used_memory", 0)))
                m.REDIS_MAXMEMORY.set(float(info.get("maxmemory", 0)))
                m.SESSIONS_OPEN.set(self._probe.zcard(f"{self.engine.store.prefix}:idle"))
            except redis.RedisError:
                pass  # the loop's own calls count and handle the outage

        def loop() -> None:
            poll()
            while not done.wait(interval):
                poll()

        thread = threading.Thread(target=loop, name="logad-redis-memory", daemon=True)
        thread.start()
        return thread

    def _start_trimmer(self) -> threading.Thread | None:
        """A daemon thread that returns freed heap pages to the OS every ``detector.malloc_trim_interval_s``
        (glibc only; elsewhere nothing happens). ctypes lets go of the GIL for the call, so Python threads go on."""
        interval = self.s.detector.malloc_trim_interval_s
        trim = _malloc_trim()
        self._trim_stop = threading.Event()  # also ends the memory poll (``_start_memory_poll``)
        if not interval or trim is None:
            return None

        done = self._trim_stop

        def loop() -> None:
            while not done.wait(interval):
                trim(0)

        thread = threading.Thread(target=loop, name="logad-malloc-trim", daemon=True)
        thread.start()
        return thread

    def _freeze_heap(self) -> None:
        """Move every object alive now (torch, the model, the parser's state: they live as long as the process)
        out of the collector's reach. A full collection otherwise walks them all and holds the GIL meanwhile:
        measured in a 60 s latency run, 14 full passes of 96-128 ms each, against 1.5 ms (p50) once frozen.
        Frozen objects are never collected by the cycle collector, so when a bundle is released after a reload the
        heap is unfrozen, and frozen again once no job refers to that bundle."""
        gc.collect()
        gc.freeze()
        self._refreeze = False

    def _released(self) -> None:
        """An engine was dropped: make what was frozen collectable again, and freeze anew once no job refers to
        the engine any more (``run``)."""
        gc.unfreeze()
        self._refreeze = True

    def settle(self, wait: bool = False, raise_errors: bool = True, commit: bool = True) -> None:
        """Commit the input offsets of the jobs that are done, in order, in one commit, at most every
        ``kafka.commit_interval_ms`` (the offsets of the jobs done meanwhile wait in ``_done_offsets``); raise a
        job's error (after committing the jobs before it). ``wait``: wait for every job in flight first and commit
        now; ``commit=False``: hand the done jobs back and drop their offsets without committing them (their records
        will be replayed)."""
        offsets = self._done_offsets
        failed = False
        for job in self.scoring.completed(wait):
            if job.error is not None:
                failed = True
                break
            if job.offsets:
                offsets.update(job.offsets)
        if not commit:
            offsets.clear()
            return
        now = time.monotonic()
        if offsets and (wait or failed or self.stop_event.is_set()
                        or now - self._last_commit >= self.s.kafka.commit_interval_ms / 1000):
            self._done_offsets = {}
            self._last_commit = now
            try:
                with m.COMMIT_SECONDS.time():
                    self.backoff.call("offset commit", lambda: self.consumer.commit(offsets), (KafkaError,),
                                      m.BROKER_ERRORS, fatal=(CommitFailedError,))
            except CommitFailedError as exc:
                # The group rebalanced while we worked: the new owner replays these records, which is safe.
                log.warning("offset commit rejected after a rebalance (%s); the records will be replayed", exc)
            except OutageError:
                if raise_errors:
                    raise
        if raise_errors and self.scoring.failed is not None:
            raise self.scoring.failed

    def caught_up(self) -> bool:
        """True when partitions are assigned, the broker answers now, and every partition is consumed up to its
        end now, or up to the end offsets the previous check saw, if that was at most ``2 x sweep_interval_s + 1``
        seconds ago. Also publishes the per-partition consumer lag.

        Sessions may only be closed when this holds: during a broker outage or with a backlog, the lines that keep
        a session open may simply not have been read yet. Under a steady stream the end moves on between a poll and
        ListOffsets, so "consumed to the end now" almost never holds; having read everything the log held at the
        previous check means that any line still unread was produced within the last few seconds, well inside the
        idle timeout.
        """
        now = time.monotonic()
        self._last_catch_up_check = now
        prev, self._ends_seen = self._ends_seen, None
        if not self.assigned:
            return False
        consumer = self.consumer
        tps = list(self.assigned)
        try:
            listed = consumer.end_offsets(tps, timeout_ms=2000)
            positions = {tp: consumer.position(tp) for tp in tps}
        except KafkaError as exc:
            m.BROKER_ERRORS.inc()
            if self.broker_ok:
                log.warning("broker not answering (%s: %s); not closing sessions until it does",
                            type(exc).__name__, exc)
            self.broker_ok = False
            return False
        self.broker_ok = True
        at_end, at_prev_end = True, prev is not None and now - prev[0] <= 2 * self.s.detector.sweep_interval_s + 1
        ends = {}
        safe, lagging = self.watermark, False
        for tp in tps:
            # tansu's ListOffsets can trail the log end; a fetch response's high watermark is exact: take the larger,
            # and count a partition as read to its end only once a fetch response since its assignment gave one
            highwater = consumer.highwater(tp)
            end = max(listed.get(tp) or 0, highwater or 0)
            position = positions[tp]
            lag = max(0, end - position)
            m.CONSUMER_LAG.labels(str(tp.partition)).set(lag)
            if highwater is None:
                at_end = at_prev_end = False
                continue
            if lag:  # its unread lines may be older than what other partitions showed: the log is only that far
                safe = min(safe, self.partition_watermark.get(tp, -math.inf))
                lagging = True
            ends[tp] = end
            at_end = at_end and lag == 0
            at_prev_end = at_prev_end and prev is not None and tp in prev[1] and position >= prev[1][tp]
        self._ends_seen = (now, ends)
        if at_end or at_prev_end:
            if not lagging:
                # Nothing of ours is left to read: the group's watermark applies too. A worker that has just taken
                # partitions over, or restarted, with nothing new to read, knows how far the log went from it.
                safe = max(safe, self._share_watermark(safe))
            self.safe_watermark = safe
        return at_end or at_prev_end

    def _share_watermark(self, mine: float) -> float:
        """Report this worker's safe watermark to the group's and return the group's (-inf when Redis fails: the
        worker's own then stands, and the batch path deals with the outage)."""
        t0 = time.monotonic()
        try:
            got = self._group_watermark(keys=[self.group_watermark_key],
                                        args=[repr(mine) if math.isfinite(mine) else "-inf",
                                              repr(time.time() + _MAX_FUTURE_S)])
        except redis.RedisError:
            self._redis_failed(t0)
            return -math.inf
        return float(got)

    def process(self, records: Sequence[Any]) -> None:
        """Parse a consumed batch and send it to Redis; the reply is read once the next batch is parsed (or the
        input goes quiet, or before a sweep), then its windows go to the scorer and ``settle`` commits its offsets
        once they are published."""
        engine = self.engine  # one bundle for the whole batch
        t0 = time.perf_counter()
        parsed = engine.pipeline.parse(records)
        m.PARSE_SECONDS.observe(time.perf_counter() - t0)
        m.LINES_CONSUMED.inc(len(records))
        m.LINES_UNSEEN_TEMPLATE.inc(parsed.unseen)
        self.stats["consumed"] += len(records)
        self.finish_append()  # the previous batch's reply came in while this one was parsed
        now_ms = int(time.time() * 1000)
        self._appending = (engine, parsed, engine.store.append_start(parsed.entries, now_ms))

    def finish_append(self) -> None:
        """Read the reply of the append in flight (retrying it with back-off) and hand the batch's windows, dead
        letters and offsets to the scorer. Nothing of a batch is published or committed before this."""
        if self._appending is None:
            return
        engine, parsed, pending = self._appending
        appended = self.backoff.call("redis append", lambda: engine.store.append_finish(pending),
                                     (redis.RedisError,), m.REDIS_ERRORS)
        self._appending = None
        if parsed.entries:
            latest = time.time() + _MAX_FUTURE_S
            newest = max(e.timestamp for e in parsed.entries)
            if newest > latest:
                ahead = sum(e.timestamp > latest for e in parsed.entries)
                if not self._future_warned:
                    self._future_warned = True
                    log.warning("a line is stamped %s, more than %.0f h ahead of this machine's clock; such lines "
                                "are windowed but do not move the watermark (logad_future_timestamps_total)",
                                time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(newest)), _MAX_FUTURE_S / 3600)
                m.FUTURE_ENTRIES.inc(ahead)
                newest = max((e.timestamp for e in parsed.entries if e.timestamp <= latest), default=-math.inf)
            self.watermark = max(self.watermark, newest)
            m.WATERMARK.set(self.watermark)
            for tp, ts in parsed.stamps.items():
                if ts <= latest:
                    self.partition_watermark[tp] = max(ts, self.partition_watermark.get(tp, -math.inf))
        if appended.novel_templates:
            m.TEMPLATES_NEW.inc(appended.novel_templates)
        if appended.novel_capped:
            m.TEMPLATES_NEW_CAPPED.inc(appended.novel_capped)
        if appended.resumed:
            m.PREMATURE_DROPPED.inc(appended.resumed)
        futures = [self._dead_letter(rec, reason, detail) for rec, reason, detail in parsed.rejects]
        if appended.refused:
            futures += self._cap_dead_letters(parsed, appended.refused)
        offsets = {tp: OffsetAndMetadata(off, "", -1) for tp, off in parsed.offsets.items()}
        self.scoring.submit(Job(engine, appended.windows, futures, offsets))  # settle() commits it once done

    def _cap_dead_letters(self, parsed: Parsed, refused: Sequence[int]) -> list[Any]:
        """Dead letters for the lines whose sessions were refused (``session.max_open`` sessions open): a key flood
        costs dead letters, not the sessions that are open. A line naming several sessions is sent once."""
        m.SESSIONS_REFUSED.inc(len(refused))
        self.stats["refused"] += len(refused)
        by_record: dict[int, tuple[Any, list[str]]] = {}
        for i in refused:
            rec = parsed.origins[i]
            by_record.setdefault(id(rec), (rec, []))[1].append(parsed.entries[i].session_id)
        cap = self.s.session.max_open
        if not self._cap_warned:
            self._cap_warned = True
            log.warning("%d session(s) open, the cap (session.max_open); lines that would open more go to the "
                        "dead-letter topic as %s (logad_sessions_refused_total; logged once)", cap, SESSION_CAP)
        return [self._dead_letter(rec, SESSION_CAP, f"{cap} sessions open (session.max_open); not opened: "
                                  + ", ".join(sids[:10]) + (f" and {len(sids) - 10} more" if len(sids) > 10 else ""))
                for rec, sids in by_record.values()]

    def sweep(self) -> int:
        """Close idle sessions and re-claim windows whose worker died, for the active bundle and any bundle still
        draining after a reload; hand them to the scorer."""
        now_ms = int(time.time() * 1000)
        idle_ms = int(self.s.session.idle_timeout_s * 1000)
        total = 0
        for engine in (self.engine, *self.draining):
            while True:  # a sweep stops at its limit (1000 sessions); go on while more are due
                res = self.backoff.call("redis sweep", lambda: engine.store.sweep(now_ms, idle_ms),
                                        (redis.RedisError,), m.REDIS_ERRORS)
                m.SESSIONS_CLOSED.inc(res.closed_sessions)
                if res.evicted:
                    m.SESSIONS_EVICTED.inc(res.evicted)
                if res.expired:
                    m.SESSIONS_EXPIRED.inc(res.expired)
                    log.warning("%d session(s) of %s expired in Redis (session.ttl_s = %d s) before a sweep closed "
                                "them: their last window was not scored. Sweeps wait while the worker is behind "
                                "or the broker is down; ttl_s must outlast such periods", res.expired,
                                engine.bundle.version, self.s.session.ttl_s)
                step = self.s.detector.max_batch  # jobs of one scoring batch: a burst's first events go out early
                for i in range(0, len(res.windows), step):
                    self.scoring.submit(Job(engine, res.windows[i:i + step], [], None))
                total += len(res.windows)
                if not res.more or self.stop_event.is_set():
                    break
            total += self._confirm_ends(engine)
        t0 = time.monotonic()
        try:
            m.SESSIONS_OPEN.set(self.engine.store.open_sessions())
            m.PREMATURE_WAITING.set(self.engine.store.held_ends())
            finished = [e for e in self.draining if not any(e.store.left())]
        except redis.RedisError:
            self._redis_failed(t0)
            return total
        for e in finished:
            log.info("model %s has no open sessions left; released", e.bundle.version)
            self.draining.remove(e)
            try:
                self.redis.hdel(self.bundles_key, e.bundle.version)
            except redis.RedisError:
                m.REDIS_ERRORS.inc()  # the next worker to start finds nothing left to drain, and forgets it then
        if finished:
            self._released()
        return total

    def _confirm_ends(self, engine: Engine) -> int:
        """Publish the held ``premature_end`` events whose quiet this worker's watermark now shows: the log went on
        for the rest horizon past the session's last line and the session did not come back."""
        rest = engine.judge.rest
        if rest is None or not math.isfinite(self.safe_watermark):
            return 0
        due = self.backoff.call("redis read", lambda: engine.store.due_ends(self.safe_watermark - rest.quiet_s),
                                (redis.RedisError,), m.REDIS_ERRORS)
        version = engine.bundle.version
        due = [(sid, ev) for sid, ev in due if (version, sid) not in self._ends_in_flight]
        if due and engine is not self.engine:
            # a draining bundle's session that came back went on under the active bundle: it did not stop
            back = self.backoff.call("redis read", lambda: self.engine.store.known_sessions([s for s, _ in due]),
                                     (redis.RedisError,), m.REDIS_ERRORS)
            if back:
                gone = [(sid, ev) for sid, ev in due if sid in back]
                self.backoff.call("redis drop", lambda: engine.store.drop_ends(gone), (redis.RedisError,),
                                  m.REDIS_ERRORS)
                m.PREMATURE_DROPPED.inc(len(gone))
                due = [(sid, ev) for sid, ev in due if sid not in back]
        if not due:
            return 0
        self._ends_in_flight.update((version, sid) for sid, _ in due)
        # as built when the window was judged (``detected_at`` = its close): a second publication, by another worker
        # or after a crash, is byte for byte the same event
        keep = [True] * len(due)
        messages: list[Any] = []
        if self.s.detector.max_events_per_minute:
            docs = [json.loads(ev) for _, ev in due]
            rated = [(d["event_id"], _ms(d["detected_at"]), ",".join(d["explanation"]["reasons"])) for d in docs]
            keep, messages = self._rate_limit(engine, rated)
        messages += [self._event_message(sid, ev) for (sid, ev), k in zip(due, keep) if k]
        self.scoring.submit(Job(engine, [], messages, None, ends=due, end_events=sum(keep)))
        return len(due)

    def _rate_limit(self, engine: Engine, events: Sequence[tuple[str, int, str]]) -> tuple[list[bool], list[Any]]:
        """Which of these events ``(event id, cut_ms, reasons)`` to publish under ``detector.max_events_per_minute``
        (decided in Redis for every worker, the same on a replay), and the storm summaries to publish with them.
        The others are counted, never published; their windows are acknowledged and committed as usual."""
        limit = self.s.detector.max_events_per_minute
        ttl = int(self.s.replay_horizon_s()) + 120
        got = self.backoff.call("redis rate", lambda: engine.store.rate(events, limit, ttl), (redis.RedisError,),
                                m.REDIS_ERRORS)
        keep = [g == 1 for g in got]
        summaries = []
        for (event_id, cut_ms, _), g in zip(events, got):
            if g != 2:
                continue
            minute = cut_ms // 60_000
            trip, published = self.backoff.call("redis rate", lambda: engine.store.rate_minute(minute),
                                                (redis.RedisError,), m.REDIS_ERRORS)
            ev = build_storm_event(prefix=engine.store.prefix, minute=minute, limit=limit,
                                   trip_event_id=trip or event_id, published=published,
                                   model_version=engine.bundle.version, context=self.event_context)
            log.warning("anomaly event storm: %d events published for the minute from %s, the limit "
                        "(detector.max_events_per_minute); one summary event %s stands for the rest, which are "
                        "counted in logad_anomalies_suppressed_total", len(published),
                        time.strftime("%H:%M", time.gmtime(minute * 60)), ev.event_id)
            summaries.append(self._event_message(ev.session_id, ev.model_dump_json()))
        suppressed = len(keep) - sum(keep)
        if suppressed:
            m.ANOMALIES_SUPPRESSED.inc(suppressed)
            self.stats["suppressed"] += suppressed
        if summaries:
            m.STORMS.inc(len(summaries))
            self.stats["storms"] += len(summaries)
        return keep, summaries

    def _run_job(self, job: Job) -> None:
        if job.windows:
            m.JOB_WAIT_SECONDS.observe(time.monotonic() - job.submitted)
        self.publish(job.engine, job.windows, job.messages, job.ends, job.end_events)
        self._beat = time.monotonic()

    def publish(self, engine: Engine, windows: Sequence[CutWindow], futures: list[Any],
                ends: Sequence[tuple[str, str]] = (), end_events: int | None = None) -> None:
        """Score windows, publish anomaly events (and any queued dead letters and confirmed held events), flush,
        hold the ``premature_end`` verdicts whose quiet is not seen yet, then ack the windows in Redis."""
        held: list[tuple[CutWindow, str]] = []
        try:
            if windows:
                max_batch = self.s.detector.max_batch
                for i in range(0, len(windows), max_batch):
                    futures += self._score_chunk(engine, windows[i:i + max_batch], held)
            if futures:
                with m.FLUSH_SECONDS.time():  # back-off included: what the events waited for
                    self.backoff.call("publish", lambda: self._flush(futures), (KafkaError,), m.BROKER_ERRORS)
            if held:
                n = self.backoff.call("redis hold", lambda: engine.store.hold_ends(held), (redis.RedisError,),
                                      m.REDIS_ERRORS)
                m.PREMATURE_HELD.inc(n)
            if windows:
                ids = [w.id for w in windows]
                self.backoff.call("redis ack", lambda: engine.store.ack(ids), (redis.RedisError,), m.REDIS_ERRORS)
            if ends:
                self.backoff.call("redis drop", lambda: engine.store.drop_ends(ends), (redis.RedisError,),
                                  m.REDIS_ERRORS)
                published = len(ends) if end_events is None else end_events  # the others: past the rate limit
                self.stats["anomalies"] += published
                m.ANOMALIES.inc(published)
                m.PREMATURE_CONFIRMED.inc(len(ends))
        finally:
            if ends:  # published and forgotten, or failed: either way a later sweep may look at them again
                self._ends_in_flight.difference_update((engine.bundle.version, sid) for sid, _ in ends)

    def _score_chunk(self, engine: Engine, chunk: Sequence[CutWindow], held: list[tuple[CutWindow, str]]
                     ) -> list[Any]:
        t0 = time.perf_counter()
        keys = [window_keys(w.members) for w in chunk]
        scorer = engine.judge.scorer
        hits = scorer.cache_hits
        rest = engine.judge.rest
        # premature_end calls a session stopped only where the log went on without it for the rest horizon; until
        # then (not yet, or the input itself stopped: a replay ran out, a shipper outage) the verdict is held
        # A draining bundle's session may go on under the active bundle, where this one cannot see it: its stops
        # are always held, and confirmed only if the active bundle does not know the session (``_confirm_ends``).
        active = engine is self.engine
        seen = None if rest is None else [active and self.safe_watermark - w.last_ts >= rest.quiet_s for w in chunk]
        verdicts = engine.judge.judge(keys, seen)
        m.SCORE_SECONDS.observe(time.perf_counter() - t0)
        m.SCORE_CACHE_HITS.inc(scorer.cache_hits - hits)
        m.SCORE_BATCH.observe(len(chunk))
        for w in chunk:
            m.WINDOWS_SCORED.labels(w.cause).inc()
        self.stats["windows"] += len(chunk)
        flagged = [(w, v, k) for w, v, k in zip(chunk, verdicts, keys) if v.anomalous]
        # a window that only a stop would flag: its event is held until the quiet is seen (other reasons: published
        # now, without the unconfirmed stop)
        # (premature_end, or an unseen_template_set that is part of a normal set: what fires once the quiet is seen)
        waiting = [(w, replace(v, anomalous=True, reasons=v.pending_reasons, end_pending=False, pending_reasons=()),
                    k) for w, v, k in zip(chunk, verdicts, keys) if v.end_pending and not v.anomalous]
        if not flagged and not waiting:
            return []
        unseen = engine.bundle.vocab.unseen
        texts = self.backoff.call("redis read", lambda: engine.store.unseen_texts([w for w, _, k in flagged + waiting
                                                                                    if any(map(unseen, k))]),
                                  (redis.RedisError,), m.REDIS_ERRORS)
        bundle = engine.bundle
        th = bundle.thresholds

        def event_json(w: CutWindow, v: Verdict) -> str:
            return build_event(event_id=w.id, session_id=w.session_id, members=w.members, lo=w.lo,
                               cause="idle" if w.cause == "idle" else "full", first_ts=w.first_ts,
                               last_ts=w.last_ts, cut_ms=w.cut_ms, verdict=v, vocab=bundle.vocab,
                               unseen_text=texts.get(w.session_id, {}), miss_threshold=th.miss_ratio,
                               distance_threshold=th.distance, model_version=bundle.version,
                               context=self.event_context, origins=w.origins).model_dump_json()

        held += [(w, event_json(w, v)) for w, v, _ in waiting]
        summaries: list[Any] = []
        if flagged and self.s.detector.max_events_per_minute:
            keep, summaries = self._rate_limit(engine, [(w.id, w.cut_ms, ",".join(v.reasons)) for w, v, _ in flagged])
            flagged = [f for f, k in zip(flagged, keep) if k]
        out = [self._event_message(w.session_id, event_json(w, v)) for w, v, _ in flagged]
        self.stats["anomalies"] += len(out)
        m.ANOMALIES.inc(len(out))
        return out + summaries

    def _event_message(self, session_id: str, event_json: str) -> tuple[str, bytes, bytes, Any]:
        """The output record of an event, framed as ``event.format`` says (a replay frames it the same)."""
        ev = self.s.event
        value, headers = frame_event(event_json, ev.format, ev.source or f"urn:logad:{self.s.log.family}")
        return (self.s.kafka.output_topic, session_id.encode(), value, headers)

    def _dead_letter(self, rec: Any, reason: str, detail: str) -> tuple[str, bytes | None, bytes, list]:
        m.LINES_REJECTED.labels(reason).inc()
        self.stats["rejected"] += 1
        headers = [("logad.source.topic", rec.topic.encode()), ("logad.source.partition", str(rec.partition).encode()),
                   ("logad.source.offset", str(rec.offset).encode()), ("logad.reason", reason.encode()),
                   ("logad.error", detail[:500].encode("utf-8", "replace"))]
        value = rec.value if rec.value is not None else b""
        cap = self.s.kafka.dlq_max_value_bytes
        if len(value) > cap:  # over the broker's record limit it could never be published: the worker would stall
            headers += [("logad.truncated", b"true"), ("logad.original_bytes", str(len(value)).encode())]
            value = value[:cap]
        return (self.s.kafka.dlq, rec.key, value, headers)

    def _flush(self, messages: list[Any]) -> None:
        """Send all messages and wait until the broker has every one; raise if any failed (the caller retries
        the whole set: consumers see at-least-once, with identical duplicates)."""
        self.producer.deliver(messages, timeout_s=self.s.kafka_request_timeout_s())

    def close(self) -> None:
        if self._producer is not None:
            try:
                self._producer.close(timeout_s=10)
            except KafkaError as exc:
                log.warning("producer close: %s", exc)
        if self._consumer is not None:
            try:
                self._consumer.close(autocommit=False)
            except KafkaError as exc:
                log.warning("consumer close: %s", exc)
        self._consumer = None
        self._producer = None
