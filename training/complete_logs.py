"""Complete logs (after R2Log): each line as its template key *plus* its time gap and its parameter values.

Template keys lose what Drain masks (numbers, addresses, sizes) and when a line came. This module gives a LogBERT-style
model both, as an evaluation variant (``logbert_complete`` in ``training.protocols``, raw-line protocol only).

Per-line features (``line_features``; built by ``raw_protocol`` from the same records and the same canonical order as
the key sequences, so feature ``i`` belongs to key ``i``):

* gap: seconds since the previous entry of the session in the canonical order (``None`` for the first entry);
* params: the line's variable parts as ``(slot, value)`` pairs. A slot names where the value sits in the template:
  ``"<rule>:<mask>:<n>"`` for the ``n``-th text that masking rule ``rule`` replaced (the config's regexes, applied
  in order exactly as Drain3's ``LogMasker`` does), and ``"*:<i>"`` for token ``i`` of the masked message where the
  trained template has Drain's own wildcard ``<*>``.

Discretisation (``LineCoder``; fitted on the lines of the fit sessions only, deterministic, no randomness):

* gap bucket (log2, ``is_time``-style): ``FIRST_GAP`` for a session's first entry, ``GAP_BUCKET0`` for a gap under
  one second, then ``GAP_BUCKET0 + 1 + floor(log2(gap))`` for gaps of a second and more, capped at ``n_gap - 1``;
* parameter token of a slot: the exact value where that value is frequent for the (key, slot) in the fit lines (at
  least ``value_min_count`` times and ``value_share`` of the slot's values), else a coarse value class
  (``value_class``: sign and digit count of an integer, ``hex<len>`` for hex words, else the value's shape with
  digit runs as ``9`` and letter runs as ``a``);
* parameter id of a line: its signature ``(key, slot tokens)`` numbered in sorted order among the signatures seen at
  least ``signature_min_count`` times in the fit lines; any other signature is ``OTHER_PARAM`` (which the model also
  sees in training wherever a fit signature is rarer than that, so it is an ordinary, predictable class).

Model (``CompleteLogModel``): the LogBERT encoder (``logbert_core.model.Block``, learned positions, pre-LN) whose
input embedding is key + gap bucket + parameter id; three heads predict the key, the gap bucket and the parameter id.
Training: masked prediction on the positions ``logbert_core.masking.random_mask`` chooses. Their gap and parameter
are always masked; half of them (drawn from the seeded mask generator) have their key masked too. The key is a label
where it is masked; the gap and parameter are labels at every chosen position, so they are learned both from context
and given the line's own template (a session of one line has no other context). Loss = the sum of the three
cross-entropies over their labels; early stopping on the validation windows (fixed masks). No hypersphere loss.

Score: each window (the product's windowing) is scored with the fixed schedule ``fixed_mask_copies`` (every position
masked exactly once), twice: with key, gap and parameter of the masked positions hidden (key misses), and with the
key visible (gap and parameter misses). A key is missed when it is not in the top-g keys (``UNK`` always is), a gap
bucket or parameter id when it is not in the top-g of its head. Per window and rule, a miss ratio: key misses /
length, gap and parameter misses / (2 x length), all misses / (3 x length); a session's score under a rule is its
largest window ratio (``SessionMisses``). Thresholds follow the product's rule
(``training.baselines.calibrate_threshold``: a quantile of the normal calibration sessions, compared strictly);
``training.protocols.complete_results`` says how the rules are combined into the ``logbert_complete`` decision.
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from logbert_core.masking import IGNORE_INDEX, fixed_mask_copies, random_mask
from logbert_core.model import Block, LogBERTConfig
from logbert_core.scoring import torch_threads
from logbert_core.vocab import FIRST_KEY, MASK, PAD, UNK
from logbert_core.windows import session_windows
from training.baselines import require_positive
from training.data import CanonicalLine

# ids of the gap and parameter inputs: PAD and MASK as for keys (``logbert_core.vocab``), never predictions
N_SPECIAL = 2
FIRST_GAP = 2  # the first entry of a session: no gap
GAP_BUCKET0 = 3  # gap under one second; GAP_BUCKET0 + 1 + floor(log2(gap)) above
OTHER_PARAM = 2  # a parameter signature not frequent in the fit lines
FIRST_PARAM = 3

Param = tuple[str, str]  # (slot, value)


@dataclass(frozen=True, slots=True)
class SessionLines:
    """Per-line features of one session, aligned with its key sequence (``EvalData.sessions``)."""

    keys: tuple[int, ...]
    gaps: tuple[float | None, ...]  # seconds since the previous entry; None for the first
    params: tuple[tuple[Param, ...], ...]


class ParamExtractor:
    """The variable parts of a message: what the masking rules replace, and Drain's ``<*>`` tokens.

    ``templates`` maps a key to its trained template text (``Vocabulary.text``); a key without one (``UNK``) gets the
    masked values only. Results are cached per (key, content).
    """

    __slots__ = ("_rules", "_delims", "_templates", "_cache")

    WILDCARD = "<*>"

    def __init__(self, masking: Sequence[tuple[str, str]], templates: Mapping[int, str],
                 extra_delimiters: Sequence[str] = ()) -> None:
        if any("\\" in name for _, name in masking):
            raise ValueError("mask names with a backslash are not supported (Drain3 would read a group reference)")
        self._rules = [(re.compile(rx), f"<{name}>", f"{r}:{name}") for r, (rx, name) in enumerate(masking)]
        self._delims = tuple(extra_delimiters)
        self._templates = {k: self._tokens(t) for k, t in templates.items()}
        self._cache: dict[tuple[int, str], tuple[Param, ...]] = {}

    def _tokens(self, text: str) -> list[str]:
        for d in self._delims:  # as Drain.get_content_as_tokens
            text = text.replace(d, " ")
        return text.strip().split()

    def masked(self, content: str) -> tuple[str, list[Param]]:
        """(the masked text Drain3 would see, the replaced values as (slot, value) in rule order)."""
        found: list[Param] = []
        text = content
        for rx, mask, slot in self._rules:
            n = 0

            def keep(m: re.Match[str], slot: str = slot, mask: str = mask) -> str:
                nonlocal n
                found.append((f"{slot}:{n}", m.group(0)))
                n += 1
                return mask

            text = rx.sub(keep, text)
        return text, found

    def params(self, key: int, content: str) -> tuple[Param, ...]:
        ck = (key, content)
        hit = self._cache.get(ck)
        if hit is not None:
            return hit
        text, found = self.masked(content)
        template = self._templates.get(key)
        if template is not None:
            tokens = self._tokens(text)
            if len(tokens) == len(template):  # always so for an exact Drain match
                found += [(f"*:{i}", tok) for i, (tok, t) in enumerate(zip(tokens, template, strict=True))
                          if t == self.WILDCARD and tok != t]
        out = tuple(found)
        if len(self._cache) >= 200_000:
            self._cache.clear()
        self._cache[ck] = out
        return out


def line_features(lines: Sequence[CanonicalLine], extractor: ParamExtractor) -> SessionLines:
    """Gaps and parameters of one session's canonical entries (``training.data.canonical_lines``)."""
    gaps: list[float | None] = [None]
    gaps += [b.timestamp - a.timestamp for a, b in zip(lines, lines[1:])]
    return SessionLines(keys=tuple(ln.key for ln in lines), gaps=tuple(gaps[: len(lines)]),
                        params=tuple(extractor.params(ln.key, ln.content) for ln in lines))


