"""Fit LogBERT on windows of keys: masked key prediction plus the hypersphere loss, with early stopping.

Everything random is seeded from ``TrainConfig.seed``: model init (global torch RNG, forked so the caller's RNG state
is left alone), training masks and shuffling (their own CPU generators), and validation masks (a generator created
fresh for each validation pass, so validation losses are comparable across epochs). Masks are drawn on the CPU, so
they do not depend on the device. Same seed and same data on the CPU give an identical state dict.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from logbert_core.masking import IGNORE_INDEX, random_mask
from logbert_core.model import LogBERT, LogBERTConfig
from logbert_core.runtime import resolve_device
from logbert_core.scoring import compute_center, torch_threads
from logbert_core.vocab import FIRST_KEY, PAD, UNK

_SORT_POOL = 32  # batches per pool sorted by length before batching, to cut padding


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    mask_ratio: float = 0.15
    patience: int = 4  # epochs without a better validation loss before stopping
    # An epoch takes at least this many optimizer steps, passing over the data again (reshuffled, new masks) when
    # one pass has fewer batches: 50 sessions make one batch, and 20 one-step epochs leave the model untrained.
    min_epoch_steps: int = 50
    # Learning-rate schedule: 0 keeps ``lr`` constant. Otherwise the rate rises linearly over the first
    # ``warmup_epochs`` epochs' optimizer steps to ``lr`` and then falls as the inverse square root of the step
    # (the Transformer schedule, Vaswani et al. 2017, normalised so that its peak is ``lr``; ``lr_factor``).
    warmup_epochs: float = 0.0
    seed: int = 1234
    device: str = "auto"  # "auto": cuda if available, else cpu
    bf16: bool = True  # mixed precision: bf16 autocast where supported (CUDA without bf16: fp16 + GradScaler)
    progress: bool = True
    num_threads: int | None = None  # torch CPU threads during the fit (restored afterwards)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)} must be >= 1")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr={self.lr} must be > 0")
        if not self.weight_decay >= 0:
            raise ValueError(f"TrainConfig.weight_decay={self.weight_decay} must be >= 0")
        if not 0.0 < self.mask_ratio <= 1.0:
            raise ValueError(f"TrainConfig.mask_ratio={self.mask_ratio} must be in (0, 1]")
        if not self.warmup_epochs >= 0:
            raise ValueError(f"TrainConfig.warmup_epochs={self.warmup_epochs} must be >= 0")
        if self.min_epoch_steps < 0:
            raise ValueError(f"TrainConfig.min_epoch_steps={self.min_epoch_steps} must be >= 0")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"TrainConfig.num_threads={self.num_threads} must be >= 1 or None")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except RuntimeError as exc:
                raise ValueError(f"TrainConfig.device={self.device!r} is not 'auto' or a torch device") from exc


@dataclass
class FitResult:
    state_dict: dict[str, torch.Tensor]  # best epoch's weights, CPU tensors
    center: torch.Tensor  # (C,) centre computed from the best weights, CPU
    history: list[dict[str, float]]  # per epoch: epoch, train_loss, train_mlm, train_hyper, val_loss, lr, seconds
    best_epoch: int  # 1-based
    seconds: float


def lr_factor(step: int, warmup: int) -> float:
    """The learning rate of optimizer step ``step`` (1-based) as a share of ``TrainConfig.lr``: ``step / warmup``
    while warming up, then ``sqrt(warmup / step)``; 1 throughout without a warm-up (``warmup`` 0)."""
    if warmup <= 0:
        return 1.0
    return step / warmup if step <= warmup else (warmup / step) ** 0.5


def _cpu_bf16_supported() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _precision(
    device: torch.device, bf16: bool
) -> tuple[Callable[[], contextlib.AbstractContextManager[object]], bool]:
    """(autocast context factory, whether to use a GradScaler)."""
    if bf16 and device.type == "cpu" and _cpu_bf16_supported():
        return lambda: torch.autocast("cpu", dtype=torch.bfloat16), False
    if bf16 and device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return lambda: torch.autocast("cuda", dtype=torch.bfloat16), False
        return lambda: torch.autocast("cuda", dtype=torch.float16), True
    return contextlib.nullcontext, False


def _pack(windows: list[list[int]], cfg: LogBERTConfig, name: str) -> tuple[torch.Tensor, np.ndarray]:
    """Windows -> (keys (N, T_max) long padded with PAD, lengths (N,)), checking lengths and keys."""
    if not windows:
        raise ValueError(f"{name} is empty; fit needs at least one window")
    lengths = np.array([len(w) for w in windows], dtype=np.int64)
    bad_len = np.flatnonzero((lengths < 1) | (lengths > cfg.max_len))
    if bad_len.size:
        i = int(bad_len[0])
        raise ValueError(f"{name}[{i}] has {lengths[i]} keys; windows need 1..max_len={cfg.max_len} keys")
    keys = np.full((len(windows), int(lengths.max())), PAD, dtype=np.int64)
    for i, w in enumerate(windows):
        keys[i, : len(w)] = w
    real = np.arange(keys.shape[1])[None, :] < lengths[:, None]
    bad = real & ((keys >= cfg.vocab_size) | ((keys < FIRST_KEY) & (keys != UNK)))
    if bad.any():
        i = int(np.flatnonzero(bad.any(axis=1))[0])
        raise ValueError(f"{name}[{i}] holds keys outside UNK ({UNK}) and [{FIRST_KEY}, {cfg.vocab_size})")
    return torch.from_numpy(keys), lengths


def _batches(lengths: np.ndarray, batch_size: int, generator: torch.Generator | None) -> list[np.ndarray]:
    """Index batches: in order without a generator; else shuffled, length-sorted within pools, batch order shuffled."""
    n = len(lengths)
    if generator is None:
        return [np.arange(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    order = torch.randperm(n, generator=generator).numpy()
    pool = batch_size * _SORT_POOL
    batches: list[np.ndarray] = []
    for s in range(0, n, pool):
        chunk = order[s : s + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[b : b + batch_size] for b in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def _masked_batches(
    keys: torch.Tensor, lengths: np.ndarray, batches: list[np.ndarray], mask_ratio: float, gen: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield CPU (masked_keys, pad_mask, labels), each (B, T) padded to the batch's longest window."""
    for idx in batches:
        T = int(lengths[idx].max())
        k = keys[torch.from_numpy(idx), :T]  # (B, T)
        pad_mask = torch.arange(T)[None, :] < torch.from_numpy(lengths[idx])[:, None]  # (B, T)
        masked, labels = random_mask(k, pad_mask, mask_ratio, gen)
        yield masked, pad_mask, labels


