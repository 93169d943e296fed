"""Baseline detectors, scored on the product's own sessions and split, calibrated by the product's rule.

Every detector sees a session as its sequence of template keys (``logbert_core.vocab``: ``UNK`` for a template not
seen in training), built by the same code as the detector's windows (``training.data.build_windows``), and gives one
score per session, higher = more anomalous. ``fit`` gets the fit split and the validation split (early stopping of the
LSTMs; the memory rules remember fit + validation sessions, as the product's ``known_sets`` do); it never sees labels.
The threshold is chosen by ``calibrate_threshold``: the ``1 - target_fpr`` quantile of the scores of held-out *normal*
calibration sessions, compared strictly (``>``), exactly as ``logbert_core.judge.calibrate`` does for LogBERT.

Detectors:

* ``deeplog``: LSTM next-key prediction over the last ``history`` keys; a position is missed when its key is outside
  the top-g predictions (``UNK`` always is); score = missed positions (Du et al., CCS 2017; no parameter-value model).
* ``loganomaly``: DeepLog's sequential branch plus a quantitative branch over the count vector of the history
  (Meng et al., IJCAI 2019, simplified: learned key embeddings instead of template2vec).
* ``pca``: count vectors, TF-IDF weighted and centred; score = squared prediction error outside the components that
  explain ``pca_variance`` of the variance (Xu et al., SOSP 2009). Threshold by our calibration, not the Q-statistic.
* ``iforest``: Isolation Forest on count vectors; score = minus scikit-learn's ``score_samples``.
* exact rules: ``unseen_template`` (count of ``UNK``), ``unseen_set_exact`` (the set of keys never seen as a whole),
  ``unseen_set_subset`` (not a subset of any seen set: the product's ``unseen_template_set`` rule on whole sessions),
  ``unseen_count_vector`` (the exact multiset of keys never seen);
* ``length``: robust z-score of log(session length) against the fit sessions;
* ``rare_key``: -log of the smoothed training frequency of the rarest key in the session;
* ``bert_ae``: a masked-LM LogBERT encoder plus an autoencoder on its window embeddings; score = reconstruction error
  (``training.bert_ae``).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from logbert_core.scoring import torch_threads
from logbert_core.vocab import FIRST_KEY, PAD, UNK
from training.bert_ae import BertAEConfig, BertAEDetector
from training.detector import (
    BaselineConfig,
    Detector,
    Session,
    _check_sessions,
    _vocab_size,
    calibrate_threshold,
    count_matrix,
    require_positive,
)

__all__ = ["BASELINES", "BaselineConfig", "Calibrated", "Detector", "Session", "calibrate_threshold", "count_matrix",
           "fit_and_calibrate", "make_detector", "require_positive"]


class PCADetector(Detector):
    name, family = "pca", "count vector"

    def __init__(self, variance: float = 0.95) -> None:
        super().__init__()
        self.variance = variance

    def fit(self, fit: Sequence[Session], val: Sequence[Session]) -> None:
        from sklearn.decomposition import PCA

        t0 = time.perf_counter()
        _check_sessions(fit, "fit")
        self.V = _vocab_size(fit)
        X = count_matrix(fit, self.V)
        df = (X > 0).sum(axis=0)
        self.idf = np.log((len(X) + 1) / (df + 1)) + 1.0  # smoothed: unseen keys (UNK) get the largest weight
        Z = X * self.idf
        self.mean = Z.mean(axis=0)
        pca = PCA(n_components=self.variance, svd_solver="full").fit(Z - self.mean)
        self.P = pca.components_.T  # (V, k): the normal subspace
        self.fit_seconds = time.perf_counter() - t0

    def score(self, sessions: Sequence[Session]) -> np.ndarray:
        Z = count_matrix(sessions, self.V) * self.idf - self.mean
        residual = Z - (Z @ self.P) @ self.P.T
        return np.square(residual).sum(axis=1)  # squared prediction error (SPE)


class IsolationForestDetector(Detector):
    name, family = "iforest", "count vector"

    def __init__(self, n_estimators: int = 100, seed: int = 1234) -> None:
        super().__init__()
        self.n_estimators, self.seed = n_estimators, seed

    def fit(self, fit: Sequence[Session], val: Sequence[Session]) -> None:
        from sklearn.ensemble import IsolationForest

        t0 = time.perf_counter()
        _check_sessions(fit, "fit")
        self.V = _vocab_size(fit)
        self.model = IsolationForest(n_estimators=self.n_estimators, random_state=self.seed, n_jobs=1)
        self.model.fit(count_matrix(fit, self.V))
        self.fit_seconds = time.perf_counter() - t0

    def score(self, sessions: Sequence[Session]) -> np.ndarray:
        return -self.model.score_samples(count_matrix(sessions, self.V))


# -- exact and statistical rules ------------------------------------------------------------------------------------
class UnseenTemplate(Detector):
    name, family = "unseen_template", "exact"

    def fit(self, fit: Sequence[Session], val: Sequence[Session]) -> None:
        _check_sessions(fit, "fit")

    def score(self, sessions: Sequence[Session]) -> np.ndarray:
        return np.array([sum(1 for k in s if k == UNK) for s in sessions], dtype=np.float64)


class UnseenSetExact(Detector):
    name, family = "unseen_set_exact", "exact"

    def fit(self, fit: Sequence[Session], val: Sequence[Session]) -> None:
        _check_sessions(fit, "fit")
        self.known = {frozenset(s) for s in [*fit, *val]}

    def score(self, sessions: Sequence[Session]) -> np.ndarray:
        return np.array([frozenset(s) not in self.known for s in sessions], dtype=np.float64)


class UnseenSetSubset(Detector):
    name, family = "unseen_set_subset", "exact"

    def fit(self, fit: Sequence[Session], val: Sequence[Session]) -> None:
        _check_sessions(fit, "fit")
        known = {frozenset(s) for s in [*fit, *val]}
        self.maximal = [k for k in known if not any(k < other for other in known)]

    def score(self, sessions: Sequence[Session]) -> np.ndarray:
        cache: dict[frozenset[int], bool] = {}
        out = np.empty(len(sessions), dtype=np.float64)
        for i, s in enumerate(sessions):
            keys = frozenset(s)
            hit = cache.get(keys)
            if hit is None:
                hit = cache[keys] = any(keys <= k for k in self.maximal)
            out[i] = 0.0 if hit else 1.0
        return out


class UnseenCountVector(Detector):
    name, family = "unseen_count_vector", "exact"

    @staticmethod
    def _key(s: Session) -> tuple[tuple[int, int], ...]:
        return tuple(sorted(Counter(s).items()))

    def fit(self, fit: Sequence[Session], val: Sequence[Session]) -> None:
        _check_sessions(fit, "fit")
        self.known = {self._key(s) for s in [*fit, *val]}

    def score(self, sessions: Sequence[Session]) -> np.ndarray:
        return np.array([self._key(s) not in self.known for s in sessions], dtype=np.float64)


class LengthOutlier(Detector):
    name, family = "length", "statistic"

    def fit(self, fit: Sequence[Session], val: Sequence[Session]) -> None:
        _check_sessions(fit, "fit")
        logs = np.log([len(s) for s in fit])
        self.median = float(np.median(logs))
        self.scale = max(1.4826 * float(np.median(np.abs(logs - self.median))), 0.05)

    def score(self, sessions: Sequence[Session]) -> np.ndarray:
        return np.abs(np.log([max(len(s), 1) for s in sessions]) - self.median) / self.scale


class RareKey(Detector):
    name, family = "rare_key", "statistic"

    def fit(self, fit: Sequence[Session], val: Sequence[Session]) -> None:
        _check_sessions(fit, "fit")
        self.counts = Counter(k for s in fit for k in s)
        self.total = sum(self.counts.values())
        self.V = len(self.counts) + 1

    def score(self, sessions: Sequence[Session]) -> np.ndarray:
        denom = self.total + self.V
        rarest = [min(self.counts.get(k, 0) for k in s) for s in sessions]
        return np.array([-math.log((c + 1) / denom) for c in rarest], dtype=np.float64)


# -- sequence models --------------------------------------------------------------------------------------------
class _NextKeyNet(nn.Module):
    """Embedding -> LSTM over the history -> logits of the next key; optionally a count-vector branch (LogAnomaly)."""

    def __init__(self, vocab_size: int, hidden: int, layers: int, quantitative: bool) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab_size, hidden, padding_idx=PAD)
        self.lstm = nn.LSTM(hidden, hidden, num_layers=layers, batch_first=True)
        self.quant = nn.Sequential(nn.Linear(vocab_size, hidden), nn.ReLU()) if quantitative else None
        self.head = nn.Linear(hidden * (2 if quantitative else 1), vocab_size)

    def forward(self, hist: torch.Tensor) -> torch.Tensor:
        """(B, h) keys, left-padded with PAD -> (B, V) logits."""
        out, _ = self.lstm(self.emb(hist))  # (B, h, H)
        feat = out[:, -1]  # (B, H)
        if self.quant is not None:
            counts = feat.new_zeros(hist.size(0), self.emb.num_embeddings)  # (B, V)
            counts.scatter_add_(1, hist, feat.new_ones(hist.shape))
            counts[:, PAD] = 0.0
            feat = torch.cat([feat, self.quant(counts / hist.size(1))], dim=1)  # (B, 2H)
        return self.head(feat)


def next_key_samples(sessions: Sequence[Session], history: int, vocab_size: int) -> tuple[np.ndarray, np.ndarray,
                                                                                           np.ndarray]:
    """Every position of every session as (history (n, h) left-padded with PAD, target (n,), session index (n,)).

    Keys at or above ``vocab_size`` become ``UNK``. The first key of a session is predicted from an empty history.
    """
    total = sum(len(s) for s in sessions)
    hist = np.full((total, history), PAD, dtype=np.int64)
    target = np.empty(total, dtype=np.int64)
    owner = np.empty(total, dtype=np.int64)
    row = 0
    for i, s in enumerate(sessions):
        keys = np.asarray(s, dtype=np.int64)
        keys = np.where(keys >= vocab_size, UNK, keys)
        padded = np.concatenate([np.full(history, PAD, dtype=np.int64), keys])
        n = keys.size
        idx = np.arange(n)[:, None] + np.arange(history)[None, :]  # (n, h) positions into ``padded``
        hist[row : row + n] = padded[idx]
        target[row : row + n] = keys
        owner[row : row + n] = i
        row += n
    return hist, target, owner


class NextKeyDetector(Detector):
    """DeepLog (``quantitative=False``) or LogAnomaly (``True``); score = missed positions of the session."""

    family = "sequence"

    def __init__(self, cfg: BaselineConfig, quantitative: bool) -> None:
        super().__init__()
        self.cfg = cfg
        self.quantitative = quantitative
        self.name = "loganomaly" if quantitative else "deeplog"

    def fit(self, fit: Sequence[Session], val: Sequence[Session]) -> None:
        cfg = self.cfg
        t0 = time.perf_counter()
        _check_sessions(fit, "fit")
        self.V = _vocab_size(fit, val)
        x, y, _ = next_key_samples(fit, cfg.history, self.V)
        vx, vy, _ = next_key_samples(val, cfg.history, self.V) if val else (x[:0], y[:0], None)
        xt, yt, vxt, vyt = map(torch.from_numpy, (x, y, vx, vy))
        with torch_threads(cfg.num_threads):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed)
                net = _NextKeyNet(self.V, cfg.hidden, cfg.layers, self.quantitative)
                opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
                gen = torch.Generator().manual_seed(cfg.seed)
                best, best_state, stale = float("inf"), None, 0
                for epoch in range(1, cfg.epochs + 1):
                    e0 = time.perf_counter()
                    net.train()
                    order = torch.randperm(len(xt), generator=gen)
                    total = 0.0
                    for s in range(0, len(order), cfg.batch_size):
                        b = order[s : s + cfg.batch_size]
                        loss = F.cross_entropy(net(xt[b]), yt[b])
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                        total += float(loss.detach()) * len(b)
                    val_loss = self._loss(net, vxt, vyt) if len(vxt) else total / len(xt)
                    self.history.append({"epoch": epoch, "train_loss": total / len(xt), "val_loss": val_loss,
                                         "seconds": time.perf_counter() - e0})
                    if val_loss < best:
                        best, stale = val_loss, 0
                        best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
                    else:
                        stale += 1
                        if stale >= cfg.patience:
                            break
                assert best_state is not None, "validation loss was never finite"
                net.load_state_dict(best_state)
        self.net = net.eval()
        self.fit_seconds = time.perf_counter() - t0

    def _loss(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
        net.eval()
        total = 0.0
        with torch.inference_mode():
            for s in range(0, len(x), 4096):
                total += float(F.cross_entropy(net(x[s : s + 4096]), y[s : s + 4096], reduction="sum"))
        return total / len(x)

    def missed(self, sessions: Sequence[Session]) -> tuple[np.ndarray, np.ndarray]:
        """(per position: missed?, per position: session index)."""
        x, y, owner = next_key_samples(sessions, self.cfg.history, self.V)
        out = np.empty(len(y), dtype=bool)
        with torch_threads(self.cfg.num_threads):
            with torch.inference_mode():
                for s in range(0, len(y), 4096):
                    logits = self.net(torch.from_numpy(x[s : s + 4096])).float()  # (b, V)
                    logits[:, :FIRST_KEY] = float("-inf")  # specials are never predictions
                    act = torch.from_numpy(y[s : s + 4096])
                    true = logits.gather(1, act[:, None])  # (b, 1); -inf for UNK
                    rank = (logits > true).sum(dim=1)
                    out[s : s + 4096] = ((rank >= self.cfg.top_g) | (act == UNK)).numpy()
        return out, owner

    def score(self, sessions: Sequence[Session]) -> np.ndarray:
        missed, owner = self.missed(sessions)
        return np.bincount(owner, weights=missed.astype(np.float64), minlength=len(sessions))


BASELINES = ("deeplog", "loganomaly", "pca", "iforest", "unseen_template", "unseen_set_exact", "unseen_set_subset",
             "unseen_count_vector", "length", "rare_key", "bert_ae")


def make_detector(name: str, cfg: BaselineConfig) -> Detector:
    """A fresh, unfitted detector by name (one of ``BASELINES``)."""
    factories = {
        "deeplog": lambda: NextKeyDetector(cfg, quantitative=False),
        "loganomaly": lambda: NextKeyDetector(cfg, quantitative=True),
        "pca": lambda: PCADetector(cfg.pca_variance),
        "iforest": lambda: IsolationForestDetector(cfg.n_estimators, cfg.seed),
        "unseen_template": UnseenTemplate,
        "unseen_set_exact": UnseenSetExact,
        "unseen_set_subset": UnseenSetSubset,
        "unseen_count_vector": UnseenCountVector,
        "length": LengthOutlier,
        "rare_key": RareKey,
        "bert_ae": lambda: _bert_ae(cfg),
    }
    if name not in factories:
        raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
    return factories[name]()


def _bert_ae(cfg: BaselineConfig) -> Detector:
    return BertAEDetector(BertAEConfig.from_baseline(cfg))


@dataclass(frozen=True)
class Calibrated:
    """A fitted detector with its threshold; ``flags`` applies the strict comparison."""

    detector: Detector
    threshold: float

    def flags(self, scores: np.ndarray) -> np.ndarray:
        return scores > self.threshold


def fit_and_calibrate(name: str, cfg: BaselineConfig, fit: Sequence[Session], val: Sequence[Session],
                      calib: Sequence[Session], target_fpr: float) -> Calibrated:
    """Fit on normal sessions, threshold on the held-out normal calibration sessions. No labels anywhere."""
    det = make_detector(name, cfg)
    det.fit(fit, val)
    return Calibrated(det, calibrate_threshold(det.score(calib), target_fpr))
