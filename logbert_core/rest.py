"""Where normal sessions go quiet: the statistics of the ``premature_end`` rule.

A state is the multiset of template keys of the window that would close a session at that point. Training counts,
for every state a normal session passes through, how often it got there and how often the next line then came a
rest horizon or more later (or never). The bundle stores the counts (``RestStats.to_json``); the judge asks how
strange a state is to stop in (``RestStats.surprise``). Its own module, because both the bundle (which checks what it
loads) and the judge use it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from logbert_core.windows import WindowCursor

State = tuple[tuple[int, int], ...]  # a multiset of template keys: sorted (key, count) pairs


def end_state(keys: Iterable[int]) -> State:
    return tuple(sorted(Counter(keys).items()))


@dataclass(frozen=True)
class RestStats:
    """Where normal sessions go quiet: for each state, how often a normal training session reached it and how often
    it then rested (the next line came ``quiet_s`` or more later, or never).

    The state after ``i`` entries is the multiset of the window that would close the session there
    (``WindowCursor``'s rule), so a closing window of the detector is looked up as it is, whatever the session's
    length. Only closing windows are judged: they are the windows shorter than ``max_len``.
    """

    seen: Mapping[State, tuple[int, int]]
    quiet_s: float
    max_len: int
    stride: int

    @staticmethod
    def visits(entries: Sequence[tuple[float, int]], quiet_s: float, max_len: int, stride: int
               ) -> dict[State, tuple[int, int]]:
        """One session's contribution: state -> (times it reached the state, times it then rested).
        ``entries``: the session's ``(timestamp, key)`` entries in the canonical order."""
        seen: dict[State, tuple[int, int]] = {}
        cursor = WindowCursor()
        counts: Counter[int] = Counter()
        start = 0
        for i, (ts, key) in enumerate(entries):
            cursor.on_append(i + 1, max_len, stride)
            if cursor.start != start:  # the window slid: recount what is left in it
                start = cursor.start
                counts = Counter(k for _, k in entries[start:i + 1])
            else:
                counts[key] += 1
            if i + 1 <= cursor.covered:
                continue  # a session closing here would emit no closing window
            rested = i + 1 == len(entries) or entries[i + 1][0] - ts >= quiet_s
            state = tuple(sorted(counts.items()))
            n, r = seen.get(state, (0, 0))
            seen[state] = (n + 1, r + rested)
        return seen

    @classmethod
    def of(cls, sessions: Iterable[Sequence[tuple[float, int]]], quiet_s: float, max_len: int, stride: int
           ) -> RestStats:
        """``sessions``: each normal session's ``(timestamp, key)`` entries in the canonical order."""
        return cls.merge((cls.visits(e, quiet_s, max_len, stride) for e in sessions), quiet_s, max_len, stride)

    @classmethod
    def merge(cls, visits: Iterable[Mapping[State, tuple[int, int]]], quiet_s: float, max_len: int, stride: int
              ) -> RestStats:
        """The statistics of sessions whose ``visits`` are given."""
        seen: dict[State, list[int]] = {}
        for v in visits:
            for state, (n, r) in v.items():
                cell = seen.setdefault(state, [0, 0])
                cell[0] += n
                cell[1] += r
        return cls({k: (v[0], v[1]) for k, v in seen.items()}, quiet_s, max_len, stride)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON for the bundle: one ``"key:count key:count ...|reached|rested"`` string per state."""
        states = sorted(" ".join(f"{k}:{c}" for k, c in st) + f"|{n}|{r}" for st, (n, r) in self.seen.items())
        return {"quiet_s": self.quiet_s, "max_len": self.max_len, "stride": self.stride, "states": states}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> RestStats:
        seen = {}
        for item in d["states"]:
            state, n, r = item.split("|")
            pairs = (kc.split(":") for kc in state.split())
            seen[tuple((int(k), int(c)) for k, c in pairs)] = (int(n), int(r))
        return cls(seen, float(d["quiet_s"]), int(d["max_len"]), int(d["stride"]))

    def closing(self, keys: Sequence[int]) -> bool:
        return 0 < len(keys) < self.max_len

    def lookup(self, keys: Sequence[int]) -> tuple[int, int]:
        return self.seen.get(end_state(keys), (0, 0))

    def surprise(self, keys: Sequence[int]) -> float:
        """How strange a place this is to stop (higher = stranger): ``-log`` of the upper end of a one-sided 95 %
        Wilson interval of the share of visits followed by quiet. Weak evidence stays near 0: a state never reached
        in training scores 0, one reached once and not rested in scores 0.31, one reached 765 times and never
        rested in scores 5.6."""
        return self.surprise_of(*self.lookup(keys))

    @staticmethod
    def surprise_of(reached: int, rested: int) -> float:
        """``surprise`` of a state reached and rested in that often."""
        return -math.log(wilson_upper(rested, reached))


def wilson_upper(hits: int, n: int, z: float = 1.645) -> float:
    """Upper end of the Wilson score interval for a proportion (``z = 1.645``: one-sided 95 %); 1.0 when ``n == 0``."""
    if n <= 0:
        return 1.0
    p = hits / n
    z2 = z * z
    centre = p + z2 / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return min(1.0, (centre + spread) / (1 + z2 / n))
