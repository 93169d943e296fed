"""BERT-AE on tiny synthetic lifecycles: it ranks broken lifecycles above normal ones, deterministically."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from logbert_core.vocab import FIRST_KEY, UNK
from training.baselines import BaselineConfig, calibrate_threshold, fit_and_calibrate, make_detector
from training.bert_ae import BertAEConfig, BertAEDetector

OPEN, READ, WRITE, SYNC, CLOSE, DELETE = (FIRST_KEY + i for i in range(6))
CFG = BertAEConfig(max_len=16, stride=8, n_embd=16, n_head=2, epochs=4, seed=7, num_threads=1)


def lifecycle(rng: random.Random) -> list[int]:
    """OPEN, 1-3 READs or WRITE+SYNC pairs, CLOSE, sometimes DELETE: the only shapes normal sessions take."""
    body: list[int] = []
    for _ in range(rng.randint(1, 3)):
        body += [READ] if rng.random() < 0.5 else [WRITE, SYNC]
    return [OPEN, *body, CLOSE] + ([DELETE] if rng.random() < 0.3 else [])


def normals(seed: int, n: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [lifecycle(rng) for _ in range(n)]


def broken(seed: int, n: int) -> list[list[int]]:
    """Lifecycles with one break each: no CLOSE, SYNC before WRITE, DELETE before CLOSE, or an unseen template."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        s = lifecycle(rng)
        kind = i % 4
        if kind == 0:
            s.remove(CLOSE)
        elif kind == 1:
            s = [OPEN, SYNC, WRITE, CLOSE]
        elif kind == 2:
            s = [OPEN, *s[1:-1], DELETE, CLOSE] if s[-1] != DELETE else [OPEN, READ, DELETE, CLOSE]
        else:
            s.insert(1, UNK)
        out.append(s)
    return out


FIT, VAL, CALIB = normals(0, 300), normals(1, 60), normals(2, 200)


@pytest.fixture(scope="module")
def fitted() -> BertAEDetector:
    det = BertAEDetector(CFG)
    det.fit(FIT, VAL)
    return det


def _auc(neg: np.ndarray, pos: np.ndarray) -> float:
    """Probability that a random positive outscores a random negative (ties count half)."""
    gt = (pos[:, None] > neg[None, :]).mean()
    eq = (pos[:, None] == neg[None, :]).mean()
    return float(gt + 0.5 * eq)


def test_broken_lifecycles_score_above_normal_ones(fitted: BertAEDetector) -> None:
    normal_scores = fitted.score(normals(3, 200))
    broken_scores = fitted.score(broken(4, 40))
    assert normal_scores.shape == (200,) and normal_scores.dtype == np.float64
    assert np.isfinite(normal_scores).all() and np.isfinite(broken_scores).all()
    assert _auc(normal_scores, broken_scores) > 0.9
    for kind in range(4):  # every kind of break, not just the easy ones
        assert _auc(normal_scores, broken_scores[kind::4]) > 0.8, kind


def test_same_seed_gives_identical_scores_and_the_caller_rng_is_untouched(fitted: BertAEDetector) -> None:
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    again = BertAEDetector(CFG)
    again.fit(FIT, VAL)
    assert torch.equal(torch.rand(3), before)  # fitting forked the global RNG
    test = normals(3, 50) + broken(4, 12)
    assert np.array_equal(again.score(test), fitted.score(test))
    assert np.array_equal(fitted.score(test), fitted.score(test))  # scoring is not random (no masking)


def test_scores_do_not_depend_on_the_batch(fitted: BertAEDetector) -> None:
    test = normals(5, 30) + broken(6, 8)
    together = fitted.score(test)
    one_by_one = np.array([fitted.score([s])[0] for s in test])
    np.testing.assert_allclose(together, one_by_one, rtol=1e-5, atol=1e-7)


def test_a_long_session_scores_its_worst_window(fitted: BertAEDetector) -> None:
    rng = random.Random(8)
    long_normal = [k for _ in range(6) for k in lifecycle(rng)]  # > max_len keys: several windows
    errors, owner = fitted.window_errors([long_normal, [OPEN, READ, CLOSE]])
    assert (owner == 0).sum() >= 3 and (owner == 1).sum() == 1
    scores = fitted.score([long_normal, [OPEN, READ, CLOSE]])
    assert scores[0] == errors[owner == 0].max() and scores[1] == errors[owner == 1][0]


def test_keys_never_seen_in_training_are_scored_as_unk(fitted: BertAEDetector) -> None:
    with_unk = [OPEN, UNK, READ, CLOSE]
    with_new_key = [OPEN, FIRST_KEY + 50, READ, CLOSE]
    assert fitted.score([with_new_key])[0] == fitted.score([with_unk])[0]


def test_fit_and_calibrate_flags_at_most_the_target_share_of_calibration_sessions() -> None:
    cfg = BaselineConfig(hidden=16, epochs=3, seed=7, num_threads=1)
    c = fit_and_calibrate("bert_ae", cfg, FIT, VAL, CALIB, target_fpr=0.02)
    assert isinstance(c.detector, BertAEDetector) and c.detector.family == "autoencoder"
    calib_scores = c.detector.score(CALIB)
    assert c.threshold == calibrate_threshold(calib_scores, 0.02)
    assert c.flags(calib_scores).mean() <= 0.02
    assert c.flags(c.detector.score(broken(4, 40))).mean() > 0.5
    assert 1 <= len(c.detector.history) <= 3  # the encoder's epochs, for the loss plot
    assert {"epoch", "train_loss", "val_loss"} <= set(c.detector.history[0])


def test_fit_restores_the_thread_count() -> None:
    prev = torch.get_num_threads()
    torch.set_num_threads(2)  # not the detector's 1, whatever the suite pins (scripts/test.sh: OMP_NUM_THREADS=1)
    try:
        det = make_detector("bert_ae", BaselineConfig(hidden=16, epochs=1, num_threads=1))
        det.fit(FIT[:50], VAL[:10])
        det.score(CALIB[:10])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(prev)


@pytest.mark.parametrize("kwargs, field", [({"stride": 20, "max_len": 16}, "stride"), ({"ae_epochs": 0}, "ae_epochs"),
                                           ({"ae_bottleneck": 32, "n_embd": 16}, "ae_bottleneck"),
                                           ({"num_threads": 0}, "num_threads")])
def test_inconsistent_config_names_the_field(kwargs: dict[str, int], field: str) -> None:
    with pytest.raises(ValueError, match=f"BertAEConfig.{field}="):
        BertAEConfig(**kwargs)


def test_empty_inputs_are_refused(fitted: BertAEDetector) -> None:
    with pytest.raises(ValueError, match="fit is empty"):
        BertAEDetector(CFG).fit([], VAL)
    with pytest.raises(ValueError, match="empty session"):
        fitted.score([[OPEN, CLOSE], []])
    assert fitted.score([]).shape == (0,)
