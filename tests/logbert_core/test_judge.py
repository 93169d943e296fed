"""The decision rule on hand-made scores: each rule fires on its own evidence, calibration reads normals only."""

from __future__ import annotations

import math

import pytest

from logbert_core.bundle import Thresholds
from logbert_core.judge import (
    DISTANCE,
    KEY_MISSES,
    RARE_TEMPLATE,
    UNSEEN_SET,
    UNSEEN_TEMPLATE,
    KeyCounts,
    WindowJudge,
    calibrate,
)
from logbert_core.scoring import WindowScore
from logbert_core.vocab import UNK


class FixedScorer:
    """Stands in for WindowScorer: a fixed score per window (the judge's rules are what is tested here)."""

    def __init__(self, by_window: dict[tuple[int, ...], WindowScore]) -> None:
        self.by_window = by_window

    def score(self, windows):
        return [self.by_window[tuple(w)] for w in windows]


def ws(miss: float = 0.0, dist: float = 0.0, n: int = 3) -> WindowScore:
    return WindowScore(n, round(miss * n), miss, dist, ())


def test_each_rule_fires_on_its_own_evidence():
    counts = KeyCounts({4: 100, 5: 100, 6: 100, 7: 1})
    windows = {(4, 5, 6): ws(), (4, 5, UNK): ws(), (4, 6): ws(), (5, 6, 4): ws(), (4, 5, 7): ws(),
               (6, 5): ws(miss=0.5), (5, 4): ws(dist=9.0)}
    known = frozenset({frozenset({4, 5, 6}), frozenset({4, 5, 7})})
    th = Thresholds(miss_ratio=0.2, distance=5.0, method="test", rare=counts.rarity([4]) + 0.1)
    judge = WindowJudge(FixedScorer(windows), th, known, key_counts=counts)
    got = {w: v.reasons for w, v in zip(windows, judge.judge([list(w) for w in windows]))}
    assert got[(4, 5, 6)] == () and got[(4, 6)] == () and got[(5, 6, 4)] == ()  # subsets of a normal set
    assert got[(4, 5, UNK)] == (UNSEEN_TEMPLATE, UNSEEN_SET, RARE_TEMPLATE)
    assert got[(4, 5, 7)] == (RARE_TEMPLATE,)  # known combination, but template 7 is rare
    assert got[(6, 5)] == (KEY_MISSES,) and got[(5, 4)] == (DISTANCE,)
    assert judge.judge([[4, 5, 7]])[0].rarest == (7, 1)


def test_rare_rule_is_off_without_a_rarity_threshold():
    counts = KeyCounts({4: 100, 7: 1})
    th = Thresholds(0.5, 5.0, "old bundle")  # rare defaults to inf
    judge = WindowJudge(FixedScorer({(4, 7): ws()}), th, frozenset({frozenset({4, 7})}), key_counts=counts)
    assert judge.judge([[4, 7]])[0].reasons == ()


def test_calibration_splits_the_fpr_budget_and_uses_quantiles():
    scores = [ws(miss=i / 1000, dist=i / 100) for i in range(1000)]
    rarity = [i / 10 for i in range(1000)]
    th = calibrate(scores, 0.03, use_distance=True, distance_margin=2.0, rarity=rarity)
    assert th.miss_ratio == pytest.approx(0.990) and th.distance == pytest.approx(2 * 9.90)
    assert th.rare == pytest.approx(99.0) and "3 calibrated rule(s)" in th.method
    flagged = sum(s.miss_ratio > th.miss_ratio or s.distance > th.distance or r > th.rare
                  for s, r in zip(scores, rarity))
    assert flagged <= 0.03 * len(scores)
    assert math.isinf(calibrate(scores, 0.03).rare)
    with pytest.raises(ValueError):
        calibrate([], 0.01)