def _losses(
    model: LogBERT, keys: torch.Tensor, pad_mask: torch.Tensor, labels: torch.Tensor, center: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(MLM cross-entropy summed over masked positions, number of masked positions, per-window squared distances)."""
    h = model.encode(keys, pad_mask)  # (B, T+1, C)
    sel = labels != IGNORE_INDEX  # (B, T)
    logits = model.lm_head(h[:, 1:][sel]).float()  # (M, V): the head only where there is a label
    mlm_sum = F.cross_entropy(logits, labels[sel], reduction="sum")
    dist = (h[:, 0].float() - center).square().sum(dim=-1)  # (B,)
    return mlm_sum, sel.sum(), dist


def _validate(
    model: LogBERT,
    keys: torch.Tensor,
    lengths: np.ndarray,
    center: torch.Tensor,
    cfg: TrainConfig,
    autocast: Callable[[], contextlib.AbstractContextManager[object]],
    w_hyper: float,
) -> float:
    """Validation loss under a fixed masking: a fresh generator each pass, so epochs are comparable."""
    model.eval()
    device = center.device
    mlm_sum = torch.zeros((), device=device)
    n_masked = torch.zeros((), device=device, dtype=torch.long)
    dist_sum = torch.zeros((), device=device)
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    batches = _batches(lengths, cfg.batch_size, None)
    with torch.inference_mode(), autocast():
        for masked, pad_mask, labels in _masked_batches(keys, lengths, batches, cfg.mask_ratio, gen):
            m, n, d = _losses(model, masked.to(device), pad_mask.to(device), labels.to(device), center)
            mlm_sum += m
            n_masked += n
            dist_sum += d.sum()
    return float(mlm_sum / n_masked.clamp(min=1) + w_hyper * dist_sum / len(lengths))


def fit(
    train_windows: list[list[int]], val_windows: list[list[int]], model_cfg: LogBERTConfig, cfg: TrainConfig
) -> FitResult:
    """Train a fresh LogBERT; return the best-validation-loss weights and their hypersphere centre."""
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    train_keys, train_len = _pack(train_windows, model_cfg, "train_windows")
    val_keys, val_len = _pack(val_windows, model_cfg, "val_windows")
    autocast, use_scaler = _precision(device, cfg.bf16)
    w_hyper = model_cfg.hypersphere_weight
    rng_devices = (
        [torch.cuda.current_device() if device.index is None else device.index] if device.type == "cuda" else []
    )
    with torch_threads(cfg.num_threads):
        with torch.random.fork_rng(devices=rng_devices):
            torch.manual_seed(cfg.seed)
            model = LogBERT(model_cfg).to(device)
            opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
            scaler = torch.amp.GradScaler(device.type) if use_scaler else None
            shuffle_gen = torch.Generator().manual_seed(cfg.seed)
            mask_gen = torch.Generator().manual_seed(cfg.seed + 1)
            center = compute_center(model, train_windows, device)  # (C,): from the initial model, as LogBERT does

            history: list[dict[str, float]] = []
            best_loss, best_epoch, best_state, stale = float("inf"), 0, None, 0
            step, warmup = 0, -1  # warm-up steps: set from the first epoch's batches
            bar = tqdm(range(1, cfg.epochs + 1), desc="fit", unit="epoch", disable=not cfg.progress)
            for epoch in bar:
                e0 = time.perf_counter()
                model.train()
                batches = _batches(train_len, cfg.batch_size, shuffle_gen)
                while len(batches) < cfg.min_epoch_steps:  # a small data set: pass over it again
                    batches += _batches(train_len, cfg.batch_size, shuffle_gen)
                if warmup < 0:
                    warmup = round(cfg.warmup_epochs * len(batches))
                sums = torch.zeros(3, device=device)  # loss, mlm, hyper summed over batches
                for masked, pad_mask, labels in tqdm(
                    _masked_batches(train_keys, train_len, batches, cfg.mask_ratio, mask_gen),
                    total=len(batches),
                    desc=f"epoch {epoch}",
                    unit="batch",
                    leave=False,
                    disable=not cfg.progress,
                ):
                    with autocast():
                        m, n, d = _losses(model, masked.to(device), pad_mask.to(device), labels.to(device), center)
                        mlm = m / n.clamp(min=1)
                        hyper = d.mean()
                        loss = mlm + w_hyper * hyper
                    step += 1
                    for group in opt.param_groups:
                        group["lr"] = cfg.lr * lr_factor(step, warmup)
                    opt.zero_grad(set_to_none=True)
                    if scaler is not None:
                        scaler.scale(loss).backward()
                        scaler.step(opt)
                        scaler.update()
                    else:
                        loss.backward()
                        opt.step()
                    sums += torch.stack([loss.detach(), mlm.detach(), hyper.detach()]).float()
                center = compute_center(model, train_windows, device)  # the centre of this epoch's weights
                val_loss = _validate(model, val_keys, val_len, center, cfg, autocast, w_hyper)
                train_loss, train_mlm, train_hyper = (sums / len(batches)).tolist()
                history.append(
                    {
                        "epoch": epoch,
                        "train_loss": train_loss,
                        "train_mlm": train_mlm,
                        "train_hyper": train_hyper,
                        "val_loss": val_loss,
                        "lr": cfg.lr * lr_factor(step, warmup),  # at the epoch's last step
                        "seconds": time.perf_counter() - e0,
                    }
                )
                bar.set_postfix(train=f"{train_loss:.4f}", val=f"{val_loss:.4f}")
                if val_loss < best_loss:
                    best_loss, best_epoch, stale = val_loss, epoch, 0
                    best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                else:
                    stale += 1
                    if stale >= cfg.patience:
                        break
            bar.close()
            if best_state is None:  # every validation loss was NaN
                raise RuntimeError("validation loss was never finite; lower TrainConfig.lr or check the data")
            model.load_state_dict(best_state)
            center = compute_center(model, train_windows, device).cpu()
    return FitResult(
        state_dict=best_state,
        center=center,
        history=history,
        best_epoch=best_epoch,
        seconds=time.perf_counter() - t0,
    )
