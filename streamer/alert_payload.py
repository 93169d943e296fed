"""What an alert is made of: the fields ``logad alerts forward`` reads of an anomaly event, and the Alertmanager
``postableAlert``s a batch of events becomes.

* **One alert per session, not per window.** Labels are ``alertname=LogAnomaly``, ``service=logad``,
  ``session_id``, ``severity`` (and the event's ``log_family``/``host``/``labels`` when it carries them), never the
  event id, so Alertmanager's fingerprint (the label set) is the session: a second window of the same session
  refreshes the alert already firing instead of paging again. Windows of one session in one batch are merged into
  one alert (the highest severity, the earliest ``startsAt``, the latest window's explanation).
* **Severity** comes from the event's ``severity`` field when it has one, else ``warning``.
* **``endsAt`` counts from the moment of posting**, not from the event's time: a backlog forwarded hours late (the
  forwarder was down, Alertmanager was unreachable) still arrives firing and resolves ``resolve_after`` later.
  ``startsAt`` is the event's ``detected_at``, so the alert still says when the anomaly was found.
* Fields the forwarder does not know are ignored, so events from a newer detector with additive fields are forwarded
  as before.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from streamer.events import unwrap_event

ALERTNAME = "LogAnomaly"
DEFAULT_SEVERITY = "warning"
# highest first: windows of one session in one batch are merged into one alert with the highest severity seen
SEVERITY_ORDER = ("critical", "error", "warning", "info")
MAX_LABEL_CHARS = 256  # a label value from an event is clipped: labels index Alertmanager's in-memory state
MAX_ANNOTATION_CHARS = 4000
# why a record of the anomalies topic is not an event (``read_event``); the forwarder counts them by this reason
INVALID_REASONS = ("not_json", "not_an_event")


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
