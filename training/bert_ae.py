"""BERT-AE baseline: a masked-LM LogBERT encoder over template keys, and an autoencoder on its window embeddings.

Two stages, both fitted on normal sessions only, both early-stopped on the validation sessions:

1. the project's ``LogBERT`` (``logbert_core.model``), trained by ``training.fit.fit`` with the masked-key objective
   alone (``hypersphere_weight=0``) on the windows of the fit sessions (``logbert_core.windows.session_windows``);
2. a small MLP autoencoder (``E -> hidden -> bottleneck -> hidden -> E``) trained to reconstruct the standardised
   embedding of each fit window.

The embedding of a window is the mean of the encoder's final hidden states over the window's keys, concatenated with
the ``DIST`` output (``E = 2 * n_embd``), read without masking and in eval mode, so a window always gets the same
embedding. With the MLM objective alone nothing trains the ``DIST`` output directly; the mean over key positions is the
part that carries what the masked-key objective learned, and ``DIST`` adds a learned attention summary. A window's
score is the mean squared reconstruction error of its embedding; a session's score is the largest over its windows
(most HDFS sessions are one window; a long session is as anomalous as its worst window, as the product flags a session
when any of its windows is). Templates never seen in fit or validation become ``UNK``, whose embedding nothing
trains. The embedding and the bottleneck were chosen on the validation split of the HDFS raw protocol (AUC-PR at
bottleneck 16: mean + ``DIST`` 0.94, mean alone 0.92; at bottleneck 8: 0.92, 0.93, ``DIST`` alone 0.90; at 4: 0.89).

Threshold: the BERT-AE project this product descends from flagged the top "expected contamination" share of the test
scores, which needs the anomaly rate of the test set, i.e. its labels. Here BERT-AE is calibrated like every other
method (``training.baselines.calibrate_threshold``): the ``1 - target_fpr`` quantile of held-out normal sessions.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from logbert_core.model import LogBERT, LogBERTConfig
from logbert_core.scoring import torch_threads
from logbert_core.vocab import PAD, UNK
from logbert_core.windows import session_windows
from training.detector import (
    BaselineConfig,
    Detector,
    Session,
    _check_sessions,
    _vocab_size,
    require_positive,
)
from training.fit import TrainConfig
from training.fit import fit as fit_logbert

Window = tuple[int, ...]
_EMBED_BATCH = 512  # windows per encoder pass when embedding


@dataclass(frozen=True)
class BertAEConfig:
    """Hyper-parameters of BERT-AE; small on purpose (CPU, well under a minute on HDFS)."""

    max_len: int = 64  # keys per window
    stride: int = 32
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    dropout: float = 0.1
    mask_ratio: float = 0.15
    epochs: int = 10  # encoder epochs (cap; early stopping on the validation MLM loss)
    batch_size: int = 64
    lr: float = 1e-3
    patience: int = 2
    ae_hidden: int = 32
    ae_bottleneck: int = 16
    ae_epochs: int = 200
    ae_batch_size: int = 128
    ae_lr: float = 1e-3
    ae_patience: int = 10
    seed: int = 1234
    num_threads: int | None = 1  # torch CPU threads while fitting and scoring (restored afterwards); see from_baseline

    def __post_init__(self) -> None:
        require_positive(self, ("max_len", "stride", "epochs", "batch_size", "patience", "ae_hidden",
                                "ae_bottleneck", "ae_epochs", "ae_batch_size", "ae_patience"))
        if self.stride > self.max_len:
            raise ValueError(f"BertAEConfig.stride={self.stride} must be <= max_len={self.max_len}")
        if not self.ae_bottleneck < 2 * self.n_embd:
            raise ValueError(f"BertAEConfig.ae_bottleneck={self.ae_bottleneck} must be < 2 * n_embd "
                             f"({2 * self.n_embd}), the embedding size; otherwise the autoencoder can copy")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"BertAEConfig.num_threads={self.num_threads} must be >= 1 or None")
        # n_layer, n_head, n_embd, dropout and mask_ratio are checked by LogBERTConfig and TrainConfig

    @classmethod
    def from_baseline(cls, cfg: BaselineConfig) -> BertAEConfig:
        """The settings BERT-AE shares with the other learned baselines: width, epoch cap, patience, seed.

        Not the thread count: BERT-AE runs on one thread. Its matrices are small (batches of 64 windows of ~20 keys,
        64 wide), so a second thread buys little, and on a busy 2-core machine two threads made an encoder epoch
        4 to 40 times slower than one (OpenMP threads waiting on each other). Scores change only by float rounding.
        """
        return cls(n_embd=cfg.hidden, epochs=cfg.epochs, patience=cfg.patience, seed=cfg.seed, num_threads=1)


class _AutoEncoder(nn.Module):
    def __init__(self, dim: int, hidden: int, bottleneck: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, bottleneck), nn.Tanh(),
            nn.Linear(bottleneck, hidden), nn.Tanh(), nn.Linear(hidden, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, E) -> (B, E)


class BertAEDetector(Detector):
    """BERT-AE: score = the autoencoder's reconstruction error of the encoder's embedding (max over windows)."""

    name, family = "bert_ae", "autoencoder"

    def __init__(self, cfg: BertAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.ae_history: list[dict[str, float]] = []  # per autoencoder epoch; ``history`` is the encoder's

    # -- windows and embeddings ------------------------------------------------------------------------------------
    def _windows(self, sessions: Sequence[Session]) -> tuple[list[Window], np.ndarray]:
        """(windows with keys outside the vocabulary as ``UNK``, owner session index (n,))."""
        windows: list[Window] = []
        owner: list[int] = []
        for i, s in enumerate(sessions):
            keys = tuple(k if k < self.V else UNK for k in s)
            for span in session_windows(len(keys), self.cfg.max_len, self.cfg.stride):
                windows.append(keys[span.lo : span.hi])
                owner.append(i)
        return windows, np.asarray(owner, dtype=np.int64)

    def _embed(self, windows: Sequence[Window]) -> np.ndarray:
        """(N, 2C) float32: [mean of the key outputs, DIST output] per window; each distinct window encoded once."""
        distinct = sorted(set(windows), key=lambda w: (len(w), w))  # similar lengths share a batch: little padding
        C = self.encoder.config.n_embd
        table = np.empty((len(distinct), 2 * C), dtype=np.float32)
        with torch.inference_mode():
            for s in range(0, len(distinct), _EMBED_BATCH):
                batch = distinct[s : s + _EMBED_BATCH]
                T = len(batch[-1])
                keys = torch.full((len(batch), T), PAD, dtype=torch.long)  # (B, T)
                for j, w in enumerate(batch):
                    keys[j, : len(w)] = torch.tensor(w, dtype=torch.long)
                real = keys != PAD  # (B, T); sessions hold no PAD keys
                h = self.encoder.encode(keys, real)  # (B, T+1, C)
                mean = (h[:, 1:] * real[..., None]).sum(dim=1) / real.sum(dim=1, keepdim=True)  # (B, C)
                table[s : s + len(batch)] = torch.cat([mean, h[:, 0]], dim=1).numpy()  # (B, 2C)
        row = {w: i for i, w in enumerate(distinct)}
        return table[[row[w] for w in windows]]

    def _standardise(self, emb: np.ndarray) -> torch.Tensor:
        return torch.from_numpy((emb - self.mu) / self.sigma)

    # -- fit ---------------------------------------------------------------------------------------------------------
    def fit(self, fit: Sequence[Session], val: Sequence[Session]) -> None:
        cfg = self.cfg
        t0 = time.perf_counter()
        _check_sessions(fit, "fit")
        self.V = _vocab_size(fit, val)
        fit_w, _ = self._windows(fit)
        val_w = self._windows(val)[0] if val else fit_w
        model_cfg = LogBERTConfig(vocab_size=self.V, max_len=cfg.max_len, n_layer=cfg.n_layer, n_head=cfg.n_head,
                                  n_embd=cfg.n_embd, dropout=cfg.dropout, hypersphere_weight=0.0)
        train_cfg = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, mask_ratio=cfg.mask_ratio,
                                patience=cfg.patience, seed=cfg.seed, device="cpu", bf16=False, progress=False,
                                num_threads=cfg.num_threads, min_epoch_steps=0)  # the baseline as it was measured
        result = fit_logbert([list(w) for w in fit_w], [list(w) for w in val_w], model_cfg, train_cfg)
        self.history = [{"epoch": h["epoch"], "train_loss": h["train_mlm"], "val_loss": h["val_loss"],
                         "seconds": h["seconds"]} for h in result.history]
        with torch.random.fork_rng(devices=[]):  # the throw-away init draws from the global RNG: leave it alone
            self.encoder = LogBERT(model_cfg)
        self.encoder.load_state_dict(result.state_dict)
        self.encoder.eval()

        with torch_threads(self.cfg.num_threads):
            fit_e = self._embed(fit_w)
            self.mu = fit_e.mean(axis=0)
            self.sigma = np.maximum(fit_e.std(axis=0), 1e-3).astype(np.float32)  # floor: near-constant features
            x = self._standardise(fit_e)
            vx = self._standardise(self._embed(val_w)) if val else x
            self.ae = self._fit_autoencoder(x, vx)
        self.fit_seconds = time.perf_counter() - t0

    def _fit_autoencoder(self, x: torch.Tensor, vx: torch.Tensor) -> _AutoEncoder:
        cfg = self.cfg
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            ae = _AutoEncoder(x.shape[1], cfg.ae_hidden, cfg.ae_bottleneck)
            opt = torch.optim.Adam(ae.parameters(), lr=cfg.ae_lr)
            gen = torch.Generator().manual_seed(cfg.seed)
            best, best_state, stale = float("inf"), None, 0
            for epoch in range(1, cfg.ae_epochs + 1):
                ae.train()
                order = torch.randperm(len(x), generator=gen)
                total = 0.0
                for s in range(0, len(order), cfg.ae_batch_size):
                    b = x[order[s : s + cfg.ae_batch_size]]  # (B, E)
                    loss = F.mse_loss(ae(b), b)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    total += float(loss.detach()) * len(b)
                ae.eval()
                with torch.inference_mode():
                    val_loss = float(F.mse_loss(ae(vx), vx))
                self.ae_history.append({"epoch": epoch, "train_loss": total / len(x), "val_loss": val_loss})
                if val_loss < best:
                    best, stale = val_loss, 0
                    best_state = {k: v.detach().clone() for k, v in ae.state_dict().items()}
                else:
                    stale += 1
                    if stale >= cfg.ae_patience:
                        break
            if best_state is None:
                raise RuntimeError("autoencoder validation loss was never finite; lower BertAEConfig.ae_lr")
            ae.load_state_dict(best_state)
        return ae.eval()

    # -- score -------------------------------------------------------------------------------------------------------
    def window_errors(self, sessions: Sequence[Session]) -> tuple[np.ndarray, np.ndarray]:
        """(per window: reconstruction MSE (n,), per window: session index (n,))."""
        windows, owner = self._windows(sessions)
        with torch_threads(self.cfg.num_threads):
            x = self._standardise(self._embed(windows))  # (n, E)
            with torch.inference_mode():
                err = (self.ae(x) - x).square().mean(dim=1)  # (n,)
        return err.double().numpy(), owner

    def score(self, sessions: Sequence[Session]) -> np.ndarray:
        if any(len(s) == 0 for s in sessions):
            raise ValueError("cannot score an empty session")
        err, owner = self.window_errors(sessions)
        out = np.full(len(sessions), -np.inf)
        np.maximum.at(out, owner, err)  # every session has at least one window
        return out
