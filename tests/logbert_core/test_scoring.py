"""WindowScorer: the paper's miss rule, UNK handling, input checks, and batch invariance (bit-identical scores)."""

from __future__ import annotations

import functools
import random
import threading

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from logbert_core.masking import fixed_mask_copies
from logbert_core.model import LogBERT, LogBERTConfig
from logbert_core.scoring import Candidate, WindowScore, WindowScorer, compute_center
from logbert_core.vocab import FIRST_KEY, MASK, UNK

CFG = LogBERTConfig(vocab_size=12, max_len=32, n_layer=2, n_head=4, n_embd=32, dropout=0.1)
N_REAL = CFG.vocab_size - FIRST_KEY


@functools.cache
def model_and_center(cfg: LogBERTConfig = CFG) -> tuple[LogBERT, torch.Tensor]:
    """A random model with weights spread out, so predictions are far from uniform (no near-ties)."""
    torch.manual_seed(0)
    model = LogBERT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    rng = random.Random(0)
    windows = [[rng.randrange(FIRST_KEY, cfg.vocab_size) for _ in range(rng.randint(1, 20))] for _ in range(20)]
    return model, compute_center(model, windows, "cpu")


def scorer(**kwargs: object) -> WindowScorer:
    model, center = model_and_center()
    args = {"top_g": 3, "mask_copies": 3, "buckets": (8, 16, 32)} | kwargs
    return WindowScorer(model, center, **args)  # type: ignore[arg-type]


def random_windows(seed: int, n: int, max_len: int = 32) -> list[list[int]]:
    rng = random.Random(seed)
    keys = [UNK, *range(FIRST_KEY, CFG.vocab_size)]
    return [[rng.choice(keys) for _ in range(rng.randint(1, max_len))] for _ in range(n)]


def test_matches_a_plain_reference_of_the_rule() -> None:
    """Misses, candidates and distance against a direct loop over the fixed masked copies."""
    model, center = model_and_center()
    sc = scorer(top_g=2, mask_copies=4, n_candidates=3)
    for window in random_windows(1, 12):
        got = sc.score([window])[0]
        keys = torch.tensor([window])
        real = torch.ones_like(keys, dtype=torch.bool)
        missed: dict[int, list[int]] = {}
        with torch.no_grad():
            for copy in fixed_mask_copies(len(window), 4):
                masked = keys.clone()
                masked[0, copy] = MASK
                logits = model(masked, real)[0][0]  # (T, V)
                logits[:, :FIRST_KEY] = float("-inf")
                for p in copy:
                    top = logits[p].topk(2).indices.tolist()
                    if window[p] == UNK or window[p] not in top:
                        missed[p] = logits[p].softmax(-1).topk(3).indices.tolist()
            distance = float((model(keys, real)[1][0] - center).square().sum())
        assert got.length == len(window)
        assert [m.position for m in got.misses] == sorted(missed)
        assert got.missed == len(missed) and got.miss_ratio == len(missed) / len(window)
        for m in got.misses:
            assert m.actual == window[m.position]
            assert [c.key for c in m.candidates] == missed[m.position]
            assert all(c.key >= FIRST_KEY for c in m.candidates)
            assert [c.prob for c in m.candidates] == sorted((c.prob for c in m.candidates), reverse=True)
        assert got.distance == pytest.approx(distance, rel=1e-5)


def test_unk_is_always_missed_with_candidates() -> None:
    sc = scorer(top_g=N_REAL, n_candidates=2)  # every real key is within top-g: only UNK can be missed
    window = [4, UNK, 6, 7, UNK, 9, 10]
    (score,) = sc.score([window])
    assert score.missed == 2 and score.miss_ratio == 2 / 7
    assert [(m.position, m.actual) for m in score.misses] == [(1, UNK), (4, UNK)]
    for m in score.misses:
        assert len(m.candidates) == 2 and all(isinstance(c, Candidate) and c.key >= FIRST_KEY for c in m.candidates)
        assert 0.0 < m.candidates[1].prob <= m.candidates[0].prob <= 1.0


def test_same_window_same_score_alone_mixed_and_twice() -> None:
    sc = scorer()
    windows = random_windows(2, 40)
    batch = sc.score(windows)
    again = sc.score(windows)
    assert batch == again
    small_chunks = scorer(max_batch_rows=5).score(windows)
    assert small_chunks == batch
    reordered = sc.score(windows[::-1])[::-1]
    assert reordered == batch
    for i, window in enumerate(windows):
        assert sc.score([window]) == [batch[i]]
        assert sc.score([window, window])[1] == batch[i]


@settings(max_examples=25, deadline=None)
@given(
    windows=st.lists(
        st.lists(st.sampled_from([UNK, *range(FIRST_KEY, CFG.vocab_size)]), min_size=1, max_size=32),
        min_size=1,
        max_size=8,
    )
)
def test_batch_scoring_equals_one_by_one(windows: list[list[int]]) -> None:
    sc = scorer()
    assert sc.score(windows) == [s for w in windows for s in sc.score([w])]


