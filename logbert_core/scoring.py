"""Scoring rule of LogBERT: fixed-schedule masked key prediction plus distance to the hypersphere centre.

A position is *missed* when its true key is not among the model's ``top_g`` predictions for it (special keys are
never predictions); a key the model never saw (``UNK``) is always missed. Every position is masked exactly once
(``fixed_mask_copies``), so a window's score depends on the window alone.

Batch invariance: the same window must score bit-identically whatever else is in the batch. Attention, LayerNorm,
softmax and top-k work row by row, and positions are padded to a few fixed bucket lengths, so what remains is the
matrix multiplies: BLAS libraries (MKL, OpenBLAS) take a different small-matrix path, with a different summation
order, when a product has few rows. Every product here therefore gets at least ``MIN_GEMM_ROWS`` rows (padding rows
where needed); above that size the row results of MKL do not depend on the row count or the row's place (measured with
MKL 2024.2 on AVX-512: the small path ends below 300 rows for inner sizes K <= 2048, i.e. n_embd <= 512). With more
than one intra-op thread, MKL also splits a product between threads by its shape, and on an AMD EPYC (AVX-512) the
rows then come out differently in the last bits depending on the batch; so on the CPU ``score`` runs its products on
one thread (torch's thread count is restored afterwards; the detector runs one scoring thread per worker anyway, and
measured it as the fastest setting on 2 cores, docs/performance.md). On CUDA,
cuBLAS may pick kernels (split-K) by shape, so bit-identity there is not promised; misses can then differ only at
near-ties.
"""

from __future__ import annotations

import contextlib
import functools
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from logbert_core.masking import fixed_mask_copies
from logbert_core.model import LogBERT
from logbert_core.vocab import FIRST_KEY, MASK, PAD, UNK

MIN_GEMM_ROWS = 512  # rows every matrix product gets at least (see the module docstring)
HEAD_ROWS = 4096  # masked positions per MLM-head product: bounds the (rows, vocab) logits in memory
CPU_BATCH_ROWS = 256  # default rows (masked copies + plain) per encoder pass on CPU: small chunks stay in cache


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Torch's CPU thread count set to ``n`` for the block and restored afterwards; nothing is touched for ``None``
    or when the count already is ``n`` (``score`` enters this on every call)."""
    prev = torch.get_num_threads()
    if n is None or n == prev:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


@functools.cache
def scoring_pool(threads: int) -> ThreadPoolExecutor:
    """The process's scoring threads for this count, started once, each on one torch intra-op thread."""
    return ThreadPoolExecutor(threads, thread_name_prefix="logad-score", initializer=torch.set_num_threads,
                              initargs=(1,))


@dataclass(frozen=True, slots=True)
class Candidate:
    """A key the model predicts for a masked position, with its probability among template keys."""

    key: int
    prob: float


@dataclass(frozen=True, slots=True)
class Miss:
    """A position whose true key was not among the top-g predictions (or was ``UNK``)."""

    position: int
    actual: int
    candidates: tuple[Candidate, ...]


@dataclass(frozen=True, slots=True)
class WindowScore:
    length: int
    missed: int
    miss_ratio: float  # missed / length
    distance: float  # squared L2 distance of the unmasked window's DIST output to the centre
    misses: tuple[Miss, ...]  # in position order


def _window_array(window: Sequence[int], index: int, vocab_size: int) -> np.ndarray:
    keys = np.asarray(window, dtype=np.int64)
    if keys.ndim != 1:
        raise ValueError(f"window {index} must be a flat sequence of keys, got shape {keys.shape}")
    if keys.size == 0:
        raise ValueError(f"window {index} is empty; a window needs at least one key")
    bad = (keys >= vocab_size) | ((keys < FIRST_KEY) & (keys != UNK))
    if bad.any():
        raise ValueError(
            f"window {index} holds keys outside UNK ({UNK}) and [{FIRST_KEY}, {vocab_size}): "
            f"{sorted(set(keys[bad].tolist()))}"
        )
    return keys


