"""The decision rule: exact evidence and the learned model, each explained.

A window is anomalous when any enabled rule fires:

* ``unseen_template``: it holds a template never seen in normal training logs (key ``UNK``);
* ``unseen_template_set``: its set of templates is not contained in the set of any normal training window, i.e. it
  has a co-occurrence of templates never seen in normal logs. A subset of a normal set (a session still running, or
  one that ended early) is not evidence by itself: missing steps are for the model to judge;
* ``rare_template``: its rarest template is rarer in normal training windows than the calibrated rarity threshold
  (``-log`` of the smoothed training frequency, as the ``rare_key`` baseline scores it);
* ``masked_key_misses``: LogBERT's share of missed keys (true key outside the top-g predictions, each position
  masked once on a fixed schedule) exceeds the calibrated threshold;
* ``hypersphere_distance``: the window's DIST embedding lies farther from the centre than ``distance_margin`` times
  the calibrated quantile (it catches sessions that stop early, which masked-key prediction cannot see). The paper
  detects with key misses only; ``use_distance = false`` restores that. The distance is always reported;
* ``premature_end``: a session went quiet in a state where normal sessions keep going. For every state a normal
  training session passed through (the multiset of templates of the window that would close there), ``RestStats``
  counts how often the next line came ``quiet_s`` or more later (or never). A closing window whose state normal
  sessions reached often but almost never rested in is flagged above the calibrated surprise. This is the timing
  half of R2Log's "complete logs": it tells a write pipeline that broke after one replica (flag) from a block that is
  written and simply not deleted yet (no flag), which the distance rule cannot.

Thresholds come from held-out normal windows only (``calibrate``); labels never choose them.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from logbert_core.bundle import Bundle, Thresholds
from logbert_core.config import ScoringSection
from logbert_core.scoring import WindowScore, WindowScorer
from logbert_core.vocab import UNK
from logbert_core.windows import WindowCursor

UNSEEN_TEMPLATE = "unseen_template"
UNSEEN_SET = "unseen_template_set"
RARE_TEMPLATE = "rare_template"
KEY_MISSES = "masked_key_misses"
DISTANCE = "hypersphere_distance"
PREMATURE_END = "premature_end"

State = tuple[tuple[int, int], ...]  # a multiset of template keys: sorted (key, count) pairs


@dataclass(frozen=True, slots=True)
class Verdict:
    anomalous: bool
    reasons: tuple[str, ...]
    score: WindowScore
    rarest: tuple[int, int] | None = None  # (key, occurrences in normal training windows) of the rarest key
    quiet: tuple[int, int] | None = None  # closing windows: (times normal sessions reached this state, rested in it)
    # premature_end would fire, but the quiet after the window was not seen yet: a live detector holds this
    # verdict until the log has gone on for the rest horizon without the session (and drops it if it comes back)
    end_pending: bool = False


@dataclass(frozen=True)
class KeyCounts:
    """How often each template key occurred in the normal training windows."""

    counts: Mapping[int, int]

    @classmethod
    def of(cls, windows: Iterable[Sequence[int]]) -> KeyCounts:
        return cls(dict(Counter(k for w in windows for k in w)))

    def rarest(self, keys: Sequence[int]) -> tuple[int, int]:
        """(key, count) of the rarest key of a window; ties go to the smaller key, so the result is stable."""
        return min(((self.counts.get(k, 0), k) for k in keys))[::-1]

    def rarity(self, keys: Sequence[int]) -> float:
        """``-log`` of the add-one-smoothed training frequency of the window's rarest key (higher = rarer)."""
        total = sum(self.counts.values()) + len(self.counts) + 1
        return -math.log((self.rarest(keys)[1] + 1) / total)


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

    @classmethod
    def of(cls, sessions: Iterable[Sequence[tuple[float, int]]], quiet_s: float, max_len: int, stride: int
           ) -> RestStats:
        """``sessions``: each normal session's ``(timestamp, key)`` entries in the canonical order."""
        seen: dict[State, list[int]] = {}
        for entries in sessions:
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
                cell = seen.setdefault(tuple(sorted(counts.items())), [0, 0])
                cell[0] += 1
                cell[1] += rested
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
        reached, rested = self.lookup(keys)
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


