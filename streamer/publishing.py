"""What leaves the worker, and in what order: anomaly events and dead letters to the broker, then the windows
acknowledged in Redis (``Publisher.publish``). A batch's offsets are committed only after this (``commits``).

Every record is built so that a replay produces the same bytes: events as built when their window was judged, dead
letters from the input record and its position. ``detector.max_events_per_minute`` is decided in Redis, for every
worker alike (``rate_limit``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from logbert_core.config import Settings
from streamer import metrics as m
from streamer.backoff import Backoff
from streamer.broker import BrokerProducer, Message
from streamer.engine import Engine
from streamer.errors import BrokerUnavailable
from streamer.events import EventContext, build_storm_event, frame_event
from streamer.lines import Parsed
from streamer.tally import Tally
from streamer.windows import CutWindow

log = logging.getLogger("streamer.worker")  # the worker's parts log under its name, as before the split
SESSION_CAP = "session_cap"  # dead-letter reason of a line that would have opened a session past session.max_open


def ms_of(stamp: str) -> int:
    """Milliseconds since the epoch of an event's ISO 8601 ``detected_at``."""
    return round(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1000)


class Publisher:
    """Builds the worker's output records and publishes them; ``producer`` gives the (lazily made) producer."""

    def __init__(self, settings: Settings, producer: Callable[[], BrokerProducer],
                 backoff: Backoff, stats: Tally, context: EventContext) -> None:
        self.s = settings
        self._producer = producer
        self.backoff = backoff
        self.stats = stats
        self.context = context  # what every event of this worker says about where it came from
        self._cap_warned = False  # a session refused at session.max_open was logged once

    def publish(self, engine: Engine, windows: Sequence[CutWindow], messages: list[Any],
                held: Sequence[tuple[CutWindow, str]] = (), ends: Sequence[tuple[str, str]] = (),
                end_events: int | None = None) -> None:
        """Publish ``messages`` (events, dead letters, confirmed held events) and flush, hold the ``premature_end``
        verdicts whose quiet is not seen yet, ack the windows in Redis, then forget the confirmed held ``ends``
        (``end_events`` of them published; the others were past the rate limit)."""
        if messages:
            with m.FLUSH_SECONDS.time():  # back-off included: what the events waited for
                self.backoff.call("publish", lambda: self.deliver(messages), (BrokerUnavailable,), m.BROKER_ERRORS)
        if held:
            n = self.backoff.redis("redis hold", lambda: engine.store.verdicts.hold_ends(held))
            m.PREMATURE_HELD.inc(n)
        if windows:
            ids = [w.id for w in windows]
            self.backoff.redis("redis ack", lambda: engine.store.verdicts.ack(ids))
        if ends:
            self.backoff.redis("redis drop", lambda: engine.store.verdicts.drop_ends(ends))
            published = len(ends) if end_events is None else end_events  # the others: past the rate limit
            self.stats.add("anomalies", published)
            m.ANOMALIES.inc(published)
            m.PREMATURE_CONFIRMED.inc(len(ends))

    def deliver(self, messages: list[Any]) -> None:
        """Send all messages and wait until the broker has every one; raise if any failed (the caller retries
        the whole set: consumers see at-least-once, with identical duplicates)."""
        self._producer().deliver(messages, timeout_s=self.s.kafka_request_timeout_s())

    def event_message(self, session_id: str, event_json: str) -> tuple[str, bytes, bytes, Any]:
        """The output record of an event, framed as ``event.format`` says (a replay frames it the same)."""
        ev = self.s.event
        value, headers = frame_event(event_json, ev.format, ev.source or f"urn:logad:{self.s.log.family}")
        return (self.s.kafka.output_topic, session_id.encode(), value, headers)

    def dead_letter(self, rec: Message, reason: str, detail: str) -> tuple[str, bytes | None, bytes, list]:
        m.LINES_REJECTED.labels(reason).inc()
        self.stats.add("rejected")
        headers = [("logad.source.topic", rec.topic.encode()), ("logad.source.partition", str(rec.partition).encode()),
                   ("logad.source.offset", str(rec.offset).encode()), ("logad.reason", reason.encode()),
                   ("logad.error", detail[:500].encode("utf-8", "replace"))]
        value = rec.value if rec.value is not None else b""
        cap = self.s.kafka.dlq_max_value_bytes
        if len(value) > cap:  # over the broker's record limit it could never be published: the worker would stall
            headers += [("logad.truncated", b"true"), ("logad.original_bytes", str(len(value)).encode())]
            value = value[:cap]
        return (self.s.kafka.dlq, rec.key, value, headers)

    def cap_dead_letters(self, parsed: Parsed, refused: Sequence[int]) -> list[Any]:
        """Dead letters for the lines whose sessions were refused (``session.max_open`` sessions open): a key flood
        costs dead letters, not the sessions that are open. A line naming several sessions is sent once."""
        m.SESSIONS_REFUSED.inc(len(refused))
        self.stats.add("refused", len(refused))
        by_record: dict[int, tuple[Any, list[str]]] = {}
        for i in refused:
            rec = parsed.origins[i]
            by_record.setdefault(id(rec), (rec, []))[1].append(parsed.entries[i].session_id)
        cap = self.s.session.max_open
        if not self._cap_warned:
            self._cap_warned = True
            log.warning("%d session(s) open, the cap (session.max_open); lines that would open more go to the "
                        "dead-letter topic as %s (logad_sessions_refused_total; logged once)", cap, SESSION_CAP)
        return [self.dead_letter(rec, SESSION_CAP, f"{cap} sessions open (session.max_open); not opened: "
                                 + ", ".join(sids[:10]) + (f" and {len(sids) - 10} more" if len(sids) > 10 else ""))
                for rec, sids in by_record.values()]

    def rate_limit(self, engine: Engine, events: Sequence[tuple[str, int, str]]) -> tuple[list[bool], list[Any]]:
        """Which of these events ``(event id, cut_ms, reasons)`` to publish under ``detector.max_events_per_minute``
        (decided in Redis for every worker, the same on a replay), and the storm summaries to publish with them.
        The others are counted, never published; their windows are acknowledged and committed as usual."""
        limit = self.s.detector.max_events_per_minute
        ttl = int(self.s.replay_horizon_s()) + 120
        got = self.backoff.redis("redis rate", lambda: engine.store.events.rate(events, limit, ttl))
        keep = [g == 1 for g in got]
        summaries = []
        for (event_id, cut_ms, _), g in zip(events, got):
            if g != 2:
                continue
            minute = cut_ms // 60_000
            trip, published = self.backoff.redis("redis rate", lambda: engine.store.events.rate_minute(minute))
            ev = build_storm_event(prefix=engine.store.prefix, minute=minute, limit=limit,
                                   trip_event_id=trip or event_id, published=published,
                                   model_version=engine.bundle.version, context=self.context)
            log.warning("anomaly event storm: %d events published for the minute from %s, the limit "
                        "(detector.max_events_per_minute); one summary event %s stands for the rest, which are "
                        "counted in logad_anomalies_suppressed_total", len(published),
                        time.strftime("%H:%M", time.gmtime(minute * 60)), ev.event_id)
            summaries.append(self.event_message(ev.session_id, ev.model_dump_json()))
        suppressed = len(keep) - sum(keep)
        if suppressed:
            m.ANOMALIES_SUPPRESSED.inc(suppressed)
            self.stats.add("suppressed", suppressed)
        if summaries:
            m.STORMS.inc(len(summaries))
            self.stats.add("storms", len(summaries))
        return keep, summaries

    def rated(self, engine: Engine, due: Sequence[tuple[str, str]]) -> tuple[list[bool], list[Any]]:
        """``rate_limit`` for held events ``(session, event JSON)`` as they were built when judged."""
        docs = [json.loads(ev) for _, ev in due]
        return self.rate_limit(engine, [(d["event_id"], ms_of(d["detected_at"]), ",".join(d["explanation"]["reasons"]))
                                        for d in docs])
