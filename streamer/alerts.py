"""Anomaly events to Alertmanager: ``logad alerts forward``.

A consumer-group member of the anomalies topic. Each polled batch becomes one ``POST /api/v2/alerts``
(``streamer.alertmanager``) of one alert per session (``streamer.alert_payload`` says what an alert holds: labels,
severity, ``startsAt``/``endsAt``).

* **Commit order: deliver, then commit.** Offsets of a batch are committed only after Alertmanager answered 2xx.
  Network errors, timeouts, 5xx, 429 and misconfiguration answers (401, 403, 404) are retried with capped,
  jittered back-off for as long as it takes, committing nothing: a record is never committed past before its alert
  was delivered. A stop (SIGTERM) during back-off exits without committing; the records are read again on restart.
  A replay only re-sends alerts Alertmanager already has, which it merges by label set.
* **Bad input does not block.** A record that is not an event (not JSON, no ``session_id``, ...) is logged with its
  origin (topic, partition, offset) and counted in ``logad_alerts_invalid_records_total{reason}``, then committed
  with its batch. A single alert Alertmanager refuses as malformed (400/422) is isolated by posting the batch one
  alert at a time, counted in ``logad_alerts_rejected_total`` and logged; the rest go through.

Security settings (SASL/SSL) come from the logad config and ``LOGAD_KAFKA__*`` variables, as for the detector.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

from prometheus_client import Counter, Gauge

from streamer.alert_payload import INVALID_REASONS, EventView, read_event, to_alerts
from streamer.alertmanager import AlertsError, AlertSink, DeliveryError

log = logging.getLogger("logad.alerts")

# -- metrics (bounded labels only) ---------------------------------------------------------------------------------
EVENTS_READ = Counter("logad_alerts_events_total", "Anomaly events read from the anomalies topic")
INVALID_RECORDS = Counter("logad_alerts_invalid_records_total",
                          "Records of the anomalies topic that are not events, logged and skipped, by reason",
                          ["reason"])
ALERTS_SENT = Counter("logad_alerts_sent_total", "Alerts delivered to Alertmanager (one per session per batch)")
POST_ERRORS = Counter("logad_alerts_post_errors_total",
                      "Failed POSTs to Alertmanager, retried with back-off while nothing is committed")
ALERTS_REJECTED = Counter("logad_alerts_rejected_total",
                          "Alerts Alertmanager refused as malformed (400/422), logged and skipped")
COMMIT_ERRORS = Counter("logad_alerts_commit_errors_total",
                        "Offset commits that failed after delivery (a rebalance): the batch is read again")
LAST_DELIVERY = Gauge("logad_alerts_last_delivery_timestamp_seconds",
                      "Unix time of the last successful POST to Alertmanager")
UNDELIVERED_SINCE = Gauge("logad_alerts_undelivered_since_timestamp_seconds",
                          "Unix time since which the batch in hand has failed to reach Alertmanager; 0 when none")
for _reason in INVALID_REASONS:
    INVALID_RECORDS.labels(_reason)


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a record came from, for log lines about it."""

    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(frozen=True, slots=True)
class Backoff:
    """Full-jitter exponential back-off: attempt n waits uniform(0, min(max_s, base_s * 2**n))."""

    base_s: float = 0.5
    max_s: float = 30.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0, min(self.max_s, self.base_s * 2 ** min(attempt, 30)))


# -- the consumer loop ---------------------------------------------------------------------------------------------
class Consumer(Protocol):
    """The part of ``kafka.KafkaConsumer`` the forwarder uses."""

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> Mapping[Any, Sequence[Any]]: ...

    def commit(self, offsets: Any = None) -> None: ...

    def assignment(self) -> set[Any]: ...

    def close(self, autocommit: bool = True) -> None: ...


@dataclass
class ForwardStats:
    records: int = 0
    events: int = 0
    invalid: int = 0
    alerts: int = 0
    rejected: int = 0
    batches_committed: int = 0


