"""Anomaly events as text a person can act on (``logad tail``, the demo)."""

from __future__ import annotations

import json

from pydantic import ValidationError

from streamer.events import AnomalyEvent, unwrap_event


def render_event(raw: bytes | str, max_lines: int = 12) -> str:
    try:
        ev = AnomalyEvent.model_validate(unwrap_event(json.loads(raw)))
    except ValueError as exc:  # pydantic's ValidationError is one, and so is a value that is not JSON
        if not isinstance(exc, ValidationError):
            return "[unreadable event: not JSON]"
        return f"[unreadable event: {exc.error_count()} schema error(s)]"
    w = ev.window
    head = (f"ANOMALY {ev.session_id}  score {ev.score:.3f} (threshold {ev.threshold:.3f})  "
            f"{w.line_count} lines {w.first_ts:%Y-%m-%d %H:%M:%S}..{w.last_ts:%H:%M:%S}  "
            f"model {ev.model_version}  id {ev.event_id[:12]}")
    out = [head, f"  why: {ev.explanation.summary}"]
    shown = 0
    only_unexpected = bool(ev.explanation.unexpected_positions)
    if not only_unexpected:
        out.append("  the window's templates in order (none unexpected on its own):")
    for p in ev.explanation.templates:
        if only_unexpected and not p.unexpected:
            continue
        if shown == max_lines:
            rest = (len(ev.explanation.unexpected_positions) if only_unexpected else w.line_count) - shown
            out.append(f"  ... {rest} more lines")
            break
        tag = "new " if not p.seen_in_training else ""
        line = f"  #{p.position:<3} {tag}{p.template}"
        if p.expected:
            exp = ", ".join(f"{e.template!r} ({e.probability:.2f})" for e in p.expected[:2])
            line += f"\n        expected: {exp}"
        out.append(line)
        shown += 1
    return "\n".join(out)
