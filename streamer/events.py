"""The anomaly event: the wire contract with alerting systems (JSON, versioned by ``schema_version``)."""

from __future__ import annotations

import hashlib
import re
import sys
from collections import Counter
from datetime import datetime, timezone
from typing import Literal

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
from logbert_core.vocab import UNK, Vocabulary
from logbert_core.windows import member_key

SCHEMA_VERSION = 1
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
    model_config = ConfigDict(frozen=True, extra="forbid")


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


STORM_SESSION = "logad:storm"
STORM_REASON = "event_rate_limit"


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
                model_version: str) -> AnomalyEvent:
    """An event with a readable explanation: the window's templates in order, the ones the model did not expect
    and what it expected there instead."""
    s = verdict.score
    misses = {m.position: m for m in s.misses}
    positions = []
    for i, mem in enumerate(members):
        key = member_key(mem)
        seen = key != UNK
        miss = misses.get(i)
        text = vocab.text(key) if seen else clip_template(unseen_text.get(mem[7:], "<template never seen in training>"))
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
    if RARE_TEMPLATE in verdict.reasons and verdict.rarest is not None and verdict.rarest[0] != UNK:
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
    )


def build_storm_event(*, prefix: str, minute: int, limit: int, trip_event_id: str,
                      published: list[tuple[int, str]], model_version: str) -> AnomalyEvent:
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
    )