class WindowJudge:
    """Scores windows of template keys in batches and applies the decision rule."""

    def __init__(self, scorer: WindowScorer, thresholds: Thresholds, known_sets: frozenset[frozenset[int]],
                 novel_template: bool = True, novel_template_set: bool = True, use_distance: bool = True,
                 key_counts: KeyCounts | None = None, rest: RestStats | None = None) -> None:
        self.scorer = scorer
        self.thresholds = thresholds
        self.known_sets = known_sets
        self.novel_template = novel_template
        self.novel_template_set = novel_template_set
        self.use_distance = use_distance
        self.key_counts = key_counts  # None, or a bundle without a rarity threshold: the rare rule is off
        self.rest = rest  # None, or a bundle without a premature-end threshold: the rule is off
        # only the maximal sets matter for containment; most normal windows are subsets of a few lifecycles
        self._maximal = [k for k in known_sets if not any(k < other for other in known_sets)]
        self._covered: dict[frozenset[int], bool] = {}

    @classmethod
    def from_bundle(cls, scorer: WindowScorer, bundle: Bundle, scoring: ScoringSection) -> WindowJudge:
        """The bundle's rules, each on or off as ``scoring`` says (the detector, ``serve`` and offline evaluation)."""
        rest = RestStats.from_json(bundle.rest) if scoring.premature_end and bundle.rest else None
        return cls(scorer, bundle.thresholds, bundle.known_sets, scoring.novel_template, scoring.novel_template_set,
                   scoring.use_distance, KeyCounts(bundle.key_counts) if scoring.rare_template else None, rest)

    def covered(self, keys: frozenset[int]) -> bool:
        """Whether some normal training window had all of these templates together."""
        hit = self._covered.get(keys)
        if hit is None:
            hit = self._covered[keys] = any(keys <= k for k in self._maximal)
            if len(self._covered) > 100_000:
                self._covered.clear()
        return hit

    def judge(self, windows: Sequence[Sequence[int]], quiet_seen: Sequence[bool] | None = None) -> list[Verdict]:
        """One verdict per window. ``quiet_seen[i]`` says whether the quiet after window ``i`` was observed: the
        log went on for at least the rest horizon (``RestStats.quiet_s``) after the window's last line with
        nothing more for its session. Where it was not (not yet, or the input itself stopped: the end of a
        replayed file, a shipper outage), the session's silence is no evidence yet: ``premature_end`` is not among
        the reasons, and ``Verdict.end_pending`` says whether it would be once the quiet is seen. The other rules
        apply as usual. ``None``: every closing window's quiet was seen (finished sessions)."""
        if quiet_seen is not None and len(quiet_seen) != len(windows):
            raise ValueError(f"quiet_seen has {len(quiet_seen)} flags for {len(windows)} windows")
        scores = self.scorer.score(windows)
        th = self.thresholds
        counts = self.key_counts if math.isfinite(th.rare) else None
        rest = self.rest if math.isfinite(th.premature) else None
        out = []
        for i, (keys, s) in enumerate(zip(windows, scores)):
            reasons = []
            if self.novel_template and UNK in keys:
                reasons.append(UNSEEN_TEMPLATE)
            if self.novel_template_set and not self.covered(frozenset(keys)):
                reasons.append(UNSEEN_SET)
            rarest = None
            if counts is not None:
                rarest = counts.rarest(keys)
                if counts.rarity(keys) > th.rare:
                    reasons.append(RARE_TEMPLATE)
            if s.miss_ratio > th.miss_ratio:
                reasons.append(KEY_MISSES)
            if self.use_distance and s.distance > th.distance:
                reasons.append(DISTANCE)
            quiet, pending = None, False
            if rest is not None and rest.closing(keys):
                seen = quiet_seen is None or quiet_seen[i]
                fires = rest.surprise(keys) > th.premature
                if seen or fires:
                    quiet = rest.lookup(keys)
                if fires and seen:
                    reasons.append(PREMATURE_END)
                pending = fires and not seen
            out.append(Verdict(bool(reasons), tuple(reasons), s, rarest, quiet, pending))
        return out


