"""The training job: files -> sessions -> LogBERT -> calibrated thresholds -> evaluation -> bundle."""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from logbert_core.bundle import save_bundle
from logbert_core.config import Settings, bundle_fields
from logbert_core.judge import RestStats, Verdict, WindowJudge, calibrated_judge
from logbert_core.model import LogBERT, LogBERTConfig
from logbert_core.parsing import TemplateIndex
from logbert_core.scoring import WindowScorer
from logbert_core.vocab import Vocabulary
from training.data import (
    Corpus,
    SessionWindows,
    build_windows,
    canonical_lines,
    check_labels,
    describe,
    inline_labels,
    load_labels,
    mine_templates,
    no_sessions,
    read_corpus,
    split_chronological,
)
from training.fit import FitResult, TrainConfig, fit

log = logging.getLogger(__name__)


@dataclass
class TrainReport:
    version: str
    out_dir: Path
    metrics: dict[str, Any]


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def session_metrics(verdicts: Mapping[str, Sequence[Verdict]], labels: Mapping[str, bool]) -> dict[str, Any]:
    """Session-level confusion counts and P/R/F1: a session is flagged when any of its windows is."""
    tp = fp = fn = tn = 0
    by_reason: dict[str, int] = {}
    for sid, vs in verdicts.items():
        flagged = any(v.anomalous for v in vs)
        if flagged:
            for r in {r for v in vs for r in v.reasons}:
                by_reason[r] = by_reason.get(r, 0) + 1
        truth = labels.get(sid, False)
        tp += flagged and truth
        fp += flagged and not truth
        fn += (not flagged) and truth
        tn += (not flagged) and not truth
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    fpr = fp / (fp + tn) if fp + tn else 0.0
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "precision": round(p, 4), "recall": round(r, 4),
            "f1": round(f1, 4), "fpr": round(fpr, 5), "flagged_by_reason": dict(sorted(by_reason.items()))}


def judge_sessions(judge: WindowJudge, sessions: Mapping[str, SessionWindows]) -> dict[str, list[Verdict]]:
    flat = [(sid, w) for sid, sw in sessions.items() for w in sw.windows]
    seen = [q for sw in sessions.values() for q in sw.quiet_seen()]
    verdicts = judge.judge([w for _, w in flat], seen) if flat else []
    out: dict[str, list[Verdict]] = {sid: [] for sid in sessions}
    for (sid, _), v in zip(flat, verdicts):
        out[sid].append(v)
    return out


def frequent_windows(windows: Iterable[Sequence[int]], limit: int, min_count: int = 2) -> list[list[int]]:
    """The ``limit`` most frequent windows that occur at least ``min_count`` times, most frequent first (ties in
    key order, so the same data gives the same list)."""
    counts = Counter(tuple(w) for w in windows)
    ranked = sorted((kv for kv in counts.items() if kv[1] >= min_count), key=lambda kv: (-kv[1], kv[0]))
    return [list(w) for w, _ in ranked[:limit]]


def rest_stats(settings: Settings, corpus: Corpus, fit_ids: Sequence[str], index: TemplateIndex,
               vocab: Vocabulary) -> RestStats | None:
    """Where the fit sessions went quiet (``session.rest_s`` or longer), for the premature-end rule; None
    when the rule is off or sessions are clock windows (they end at a window boundary, not where their logs stop)."""
    s = settings
    if not s.scoring.premature_end or s.session.kind == "field_window":
        return None
    lines = canonical_lines(corpus, fit_ids, index, vocab, s.parser.unknown == "nearest")
    timed = [[(x.timestamp, x.key) for x in entries] for entries in lines.values()]
    return RestStats.of(timed, s.session.rest_s, s.model.max_len, s.model.stride)


