"""The anomaly event: the wire contract with alerting systems (JSON, versioned by ``schema_version``).

How the contract evolves: a field is only ever added, never renamed, retyped or removed, and consumers ignore the
fields they do not know (the model and the schema accept them: ``additionalProperties`` is never false). An
additive change keeps ``schema_version``; a change that an older consumer could misread (a field removed, renamed,
retyped or given another meaning; a required field added) bumps it. The producer is held to exactly what it
declares by a test, not by rejecting additions on the consumer side.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from logbert_core.judge import (
    DISTANCE,
    KEY_MISSES,
    PREMATURE_END,
    RARE_TEMPLATE,
    UNSEEN_SET,
    UNSEEN_TEMPLATE,
    Verdict,
)
from logbert_core.vocab import Vocabulary
from logbert_core.windows import member_digest, member_key

SCHEMA_VERSION: Final = 1  # bumped only by a change an older consumer could misread (module docstring)
SCHEMA_ID = "urn:logad:schema:anomaly-event"
# A template the model never saw is shown as its masked line, and a line may be up to log.max_line_bytes long: the
# event shows this much of it, so that an event stays far below the broker's record limit (a window of 64 such
# lines is then ~64 kB, not 64 MB: too large to publish, it would be retried until the worker gave up).
MAX_TEMPLATE_CHARS = 1000


_CLIPPED = re.compile(r"\.\.\. \[\d+ more characters\]\Z")


def clip_template(text: str) -> str:
    """``text``, cut to ``MAX_TEMPLATE_CHARS`` with a note of how much was left out; a text clipped before (the
    worker clips what it stores, events clip what they show) is returned as it is."""
    if len(text) <= MAX_TEMPLATE_CHARS:
        return text
    note = _CLIPPED.search(text, MAX_TEMPLATE_CHARS)
    if note is not None and note.start() == MAX_TEMPLATE_CHARS:
        return text
    return f"{text[:MAX_TEMPLATE_CHARS]}... [{len(text) - MAX_TEMPLATE_CHARS} more characters]"


class _Wire(BaseModel):
    # "allow": an event from a newer detector, with fields this version does not know, still parses (and a relay
    # that re-serialises it keeps them); the schema says so with ``additionalProperties: true``
    model_config = ConfigDict(frozen=True, extra="allow")


class Expected(_Wire):
    key: int
    template: str
    probability: float


class Position(_Wire):
    position: int  # 0-based position in the window
    key: int  # model key (2 = a template never seen in training)
    template: str  # the template, or the masked line for a template never seen in training
    unexpected: bool  # the model did not have this key among its top-g predictions, or never saw the template
    seen_in_training: bool
    expected: list[Expected] = Field(default_factory=list)  # what the model expected here (unexpected positions)


class WindowExtent(_Wire):
    first_ts: datetime
    last_ts: datetime
    line_count: int
    start_index: int  # position of the window's first entry within the session
    cause: Literal["full", "idle"]  # cut because the window was full (it slides) or the session went idle


class Explanation(_Wire):
    summary: str
    reasons: list[str]
    unexpected_positions: list[int]
    templates: list[Position]


class ReasonCount(_Wire):
    reason: str
    count: int


class StormSummary(_Wire):
    """Present only on the storm summary: anomaly events came faster than ``detector.max_events_per_minute``."""

    limit_per_minute: int
    minute_start: datetime  # the minute (of the windows' cut times) in which the limit was reached
    published: int  # events published in that minute before the limit (the limit)
    top_reasons: list[ReasonCount]  # the commonest reasons among them
    first_suppressed_event_id: str  # the event this summary stands in for; later ones are counted, not published


class OffsetRange(_Wire):
    partition: int
    first_offset: int  # the first and last offsets of the window's records in this partition: records between
    last_offset: int  # them that are not the window's are other sessions' lines
    lines: int  # how many of the window's lines came from this partition


class InputCoordinates(_Wire):
    """Where the window's lines were read: the records behind them, per partition of the input topic."""

    topic: str
    ranges: list[OffsetRange]
    # lines whose record is not known (stored by a detector without ``event.input_offsets``, or before it)
    unknown_lines: int = Field(default=0, exclude_if=lambda v: v == 0)