class WindowScorer:
    """Scores windows of keys with a trained LogBERT and its hypersphere centre.

    The model is moved to ``device`` and put in eval mode. ``mask_copies`` masked copies of each window (plus the
    unmasked window, for the distance) are batched per bucket length, and the last block runs only for the outputs
    the rule reads (each copy's masked positions, the unmasked copy's DIST: ``LogBERT.encode_at``), which cuts the
    encoder's work by about a third on a 2-layer model; ``max_batch_rows`` bounds rows per forward pass
    (default: 256 on CPU, where chunks that fit in cache run faster, 4096 elsewhere). ``bf16`` runs the encoder and
    the head under bfloat16 autocast (CPUs with AVX512-BF16/AMX, or CUDA): faster, but distances move (by up to a
    fifth on HDFS windows near the centre), so it stays off unless decisions were checked against the calibrated
    thresholds (docs/performance.md).

    ``cache_size`` keeps the scores of that many recent distinct windows (least recently used out first). A window's
    score depends on its keys alone and is bit-identical whatever batch it is scored in, so a cached score is the
    score; logs repeat a few lifecycles (2,070 held-out HDFS windows hold 179 distinct ones), and the model then runs
    only for what it has not seen lately. ``cache_hits`` and ``cache_misses`` count lookups. ``warm`` fills the
    cache ahead of need (a detector's start-up: the bundle's most frequent training windows).

    ``threads`` (CPU only): encoder passes of one ``score`` call run on that many threads at once, each pass on one
    intra-op thread, so a chunk's arithmetic (and its score) is the same whatever the thread count; chunks are
    independent, so this scales where intra-op threads do not (a 64-wide model's products are too small to split
    well). The threads belong to the process, one pool per thread count shared by all scorers
    (``scoring_pool``); each sets torch's intra-op thread count to 1 for itself when it starts (which also becomes
    the default of threads started later).
    """

    def __init__(
        self,
        model: LogBERT,
        center: torch.Tensor,
        top_g: int,
        mask_copies: int,
        device: str | torch.device = "cpu",
        buckets: tuple[int, ...] = (16, 32, 64, 128),
        n_candidates: int = 3,
        max_batch_rows: int | None = None,
        bf16: bool = False,
        cache_size: int = 0,
        threads: int = 1,
    ) -> None:
        cfg = model.config
        self.device = torch.device(device)
        if max_batch_rows is None:  # CPU: chunks that stay in cache (measured ~1.3x at 1 thread); GPU: wide
            max_batch_rows = CPU_BATCH_ROWS if self.device.type == "cpu" else 4096
        if top_g < 1:
            raise ValueError(f"top_g={top_g} must be >= 1")
        if mask_copies < 1:
            raise ValueError(f"mask_copies={mask_copies} must be >= 1")
        if n_candidates < 0:
            raise ValueError(f"n_candidates={n_candidates} must be >= 0")
        if not buckets or any(b < 1 for b in buckets) or list(buckets) != sorted(set(buckets)):
            raise ValueError(f"buckets={buckets} must be non-empty, positive and strictly increasing")
        if buckets[-1] > cfg.max_len:
            raise ValueError(
                f"largest bucket {buckets[-1]} exceeds the model's max_len={cfg.max_len}; pass buckets up to max_len"
            )
        if max_batch_rows < mask_copies + 1:
            raise ValueError(
                f"max_batch_rows={max_batch_rows} must be >= mask_copies + 1 = {mask_copies + 1} "
                "(the rows of one window)"
            )
        if cache_size < 0:
            raise ValueError(f"cache_size={cache_size} must be >= 0 (0: no cache)")
        if threads < 1:
            raise ValueError(f"threads={threads} must be >= 1")
        if cfg.vocab_size > 2**24:
            raise ValueError(f"vocab_size={cfg.vocab_size} exceeds 2**24: keys would not survive the float32 copy")
        if tuple(center.shape) != (cfg.n_embd,):
            raise ValueError(f"center must have shape ({cfg.n_embd},), got {tuple(center.shape)}")
        self.model = model.to(self.device).eval()
        self.center = center.detach().to(self.device, torch.float32)  # (C,)
        self.top_g = top_g
        self.mask_copies = mask_copies
        self.buckets = tuple(buckets)
        self.n_candidates = min(n_candidates, cfg.vocab_size - FIRST_KEY)
        self.max_batch_rows = max_batch_rows
        self.bf16 = bf16
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[int, ...], WindowScore] = OrderedDict()
        self.cache_hits = 0
        self.cache_misses = 0
        self.threads = threads if self.device.type == "cpu" else 1

    def score(self, windows: Sequence[Sequence[int]]) -> list[WindowScore]:
        """One ``WindowScore`` per window, in input order."""
        if not self.cache_size:
            return self._score(windows)
        cache = self._cache
        out: list[WindowScore | None] = [None] * len(windows)
        todo: dict[tuple[int, ...], list[int]] = {}  # distinct uncached windows -> their places in ``out``
        for i, w in enumerate(windows):
            key = tuple(w)
            hit = cache.get(key)
            if hit is not None:
                cache.move_to_end(key)
                out[i] = hit
            else:
                todo.setdefault(key, []).append(i)
        self.cache_hits += len(windows) - len(todo)
        self.cache_misses += len(todo)
        if todo:
            for key, got in zip(todo, self._score(list(todo)), strict=True):
                for i in todo[key]:
                    out[i] = got
                cache[key] = got
            while len(cache) > self.cache_size:
                cache.popitem(last=False)
        return out  # type: ignore[return-value]  # every slot is filled

    def warm(self, windows: Sequence[Sequence[int]]) -> int:
        """Score ``windows`` into the cache ahead of need, most important first (the cache keeps the first ones
        longest); returns how many were scored. Not counted as hits or misses. Without a cache, does nothing."""
        if not self.cache_size:
            return 0
        todo = list(dict.fromkeys(tuple(w) for w in windows))[: self.cache_size]
        todo = [key for key in todo if key not in self._cache]
        if not todo:
            return 0
        got = self._score(todo)
        for key, score in zip(reversed(todo), reversed(got), strict=True):  # the first ones end most recent
            self._cache[key] = score
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return len(todo)

    def _score(self, windows: Sequence[Sequence[int]]) -> list[WindowScore]:
        arrays = [_window_array(w, i, self.model.config.vocab_size) for i, w in enumerate(windows)]
        by_bucket: dict[int, list[int]] = {}
        for i, keys in enumerate(arrays):
            bucket = next((b for b in self.buckets if b >= keys.size), None)
            if bucket is None:
                raise ValueError(f"window {i} has {keys.size} keys, more than the largest bucket {self.buckets[-1]}")
            by_bucket.setdefault(bucket, []).append(i)
        out: list[WindowScore | None] = [None] * len(arrays)
        self.model.eval()
        with torch_threads(1 if self.device.type == "cpu" else None):  # batch invariance (module docstring)
            self._score_buckets(arrays, by_bucket, out)
        return out  # type: ignore[return-value]  # every slot is filled

    def _score_buckets(self, arrays: list[np.ndarray], by_bucket: dict[int, list[int]],
                       out: list[WindowScore | None]) -> None:
        chunks: list[tuple[int, list[int]]] = []  # (bucket, window indices): one encoder pass each
        for bucket, members in sorted(by_bucket.items()):
            chunk: list[int] = []
            rows = 0
            for i in members:
                n = min(self.mask_copies, arrays[i].size) + 1
                if chunk and rows + n > self.max_batch_rows:
                    chunks.append((bucket, chunk))
                    chunk, rows = [], 0
                chunk.append(i)
                rows += n
            if chunk:
                chunks.append((bucket, chunk))

        def run(job: tuple[int, list[int]]) -> None:
            bucket, chunk = job
            # inference and autocast modes are per thread: every pass enters them itself
            with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                self._score_chunk(bucket, [arrays[j] for j in chunk], chunk, out)

        if self.threads == 1 or len(chunks) == 1:
            for job in chunks:
                run(job)
            return
        for _ in scoring_pool(self.threads).map(run, chunks):  # disjoint slots of ``out``; map re-raises errors
            pass

    def _score_chunk(
        self, bucket: int, arrays: list[np.ndarray], index: list[int], out: list[WindowScore | None]
    ) -> None:
        """Score windows of one bucket in one encoder pass and one device-to-host copy; fill ``out[index[w]]``."""
        schedules = [fixed_mask_copies(a.size, self.mask_copies) for a in arrays]
        n_rows = sum(len(s) + 1 for s in schedules)
        n_rows = max(n_rows, -(-MIN_GEMM_ROWS // (bucket + 1)))  # encoder products get >= MIN_GEMM_ROWS rows
        # outputs asked per row: the most positions one copy of a window of this bucket can mask, whatever the
        # windows at hand, so every chunk of a bucket has the same shape (attention kernels differ in the last bits
        # between query counts)
        n_at = -(-bucket // self.mask_copies)
        keys = np.full((n_rows, bucket), PAD, dtype=np.int64)  # (R, T)
        real = np.zeros((n_rows, bucket), dtype=bool)  # (R, T)
        at = np.zeros((n_rows, n_at), dtype=np.int64)  # (R, Q): positions whose output each row gives (0: DIST)
        g_flat = []  # (M,): for every window position in order, its place in the (R * Q) outputs
        plain_flat = []  # (W,): the place of each unmasked copy's DIST output, for the distance
        row = 0
        for a, copies in zip(arrays, schedules, strict=True):
            c, L = len(copies), a.size
            keys[row : row + c + 1, :L] = a
            real[row : row + c + 1, :L] = True
            place = np.empty(L, dtype=np.int64)  # (L,)
            for j, positions in enumerate(copies):
                keys[row + j, positions] = MASK
                at[row + j, : len(positions)] = np.asarray(positions) + 1  # skip DIST
                place[positions] = (row + j) * n_at + np.arange(len(positions))
            g_flat.append(place)
            plain_flat.append((row + c) * n_at)  # the unmasked copy asks for DIST only
            row += c + 1
        put = self._to_device
        h = self.model.encode_at(put(keys), put(real), put(at), min_rows=MIN_GEMM_ROWS)  # (R, Q, C)
        h = h.reshape(n_rows * n_at, h.size(-1))  # (R * Q, C)
        distance = (h[put(np.asarray(plain_flat, dtype=np.int64))].float() - self.center).square().sum(dim=-1)  # (W,)
        act = put(np.concatenate(arrays))  # (M,)
        hm = h[put(np.concatenate(g_flat))]  # (M, C)
        per_pos = [self._predict(hm[s : s + HEAD_ROWS], act[s : s + HEAD_ROWS]) for s in range(0, len(act), HEAD_ROWS)]
        host = torch.cat([torch.cat(per_pos).flatten(), distance]).cpu().numpy()  # the one device-to-host copy
        width = 1 + 2 * self.n_candidates
        n_pos = len(act)
        table = host[: n_pos * width].reshape(n_pos, width)  # (M, 1 + 2k): missed, candidate keys, probs
        distances = host[n_pos * width :].tolist()  # (W,)
        k = self.n_candidates
        offset = 0
        for w, a in enumerate(arrays):
            L = a.size
            rows = table[offset : offset + L]
            misses = tuple(
                Miss(
                    position=int(p),
                    actual=int(a[p]),
                    candidates=tuple(
                        Candidate(key=int(key), prob=float(prob))
                        for key, prob in zip(rows[p, 1 : 1 + k], rows[p, 1 + k :], strict=True)
                    ),
                )
                for p in np.flatnonzero(rows[:, 0])
            )
            out[index[w]] = WindowScore(
                length=L, missed=len(misses), miss_ratio=len(misses) / L, distance=distances[w], misses=misses
            )
            offset += L

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        """Host array -> tensor on the scoring device; on CUDA through pinned memory, without blocking the host."""
        t = torch.from_numpy(array)
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t if self.device.type == "cpu" else t.to(self.device)

    def _predict(self, hm: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """(m, C) hidden states of masked positions, (m,) true keys -> (m, 1 + 2k) [missed, keys, probs]."""
        m = hm.size(0)
        if m < MIN_GEMM_ROWS:
            hm = torch.cat([hm, hm.new_zeros(MIN_GEMM_ROWS - m, hm.size(1))])
        logits = self.model.lm_head(hm)[:m].float()  # (m, V)
        logits[:, :FIRST_KEY] = float("-inf")  # specials are never predictions
        true = logits.gather(1, act[:, None])  # (m, 1); -inf for UNK
        rank = (logits > true).sum(dim=1)  # (m,): keys scored strictly higher than the true one
        missed = (rank >= self.top_g) | (act == UNK)  # (m,)
        top = logits.softmax(dim=1).topk(self.n_candidates, dim=1)  # (m, k)
        return torch.cat([missed[:, None].float(), top.indices.float(), top.values.float()], dim=1)  # (m, 1 + 2k)


def compute_center(
    model: LogBERT, windows: Sequence[Sequence[int]], device: str | torch.device, batch_size: int = 256
) -> torch.Tensor:
    """Hypersphere centre: the mean DIST output (C,) over unmasked ``windows``, in eval mode.

    The model is moved to ``device``; its training flag is restored afterwards. Returns a float32 tensor on ``device``.
    """
    if not windows:
        raise ValueError("compute_center needs at least one window")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    cfg = model.config
    arrays = [_window_array(w, i, cfg.vocab_size) for i, w in enumerate(windows)]
    too_long = next((i for i, a in enumerate(arrays) if a.size > cfg.max_len), None)
    if too_long is not None:
        raise ValueError(f"window {too_long} has {arrays[too_long].size} keys, more than max_len={cfg.max_len}")
    dev = torch.device(device)
    was_training = model.training
    model.to(dev).eval()
    total = torch.zeros(cfg.n_embd, dtype=torch.float32, device=dev)  # (C,)
    try:
        with torch.inference_mode():
            for s in range(0, len(arrays), batch_size):
                batch = arrays[s : s + batch_size]
                T = max(a.size for a in batch)
                keys = np.full((len(batch), T), PAD, dtype=np.int64)  # (B, T)
                for b, a in enumerate(batch):
                    keys[b, : a.size] = a
                lengths = np.array([a.size for a in batch])  # (B,)
                real = np.arange(T)[None, :] < lengths[:, None]  # (B, T)
                h = model.encode(torch.from_numpy(keys).to(dev), torch.from_numpy(real).to(dev))  # (B, T+1, C)
                total += h[:, 0].float().sum(dim=0)
    finally:
        model.train(was_training)
    return total / len(arrays)  # (C,)