def train_bundle(settings: Settings, inputs: Sequence[str | Path], out_dir: str | Path,
                 labels_csv: str | Path | None = None, progress: bool = True, source: str | None = None
                 ) -> TrainReport:
    """``source``: how error messages name the input (default: the input paths; ``raw_protocol`` trains on a
    temporary part of the user's files)."""
    t0 = time.perf_counter()
    s = settings
    name = source or describe(inputs)
    fmt = s.line_format()
    given = load_labels(labels_csv) if labels_csv else None  # a bad labels file fails before the logs are read
    corpus = read_corpus(inputs, fmt)
    if not corpus.sessions:
        raise no_sessions(name, corpus.rejected)
    if given is not None and labels_csv:
        check_labels(given, corpus.sessions, labels_csv, name)
    labels = given if given is not None else inline_labels(corpus)
    order = corpus.chronological()
    anomalous = [sid for sid in order if labels.get(sid, False)]
    normal = [sid for sid in order if not labels.get(sid, False)]
    train_ids, val_ids, calib_ids = split_chronological(normal, [s.train.val_fraction, s.train.calib_fraction])
    if not train_ids or not val_ids or not calib_ids:
        raise ValueError(f"{name}: too few normal sessions ({len(normal)}) to split into train/validation/"
                         "calibration")
    log.info("%d lines, %d sessions (%d anomalous kept out of training); train %d, val %d, calib %d",
             len(corpus.records), len(order), len(anomalous), len(train_ids), len(val_ids), len(calib_ids))

    index = TemplateIndex(s.drain_params())
    vocab = mine_templates(corpus, train_ids, index)
    nearest = s.parser.unknown == "nearest"
    live = s.train.live_windows and s.session.kind != "field_window"  # clock windows end at the clock, not in quiet
    windows = build_windows(corpus, order, index, vocab, nearest, s.model.max_len, s.model.stride,
                            s.session.idle_timeout_s if live else None, rest_s=s.session.rest_s)
    t_parse = time.perf_counter() - t0

    def flat(ids: Sequence[str]) -> list[list[int]]:
        return [w for sid in ids for w in windows[sid].windows]

    model_cfg = LogBERTConfig(vocab_size=vocab.size, max_len=s.model.max_len, n_layer=s.model.n_layer,
                              n_head=s.model.n_head, n_embd=s.model.n_embd, dropout=s.model.dropout,
                              hypersphere_weight=s.model.hypersphere_weight)
    tc = TrainConfig(epochs=s.train.epochs, batch_size=s.train.batch_size, lr=s.train.lr,
                     mask_ratio=s.train.mask_ratio, patience=s.train.patience, seed=s.train.seed,
                     device=s.train.device, bf16=s.train.bf16, progress=progress)
    result: FitResult = fit(flat(train_ids), flat(val_ids), model_cfg, tc)

    device = resolve_device(s.train.device)
    model = LogBERT(model_cfg)
    model.load_state_dict(result.state_dict)
    model.to(device).eval()
    scorer = WindowScorer(model, result.center.to(device), top_g=s.scoring.top_g, mask_copies=s.scoring.mask_copies,
                          device=device, n_candidates=s.scoring.n_candidates, threads=s.train.scoring_threads,
                          buckets=tuple(b for b in s.detector.buckets if b < s.model.max_len) + (s.model.max_len,))
    sc = s.scoring
    rest = rest_stats(s, corpus, train_ids, index, vocab)
    cal = calibrated_judge(scorer, flat(train_ids), flat(val_ids), flat(calib_ids), target_fpr=sc.target_fpr,
                           novel_template=sc.novel_template, novel_template_set=sc.novel_template_set,
                           use_distance=sc.use_distance, distance_margin=sc.distance_margin,
                           rare_template=sc.rare_template, rest=rest, surprise_floor=sc.premature_min_surprise,
                           calib_seen=[q for sid in calib_ids for q in windows[sid].quiet_seen()])
    judge, thresholds, known_sets = cal.judge, cal.thresholds, cal.known_sets

    # In-period evaluation: held-out normal sessions (calibration set) against the anomalies of the same period.
    # Thresholds were fixed above without these labels; the real test is later logs streamed through `logad run`.
    eval_ids = calib_ids + anomalous
    verdicts = judge_sessions(judge, {sid: windows[sid] for sid in eval_ids})
    ev = session_metrics(verdicts, labels)
    lengths = np.array([windows[sid].n_lines for sid in train_ids])
    metrics: dict[str, Any] = {
        "data": {"inputs": [str(p) for p in inputs], "sha256": corpus.fingerprint, "lines": len(corpus.records),
                 "rejected_lines": dict(corpus.rejected), "sessions": len(order), "anomalous_sessions": len(anomalous),
                 "labels": str(labels_csv) if labels_csv else "inline" if labels else "none",
                 "split": {"train": len(train_ids), "val": len(val_ids), "calib": len(calib_ids),
                           "rule": "normal sessions ordered by first timestamp; last "
                                   f"{s.train.calib_fraction} calibration, {s.train.val_fraction} before it validation"},
                 "templates": vocab.size - 4, "train_windows": len(flat(train_ids)), "live_windows": live,
                 "train_session_len_p50_p99": [float(np.percentile(lengths, 50)), float(np.percentile(lengths, 99))]},
        "training": {"best_epoch": result.best_epoch, "history": result.history, "seconds": round(result.seconds, 1),
                     "parse_seconds": round(t_parse, 1), "device": device},
        "thresholds": {"miss_ratio": thresholds.miss_ratio, "distance": thresholds.distance,
                       "rare": thresholds.rare if math.isfinite(thresholds.rare) else None,
                       "premature": thresholds.premature if math.isfinite(thresholds.premature) else None,
                       "method": thresholds.method},
        "in_period_eval": {"sessions": "calibration normals + anomalies of the training period", **ev},
    }
    warm = frequent_windows(flat(train_ids + val_ids + calib_ids), s.train.warm_windows)
    version = save_bundle(out_dir, family=s.log.family, model_config=model_cfg, state_dict=result.state_dict,
                          center=result.center, vocab=vocab, drain_params=s.drain_params(),
                          drain_state=index.state(), settings=bundle_fields(s), thresholds=thresholds,
                          known_sets=known_sets, key_counts=cal.key_counts.counts,
                          rest=rest.to_json() if rest is not None else None, metrics=metrics,
                          warm_windows=warm)
    metrics["total_seconds"] = round(time.perf_counter() - t0, 1)
    (Path(out_dir) / "metrics.json").write_text(json.dumps({"version": version, **metrics}, indent=1) + "\n")
    return TrainReport(version, Path(out_dir), metrics)