Severity = Literal["critical", "warning"]


class AnomalyEvent(_Wire):
    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: str
    session_id: str
    score: float = Field(description="share of the window's keys the model did not expect (masked-key misses)")
    threshold: float
    distance: float = Field(description="squared distance of the window embedding to the normal hypersphere centre")
    distance_threshold: float
    model_version: str
    detected_at: datetime
    window: WindowExtent
    explanation: Explanation
    # absent on every event but a storm summary (session_id STORM_SESSION), so events keep their bytes
    storm: StormSummary | None = Field(default=None, exclude_if=lambda v: v is None)
    # a string, not an enum, in the schema: a level added later must not fail an older consumer's validation
    severity: str = Field(default="warning", description="critical: a template never seen in training, "
                          "corroborated by another rule that does not follow from it (masked_key_misses, "
                          "hypersphere_distance, premature_end), or a storm summary; warning: any other anomaly. "
                          "Treat a value you do not know as warning")
    log_family: str = Field(default="", description="log.family of the detector's config (hdfs, bgl, ...)")
    host: str | None = Field(default=None, exclude_if=lambda v: v is None,
                             description="event.host, or the hostname of the detector that built the event; a "
                                         "duplicate built by another replica differs in this field only")
    labels: dict[str, str] = Field(default_factory=dict, exclude_if=lambda v: not v,
                                   description="event.labels of the detector's config")
    input: InputCoordinates | None = Field(default=None, exclude_if=lambda v: v is None,
                                           description="the input records of the window's lines")


STORM_SESSION = "logad:storm"
STORM_REASON = "event_rate_limit"
# a storm summary stands for events that were not published: someone should look, whatever their reasons were
STORM_SEVERITY: Severity = "critical"
# rules that follow from a template never seen in training (a set holding it is never a normal set, and it is the
# rarest template there is): no corroboration of it
_IMPLIED_BY_UNSEEN = frozenset({UNSEEN_TEMPLATE, UNSEEN_SET, RARE_TEMPLATE})


def severity_of(reasons: tuple[str, ...] | list[str]) -> Severity:
    """``critical`` when the window holds a template never seen in training (exact evidence: no normal history
    had it) and another rule that does not follow from that fires too (the model missed keys, the window is far
    from the normal centre, or the session stopped where normal ones go on); ``warning`` for every other anomaly.
    A function of the reasons alone, so a replayed window gets the same severity."""
    if UNSEEN_TEMPLATE in reasons and any(r not in _IMPLIED_BY_UNSEEN for r in reasons):
        return "critical"
    return "warning"


@dataclass(frozen=True, slots=True)
class EventContext:
    """What an event says about where it came from, beyond the window: the same for every event of a detector."""

    log_family: str = ""
    host: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    input_topic: str = ""


def input_coordinates(topic: str, origins: Sequence[str | None]) -> InputCoordinates | None:
    """``origins``: per line of the window, ``"<partition>:<offset>"`` of its record, or None where not known."""
    spans: dict[int, list[int]] = {}
    unknown = 0
    for o in origins:
        if not o:
            unknown += 1
            continue
        part, _, off = o.partition(":")
        p, n = int(part), int(off)
        span = spans.get(p)
        if span is None:
            spans[p] = [n, n, 1]
        else:
            span[0], span[1], span[2] = min(span[0], n), max(span[1], n), span[2] + 1
    if not spans:
        return None
    return InputCoordinates(topic=topic, ranges=[OffsetRange(partition=p, first_offset=a, last_offset=b, lines=c)
                                                 for p, (a, b, c) in sorted(spans.items())], unknown_lines=unknown)


_REASON_TEXT = {
    UNSEEN_TEMPLATE: "a template never seen in normal training logs",
    UNSEEN_SET: "a set of templates no normal training window had (a new combination, or a lifecycle that stopped "
                "part-way)",
    RARE_TEMPLATE: "a template rare in normal training logs",
    KEY_MISSES: "more unexpected lines than the calibrated threshold",
    DISTANCE: "a window far from the normal hypersphere",
    PREMATURE_END: "a session that went quiet where normal sessions keep going",
}


