"""LogBERT (Guo et al. 2021): a small bidirectional transformer over template keys.

Training objective: masked log-key prediction (MLM head on every key position) plus a hypersphere (VHM) loss
pulling the final hidden state of a prepended ``DIST`` token towards a centre. The whole forward pass lives here,
nanoGPT style: pre-LN blocks written out, learned positions, one ``@dataclass`` config every module takes.

Callers pass windows of keys *without* the ``DIST`` token; the model prepends it, so position 0 of the hidden states
is ``DIST`` and positions ``1..T`` are the caller's keys.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any, cast

import torch
import torch.nn as nn
from torch.nn import functional as F

from logbert_core.vocab import DIST, FIRST_KEY


@dataclass(frozen=True)
class LogBERTConfig:
    """Model architecture; stored in the bundle and read back on load (never typed in by hand)."""

    vocab_size: int  # keys, specials included (``Vocabulary.size``)
    max_len: int = 128  # max keys per window, excluding the DIST token
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    dropout: float = 0.1
    hypersphere_weight: float = 0.1  # weight of the DIST-to-centre loss next to the MLM loss

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_len", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"LogBERTConfig.{name} must be an int, got {type(value).__name__} {value!r}")
        for name in ("dropout", "hypersphere_weight"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"LogBERTConfig.{name} must be a finite number, got {value!r}")
        if self.vocab_size <= FIRST_KEY:
            raise ValueError(
                f"LogBERTConfig.vocab_size={self.vocab_size} leaves no template keys: it must be > FIRST_KEY "
                f"({FIRST_KEY}), the number of special keys; build it from Vocabulary.size"
            )
        if self.max_len < 1:
            raise ValueError(f"LogBERTConfig.max_len={self.max_len} must be >= 1")
        if self.n_layer < 1:
            raise ValueError(f"LogBERTConfig.n_layer={self.n_layer} must be >= 1")
        if self.n_head < 1:
            raise ValueError(f"LogBERTConfig.n_head={self.n_head} must be >= 1")
        if self.n_embd < 1 or self.n_embd % self.n_head != 0:
            raise ValueError(f"LogBERTConfig.n_embd={self.n_embd} must be a positive multiple of n_head={self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LogBERTConfig.dropout={self.dropout} must be in [0, 1)")
        if self.hypersphere_weight < 0.0:
            raise ValueError(f"LogBERTConfig.hypersphere_weight={self.hypersphere_weight} must be >= 0")

    def to_dict(self) -> dict[str, int | float]:
        """JSON-safe dict of every field."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LogBERTConfig:
        """Inverse of :meth:`to_dict`; unknown or missing keys raise ``ValueError`` naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown LogBERTConfig keys: {unknown}; known keys: {sorted(known)}")
        if "vocab_size" not in data:
            raise ValueError("LogBERTConfig dict is missing the required key 'vocab_size'")
        return cls(**data)


class SelfAttention(nn.Module):
    """Bidirectional multi-head self-attention; padded keys are masked out."""

    def __init__(self, config: LogBERTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()  # T counts the DIST token
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        # attn_mask (B, 1, 1, T): True where the key is real. Every row has DIST, so no row is fully masked.
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: LogBERTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))  # (B, T, C)


class Block(nn.Module):
    """Pre-LN transformer block."""

    def __init__(self, config: LogBERTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = SelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask)
        x = x + self.mlp(self.ln_2(x))
        return x  # (B, T, C)


def _rows(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, min_rows: int) -> torch.Tensor:
    """``fn`` over the rows of ``x`` (B, Q, C) as one (B*Q, C) matrix, with zero rows appended up to ``min_rows``."""
    B, Q, C = x.shape
    flat = x.reshape(B * Q, C)
    if B * Q < min_rows:
        flat = torch.cat([flat, flat.new_zeros(min_rows - B * Q, C)])
    out = fn(flat)
    return out[: B * Q].reshape(B, Q, out.size(-1))


class LogBERT(nn.Module):
    """Encoder with an MLM head over keys and a DIST output for the hypersphere loss.

    Initialisation is deterministic given the global torch seed: the caller runs ``torch.manual_seed`` first.
    """

    def __init__(self, config: LogBERTConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.max_len + 1, config.n_embd)  # position 0 is DIST
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2 scaled init of the residual projections
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def encode(self, keys: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        """Final hidden states ``(B, T+1, C)``: index 0 is DIST, ``1..T`` the keys (after the final LayerNorm)."""
        if keys.dim() != 2:
            raise ValueError(f"keys must be (B, T), got shape {tuple(keys.shape)}")
        if pad_mask.shape != keys.shape or pad_mask.dtype != torch.bool:
            raise ValueError(
                f"pad_mask must be a bool tensor shaped like keys {tuple(keys.shape)}, "
                f"got {pad_mask.dtype} {tuple(pad_mask.shape)}"
            )
        B, T = keys.shape
        if T > self.config.max_len:
            raise ValueError(f"window length {T} exceeds max_len={self.config.max_len}")
        dist = torch.full((B, 1), DIST, dtype=keys.dtype, device=keys.device)
        idx = torch.cat([dist, keys], dim=1)  # (B, T+1)
        real = torch.cat([torch.ones_like(dist, dtype=torch.bool), pad_mask], dim=1)  # (B, T+1)
        pos = torch.arange(T + 1, device=keys.device)  # (T+1,)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T+1, C)
        attn_mask = real[:, None, None, :]  # (B, 1, 1, T+1): which keys each query may attend to
        for block in self.blocks:
            x = block(x, attn_mask)
        return self.ln_f(x)  # (B, T+1, C)

    def encode_at(self, keys: torch.Tensor, pad_mask: torch.Tensor, at: torch.Tensor, min_rows: int = 0
                  ) -> torch.Tensor:
        """Final hidden states ``(B, Q, C)`` at positions ``at`` (B, Q) only (0 is DIST, ``1..T`` the keys).

        The same numbers as ``encode(...)`` gathered at ``at``, for less work: the last block still needs keys and
        values at every position, but its queries, attention output, MLP and the final LayerNorm run only where a
        result is asked for. Scoring asks for the masked positions of each copy (a few of ``T + 1``), so the last
        block shrinks to a fraction. ``min_rows``: the products over the ``B * Q`` selected rows get at least this
        many rows (zero rows appended), so that BLAS takes the same path whatever the batch (``scoring``).
        """
        if self.training:
            raise RuntimeError("encode_at is for inference: call model.eval() first (it applies no dropout)")
        B, T = keys.shape
        if at.dim() != 2 or at.size(0) != B or at.dtype != torch.long:
            raise ValueError(f"at must be a (B, Q) long tensor with B={B}, got {at.dtype} {tuple(at.shape)}")
        if T > self.config.max_len:
            raise ValueError(f"window length {T} exceeds max_len={self.config.max_len}")
        if pad_mask.shape != keys.shape or pad_mask.dtype != torch.bool:
            raise ValueError(f"pad_mask must be a bool tensor shaped like keys {tuple(keys.shape)}")
        dist = torch.full((B, 1), DIST, dtype=keys.dtype, device=keys.device)
        idx = torch.cat([dist, keys], dim=1)  # (B, T+1)
        real = torch.cat([torch.ones_like(dist, dtype=torch.bool), pad_mask], dim=1)  # (B, T+1)
        x = self.drop(self.wte(idx) + self.wpe(torch.arange(T + 1, device=keys.device)))  # (B, T+1, C)
        attn_mask = real[:, None, None, :]  # (B, 1, 1, T+1)
        for block in self.blocks[:-1]:
            x = block(x, attn_mask)
        last = cast(Block, self.blocks[-1])
        attn = last.attn
        C, nh = self.config.n_embd, self.config.n_head
        Q = at.size(1)
        xn = last.ln_1(x)  # (B, T+1, C)
        w, b = attn.c_attn.weight, attn.c_attn.bias  # (3C, C), (3C,): rows q, k, v
        k, v = torch.split(F.linear(xn, w[C:], b[C:]), C, dim=2)  # 2 x (B, T+1, C)
        sel = at[:, :, None].expand(B, Q, C)  # (B, Q, C)
        xs = x.gather(1, sel)  # (B, Q, C): residual stream at the asked positions
        q = _rows(lambda t: F.linear(t, w[:C], b[:C]), xn.gather(1, sel), min_rows)  # (B, Q, C)
        q = q.view(B, Q, nh, C // nh).transpose(1, 2)  # (B, nh, Q, hs)
        k = k.view(B, T + 1, nh, C // nh).transpose(1, 2)  # (B, nh, T+1, hs)
        v = v.view(B, T + 1, nh, C // nh).transpose(1, 2)  # (B, nh, T+1, hs)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, nh, Q, hs)
        y = y.transpose(1, 2).contiguous().view(B, Q, C)  # (B, Q, C)
        xs = xs + _rows(attn.c_proj, y, min_rows)
        xs = xs + _rows(lambda t: last.mlp(last.ln_2(t)), xs, min_rows)
        return self.ln_f(xs)  # (B, Q, C)

    def forward(self, keys: torch.Tensor, pad_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``keys`` (B, T) without DIST, ``pad_mask`` (B, T) True where real -> (logits (B, T, V), dist (B, C))."""
        h = self.encode(keys, pad_mask)  # (B, T+1, C)
        return self.lm_head(h[:, 1:]), h[:, 0]  # (B, T, V), (B, C)
