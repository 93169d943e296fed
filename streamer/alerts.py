"""Anomaly events to Alertmanager: ``logad alerts forward``.

A consumer-group member of the anomalies topic. Each polled batch becomes one ``POST /api/v2/alerts``:

* **One alert per session, not per window.** Labels are ``alertname=LogAnomaly``, ``service=logad``,
  ``session_id``, ``severity`` (and the event's ``log_family``/``host``/``labels`` when it carries them), never the
  event id, so Alertmanager's fingerprint (the label set) is the session: a second window of the same session
  refreshes the alert already firing instead of paging again. Windows of one session in one batch are merged into
  one alert (the highest severity, the earliest ``startsAt``, the latest window's explanation).
* **Severity** comes from the event's ``severity`` field when it has one, else ``warning``.
* **``endsAt`` counts from the moment of posting**, not from the event's time: a backlog forwarded hours late (the
  forwarder was down, Alertmanager was unreachable) still arrives firing and resolves ``resolve_after`` later.
  ``startsAt`` is the event's ``detected_at``, so the alert still says when the anomaly was found.
* **Commit order: deliver, then commit.** Offsets of a batch are committed only after Alertmanager answered 2xx.
  Network errors, timeouts, 5xx, 429 and misconfiguration answers (401, 403, 404) are retried with capped,
  jittered back-off for as long as it takes, committing nothing: a record is never committed past before its alert
  was delivered. A stop (SIGTERM) during back-off exits without committing; the records are read again on restart.
  A replay only re-sends alerts Alertmanager already has, which it merges by label set.
* **Bad input does not block.** A record that is not an event (not JSON, no ``session_id``, ...) is logged with its
  origin (topic, partition, offset) and counted in ``logad_alerts_invalid_records_total{reason}``, then committed
  with its batch. Fields the forwarder does not know are ignored, so events from a newer detector with additive
  fields are forwarded as before. A single alert Alertmanager refuses as malformed (400/422) is isolated by posting
  the batch one alert at a time, counted in ``logad_alerts_rejected_total`` and logged; the rest go through.

Security settings (SASL/SSL) come from the logad config and ``LOGAD_KAFKA__*`` variables, as for the detector.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

from prometheus_client import Counter, Gauge
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from streamer.errors import LogadError
from streamer.events import unwrap_event

log = logging.getLogger("logad.alerts")

ALERTNAME = "LogAnomaly"
DEFAULT_SEVERITY = "warning"
# highest first: windows of one session in one batch are merged into one alert with the highest severity seen
SEVERITY_ORDER = ("critical", "error", "warning", "info")
API_PATH = "/api/v2/alerts"
MAX_LABEL_CHARS = 256  # a label value from an event is clipped: labels index Alertmanager's in-memory state
MAX_ANNOTATION_CHARS = 4000

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
INVALID_REASONS = ("not_json", "not_an_event")
for _reason in INVALID_REASONS:
    INVALID_RECORDS.labels(_reason)


class AlertsError(LogadError):
    """The forwarder cannot start or deliver: the message names what and how to fix it."""


# -- what the forwarder reads of an event --------------------------------------------------------------------------
class _Lenient(BaseModel):
    # Unknown fields are ignored on purpose: an additive change to the event contract must not stop alerts.
    model_config = ConfigDict(extra="ignore", frozen=True)


class _WindowView(_Lenient):
    first_ts: datetime
    last_ts: datetime
    line_count: int


class _ExplanationView(_Lenient):
    summary: str = ""
    reasons: list[str] = Field(default_factory=list)


class EventView(_Lenient):
    """The fields of an anomaly event (``streamer.events.AnomalyEvent``) that an alert is made of; the others,
    known or not, are ignored. Optional fields are read when a detector version publishes them."""

    event_id: str = Field(min_length=1)
    session_id: str = Field(min_length=1)
    detected_at: datetime
    score: float | None = None
    threshold: float | None = None
    model_version: str = ""
    severity: str | None = None
    log_family: str | None = None
    host: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    window: _WindowView | None = None
    explanation: _ExplanationView | None = None


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a record came from, for log lines about it."""

    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


def read_event(value: bytes | None) -> EventView | str:
    """The event in a record value, or the reason (one of ``INVALID_REASONS``) it is not one."""
    try:
        data = json.loads(value or b"")
    except ValueError:
        return "not_json"
    data = unwrap_event(data)  # event.format = "cloudevents-structured": the event is the envelope's data
    if not isinstance(data, dict):
        return "not_an_event"
    try:
        return EventView.model_validate(data)
    except ValidationError:
        return "not_an_event"


# -- events -> alerts ----------------------------------------------------------------------------------------------
def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _iso(ts: datetime) -> str:
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    return ts.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _severity(event: EventView) -> str:
    sev = (event.severity or "").strip().lower()
    return _clip(sev, MAX_LABEL_CHARS) if sev else DEFAULT_SEVERITY