def build_event(*, event_id: str, session_id: str, members: tuple[str, ...], lo: int, cause: Literal["full", "idle"],
                first_ts: float, last_ts: float, cut_ms: int, verdict: Verdict, vocab: Vocabulary,
                unseen_text: dict[str, str], miss_threshold: float, distance_threshold: float,
                model_version: str, context: EventContext = EventContext(),
                origins: Sequence[str | None] = ()) -> AnomalyEvent:
    """An event with a readable explanation: the window's templates in order, the ones the model did not expect
    and what it expected there instead. ``origins``: the input record of each line (``input_coordinates``)."""
    s = verdict.score
    misses = {m.position: m for m in s.misses}
    positions = []
    for i, mem in enumerate(members):
        key = member_key(mem)
        seen = not vocab.unseen(key)
        miss = misses.get(i)
        text = vocab.text(key) if seen else clip_template(unseen_text.get(member_digest(mem),
                                                                          "<template never seen in training>"))
        expected = [Expected(key=c.key, template=vocab.text(c.key), probability=round(c.prob, 4))
                    for c in miss.candidates] if miss is not None else []
        positions.append(Position(position=i, key=key, template=text, unexpected=miss is not None or not seen,
                                  seen_in_training=seen, expected=expected))
    unexpected = [p.position for p in positions if p.unexpected]
    novel = [p.template for p in positions if not p.seen_in_training]
    parts = [f"{len(unexpected)} of {len(members)} lines unexpected (score {s.miss_ratio:.3f} vs threshold "
             f"{miss_threshold:.3f})"]
    if novel:
        parts.append(f"{len(novel)} line(s) with a template never seen in training, first: {novel[0]!r}")
    first_miss = next((p for p in positions if p.unexpected and p.seen_in_training and p.expected), None)
    if first_miss is not None:
        parts.append(f"at position {first_miss.position} saw {first_miss.template!r}, expected "
                     f"{first_miss.expected[0].template!r}")
    if RARE_TEMPLATE in verdict.reasons and verdict.rarest is not None and not vocab.unseen(verdict.rarest[0]):
        key, count = verdict.rarest
        parts.append(f"{vocab.text(key)!r} occurred only {count} time(s) in normal training windows")
    if PREMATURE_END in verdict.reasons and verdict.quiet is not None:
        reached, rested = verdict.quiet
        last = positions[-1].template if positions else ""
        parts.append(f"the session stopped after {len(members)} lines, last {last!r}: normal training sessions "
                     f"reached this point {reached} time(s) and went quiet there {rested} time(s)")
    if DISTANCE in verdict.reasons:
        parts.append(f"window embedding at distance {s.distance:.2f} from the normal centre (threshold "
                     f"{distance_threshold:.2f}); templates in order: "
                     + " -> ".join(repr(p.template) for p in positions[:8]) + (" ..." if len(positions) > 8 else ""))
    parts.append("flagged for " + "; ".join(_REASON_TEXT.get(r, r) for r in verdict.reasons))
    return AnomalyEvent(
        event_id=event_id, session_id=session_id, score=round(s.miss_ratio, 6), threshold=miss_threshold,
        distance=round(s.distance, 6), distance_threshold=min(distance_threshold, sys.float_info.max),
        model_version=model_version,
        detected_at=datetime.fromtimestamp(cut_ms / 1000, tz=timezone.utc),
        window=WindowExtent(first_ts=datetime.fromtimestamp(first_ts, tz=timezone.utc),
                            last_ts=datetime.fromtimestamp(last_ts, tz=timezone.utc), line_count=len(members),
                            start_index=lo, cause=cause),
        explanation=Explanation(summary="; ".join(parts), reasons=list(verdict.reasons),
                                unexpected_positions=unexpected, templates=positions),
        severity=severity_of(verdict.reasons), log_family=context.log_family, host=context.host,
        labels=dict(context.labels),
        input=input_coordinates(context.input_topic, origins) if origins and context.input_topic else None,
    )