def test_batch_invariance_with_a_wider_model() -> None:
    """n_embd=256 makes the MLP products big enough (K=1024) that BLAS's small-matrix path would change the sums."""
    cfg = LogBERTConfig(vocab_size=60, max_len=32, n_layer=1, n_head=4, n_embd=256)
    model, center = model_and_center(cfg)
    sc = WindowScorer(model, center, top_g=5, mask_copies=2, buckets=(16, 32))
    rng = random.Random(3)
    windows = [[rng.randrange(FIRST_KEY, cfg.vocab_size) for _ in range(rng.randint(1, 32))] for _ in range(40)]
    batch = sc.score(windows)
    for i in range(0, 40, 3):
        assert sc.score([windows[i]]) == [batch[i]]
    threaded = WindowScorer(model, center, top_g=5, mask_copies=2, buckets=(16, 32), max_batch_rows=24, threads=2)
    assert threaded.score(windows) == batch


def test_scoring_threads_give_the_scores_of_one_thread() -> None:
    """Passes run side by side on several threads (one intra-op thread each) and still give every window the
    score it gets alone; the calling thread's torch thread count is left as it was."""
    windows = random_windows(5, 60)
    one = scorer(max_batch_rows=20).score(windows)  # many chunks: the threads really share the work
    before = torch.get_num_threads()
    sc = scorer(max_batch_rows=20, threads=3)
    names: set[str] = set()
    real_chunk = sc._score_chunk

    def chunk_on_a_thread(*args: object) -> None:
        names.add(threading.current_thread().name)
        real_chunk(*args)  # type: ignore[arg-type]

    sc._score_chunk = chunk_on_a_thread  # type: ignore[method-assign]
    assert sc.score(windows) == one
    assert len(names) > 1 and all(n.startswith("logad-score") for n in names)  # the work did go to the threads
    assert sc.score(windows[::-1])[::-1] == one
    with pytest.raises(ValueError, match="window 1 is empty"):
        sc.score([[4], []])
    assert sc.score(windows[:7]) == one[:7]
    assert torch.get_num_threads() == before


def test_empty_and_bad_inputs() -> None:
    sc = scorer()
    assert sc.score([]) == []
    with pytest.raises(ValueError, match="window 1 is empty"):
        sc.score([[4], []])
    with pytest.raises(ValueError, match="largest bucket 32"):
        sc.score([[4] * 33])
    with pytest.raises(ValueError, match=r"window 0 holds keys .*\[1, 12\]"):
        sc.score([[4, MASK, 12]])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"top_g": 0}, "top_g"),
        ({"mask_copies": 0}, "mask_copies"),
        ({"buckets": (16, 8)}, "strictly increasing"),
        ({"buckets": (16, 64)}, "max_len"),
        ({"max_batch_rows": 3}, "max_batch_rows"),
        ({"n_candidates": -1}, "n_candidates"),
        ({"threads": 0}, "threads"),
    ],
)
def test_scorer_rejects_bad_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        scorer(**kwargs)
    model, _ = model_and_center()
    with pytest.raises(ValueError, match="center"):
        WindowScorer(model, torch.zeros(CFG.n_embd + 1), top_g=1, mask_copies=1, buckets=(32,))


def test_scores_are_records() -> None:
    (score,) = scorer().score([[4, 5, 6]])
    assert isinstance(score, WindowScore)
    with pytest.raises(AttributeError):
        score.missed = 0  # type: ignore[misc]


def test_compute_center_is_the_mean_dist_output() -> None:
    model, _ = model_and_center()
    windows = random_windows(4, 9)
    model.train()
    center = compute_center(model, windows, "cpu", batch_size=4)
    assert model.training, "training flag restored"
    model.eval()
    with torch.no_grad():
        dists = torch.stack([model(torch.tensor([w]), torch.ones(1, len(w), dtype=torch.bool))[1][0] for w in windows])
    torch.testing.assert_close(center, dists.mean(0), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="at least one window"):
        compute_center(model, [], "cpu")
    with pytest.raises(ValueError, match="max_len"):
        compute_center(model, [[4] * 33], "cpu")


def test_score_cache_returns_the_scores_the_model_gives() -> None:
    windows = random_windows(2, 40)
    plain = scorer().score(windows)
    cached = scorer(cache_size=16)
    repeated = windows[:10] * 3 + windows  # repeats inside one call and across calls
    got = cached.score(repeated)
    assert got == plain[:10] * 3 + plain
    assert cached.cache_misses == len({tuple(w) for w in windows})
    assert cached.cache_hits == len(repeated) - cached.cache_misses
    assert len(cached._cache) == 16  # least recently used windows were dropped
    assert cached.score(windows[::-1]) == plain[::-1]  # evicted windows are scored again, identically
    with pytest.raises(ValueError, match="cache_size"):
        scorer(cache_size=-1)


def test_a_warmed_cache_holds_the_scores_the_model_gives() -> None:
    windows = [list(w) for w in dict.fromkeys(tuple(w) for w in random_windows(3, 30))]  # distinct
    assert len(windows) > 20
    plain = scorer().score(windows)
    warmed = scorer(cache_size=64)
    assert warmed.warm(windows + windows[:5]) == len(windows)  # repeats are scored once
    assert warmed.cache_hits == warmed.cache_misses == 0  # warming is not a lookup
    assert warmed.score(windows) == plain
    assert warmed.cache_hits == len(windows) and warmed.cache_misses == 0
    assert warmed.warm(windows) == 0  # already there

    small = scorer(cache_size=8)
    assert small.warm(windows) == 8  # the first (most important) ones, no more than fit
    assert set(small._cache) == {tuple(w) for w in windows[:8]}
    small.score(windows[20:21])  # one new window evicts the least important warmed one, the eighth
    assert tuple(windows[7]) not in small._cache and tuple(windows[0]) in small._cache
    assert scorer().warm(windows) == 0  # no cache, nothing to warm
