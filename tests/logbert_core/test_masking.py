"""Masking: the fixed scoring schedule and random training masks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from logbert_core.masking import IGNORE_INDEX, fixed_mask_copies, random_mask
from logbert_core.vocab import FIRST_KEY, MASK, PAD, UNK


@given(length=st.integers(0, 300), n_copies=st.integers(1, 40))
def test_fixed_schedule_masks_every_position_exactly_once(length: int, n_copies: int) -> None:
    copies = fixed_mask_copies(length, n_copies)
    assert len(copies) == min(n_copies, length)
    assert all(copies), "no copy masks nothing"
    assert sorted(p for c in copies for p in c) == list(range(length))
    assert all(p % n_copies == j for j, c in enumerate(copies) for p in c)
    assert fixed_mask_copies(length, n_copies) == copies


def test_fixed_schedule_example_and_errors() -> None:
    assert fixed_mask_copies(5, 2) == [[0, 2, 4], [1, 3]]
    assert fixed_mask_copies(2, 5) == [[0], [1]]
    assert fixed_mask_copies(0, 3) == []
    with pytest.raises(ValueError, match="n_copies"):
        fixed_mask_copies(4, 0)
    with pytest.raises(ValueError, match="length"):
        fixed_mask_copies(-1, 2)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.lists(st.sampled_from([UNK, 4, 5, 6, 7, 8]), min_size=1, max_size=30), min_size=1, max_size=6),
    mask_ratio=st.floats(0.01, 1.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_random_mask_invariants(rows: list[list[int]], mask_ratio: float, seed: int) -> None:
    T = max(len(r) for r in rows)
    keys = torch.tensor([r + [PAD] * (T - len(r)) for r in rows])
    pad_mask = torch.tensor([[i < len(r) for i in range(T)] for r in rows])
    masked, labels = random_mask(keys, pad_mask, mask_ratio, torch.Generator().manual_seed(seed))
    chosen = labels != IGNORE_INDEX
    assert torch.equal(labels[chosen], keys[chosen])
    assert torch.equal(masked, torch.where(chosen, torch.full_like(keys, MASK), keys))
    assert not (chosen & ~pad_mask).any(), "padding is never masked"
    assert not (chosen & (keys == UNK)).any(), "UNK is never a label"
    for b, r in enumerate(rows):
        n = sum(k >= FIRST_KEY for k in r)  # maskable positions
        got = int(chosen[b].sum())
        if n == 0:
            assert got == 0
        else:  # round(n * ratio), at least one; +-1 for float32 vs float64 rounding at .5
            assert got >= 1, "at least one position per window"
            assert abs(got - min(n, max(1, round(n * mask_ratio)))) <= 1
    again = random_mask(keys, pad_mask, mask_ratio, torch.Generator().manual_seed(seed))
    assert torch.equal(again[0], masked) and torch.equal(again[1], labels)


def test_random_mask_rejects_bad_arguments() -> None:
    keys = torch.tensor([[4, 5, 6]])
    real = torch.ones_like(keys, dtype=torch.bool)
    gen = torch.Generator().manual_seed(0)
    for ratio in (0.0, 1.5):
        with pytest.raises(ValueError, match="mask_ratio"):
            random_mask(keys, real, ratio, gen)
    with pytest.raises(ValueError, match="pad_mask"):
        random_mask(keys, real[:, :2], 0.5, gen)
    with pytest.raises(ValueError, match="keys"):
        random_mask(keys.float(), real, 0.5, gen)  # type: ignore[arg-type]
