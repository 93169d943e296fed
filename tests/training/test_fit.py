"""fit(): learns a synthetic log grammar, early-stops by its rule, and is reproducible from its seed."""

from __future__ import annotations

import random

import pytest
import torch

from logbert_core.model import LogBERT, LogBERTConfig
from logbert_core.scoring import WindowScorer
from logbert_core.vocab import FIRST_KEY
from training.fit import FitResult, TrainConfig, fit, lr_factor

CFG = LogBERTConfig(vocab_size=12, max_len=32, n_layer=2, n_head=4, n_embd=32, dropout=0.1)


def normal_windows(seed: int, n: int) -> list[list[int]]:
    """A session always runs the templates 4, 5, ..., 11 in a loop; lengths vary."""
    rng = random.Random(seed)
    return [[FIRST_KEY + i % 8 for i in range(rng.randint(8, 20))] for _ in range(n)]


def shuffled(windows: list[list[int]], seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [rng.sample(w, len(w)) for w in windows]


def check_early_stopping_rule(result: FitResult, cfg: TrainConfig) -> None:
    losses = [h["val_loss"] for h in result.history]
    assert [h["epoch"] for h in result.history] == list(range(1, len(losses) + 1))
    assert result.best_epoch == losses.index(min(losses)) + 1
    assert len(losses) == min(cfg.epochs, result.best_epoch + cfg.patience)


def test_fit_learns_the_pattern_and_the_scorer_flags_shuffled_windows() -> None:
    cfg = TrainConfig(epochs=10, batch_size=32, lr=3e-3, patience=3, seed=7, progress=False)
    result = fit(normal_windows(0, 400), normal_windows(1, 64), CFG, cfg)
    check_early_stopping_rule(result, cfg)
    losses = [h["val_loss"] for h in result.history]
    assert min(losses) < 0.3 * losses[0]
    assert set(result.history[0]) == {"epoch", "train_loss", "train_mlm", "train_hyper", "val_loss", "lr", "seconds"}
    assert all(t.device.type == "cpu" for t in result.state_dict.values())
    assert result.center.shape == (CFG.n_embd,) and result.seconds > 0

    model = LogBERT(CFG)
    model.load_state_dict(result.state_dict)
    scorer = WindowScorer(model, result.center, top_g=1, mask_copies=4, buckets=(16, 32))
    normal = scorer.score(normal_windows(2, 20))
    odd = scorer.score(shuffled(normal_windows(3, 20), seed=4))
    mean = lambda scores: sum(s.miss_ratio for s in scores) / len(scores)  # noqa: E731
    assert mean(normal) < 0.1 < 0.5 < mean(odd)


@pytest.mark.parametrize("bf16", [True, False])
def test_same_seed_same_weights(bf16: bool) -> None:
    train, val = normal_windows(5, 96), normal_windows(6, 16)
    cfg = TrainConfig(epochs=2, batch_size=16, seed=11, bf16=bf16, progress=False)
    rng_before = torch.get_rng_state()
    a = fit(train, val, CFG, cfg)
    assert torch.equal(torch.get_rng_state(), rng_before), "the caller's RNG is left alone"
    b = fit(train, val, CFG, TrainConfig(**{**cfg.__dict__, "progress": True}))  # the progress bar changes nothing
    c = fit(train, val, CFG, TrainConfig(**{**cfg.__dict__, "seed": 12}))
    assert a.state_dict.keys() == b.state_dict.keys()
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    assert torch.equal(a.center, b.center)
    assert [h["val_loss"] for h in a.history] == [h["val_loss"] for h in b.history]
    assert not all(torch.equal(a.state_dict[k], c.state_dict[k]) for k in a.state_dict)


def test_num_threads_is_restored() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # not the fit's 1, whatever the suite pins (scripts/test.sh: OMP_NUM_THREADS=1)
    try:
        fit(normal_windows(5, 16), normal_windows(6, 4), CFG, TrainConfig(epochs=1, num_threads=1, progress=False))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"patience": 0}, "patience"),
        ({"lr": 0.0}, "lr"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"mask_ratio": 0.0}, "mask_ratio"),
        ({"num_threads": 0}, "num_threads"),
        ({"device": "gpu0"}, "device"),
        ({"warmup_epochs": -1.0}, "warmup_epochs"),
    ],
)
def test_train_config_rejects_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_fit_rejects_bad_windows() -> None:
    cfg = TrainConfig(epochs=1, progress=False)
    good = normal_windows(0, 4)
    with pytest.raises(ValueError, match="train_windows is empty"):
        fit([], good, CFG, cfg)
    with pytest.raises(ValueError, match=r"val_windows\[1\] has 0 keys"):
        fit(good, [[4], []], CFG, cfg)
    with pytest.raises(ValueError, match=r"train_windows\[0\] has 33 keys"):
        fit([[4] * 33], good, CFG, cfg)
    with pytest.raises(ValueError, match=r"train_windows\[1\] holds keys"):
        fit([[4], [4, 12]], good, CFG, cfg)


def test_a_small_data_set_gets_at_least_min_epoch_steps_per_epoch():
    """Five windows make one batch: with one step an epoch, twenty epochs would barely move the weights. An epoch
    passes over the data again until it has taken ``min_epoch_steps`` steps."""
    train, val = normal_windows(5, 16), normal_windows(6, 4)
    one = fit(train, val, CFG, TrainConfig(epochs=1, patience=1, min_epoch_steps=0, seed=3, progress=False))
    many = fit(train, val, CFG, TrainConfig(epochs=1, patience=1, min_epoch_steps=40, seed=3, progress=False))
    assert many.history[0]["val_loss"] < one.history[0]["val_loss"]
    with pytest.raises(ValueError, match="min_epoch_steps"):
        TrainConfig(min_epoch_steps=-1)


def test_the_learning_rate_warms_up_then_falls_as_one_over_the_root_of_the_step():
    assert [lr_factor(t, 4) for t in (1, 2, 4)] == [0.25, 0.5, 1.0]
    assert lr_factor(16, 4) == 0.5 and lr_factor(100, 4) == pytest.approx(0.2)
    assert lr_factor(1, 0) == lr_factor(10_000, 0) == 1.0  # no warm-up: lr throughout


def test_warm_up_spans_the_first_epochs_steps_and_no_warm_up_changes_nothing():
    """With min_epoch_steps 20 and warmup_epochs 1, the rate peaks at the last step of epoch 1 and has fallen by
    sqrt(2) at the end of epoch 2; warmup_epochs 0 trains exactly as a constant rate."""
    train, val = normal_windows(5, 16), normal_windows(6, 4)
    base = dict(epochs=2, patience=5, min_epoch_steps=20, seed=3, progress=False)
    warm = fit(train, val, CFG, TrainConfig(**base, warmup_epochs=1.0))
    assert [h["lr"] for h in warm.history] == pytest.approx([1e-3, 1e-3 / 2 ** 0.5])
    flat = fit(train, val, CFG, TrainConfig(**base))
    assert [h["lr"] for h in flat.history] == [1e-3, 1e-3]
    assert flat.history[0]["val_loss"] != warm.history[0]["val_loss"]
