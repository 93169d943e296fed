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
  detects with key misses only; ``use_distance = false`` restores that. The distance is always reported.

Thresholds come from held-out normal windows only (``calibrate``); labels never choose them.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from logbert_core.bundle import Thresholds
from logbert_core.scoring import WindowScore, WindowScorer
from logbert_core.vocab import UNK

UNSEEN_TEMPLATE = "unseen_template"
UNSEEN_SET = "unseen_template_set"
RARE_TEMPLATE = "rare_template"
KEY_MISSES = "masked_key_misses"
DISTANCE = "hypersphere_distance"


@dataclass(frozen=True, slots=True)
class Verdict:
    anomalous: bool
    reasons: tuple[str, ...]
    score: WindowScore
    rarest: tuple[int, int] | None = None  # (key, occurrences in normal training windows) of the rarest key


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


class WindowJudge:
    """Scores windows of template keys in batches and applies the decision rule."""

    def __init__(self, scorer: WindowScorer, thresholds: Thresholds, known_sets: frozenset[frozenset[int]],
                 novel_template: bool = True, novel_template_set: bool = True, use_distance: bool = True,
                 key_counts: KeyCounts | None = None) -> None:
        self.scorer = scorer
        self.thresholds = thresholds
        self.known_sets = known_sets
        self.novel_template = novel_template
        self.novel_template_set = novel_template_set
        self.use_distance = use_distance
        self.key_counts = key_counts  # None, or a bundle without a rarity threshold: the rare rule is off
        # only the maximal sets matter for containment; most normal windows are subsets of a few lifecycles
        self._maximal = [k for k in known_sets if not any(k < other for other in known_sets)]
        self._covered: dict[frozenset[int], bool] = {}

    def covered(self, keys: frozenset[int]) -> bool:
        """Whether some normal training window had all of these templates together."""
        hit = self._covered.get(keys)
        if hit is None:
            hit = self._covered[keys] = any(keys <= k for k in self._maximal)
            if len(self._covered) > 100_000:
                self._covered.clear()
        return hit

    def judge(self, windows: Sequence[Sequence[int]]) -> list[Verdict]:
        scores = self.scorer.score(windows)
        th = self.thresholds
        counts = self.key_counts if math.isfinite(th.rare) else None
        out = []
        for keys, s in zip(windows, scores):
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
            out.append(Verdict(bool(reasons), tuple(reasons), s, rarest))
        return out


def calibrate(scores: Iterable[WindowScore], target_fpr: float, use_distance: bool = True,
              distance_margin: float = 1.0, rarity: Sequence[float] | None = None) -> Thresholds:
    """Thresholds from held-out *normal* windows: the calibrated rules in use (key misses, and the distance and
    rarity rules when given) may flag at most ``target_fpr`` of them together, the budget split evenly. The distance
    threshold is ``distance_margin`` times its quantile.

    The comparison is strict (``>``), so a threshold at the quantile never flags the windows sitting on it.
    """
    items = list(scores)
    if not items:
        raise ValueError("calibration needs at least one held-out normal window")
    rules = 1 + bool(use_distance) + (rarity is not None)
    q = 1.0 - target_fpr / rules
    miss = np.array([s.miss_ratio for s in items], dtype=np.float64)
    dist = np.array([s.distance for s in items], dtype=np.float64)
    rare = math.inf
    if rarity is not None:
        if len(rarity) != len(items):
            raise ValueError(f"rarity has {len(rarity)} values for {len(items)} calibration windows")
        rare = float(np.quantile(np.asarray(rarity, dtype=np.float64), q, method="higher"))
    return Thresholds(
        miss_ratio=float(np.quantile(miss, q, method="higher")),
        distance=distance_margin * float(np.quantile(dist, q, method="higher")),
        method=f"quantile {q:.5f} (target FPR {target_fpr} over {rules} calibrated rule(s)) of {len(items)} "
               f"held-out normal windows; distance threshold = {distance_margin} x its quantile",
        rare=rare,
    )


@dataclass(frozen=True)
class Calibrated:
    judge: WindowJudge
    thresholds: Thresholds
    known_sets: frozenset[frozenset[int]]
    key_counts: KeyCounts
    calib_scores: list[WindowScore]


def calibrated_judge(scorer: WindowScorer, fit_windows: Sequence[Sequence[int]],
                     val_windows: Sequence[Sequence[int]], calib_windows: Sequence[Sequence[int]], *,
                     target_fpr: float, novel_template: bool = True, novel_template_set: bool = True,
                     use_distance: bool = True, distance_margin: float = 1.0, rare_template: bool = True
                     ) -> Calibrated:
    """The product's decision for a trained model: exact evidence from the normal training windows (fit +
    validation sets, fit key counts) and thresholds from the normal calibration windows. No labels go in."""
    counts = KeyCounts.of(fit_windows)
    calib_scores = scorer.score(calib_windows)
    rarity = [counts.rarity(w) for w in calib_windows] if rare_template else None
    th = calibrate(calib_scores, target_fpr, use_distance, distance_margin, rarity)
    known = frozenset(frozenset(w) for w in [*fit_windows, *val_windows])
    judge = WindowJudge(scorer, th, known, novel_template, novel_template_set, use_distance, counts)
    return Calibrated(judge, th, known, counts, calib_scores)
