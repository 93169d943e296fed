"""``logad run``: one consumer-group member, wiring Kafka, the parser, Redis windows, the scorer and the output.

Where a consumed line goes, one part each (the order of effects, and why it is safe to replay: ``commits``):

* ``intake.Intake``: poll -> decode -> parse (``lines.LinePipeline``) -> one Redis append per batch; once the reply
  is in, the batch *lands*: its cut windows, dead letters and offsets go to the scorer as one job;
* ``closing``: how far the log has gone on (watermarks), whether this worker has caught up with its partitions,
  and the sweep that closes idle sessions (their windows go to the scorer as jobs too);
* ``judging``: the scorer thread, fed immutable jobs that carry the engine and the watermark they need;
* ``publishing``: events and dead letters to the broker, then acks in Redis;
* ``commits``: the input offsets of the done jobs, in order, on the consume thread;
* ``reload``: the active bundle, hot reload, and the draining of the bundles switched away from;
* ``lifecycle``: the Kafka clients and the heap housekeeping, let go of through one ``ExitStack`` in ``run``.

Infrastructure errors are retried with exponential back-off and jitter (``backoff``) and nothing is committed
meanwhile; past ``outage_budget_s`` the worker stops with ``OutageError``. SIGTERM/SIGINT stop consumption; the
batch in hand finishes and commits first.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import redis
import torch

from logbert_core.bundle import Bundle
from logbert_core.config import Settings
from streamer import metrics as m
from streamer.backoff import Backoff
from streamer.broker import BrokerConsumer, BrokerProducer, Partition
from streamer.closing import Closing, Progress, group_watermark
from streamer.commits import Commits
from streamer.engine import Engine, check_bundle_settings, resolve_device
from streamer.errors import BrokerUnavailable, OutageError
from streamer.events import EventContext
from streamer.intake import Intake
from streamer.judging import Job, Judging, Scoring, Ticket
from streamer.lifecycle import Clients, Housekeeping
from streamer.lines import PARSE_ERROR, LinePipeline, Parsed
from streamer.publishing import SESSION_CAP, Publisher
from streamer.reload import Models
from streamer.tally import Tally
from streamer.windows import client_for

__all__ = ["PARSE_ERROR", "SESSION_CAP", "Backoff", "Engine", "Job", "LinePipeline", "Parsed", "Scoring", "Ticket",
           "Worker", "check_bundle_settings", "resolve_device"]

log = logging.getLogger(__name__)


class _Rebalance:
    """The worker's ``streamer.broker.RebalanceListener``."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def on_partitions_revoked(self, revoked: set[Partition]) -> None:
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

    def on_partitions_assigned(self, assigned: set[Partition]) -> None:
        log.info("partitions assigned: %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))
        self.worker.progress.assigned = set(assigned)


class Worker:
    """One detector process: builds its parts and runs the consume loop (see the module's docstring)."""

    def __init__(self, settings: Settings, bundle: Bundle, *, consumer: BrokerConsumer | None = None,
                 producer: BrokerProducer | None = None, redis_client: redis.Redis | None = None,
                 bundle_dir: str | Path | None = None) -> None:
        self.s = settings
        ev, det = settings.event, settings.detector
        self.stop_event = threading.Event()
        self.healthy = True  # False while an operation is retrying with back-off
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
        engine = Engine.build(settings, bundle, self.device, self.redis)
        self.clients = Clients(settings, _Rebalance(self), consumer, producer)  # KafkaSettingsError: exit 2

        def on_state(ok: bool) -> None:
            self.healthy = ok  # logad_ready is computed from readiness() at scrape time

        def give_up() -> None:
            """The outage budget is spent: calls still waiting on a Redis socket (the other thread's) fail now
            rather than at their timeout."""
            self.stop_event.set()
            try:
                self.redis.connection_pool.disconnect()
            except Exception:  # noqa: BLE001 (best effort on the way out; the error in hand is what is reported)
                pass

        self.backoff = backoff = Backoff(det.outage_budget_s, self.stop_event, on_state, on_give_up=give_up,
                                         try_s={"redis": timeout, "kafka": settings.kafka_request_timeout_s()})
        m.OUTAGE_SECONDS.set_function(backoff.outage_s)  # read at scrape time
        self._beat = time.monotonic()  # the last sign of progress of the consume loop (``liveness``)
        self.stats = Tally()
        # what every event of this worker says about where it came from (the host is not in the event id)
        context = EventContext(log_family=settings.log.family,
                               host=socket.gethostname() if ev.host is None else (ev.host or None),
                               labels=tuple(sorted(ev.labels.items())), input_topic=settings.kafka.input_topic)
        self.publisher = Publisher(settings, self.clients.producer, backoff, self.stats, context)
        self.judging = Judging(settings, self.publisher, backoff, self.stats)
        self.scoring = Scoring(self.judging.run, det.score_queue)
        self.commits = Commits(self.scoring, self.clients.consumer, backoff, settings.kafka.commit_interval_ms,
                               self.stop_event)
        self.house = Housekeeping(settings, self._probe, lambda: f"{self.models.engine.store.prefix}:idle")
        self.models = Models(settings, engine, self.device, self.redis, backoff, self.scoring, self.stats,
                             Path(bundle_dir) if bundle_dir is not None else None, self.house.released)
        self.progress = Progress(self.clients.consumer, det.sweep_interval_s,
                                 group_watermark(self.redis, f"{settings.redis.namespace}:watermark", backoff))
        self.closing = Closing(settings, self.models, self.progress, self.scoring, self.publisher, backoff,
                               self.stop_event.is_set)
        self.intake = Intake(self.models, self.progress, self.publisher, self.scoring, backoff, self.stats)

    @property
    def engine(self) -> Engine:
        return self.models.engine

    @property
    def bundle(self) -> Bundle:
        return self.models.engine.bundle

    @property
    def draining(self) -> list[Engine]:
        return self.models.draining

    @property
    def watermark(self) -> float:
        return self.progress.watermark

    def liveness(self) -> tuple[bool, dict[str, object]]:
        """Alive unless an outage, or a stall of both the consume loop and the scorer, has lasted more than
        ``detector.health_fraction`` of the outage budget (``/health``)."""
        det = self.s.detector
        limit = det.health_fraction * det.outage_budget_s
        outage = self.backoff.outage_s()
        stalled = time.monotonic() - max(self._beat, self.judging.beat)
        ok = outage <= limit and stalled <= limit
        return ok, {"outage_s": round(outage, 1), "stalled_s": round(stalled, 1), "limit_s": limit,
                    "budget_s": det.outage_budget_s}

    def readiness(self) -> tuple[bool, dict[str, object]]:
        """Ready: partitions assigned, model loaded, Redis answering, and no operation stuck in back-off."""
        try:
            redis_ok = bool(self._probe.ping())
        except redis.RedisError:
            redis_ok = False
        broker_ok, assigned = self.progress.broker_ok, self.progress.assigned
        ok = redis_ok and broker_ok and bool(assigned) and self.healthy
        return ok, {"redis": redis_ok, "broker": broker_ok, "partitions": len(assigned),
                    "backing_off": not self.healthy, "model_version": self.bundle.version}

    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: Any) -> None:
            log.info("signal %d: finishing the batch in hand, committing, stopping", signum)
            self.stop_event.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def process(self, records: Sequence[Any]) -> None:
        """A consumed batch goes in (``Intake.take``); the one before it lands first."""
        self.intake.take(records)

    def finish_append(self) -> None:
        """The batch in flight lands (``Intake.land``): nothing of it is published or committed before."""
        self.intake.land()

    def settle(self, wait: bool = False, raise_errors: bool = True, commit: bool = True) -> None:
        """Commit the offsets of the done jobs (``Commits.settle``)."""
        self.commits.settle(wait, raise_errors, commit)

    def run(self, max_idle_s: float | None = None) -> dict[str, int]:
        """Consume until stopped (or, with ``max_idle_s``, until the input stayed empty that long and no session
        is left open: used by the demo and tests)."""
        with ExitStack() as stack:
            stack.callback(self.clients.close)
            stack.callback(self.scoring.close)
            consumer = self._start()
            # An empty poll waits this long, so while the input is quiet, idle sessions are closed this late at
            # worst, or the client's shortest wait if longer (kafka-python's is 1 s: ``BrokerConsumer.min_poll_ms``).
            poll_ms = max(consumer.min_poll_ms, min(1000, int(self.s.detector.sweep_interval_s * 1000)))
            self.house.start(stack)
            try:
                self._loop(consumer, poll_ms, max_idle_s)
            except BaseException:
                self.stop_event.set()  # jobs retrying against an outage give up now
                try:
                    self.finish_append()
                except (OutageError, redis.RedisError):
                    pass  # not stored: not committed, replayed
                self.settle(wait=True, raise_errors=False)  # commit what finished; the rest is replayed
                raise
            self.finish_append()
            self.settle(wait=True)  # the batches in hand finish and commit first
        return self.stats.as_dict()

    def _start(self) -> BrokerConsumer:
        """Bundles first, then the broker; a failure (no Redis or broker within the budget, or a signal meanwhile)
        stops the worker before it consumed anything."""
        try:
            # a switch made while this worker was down: run the bundle pointed to now; drain what earlier runs left
            if not self.models.maybe_reload():
                self.models.warm(self.engine)  # on the scorer thread, while the consumer connects and joins
            self.models.record_active()
            self.models.resume_draining()
            # the broker may come up after us (compose, a rolling restart): connect with back-off within the budget
            consumer = self.backoff.call("broker connect", self.clients.consumer, (BrokerUnavailable,), m.BROKER_ERRORS)
            # the producer connects now, not at the first anomaly: that event would wait for the bootstrap (~1 s)
            self.backoff.call("broker connect", self.clients.producer, (BrokerUnavailable,), m.BROKER_ERRORS)
        except BaseException:
            self.stop_event.set()
            raise
        return consumer

    def _loop(self, consumer: BrokerConsumer, poll_ms: int, max_idle_s: float | None) -> None:
        det = self.s.detector
        idle_since = time.monotonic()
        while not self.stop_event.is_set():
            self._beat = time.monotonic()
            batch = consumer.poll(timeout_ms=poll_ms, max_records=self.s.kafka.max_poll_records)
            records = [r for recs in batch.values() for r in recs]
            if records:
                self.intake.take(records)
                idle_since = time.monotonic()
            else:
                self.intake.land()
            self.commits.settle()
            self.house.refreeze_if_idle(self.scoring.in_flight())
            now = time.monotonic()
            if now - self.models.last_check >= det.reload_interval_s:
                self.models.maybe_reload()
            if self.closing.due(now):  # only once caught up: a backlog may hold the lines that keep a session open
                self.intake.land()  # every line read is in Redis before any session is judged idle
                with m.SWEEP_SECONDS.time():  # a full scorer queue makes it wait too
                    if self.closing.sweep(now):
                        idle_since = now
            if max_idle_s is not None and time.monotonic() - idle_since > max_idle_s and self.models.all_done():
                break

    def close(self) -> None:
        self.clients.close()
