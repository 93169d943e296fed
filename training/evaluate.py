"""Offline evaluation of a bundle on log files: the detector's decision, computed in batch.

Sessions, windows and verdicts come from the same functions the streaming detector runs, so these figures are what
``logad run`` produces on the same lines (a test holds the two equal).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from logbert_core.bundle import Bundle
from logbert_core.config import Settings
from logbert_core.judge import Verdict
from logbert_core.runtime import build_judge
from training.data import SessionWindows, build_windows, check_labels, describe, load_labels, read_corpus
from training.train import judge_sessions, session_metrics


def learned_pause(bundle: Bundle) -> float | None:
    """The pause length ``premature_end`` learned (``RestStats.quiet_s``), or None when the bundle learned none."""
    return bundle.rest.quiet_s if bundle.rest is not None else None


def offline_windows(bundle: Bundle, settings: Settings, inputs: Sequence[str | Path], finished: bool = False
                    ) -> dict[str, SessionWindows]:
    """The detector's windows of these files. A session whose last line came less than the pause length the bundle
    learned before the data's end is marked as not seen to stop (``SessionWindows.seen``), as the detector treats
    the end of its input; ``finished``: every session is complete (as ``POST /detect`` takes its sessions)."""
    corpus = read_corpus(inputs, settings.line_reader())
    return build_windows(corpus, corpus.chronological(), bundle.template_index(), bundle.vocab,
                         settings.parser.unknown == "nearest", bundle.model_config.max_len, settings.model.stride,
                         rest_s=None if finished else learned_pause(bundle))


def evaluate_bundle(bundle: Bundle, settings: Settings, inputs: Sequence[str | Path],
                    labels_csv: str | Path | None, device: str = "cpu", finished: bool = False
                    ) -> tuple[dict[str, list[Verdict]], dict[str, Any]]:
    labels = load_labels(labels_csv) if labels_csv else {}
    windows = offline_windows(bundle, settings, inputs, finished)
    if labels_csv:
        check_labels(labels, windows, labels_csv, describe(inputs))
    verdicts = judge_sessions(build_judge(bundle, settings, device, threads=settings.train.scoring_threads), windows)
    return verdicts, session_metrics(verdicts, labels)
