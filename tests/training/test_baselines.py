"""Baselines on tiny synthetic sessions: shapes, the calibration rule, and thresholds that never see labels."""

from __future__ import annotations

import random

import numpy as np
import pytest

from logbert_core.vocab import FIRST_KEY, UNK
from training.baselines import (
    BASELINES,
    BaselineConfig,
    calibrate_threshold,
    count_matrix,
    fit_and_calibrate,
    make_detector,
    next_key_samples,
)
from training.protocols import EvalData, Split, baseline_results, binary_metrics

A, B, C, D, END = (FIRST_KEY + i for i in range(5))
RARE = FIRST_KEY + 5  # seen once in the fit split
CFG = BaselineConfig(top_g=1, history=4, hidden=16, layers=1, epochs=3, batch_size=64, patience=2, seed=3,
                     n_estimators=20, num_threads=1)


def normal(rng: random.Random) -> list[int]:
    """A lifecycle: A B C D repeated 2-4 times, then END."""
    return [A, B, C, D] * rng.randint(2, 4) + [END]


def sessions(seed: int, n: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [normal(rng) for _ in range(n)]


def anomalies(seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [
        normal(rng)[:-1] + [UNK, END],  # a template never seen
        [A, C, B, D, A, C, B, D, END],  # wrong order, same templates and counts
        [A, B, C, D] * 12 + [END],  # far too long
        normal(rng) + [RARE],  # a rare template
    ]


FIT = sessions(0, 300) + [[A, B, C, D, RARE, END]]
VAL, CALIB = sessions(1, 40), sessions(2, 200)


@pytest.mark.parametrize("name", BASELINES)
def test_every_baseline_scores_one_finite_number_per_session(name: str) -> None:
    c = fit_and_calibrate(name, CFG, FIT, VAL, CALIB, target_fpr=0.01)
    test = sessions(4, 30) + anomalies(5)
    scores = c.detector.score(test)
    assert scores.shape == (len(test),) and scores.dtype == np.float64
    assert np.isfinite(scores).all()
    calib_flags = c.flags(c.detector.score(CALIB))
    assert calib_flags.mean() <= 0.01  # the calibration rule: at most target_fpr of the held-out normals
    assert c.threshold == calibrate_threshold(c.detector.score(CALIB), 0.01)


@pytest.mark.parametrize("name, anomaly", [("unseen_template", 0), ("deeplog", 1), ("loganomaly", 1),
                                           ("length", 2), ("rare_key", 3), ("unseen_set_exact", 0),
                                           ("unseen_count_vector", 2), ("pca", 3)])
def test_baselines_flag_the_anomaly_they_are_built_for(name: str, anomaly: int) -> None:
    c = fit_and_calibrate(name, CFG, FIT, VAL, CALIB, target_fpr=0.01)
    flags = c.flags(c.detector.score(anomalies(5)))
    assert flags[anomaly]


def test_calibration_is_a_strict_quantile_of_normal_scores() -> None:
    scores = np.arange(1000, dtype=np.float64)
    th = calibrate_threshold(scores, 0.01)
    assert th == 990.0 and (scores > th).mean() <= 0.01
    with pytest.raises(ValueError, match="at least one"):
        calibrate_threshold([], 0.01)


def test_next_key_samples_pad_the_history_and_map_unknown_keys() -> None:
    x, y, owner = next_key_samples([[A, B, 99], [C]], history=2, vocab_size=FIRST_KEY + 4)
    assert x.tolist() == [[0, 0], [0, A], [A, B], [0, 0]]
    assert y.tolist() == [A, B, UNK, C] and owner.tolist() == [0, 0, 0, 1]


def test_count_matrix_counts_unknown_keys_as_unk() -> None:
    X = count_matrix([[A, A, 99]], vocab_size=FIRST_KEY + 2)
    assert X.shape == (1, FIRST_KEY + 2) and X[0, A] == 2 and X[0, UNK] == 1


def test_unknown_baseline_is_named() -> None:
    with pytest.raises(ValueError, match="unknown baseline 'nope'"):
        make_detector("nope", CFG)


def _data(labels: dict[str, bool]) -> EvalData:
    seqs = {f"s{i}": s for i, s in enumerate(FIT + VAL + CALIB + sessions(6, 20) + anomalies(7))}
    ids = list(seqs)
    n_fit, n_val, n_cal = len(FIT), len(VAL), len(CALIB)
    split = Split(ids[:n_fit], ids[n_fit : n_fit + n_val], ids[n_fit + n_val : n_fit + n_val + n_cal],
                  ids[n_fit + n_val + n_cal :], [], rule="synthetic")
    return EvalData("synthetic", seqs, {k: [v] for k, v in seqs.items()}, labels, True, split)


def test_thresholds_and_scores_do_not_depend_on_labels() -> None:
    truth = _data({})
    test_ids = truth.split.test
    labels = {sid: i >= 20 for i, sid in enumerate(test_ids)}
    shuffled_values = list(labels.values())
    random.Random(0).shuffle(shuffled_values)
    a = baseline_results(_data(labels), CFG, BASELINES, 0.01)
    b = baseline_results(_data(dict(zip(labels, shuffled_values))), CFG, BASELINES, 0.01)
    for ra, rb in zip(a, b, strict=True):
        assert ra.threshold == rb.threshold, ra.name
        assert np.array_equal(ra.test_scores, rb.test_scores), ra.name
        assert np.array_equal(ra.test_flags, rb.test_flags), ra.name


def test_binary_metrics() -> None:
    m = binary_metrics(np.array([1, 1, 0, 0], bool), np.array([1, 0, 1, 0], bool), np.array([0.9, 0.8, 0.1, 0.0]))
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (1, 1, 1, 1)
    assert m["precision"] == m["recall"] == m["f1"] == 0.5 and m["fpr"] == 0.5
    assert m["auc_pr"] == pytest.approx(0.8333, abs=1e-4)
    assert binary_metrics(np.zeros(3, bool), np.zeros(3, bool), np.zeros(3))["auc_pr"] is None