def gap_bucket(gap: float | None, n_gap: int) -> int:
    """Log2 bucket of a gap in seconds (see the module docstring); deterministic, no fitting."""
    if gap is None:
        return FIRST_GAP
    if not gap >= 1.0:  # also NaN; a negative gap cannot occur in canonical order
        return GAP_BUCKET0
    return min(GAP_BUCKET0 + 1 + int(math.floor(math.log2(gap))), n_gap - 1)


_INT = re.compile(r"[-+]?[0-9]+")
_HEX = re.compile(r"(0[xX])?[0-9a-fA-F]+")
_DIGITS = re.compile(r"[0-9]+")
_LETTERS = re.compile(r"[A-Za-z]+")


def value_class(value: str) -> str:
    """Coarse class of a parameter value: ``int<digits>`` (``-int<digits>``), ``hex<len>``, or its shape."""
    if _INT.fullmatch(value):
        return ("-" if value.startswith("-") else "") + f"int{min(len(value.lstrip('+-')), 12)}"
    if _HEX.fullmatch(value) and any(c.isdigit() for c in value):
        return f"hex{min(len(value), 18)}"
    return _LETTERS.sub("a", _DIGITS.sub("9", value))[:24]


class LineCoder:
    """Gap buckets and parameter ids of lines; the parameter vocabulary is fitted on normal fit sessions only."""

    def __init__(self, n_gap: int = 20, value_min_count: int = 10, value_share: float = 0.05,
                 signature_min_count: int = 2) -> None:
        if n_gap < GAP_BUCKET0 + 2:
            raise ValueError(f"n_gap={n_gap} must be >= {GAP_BUCKET0 + 2}")
        if value_min_count < 1 or signature_min_count < 1:
            raise ValueError("value_min_count and signature_min_count must be >= 1")
        if not 0 < value_share <= 1:
            raise ValueError(f"value_share={value_share} must be in (0, 1]")
        self.n_gap = n_gap
        self.value_min_count, self.value_share = value_min_count, value_share
        self.signature_min_count = signature_min_count
        self.exact: set[tuple[int, str, str]] = set()
        self.signatures: dict[tuple[int, tuple[str, ...]], int] = {}

    @property
    def n_param(self) -> int:
        return FIRST_PARAM + len(self.signatures)

    def fit(self, sessions: Iterable[SessionLines]) -> LineCoder:
        sessions = list(sessions)
        values: Counter[tuple[int, str, str]] = Counter()
        slots: Counter[tuple[int, str]] = Counter()
        for s in sessions:
            for k, ps in zip(s.keys, s.params, strict=True):
                for slot, v in ps:
                    values[(k, slot, v)] += 1
                    slots[(k, slot)] += 1
        self.exact = {kv for kv, c in values.items()
                      if c >= max(self.value_min_count, self.value_share * slots[(kv[0], kv[1])])}
        sigs = Counter(self._signature(k, ps) for s in sessions for k, ps in zip(s.keys, s.params, strict=True))
        kept = sorted(sig for sig, c in sigs.items() if c >= self.signature_min_count)
        self.signatures = {sig: FIRST_PARAM + i for i, sig in enumerate(kept)}
        return self

    def _signature(self, key: int, params: tuple[Param, ...]) -> tuple[int, tuple[str, ...]]:
        exact = self.exact
        return key, tuple(f"{slot}={v if (key, slot, v) in exact else value_class(v)}" for slot, v in params)

    def encode(self, s: SessionLines) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(keys, gap buckets, parameter ids), each (n,) int64."""
        keys = np.asarray(s.keys, dtype=np.int64)
        gaps = np.array([gap_bucket(g, self.n_gap) for g in s.gaps], dtype=np.int64)
        sig = self.signatures
        params = np.array([sig.get(self._signature(k, ps), OTHER_PARAM)
                           for k, ps in zip(s.keys, s.params, strict=True)], dtype=np.int64)
        return keys, gaps, params


@dataclass(frozen=True)
class CompleteConfig:
    """Hyper-parameters of ``logbert_complete``; the encoder's come from the product's ``model`` section."""

    vocab_size: int  # keys, specials included (the bundle's vocabulary size)
    max_len: int = 64
    stride: int = 32
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    dropout: float = 0.1
    n_gap: int = 20
    value_min_count: int = 10
    value_share: float = 0.05
    signature_min_count: int = 2
    top_g: int = 5  # for every head
    mask_copies: int = 8
    mask_ratio: float = 0.15
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    patience: int = 4
    seed: int = 1234
    device: str = "cpu"
    num_threads: int | None = None

    def __post_init__(self) -> None:
        require_positive(self, ("max_len", "stride", "top_g", "mask_copies", "epochs", "batch_size", "patience"))
        if self.stride > self.max_len:
            raise ValueError(f"CompleteConfig.stride={self.stride} must be <= max_len={self.max_len}")
        if not 0.0 < self.mask_ratio <= 1.0:
            raise ValueError(f"CompleteConfig.mask_ratio={self.mask_ratio} must be in (0, 1]")

    def encoder(self) -> LogBERTConfig:
        return LogBERTConfig(vocab_size=self.vocab_size, max_len=self.max_len, n_layer=self.n_layer,
                             n_head=self.n_head, n_embd=self.n_embd, dropout=self.dropout, hypersphere_weight=0.0)


class CompleteLogModel(nn.Module):
    """LogBERT's encoder over (key, gap bucket, parameter id) per position, with one head for each."""

    def __init__(self, cfg: LogBERTConfig, n_gap: int, n_param: int) -> None:
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wge = nn.Embedding(n_gap, cfg.n_embd)
        self.wqe = nn.Embedding(n_param, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.max_len, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.key_head = nn.Linear(cfg.n_embd, cfg.vocab_size)
        self.gap_head = nn.Linear(cfg.n_embd, n_gap)
        self.param_head = nn.Linear(cfg.n_embd, n_param)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, keys: torch.Tensor, gaps: torch.Tensor, params: torch.Tensor,
                pad_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) keys, gap buckets, parameter ids and real-position mask -> hidden states (B, T, C)."""
        T = keys.size(1)
        pos = torch.arange(T, device=keys.device)
        x = self.drop(self.wte(keys) + self.wge(gaps) + self.wqe(params) + self.wpe(pos))  # (B, T, C)
        attn_mask = pad_mask[:, None, None, :]  # (B, 1, 1, T)
        for block in self.blocks:
            x = block(x, attn_mask)
        return self.ln_f(x)  # (B, T, C)


Encoded = tuple[np.ndarray, np.ndarray, np.ndarray]  # keys, gap buckets, parameter ids of one window or session


def _pad(windows: Sequence[Encoded], idx: Sequence[int]) -> tuple[torch.Tensor, ...]:
    """Windows ``idx`` -> (keys, gaps, params, pad_mask), each (B, T_max)."""
    T = max(len(windows[i][0]) for i in idx)
    out = np.full((3, len(idx), T), PAD, dtype=np.int64)
    real = np.zeros((len(idx), T), dtype=bool)
    for r, i in enumerate(idx):
        n = len(windows[i][0])
        for c in range(3):
            out[c, r, :n] = windows[i][c]
        real[r, :n] = True
    return torch.from_numpy(out[0]), torch.from_numpy(out[1]), torch.from_numpy(out[2]), torch.from_numpy(real)


@dataclass
class SessionMisses:
    """Per session: the largest window score of every rule (all units, keys only, gaps and parameters only)."""

    complete: np.ndarray  # (N,)
    keys: np.ndarray  # (N,)
    extras: np.ndarray  # (N,)


class CompleteLogDetector:
    """``logbert_complete``: fit on normal sessions of ``SessionLines``, score sessions (higher = more anomalous)."""

    name, family = "logbert_complete", "complete logs"

    def __init__(self, cfg: CompleteConfig) -> None:
        self.cfg = cfg
        self.coder = LineCoder(cfg.n_gap, cfg.value_min_count, cfg.value_share, cfg.signature_min_count)
        self.history: list[dict[str, float]] = []
        self.fit_seconds = 0.0
        self.model: CompleteLogModel | None = None

    def _windows(self, sessions: Sequence[SessionLines]) -> tuple[list[Encoded], np.ndarray]:
        """The product's windows of every session, encoded, and the session index of each window."""
        cfg = self.cfg
        out: list[Encoded] = []
        owner: list[int] = []
        for i, s in enumerate(sessions):
            if not s.keys:
                raise ValueError(f"session {i} is empty")
            k, g, p = self.coder.encode(s)
            k = np.where((k >= cfg.vocab_size) | ((k < FIRST_KEY) & (k != UNK)), UNK, k)
            for sp in session_windows(len(k), cfg.max_len, cfg.stride):
                out.append((k[sp.lo : sp.hi], g[sp.lo : sp.hi], p[sp.lo : sp.hi]))
                owner.append(i)
        return out, np.asarray(owner, dtype=np.int64)

    def _loss(self, model: CompleteLogModel, batch: tuple[torch.Tensor, ...], gen: torch.Generator
              ) -> tuple[torch.Tensor, int]:
        """Summed cross-entropy of the masked units and their number.

        Every chosen position has its gap and parameter masked; half of them (drawn from ``gen``) also have their key
        masked, and only there is the key a label. So the model learns both the key from its context and, given the
        line's template, its gap and parameter (which a one-line session can only be judged by).
        """
        keys, gaps, params, real = batch
        masked_keys, key_labels = random_mask(keys, real, self.cfg.mask_ratio, gen)
        chosen = key_labels != IGNORE_INDEX  # (B, T)
        shown = chosen & (torch.rand(chosen.shape, generator=gen) < 0.5).to(chosen.device)  # (B, T)
        hidden = chosen & ~shown
        h = model(torch.where(shown, keys, masked_keys), gaps.masked_fill(chosen, MASK),
                  params.masked_fill(chosen, MASK), real)  # (B, T, C)
        units = int(hidden.sum()) + 2 * int(chosen.sum())
        if units == 0:
            return h.sum() * 0.0, 0
        hk, hf = h[hidden], h[chosen]
        loss = (F.cross_entropy(model.key_head(hk), keys[hidden], reduction="sum")
                + F.cross_entropy(model.gap_head(hf), gaps[chosen], reduction="sum")
                + F.cross_entropy(model.param_head(hf), params[chosen], reduction="sum"))
        return loss, units

    def fit(self, fit: Sequence[SessionLines], val: Sequence[SessionLines]) -> None:
        cfg = self.cfg
        t0 = time.perf_counter()
        if not fit:
            raise ValueError("fit is empty")
        self.coder.fit(fit)
        train, _ = self._windows(fit)
        valid, _ = self._windows(val) if val else (train, None)
        device = torch.device(cfg.device)
        with torch_threads(cfg.num_threads):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed)
                model = CompleteLogModel(cfg.encoder(), cfg.n_gap, self.coder.n_param).to(device)
                opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
                shuffle = torch.Generator().manual_seed(cfg.seed)
                masks = torch.Generator().manual_seed(cfg.seed + 1)
                best, best_state, stale = float("inf"), None, 0
                for epoch in range(1, cfg.epochs + 1):
                    e0 = time.perf_counter()
                    model.train()
                    order = torch.randperm(len(train), generator=shuffle).tolist()
                    total, units = 0.0, 0
                    for s in range(0, len(order), cfg.batch_size):
                        batch = tuple(t.to(device) for t in _pad(train, order[s : s + cfg.batch_size]))
                        loss, n = self._loss(model, batch, masks)
                        if n == 0:
                            continue
                        opt.zero_grad(set_to_none=True)
                        (loss / n).backward()
                        opt.step()
                        total, units = total + float(loss.detach()), units + n
                    val_loss = self._validate(model, valid, device)
                    self.history.append({"epoch": epoch, "train_loss": total / max(units, 1), "val_loss": val_loss,
                                         "seconds": time.perf_counter() - e0})
                    if val_loss < best:
                        best, stale = val_loss, 0
                        best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                    else:
                        stale += 1
                        if stale >= cfg.patience:
                            break
                if best_state is None:
                    raise RuntimeError("validation loss was never finite; lower CompleteConfig.lr or check the data")
                model.load_state_dict(best_state)
        self.model = model.eval()
        self.fit_seconds = time.perf_counter() - t0

    def _validate(self, model: CompleteLogModel, windows: list[Encoded], device: torch.device) -> float:
        model.eval()
        gen = torch.Generator().manual_seed(self.cfg.seed + 2)  # the same masks every epoch
        total, units = 0.0, 0
        with torch.inference_mode():
            for s in range(0, len(windows), 256):
                batch = tuple(t.to(device) for t in _pad(windows, range(s, min(s + 256, len(windows)))))
                loss, n = self._loss(model, batch, gen)
                total, units = total + float(loss), units + n
        return total / max(units, 1)

    def misses(self, sessions: Sequence[SessionLines], rows_per_pass: int = 512) -> SessionMisses:
        """Fixed-schedule misses of every head, reduced to the largest window score per session and rule."""
        if self.model is None:
            raise RuntimeError("score before fit")
        cfg, model = self.cfg, self.model
        device = next(model.parameters()).device
        windows, owner = self._windows(sessions)
        # one row per (window, mask copy, what is masked): key misses are counted where the key, gap and parameter
        # of the masked positions are all hidden; gap and parameter misses where the key stays visible
        copies = [(w, pos) for w, enc in enumerate(windows) for pos in fixed_mask_copies(len(enc[0]), cfg.mask_copies)]
        rows = [(w, pos, show) for show in (False, True) for w, pos in copies]
        missed = np.zeros((len(windows), 3), dtype=np.int64)  # key, gap, parameter misses per window
        g = cfg.top_g
        heads = ((0, model.key_head, FIRST_KEY), (1, model.gap_head, N_SPECIAL), (2, model.param_head, N_SPECIAL))
        with torch_threads(cfg.num_threads):
            with torch.inference_mode():
                for s in range(0, len(rows), rows_per_pass):
                    part = rows[s : s + rows_per_pass]
                    keys, gaps, params, real = _pad(windows, [w for w, _, _ in part])
                    chosen = torch.zeros_like(real)
                    for r, (_, pos, _) in enumerate(part):
                        chosen[r, pos] = True
                    shown = torch.tensor([show for _, _, show in part])[:, None] & chosen  # (B, T)
                    h = model(torch.where(shown, keys, keys.masked_fill(chosen, MASK)).to(device),
                              gaps.masked_fill(chosen, MASK).to(device), params.masked_fill(chosen, MASK).to(device),
                              real.to(device)).cpu()  # (B, T, C)
                    for c, head, n_special in heads:
                        sel = chosen & ~shown if c == 0 else shown
                        if not sel.any():
                            continue
                        logits = head(h[sel]).float()  # (M, classes)
                        logits[:, :n_special] = float("-inf")  # specials are never predictions
                        t = (keys, gaps, params)[c][sel]
                        rank = (logits > logits.gather(1, t[:, None])).sum(dim=1)
                        miss = (rank >= g) | (t == UNK) if c == 0 else rank >= g
                        who = torch.tensor([w for w, _, _ in part])[:, None].expand_as(sel)[sel].numpy()
                        np.add.at(missed[:, c], who, miss.numpy().astype(np.int64))
        lengths = np.array([len(w[0]) for w in windows], dtype=np.float64)
        by_rule = (missed.sum(axis=1) / (3 * lengths), missed[:, 0] / lengths,
                   missed[:, 1:].sum(axis=1) / (2 * lengths))
        out = []
        for wscore in by_rule:
            top = np.zeros(len(sessions), dtype=np.float64)
            np.maximum.at(top, owner, wscore)
            out.append(top)
        return SessionMisses(*out)

    def score(self, sessions: Sequence[SessionLines]) -> np.ndarray:
        """(N,) session scores of the complete rule."""
        return self.misses(sessions).complete

