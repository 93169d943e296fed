"""Sessions and the windows the model scores.

A session is the set of its entries, ordered canonically by ``(timestamp, member)``, where the member string is
``"<key:06d>:<line digest>"``. The order does not depend on arrival order, partition or worker, and an identical raw
line is one entry however often it is delivered (Kafka is at-least-once). Redis keeps a session as a sorted set
with exactly this score and member, so its order is the same (equal scores sort by member bytes there too).

Windowing, in arrival order of entries (the detector) or all at once (training), both through ``WindowCursor``:

* while the session holds ``max_len`` entries past ``start``: emit ``[start, start + max_len)`` and slide
  ``start`` by ``stride``;
* when the session closes (idle timeout, or the end of a training file): emit ``[start, n)`` if it holds entries
  that no window has covered yet.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from logbert_core.parsing import line_digest

KEY_WIDTH = 6  # a member is "<key, KEY_WIDTH digits>:<line digest>"; the Lua scripts split it at the colon


def member(key: int, line: str) -> str:
    """The sorted-set member of one entry: key first (ties in time sort by key), then the line digest."""
    return f"{key:0{KEY_WIDTH}d}:{line_digest(line)}"


def member_key(m: str) -> int:
    """The template key of a member."""
    return int(m[:KEY_WIDTH])


def member_digest(m: str) -> str:
    """The line digest of a member: what the append script files an unseen line's text under."""
    return m[KEY_WIDTH + 1:]


@dataclass(frozen=True, slots=True)
class WindowSpan:
    """Half-open range of entry positions ``[lo, hi)`` within a session."""

    lo: int
    hi: int


@dataclass(slots=True)
class WindowCursor:
    """Where the next window of a session starts, and how far emitted windows have covered it."""

    start: int = 0
    covered: int = 0

    def on_append(self, n: int, max_len: int, stride: int) -> list[WindowSpan]:
        """Windows that became full now that the session holds ``n`` entries."""
        if not 0 < stride <= max_len:
            raise ValueError(f"stride must be in (0, max_len={max_len}], got {stride}")
        out = []
        while n - self.start >= max_len:
            out.append(WindowSpan(self.start, self.start + max_len))
            self.covered = self.start + max_len
            self.start += stride
        return out

    def on_close(self, n: int) -> list[WindowSpan]:
        """The last window when a session of ``n`` entries closes, if it has entries no window covered."""
        return [WindowSpan(self.start, n)] if n > self.covered else []


def session_windows(n: int, max_len: int, stride: int) -> list[WindowSpan]:
    """All windows of a finished session of ``n`` entries (training and evaluation)."""
    cursor = WindowCursor()
    return cursor.on_append(n, max_len, stride) + cursor.on_close(n)


def live_windows(stamps: Sequence[float], max_len: int, stride: int, quiet_s: float) -> list[WindowSpan]:
    """The windows a live detector cuts from a session whose entries (canonical order) carry these timestamps: full
    windows as they fill, and a closing window wherever the next entry came ``quiet_s`` or more later (the idle rule
    closed the session; a later line reopens it, and its next closing window again starts at the cursor), and at
    the end. A replay faster than the log's own pace cuts only ``session_windows``; these are a superset of kinds."""
    cursor = WindowCursor()
    out: list[WindowSpan] = []
    n = len(stamps)
    for i in range(n):
        out += cursor.on_append(i + 1, max_len, stride)
        quiet = i + 1 == n or stamps[i + 1] - stamps[i] >= quiet_s
        if quiet and i + 1 > cursor.covered:
            out.append(WindowSpan(cursor.start, i + 1))
            cursor.covered = i + 1
    return out


def canonical_entries(entries: Iterable[tuple[float, int, str]]) -> list[tuple[float, str]]:
    """``(timestamp, key, raw line)`` -> de-duplicated ``(timestamp, member)`` in canonical order.

    A repeated member keeps its first timestamp, as ``ZADD NX`` does.
    """
    first: dict[str, float] = {}
    for ts, key, line in entries:
        m = member(key, line)
        if m not in first:
            first[m] = ts
    return sorted(((ts, m) for m, ts in first.items()), key=lambda e: (e[0], e[1]))


def window_keys(members: Sequence[str]) -> list[int]:
    return [member_key(m) for m in members]
