"""What every baseline detector is: a config, the ``Detector`` interface, the product's calibration rule and the
checks they share. Its own module so that ``baselines`` (the registry) and ``bert_ae`` (one of them) both import it
and not each other."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from logbert_core.vocab import FIRST_KEY, UNK

Session = Sequence[int]  # template keys of one session, in the canonical order


@dataclass(frozen=True)
class BaselineConfig:
    """Hyper-parameters of the learned baselines; small on purpose (CPU, seconds each)."""

    top_g: int = 5  # DeepLog / LogAnomaly: a key outside the top-g predictions is a miss
    history: int = 10  # keys of context before the predicted one (DeepLog's h)
    hidden: int = 64
    layers: int = 2
    epochs: int = 10
    batch_size: int = 256
    lr: float = 2e-3
    patience: int = 2
    seed: int = 1234
    pca_variance: float = 0.95
    n_estimators: int = 100
    num_threads: int | None = None  # torch CPU threads while fitting and scoring (restored afterwards)

    def __post_init__(self) -> None:
        require_positive(self, ("top_g", "history", "hidden", "layers", "epochs", "batch_size", "patience",
                                "n_estimators"))
        if not 0 < self.pca_variance < 1:
            raise ValueError(f"BaselineConfig.pca_variance={self.pca_variance} must be in (0, 1)")


def require_positive(cfg: object, names: Sequence[str]) -> None:
    """Raise a ``ValueError`` naming the first of ``cfg``'s fields ``names`` that is below 1."""
    for name in names:
        if getattr(cfg, name) < 1:
            raise ValueError(f"{type(cfg).__name__}.{name}={getattr(cfg, name)} must be >= 1")


def calibrate_threshold(normal_scores: Sequence[float] | np.ndarray, target_fpr: float) -> float:
    """The product's rule: the ``1 - target_fpr`` quantile (method "higher") of held-out normal scores.

    A session is flagged when its score is strictly greater. Takes scores only: labels cannot reach it.
    """
    scores = np.asarray(normal_scores, dtype=np.float64)
    if scores.size == 0:
        raise ValueError("calibration needs at least one held-out normal session")
    if not 0 < target_fpr < 1:
        raise ValueError(f"target_fpr={target_fpr} must be in (0, 1)")
    return float(np.quantile(scores, 1.0 - target_fpr, method="higher"))


class Detector(ABC):
    """A session scorer: ``fit`` on normal sessions, ``score`` any sessions (higher = more anomalous)."""

    name: str = ""
    family: str = ""  # "sequence", "count vector", "autoencoder", "exact", "statistic"

    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []  # per epoch, for detectors that learn iteratively
        self.fit_seconds = 0.0

    @abstractmethod
    def fit(self, fit: Sequence[Session], val: Sequence[Session]) -> None: ...

    @abstractmethod
    def score(self, sessions: Sequence[Session]) -> np.ndarray:
        """(N,) float64 scores."""


def _check_sessions(sessions: Sequence[Session], what: str) -> None:
    if not sessions:
        raise ValueError(f"{what} is empty")
    for i, s in enumerate(sessions):
        if len(s) == 0:
            raise ValueError(f"{what}[{i}] is an empty session")


# -- count vectors ------------------------------------------------------------------------------------------------
def count_matrix(sessions: Sequence[Session], vocab_size: int) -> np.ndarray:
    """(N, V) key counts; keys at or above ``vocab_size`` (never seen in fit) count as ``UNK``."""
    X = np.zeros((len(sessions), vocab_size), dtype=np.float64)
    for i, s in enumerate(sessions):
        keys = np.asarray(s, dtype=np.int64)
        keys = np.where(keys >= vocab_size, UNK, keys)
        np.add.at(X[i], keys, 1.0)
    return X


def _vocab_size(*parts: Sequence[Session]) -> int:
    top = max((max(s) for part in parts for s in part), default=FIRST_KEY)
    return max(int(top) + 1, FIRST_KEY)
