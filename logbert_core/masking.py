"""Masking for LogBERT: random masking at training time, a fixed schedule at scoring time.

Scoring never uses random masks: ``fixed_mask_copies`` masks every position exactly once, so a window's score depends
on the window alone.
"""

from __future__ import annotations

import torch

from logbert_core.vocab import FIRST_KEY, MASK

IGNORE_INDEX = -100  # label of positions that are not masked (``F.cross_entropy``'s default ``ignore_index``)


def random_mask(
    keys: torch.Tensor, pad_mask: torch.Tensor, mask_ratio: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask ``round(mask_ratio * n)`` (at least one) of the ``n`` maskable positions of every window.

    ``keys`` (B, T) long and ``pad_mask`` (B, T) bool (True where real). Maskable positions are real template keys
    (``>= FIRST_KEY``): ``UNK`` may be an input but is never a label, since the model cannot learn to predict it.
    Chosen positions become ``MASK`` (always; no 80/10/10 split). Returns ``(masked_keys, labels)``, both (B, T) long,
    labels ``IGNORE_INDEX`` where not masked. A window without maskable positions gets no masks. Random numbers come
    from ``generator`` (on its own device), so the same generator state gives the same masks on any device.
    """
    if keys.dim() != 2 or keys.dtype != torch.long:
        raise ValueError(f"keys must be a (B, T) long tensor, got {keys.dtype} {tuple(keys.shape)}")
    if pad_mask.shape != keys.shape or pad_mask.dtype != torch.bool:
        raise ValueError(
            f"pad_mask must be a bool tensor shaped like keys {tuple(keys.shape)}, "
            f"got {pad_mask.dtype} {tuple(pad_mask.shape)}"
        )
    if not 0.0 < mask_ratio <= 1.0:
        raise ValueError(f"mask_ratio={mask_ratio} must be in (0, 1]")
    eligible = pad_mask & (keys >= FIRST_KEY)  # (B, T)
    n_eligible = eligible.sum(dim=1)  # (B,)
    n_mask = torch.minimum((n_eligible * mask_ratio).round().long().clamp(min=1), n_eligible)  # (B,)
    u = torch.rand(keys.shape, generator=generator, device=generator.device).to(keys.device)  # (B, T)
    u = u.masked_fill(~eligible, 2.0)  # ineligible positions rank last
    rank = u.argsort(dim=1, stable=True).argsort(dim=1, stable=True)  # (B, T): rank of each position by u
    chosen = rank < n_mask[:, None]  # (B, T)
    return keys.masked_fill(chosen, MASK), keys.masked_fill(~chosen, IGNORE_INDEX)


def fixed_mask_copies(length: int, n_copies: int) -> list[list[int]]:
    """Deterministic scoring schedule: copy ``j`` masks the positions ``i`` with ``i % n_copies == j``.

    Copies that would mask nothing (``j >= length``) are omitted, so there are ``min(n_copies, length)`` copies and
    every position ``0 .. length-1`` is masked in exactly one of them.
    """
    if length < 0:
        raise ValueError(f"length={length} must be >= 0")
    if n_copies < 1:
        raise ValueError(f"n_copies={n_copies} must be >= 1")
    return [list(range(j, length, n_copies)) for j in range(min(n_copies, length))]