def calibrate(scores: Iterable[WindowScore], target_fpr: float, use_distance: bool = True,
              distance_margin: float = 1.0, rarity: Sequence[float] | None = None,
              surprise: Sequence[float] | None = None, surprise_floor: float = 0.0) -> Thresholds:
    """Thresholds from held-out *normal* windows: the calibrated rules in use (key misses, and the distance, rarity
    and premature-end rules when given) may flag at most ``target_fpr`` of them together, the budget split evenly.
    The distance threshold is ``distance_margin`` times its quantile. ``surprise`` holds the ``RestStats.surprise``
    of the closing windows of the calibration sessions (one per session that has one); its threshold is at least
    ``surprise_floor``, since normal sessions end where they rest and their surprises pile up at 0, where a quantile
    alone would flag any state with the faintest evidence.

    The comparison is strict (``>``), so a threshold at the quantile never flags the windows sitting on it.
    """
    items = list(scores)
    if not items:
        raise ValueError("calibration needs at least one held-out normal window")
    rules = 1 + bool(use_distance) + (rarity is not None) + bool(surprise)
    q = 1.0 - target_fpr / rules
    miss = np.array([s.miss_ratio for s in items], dtype=np.float64)
    dist = np.array([s.distance for s in items], dtype=np.float64)
    rare = math.inf
    if rarity is not None:
        if len(rarity) != len(items):
            raise ValueError(f"rarity has {len(rarity)} values for {len(items)} calibration windows")
        rare = float(np.quantile(np.asarray(rarity, dtype=np.float64), q, method="higher"))
    premature = math.inf
    if surprise:
        premature = max(surprise_floor, float(np.quantile(np.asarray(surprise, dtype=np.float64), q, method="higher")))
    return Thresholds(
        miss_ratio=float(np.quantile(miss, q, method="higher")),
        distance=distance_margin * float(np.quantile(dist, q, method="higher")),
        method=f"quantile {q:.5f} (target FPR {target_fpr} over {rules} calibrated rule(s)) of {len(items)} "
               f"held-out normal windows; distance threshold = {distance_margin} x its quantile"
               + (f"; premature-end threshold at least {surprise_floor}" if surprise else ""),
        rare=rare,
        premature=premature,
    )


def calibrate_rules(scores: Sequence[WindowScore], windows: Sequence[Sequence[int]], target_fpr: float, *,
                    use_distance: bool, distance_margin: float, counts: KeyCounts | None, rest: RestStats | None,
                    surprise_floor: float, quiet_seen: Sequence[bool] | None = None) -> Thresholds:
    """``calibrate`` for the rules in use: the rarity of every calibration window (with ``counts``) and the surprise
    of every closing one that the rule judges (with ``rest``: those whose quiet was seen, ``WindowJudge.judge``)
    come from the windows themselves. ``scores`` are the windows' scores."""
    rarity = [counts.rarity(w) for w in windows] if counts is not None else None
    if quiet_seen is not None and len(quiet_seen) != len(windows):
        raise ValueError(f"quiet_seen has {len(quiet_seen)} flags for {len(windows)} calibration windows")
    seen = quiet_seen if quiet_seen is not None else [True] * len(windows)
    surprise = ([rest.surprise(w) for w, q in zip(windows, seen) if q and rest.closing(w)] if rest is not None
                else None)
    return calibrate(scores, target_fpr, use_distance, distance_margin, rarity, surprise, surprise_floor)


@dataclass(frozen=True)
class Calibrated:
    judge: WindowJudge
    thresholds: Thresholds
    known_sets: frozenset[frozenset[int]]
    key_counts: KeyCounts
    calib_scores: list[WindowScore]
    rest: RestStats | None = None


def calibrated_judge(scorer: WindowScorer, fit_windows: Sequence[Sequence[int]],
                     val_windows: Sequence[Sequence[int]], calib_windows: Sequence[Sequence[int]], *,
                     target_fpr: float, novel_template: bool = True, novel_template_set: bool = True,
                     use_distance: bool = True, distance_margin: float = 1.0, rare_template: bool = True,
                     rest: RestStats | None = None, surprise_floor: float = 0.0,
                     calib_seen: Sequence[bool] | None = None) -> Calibrated:
    """The product's decision for a trained model: exact evidence from the normal training windows (fit +
    validation sets, fit key counts, where fit sessions went quiet) and thresholds from the normal calibration
    windows. No labels go in. ``rest`` (timed sessions only) turns the premature-end rule on; ``calib_seen``:
    whether the quiet after each calibration window was seen (None: all)."""
    counts = KeyCounts.of(fit_windows)
    calib_scores = scorer.score(calib_windows)
    th = calibrate_rules(calib_scores, calib_windows, target_fpr, use_distance=use_distance,
                         distance_margin=distance_margin, counts=counts if rare_template else None, rest=rest,
                         surprise_floor=surprise_floor, quiet_seen=calib_seen)
    known = frozenset(frozenset(w) for w in [*fit_windows, *val_windows])
    judge = WindowJudge(scorer, th, known, novel_template, novel_template_set, use_distance, counts, rest)
    return Calibrated(judge, th, known, counts, calib_scores, rest)