def _rank(severity: str) -> int:
    return SEVERITY_ORDER.index(severity) if severity in SEVERITY_ORDER else len(SEVERITY_ORDER)


def _labels(event: EventView, severity: str) -> dict[str, str]:
    labels = {k: _clip(str(v), MAX_LABEL_CHARS) for k, v in event.labels.items() if k and v}
    if event.log_family:
        labels["log_family"] = _clip(event.log_family, MAX_LABEL_CHARS)
    if event.host:
        labels["host"] = _clip(event.host, MAX_LABEL_CHARS)
    # ours last: an event's own labels never change which alert (session) it is
    labels.update(alertname=ALERTNAME, service="logad", session_id=_clip(event.session_id, MAX_LABEL_CHARS),
                  severity=severity)
    return labels


def _annotations(event: EventView, windows: int) -> dict[str, str]:
    ex = event.explanation
    score = (f" (score {event.score:.3f}, threshold {event.threshold:.3f})"
             if event.score is not None and event.threshold is not None else "")
    out = {"summary": f"anomalous log session {event.session_id}{score}",
           "description": _clip(ex.summary if ex else "", MAX_ANNOTATION_CHARS),
           "reasons": ", ".join(ex.reasons) if ex else "",
           "event_id": event.event_id,
           "model_version": event.model_version}
    if event.window is not None:
        w = event.window
        out["window"] = f"{w.line_count} lines {_iso(w.first_ts)} .. {_iso(w.last_ts)}"
    if windows > 1:
        out["windows"] = f"{windows} anomalous windows of this session in one batch; the latest is described"
    return {k: v for k, v in out.items() if v}


def to_alerts(events: Iterable[EventView], *, now: datetime, resolve_after: timedelta,
              generator_url: str = "") -> list[dict[str, Any]]:
    """Alertmanager ``postableAlert``s for a batch of events: one per session (merged as the module says).

    ``now`` is the time of posting: ``endsAt = now + resolve_after`` whatever the events' times, and a
    ``startsAt`` in the future (a skewed clock) is brought back to ``now``.
    """
    by_session: dict[str, list[EventView]] = {}
    for ev in events:
        by_session.setdefault(ev.session_id, []).append(ev)
    alerts = []
    for evs in by_session.values():
        severity = min((_severity(e) for e in evs), key=_rank)
        latest = max(evs, key=lambda e: e.detected_at)
        starts = min(min(e.detected_at for e in evs), now)
        alert: dict[str, Any] = {"labels": _labels(latest, severity), "annotations": _annotations(latest, len(evs)),
                                 "startsAt": _iso(starts), "endsAt": _iso(now + resolve_after)}
        if generator_url:
            alert["generatorURL"] = generator_url
        alerts.append(alert)
    return alerts


# -- delivery ------------------------------------------------------------------------------------------------------
class DeliveryError(AlertsError):
    """A POST that did not succeed; ``rejected`` when the receiver refused the payload as malformed."""

    def __init__(self, message: str, *, rejected: bool = False) -> None:
        super().__init__(message)
        self.rejected = rejected


class AlertSink(Protocol):
    def post(self, alerts: Sequence[Mapping[str, Any]]) -> None: ...


def alerts_url(base: str) -> str:
    """The v2 alerts endpoint of an Alertmanager given by its base URL (``http://alertmanager:9093``) or by the
    endpoint itself."""
    parts = urllib.parse.urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AlertsError(f"--alertmanager must be an http(s) URL such as http://alertmanager:9093, got {base!r}")
    path = parts.path.rstrip("/")
    if not path.endswith(API_PATH):
        path += API_PATH
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


class Alertmanager:
    """POSTs alerts to ``/api/v2/alerts``. Basic auth from the URL's user info (``https://user:pass@host``)."""

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self.url = alerts_url(url)
        parts = urllib.parse.urlsplit(self.url)
        self._headers = {"Content-Type": "application/json"}
        if parts.username is not None:
            creds = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
            self._headers["Authorization"] = "Basic " + base64.b64encode(creds.encode()).decode()
            netloc = parts.netloc.rsplit("@", 1)[1]
            self.url = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
        self.timeout_s = timeout_s

    def __repr__(self) -> str:  # never the credentials
        return f"Alertmanager({self.url!r})"

    def post(self, alerts: Sequence[Mapping[str, Any]]) -> None:
        req = urllib.request.Request(self.url, data=json.dumps(list(alerts)).encode(), method="POST",
                                     headers=self._headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                resp.read()
        except urllib.error.HTTPError as exc:
            body = exc.read()[:300].decode("utf-8", "replace").strip()
            raise DeliveryError(f"{self.url} answered {exc.code}: {body}", rejected=exc.code in (400, 422)) from exc
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
            raise DeliveryError(f"{self.url} unreachable: {exc}") from exc


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