def build_storm_event(*, prefix: str, minute: int, limit: int, trip_event_id: str,
                      published: list[tuple[int, str]], model_version: str,
                      context: EventContext = EventContext()) -> AnomalyEvent:
    """The one event that stands for a storm: ``limit`` events were published for the windows cut in ``minute``
    and more came. ``published``: their ``(cut_ms, comma-separated reasons)``. Everything in it derives from the
    minute's fixed record in Redis, so a second publication (a replay) is the same event under the same id."""
    reasons = Counter(r for _, rs in published for r in rs.split(",") if r)
    top = [ReasonCount(reason=r, count=c) for r, c in sorted(reasons.items(), key=lambda rc: (-rc[1], rc[0]))[:5]]
    stamps = [cut for cut, _ in published] or [minute * 60_000]
    first, last = min(stamps) / 1000, max(stamps) / 1000
    start = datetime.fromtimestamp(minute * 60, tz=timezone.utc)
    shown = ", ".join(f"{rc.reason} {rc.count}" for rc in top) or "none"
    summary = (f"anomaly event storm: {len(published)} events published for windows cut in the minute from "
               f"{start:%Y-%m-%d %H:%M} UTC (limit detector.max_events_per_minute = {limit}), further events of the "
               f"storm are counted in logad_anomalies_suppressed_total, not published; top reasons: {shown}")
    return AnomalyEvent(
        event_id=hashlib.sha1(f"storm|{prefix}|{minute}".encode()).hexdigest(), session_id=STORM_SESSION, score=0.0,
        threshold=0.0, distance=0.0, distance_threshold=0.0, model_version=model_version,
        detected_at=datetime.fromtimestamp(last, tz=timezone.utc),
        window=WindowExtent(first_ts=datetime.fromtimestamp(first, tz=timezone.utc),
                            last_ts=datetime.fromtimestamp(last, tz=timezone.utc), line_count=len(published),
                            start_index=0, cause="full"),
        explanation=Explanation(summary=summary, reasons=[STORM_REASON], unexpected_positions=[], templates=[]),
        storm=StormSummary(limit_per_minute=limit, minute_start=start, published=len(published), top_reasons=top,
                           first_suppressed_event_id=trip_event_id),
        severity=STORM_SEVERITY, log_family=context.log_family, host=context.host, labels=dict(context.labels),
    )


# -- framing on the output topic -------------------------------------------------------------------------------------
CE_SPECVERSION = "1.0"
CE_TYPE = f"org.logad.anomaly.v{SCHEMA_VERSION}"
CE_STRUCTURED = "application/cloudevents+json"
EVENT_FORMATS = ("plain", "cloudevents-binary", "cloudevents-structured")


def frame_event(event_json: str, fmt: str, source: str) -> tuple[bytes, list[tuple[str, bytes]] | None]:
    """The record value and headers of an event as ``event.format`` says (module ``EVENT_FORMATS``).

    CloudEvents 1.0, Kafka protocol binding: ``id`` is the event id, ``time`` its ``detected_at`` and ``subject``
    its session, so a replayed event is framed byte for byte the same. Binary mode keeps the event as the value and
    puts the attributes in ``ce_*`` headers; structured mode wraps the event as the ``data`` of a JSON envelope."""
    if fmt == "plain":
        return event_json.encode(), None
    doc = json.loads(event_json)
    attrs = {"specversion": CE_SPECVERSION, "id": doc["event_id"], "source": source, "type": CE_TYPE,
             "subject": doc["session_id"], "time": doc["detected_at"], "dataschema": SCHEMA_ID}
    if fmt == "cloudevents-binary":
        headers = [(f"ce_{k}", str(v).encode()) for k, v in attrs.items()]
        return event_json.encode(), headers + [("content-type", b"application/json")]
    if fmt == "cloudevents-structured":
        envelope = '{' + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in attrs.items())
        envelope += ', "datacontenttype": "application/json", "data": ' + event_json + '}'
        return envelope.encode(), [("content-type", CE_STRUCTURED.encode())]
    raise ValueError(f"event.format must be one of {', '.join(EVENT_FORMATS)}, got {fmt!r}")


def unwrap_event(data: Any) -> Any:
    """A decoded record value with a structured CloudEvents envelope around the event: the event (its ``data``);
    anything else as it is. Consumers call this first, so that they read every ``event.format``."""
    if isinstance(data, dict) and "specversion" in data and isinstance(data.get("data"), dict):
        return data["data"]
    return data