class Forwarder:
    """Poll -> events -> alerts (one per session) -> deliver (retrying) -> commit. See the module docstring."""

    def __init__(self, consumer: Consumer, sink: AlertSink, *, resolve_after: timedelta = timedelta(hours=1),
                 generator_url: str = "", backoff: Backoff = Backoff(), poll_timeout_ms: int = 1000,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
                 stop_event: threading.Event | None = None, rng: random.Random | None = None,
                 commit_offsets: Callable[[dict[tuple[str, int], int]], Any] | None = None) -> None:
        self.consumer, self.sink = consumer, sink
        self.resolve_after, self.generator_url, self.backoff = resolve_after, generator_url, backoff
        self.poll_timeout_ms, self.clock = poll_timeout_ms, clock
        self.stop_event = stop_event or threading.Event()
        self.rng = rng or random.Random()
        self._commit_offsets = commit_offsets or self._kafka_commit
        self.stats = ForwardStats()
        self.retrying = False

    # readiness for /ready: a partition to read and nothing stuck in back-off
    def readiness(self) -> tuple[bool, dict[str, object]]:
        try:
            assigned = len(self.consumer.assignment())
        except Exception:  # noqa: BLE001 (a closed consumer: not ready, whatever the client raises)
            assigned = 0
        ok = assigned > 0 and not self.retrying
        return ok, {"partitions": assigned, "retrying": self.retrying, **self.stats.__dict__}

    def run(self, max_events: int | None = None, idle_exit_s: float | None = None) -> ForwardStats:
        """Forward until stopped, or until ``max_events`` events were forwarded, or (``idle_exit_s``) until the
        topic stayed empty that long (tests, backfills)."""
        last = time.monotonic()
        while not self.stop_event.is_set():
            if max_events is not None and self.stats.events >= max_events:
                break
            batch = self.consumer.poll(timeout_ms=self.poll_timeout_ms)
            records = [rec for recs in batch.values() for rec in recs]
            if not records:
                if idle_exit_s is not None and time.monotonic() - last > idle_exit_s:
                    break
                continue
            last = time.monotonic()
            if not self.handle(records):
                break  # stopped while retrying: nothing committed
        return self.stats

    def handle(self, records: Sequence[Any]) -> bool:
        """Deliver one polled batch and commit it; False when a stop came before delivery (nothing committed)."""
        events: list[EventView] = []
        origins: dict[str, list[Origin]] = {}
        for rec in records:
            origin = Origin(rec.topic, rec.partition, rec.offset)
            got = read_event(rec.value)
            if isinstance(got, str):
                INVALID_RECORDS.labels(got).inc()
                self.stats.invalid += 1
                log.warning("skipping record %s: %s (%d bytes: %r)", origin, got.replace("_", " "),
                            len(rec.value or b""), (rec.value or b"")[:120])
                continue
            events.append(got)
            origins.setdefault(got.session_id, []).append(origin)
        self.stats.records += len(records)
        if events:
            alerts = to_alerts(events, now=self.clock(), resolve_after=self.resolve_after,
                               generator_url=self.generator_url)
            if not self._deliver(alerts, origins):
                return False
            EVENTS_READ.inc(len(events))
            self.stats.events += len(events)
            log.info("%d event(s) delivered as %d alert(s)", len(events), len(alerts))
        self._commit(records)
        return True

    def _deliver(self, alerts: list[dict[str, Any]], origins: Mapping[str, list[Origin]]) -> bool:
        try:
            if not self._post_retrying(alerts):
                return False
            self._sent(len(alerts))
            return True
        except DeliveryError:  # rejected as malformed: find the alert(s) at fault, deliver the others
            pass
        for alert in alerts:
            try:
                if not self._post_retrying([alert]):
                    return False
                self._sent(1)
            except DeliveryError as exc:
                sid = alert["labels"]["session_id"]
                ALERTS_REJECTED.inc()
                self.stats.rejected += 1
                log.error("Alertmanager refused the alert of session %s (records %s): %s; skipped", sid,
                          ", ".join(map(str, origins.get(sid, []))), exc)
        return True

    def _sent(self, n: int) -> None:
        ALERTS_SENT.inc(n)
        self.stats.alerts += n
        LAST_DELIVERY.set(time.time())

    def _post_retrying(self, alerts: Sequence[Mapping[str, Any]]) -> bool:
        """Post until delivered (True) or stopped (False); raises ``DeliveryError`` only for a rejection."""
        attempt = 0
        since = None
        try:
            while True:
                try:
                    self.sink.post(alerts)
                    return True
                except DeliveryError as exc:
                    if exc.rejected:
                        raise
                    POST_ERRORS.inc()
                    if since is None:
                        since = time.time()
                        UNDELIVERED_SINCE.set(since)
                    self.retrying = True
                    delay = self.backoff.delay(attempt, self.rng)
                    attempt += 1
                    log.warning("%d alert(s) not delivered (%s); retry %d in %.1f s, nothing committed meanwhile",
                                len(alerts), exc, attempt, delay)
                if self.stop_event.wait(delay):
                    log.warning("stopping with %d alert(s) undelivered: their records stay uncommitted and are "
                                "read again on restart", len(alerts))
                    return False
        finally:
            self.retrying = False
            UNDELIVERED_SINCE.set(0)

    def _commit(self, records: Sequence[Any]) -> None:
        nxt: dict[tuple[str, int], int] = {}
        for rec in records:
            key = (rec.topic, rec.partition)
            nxt[key] = max(nxt.get(key, 0), rec.offset + 1)
        try:
            self._commit_offsets(nxt)
            self.stats.batches_committed += 1
        except Exception as exc:  # noqa: BLE001 (any client error: the batch is read again, alerts merge by labels)
            COMMIT_ERRORS.inc()
            log.warning("commit after delivery failed (%s): the batch will be read and delivered again", exc)

    def _kafka_commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        self.consumer.commit({TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()})


def make_kafka_consumer(bootstrap: str, topic: str, group_id: str, *, start_at: str = "earliest",
                        session_timeout_ms: int = 10_000, client_kwargs: Mapping[str, Any] | None = None,
                        max_poll_records: int = 500) -> Any:
    """A kafka-python group consumer of ``topic`` with manual commits; ``AlertsError`` if the broker is
    unreachable. ``max_poll_interval_ms`` is long because delivery retries block the poll loop: past it the group
    rebalances, the commit fails and the batch is read again, which only re-sends alerts."""
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    from streamer.kafka_io import heartbeat_interval_ms

    try:
        consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False,
                                 auto_offset_reset=start_at, max_poll_records=max_poll_records,
                                 session_timeout_ms=session_timeout_ms,
                                 heartbeat_interval_ms=heartbeat_interval_ms(session_timeout_ms),
                                 max_poll_interval_ms=15 * 60 * 1000, **dict(client_kwargs or {}))
    except KafkaError as exc:
        raise AlertsError(f"cannot reach the broker at {bootstrap}: {exc}") from exc
    consumer.subscribe([topic])
    return consumer
