"""The training job: files -> sessions -> LogBERT -> calibrated thresholds -> evaluation -> bundle."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from logbert_core.bundle import save_bundle
from logbert_core.calibration import UNSEEN_TEMPLATE, State
from logbert_core.config import Settings, bundle_fields
from logbert_core.judge import NormalSession, RestStats, Verdict, WindowJudge
from logbert_core.novelty import forward_novelty, forward_unseen, forward_warning, routine_of
from logbert_core.parsing import TemplateIndex
from logbert_core.runtime import resolve_device
from logbert_core.vocab import Vocabulary
from training.crossfit import fit_decision, model_config
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
)

log = logging.getLogger(__name__)


@dataclass
class TrainReport:
    version: str
    out_dir: Path
    metrics: dict[str, Any]


def session_metrics(verdicts: Mapping[str, Sequence[Verdict]], labels: Mapping[str, bool]) -> dict[str, Any]:
    """Session-level confusion counts and P/R/F1: a session is flagged when any of its windows is."""
    tp = fp = fn = tn = 0
    by_reason: dict[str, int] = {}
    for sid, vs in verdicts.items():
        flagged = any(v.anomalous for v in vs)
        if flagged:
            for reason in {r for v in vs for r in v.reasons}:
                by_reason[reason] = by_reason.get(reason, 0) + 1
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


def rest_visits(settings: Settings, corpus: Corpus, ids: Sequence[str], index: TemplateIndex, vocab: Vocabulary
                ) -> dict[str, dict[State, tuple[int, int]]] | None:
    """Where each of these sessions went quiet (``session.rest_s`` or longer), for the premature-end rule; None
    when the rule is off or sessions are clock windows (they end at a window boundary, not where their logs stop)."""
    s = settings
    if not s.scoring.premature_end or s.session.kind == "field_window":
        return None
    lines = canonical_lines(corpus, ids, index, vocab, s.parser.unknown == "nearest")
    return {sid: RestStats.visits([(x.timestamp, x.key) for x in entries], s.session.rest_s, s.model.max_len,
                                  s.model.stride) for sid, entries in lines.items()}


def _duration(seconds: float) -> str:
    """A span of log time, in the unit a reader thinks in."""
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def history_span(starts: Sequence[float], ends: Sequence[float], lines: Sequence[int] | np.ndarray = ()
                 ) -> dict[str, Any]:
    """How much log time the normal history covers: the span of its sessions' first lines, against how long one
    session lasts (median of last line minus first line); with ``lines`` (each session's), how many lines a
    session holds, which the model rules' length classes depend on (``calibration.length_thresholds``). ``summary``
    says it in one sentence (``logad doctor`` shows it)."""
    first, last = np.asarray(starts, dtype=float), np.asarray(ends, dtype=float)
    span = float(first.max() - first.min()) if first.size else 0.0
    lasts = float(np.median(last - first)) if first.size else 0.0
    out: dict[str, Any] = {"sessions": int(first.size), "span_s": span, "session_s_p50": lasts}
    summary = (f"{first.size} normal sessions whose first lines span {_duration(span)} of log time, a session "
               f"lasting {_duration(lasts)} (median)")
    if len(lines):
        n = np.asarray(lines, dtype=float)
        out |= {"lines_p50": float(np.median(n)), "lines_p90": float(np.percentile(n, 90)), "lines_max": int(n.max())}
        summary += (f" and holding {out['lines_p50']:g} line(s) (median; 90 % hold at most {out['lines_p90']:g}, "
                    f"the longest {out['lines_max']})")
    return out | {"summary": summary}


def span_warning(span: Mapping[str, Any]) -> str | None:
    """A warning when the normal sessions all started within less time than one of them lasts: they were alive at
    the same time, so the history shows one stretch of the system's life. Leave-one-out sees no novelty in such a
    history (every session saw what the others saw), and whatever the system does at other times (other workloads,
    maintenance) may be new to the bundle. No statistic of the history can say how much: this is the one sign of it
    that the trainer can read (the benchmark's first 50 raw HDFS blocks started within 4.5 min and live 14 h; the
    decision fitted to them flags 99.7 % of later normal blocks, docs/evaluation.md)."""
    n, width, lasts = span["sessions"], span["span_s"], span["session_s_p50"]
    if n < 2 or width >= lasts:
        return None
    return (f"the {n} normal sessions of the history all started within {_duration(width)} of log time, less than "
            f"one of them lasts (median {_duration(lasts)}): the history is one stretch of the system's life, and "
            "what it does at other times may be new to the bundle, with more false positives than promised; "
            "train on sessions from a longer period")


def train_bundle(settings: Settings, inputs: Sequence[str | Path], out_dir: str | Path,
                 labels_csv: str | Path | None = None, progress: bool = True, source: str | None = None
                 ) -> TrainReport:
    """``source``: how error messages name the input (default: the input paths; ``raw_protocol`` trains on a
    temporary part of the user's files)."""
    t0 = time.perf_counter()
    s = settings
    name = source or describe(inputs)
    given = load_labels(labels_csv) if labels_csv else None  # a bad labels file fails before the logs are read
    corpus = read_corpus(inputs, s.line_reader())
    if not corpus.sessions:
        raise no_sessions(name, corpus.rejected)
    if given is not None and labels_csv:
        check_labels(given, corpus.sessions, labels_csv, name)
    labels = given if given is not None else inline_labels(corpus)
    order = corpus.chronological()
    anomalous = [sid for sid in order if labels.get(sid, False)]
    normal = [sid for sid in order if not labels.get(sid, False)]
    log.info("%d lines, %d sessions (%d anomalous kept out of training, %d normal)", len(corpus.records),
             len(order), len(anomalous), len(normal))

    # Every statistic the bundle judges by comes from all normal history: templates first.
    index = TemplateIndex(s.drain_params())
    vocab = mine_templates(corpus, normal, index)
    nearest = s.parser.unknown == "nearest"
    # Levels at which new templates are routine in this history (logbert_core.novelty): they get a key of their own.
    records = corpus.records  # each normal line's (level, template), looked up once for both uses below
    levelled = [[(records[i].level, index.lookup(records[i].content).template_id) for i in corpus.sessions[sid]]
                for sid in normal]
    novelty = forward_novelty(levelled, s.scoring.routine_levels, s.scoring.target_fpr)
    vocab = vocab.with_routine_levels(n.level for n in novelty if n.routine)
    routine = routine_of(levelled, vocab, novelty)
    if routine.counts:
        log.info("new templates are routine at level(s) %s: %s", ", ".join(vocab.routine_levels),
                 "; ".join(f"{n.level} in {n.sessions} of {n.of} later normal sessions" for n in novelty if n.routine))
    live = s.train.live_windows and s.session.kind != "field_window"  # clock windows end at the clock, not in quiet
    windows = build_windows(corpus, order, index, vocab, nearest, s.model.max_len, s.model.stride,
                            s.session.idle_timeout_s if live else None, rest_s=s.session.rest_s)
    t_parse = time.perf_counter() - t0
    visits = rest_visits(s, corpus, normal, index, vocab)
    rest = (RestStats.merge(visits.values(), s.session.rest_s, s.model.max_len, s.model.stride)
            if visits is not None else None)
    sessions = [NormalSession(windows[sid].windows, windows[sid].quiet_seen(), visits[sid] if visits else {})
                for sid in normal]
    model_cfg = model_config(s, vocab.size)
    try:
        fd = fit_decision(s, model_cfg, normal, sessions, rest, progress, routine)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from exc
    result, cal = fd.result, fd.cal
    judge, thresholds, known_sets = cal.judge, cal.thresholds, cal.known_sets

    # In-period evaluation: the anomalies of the training period, judged by the shipped decision (no anomaly is in
    # any statistic); the false-positive side is the calibration's own leave-one-out / out-of-fold estimate.
    ev = session_metrics(judge_sessions(judge, {sid: windows[sid] for sid in anomalous}), labels)
    caught = ev["tp"]
    recall = caught / len(anomalous) if anomalous else None
    promise = cal.promise
    warnings = list(promise.warnings)
    # what leave-one-out cannot see: new templates in bursts (logbert_core.novelty), stated beside the promise
    forward = forward_unseen(levelled, vocab.routine_levels)
    drift = forward_warning(promise, forward)
    if drift is not None:
        warnings.append(drift)
    lengths = np.array([windows[sid].n_lines for sid in normal])
    span = history_span([windows[sid].first_ts for sid in normal], [windows[sid].last_ts for sid in normal], lengths)
    concurrent = span_warning(span)
    if concurrent is not None:
        warnings.append(concurrent)
    if recall is not None and recall < s.train.expected_recall:
        warnings.append(f"in-period recall {recall:.3f} ({caught} of {len(anomalous)} anomalies of the training "
                        f"period) is below train.expected_recall = {s.train.expected_recall}")
    for w in warnings:
        log.warning("%s: %s", name, w)
    metrics: dict[str, Any] = {
        "data": {"inputs": [str(p) for p in inputs], "sha256": corpus.fingerprint, "lines": len(corpus.records),
                 "rejected_lines": dict(corpus.rejected), "sessions": len(order), "anomalous_sessions": len(anomalous),
                 "labels": str(labels_csv) if labels_csv else "inline" if labels else "none",
                 "split": {"train": fd.split["fit"], "val": fd.split["val"], "calib": fd.split["calib"],
                           "normal": len(normal),
                           "rule": "normal sessions ordered by first timestamp; templates, template sets, key counts "
                                   "and rests from all of them; the last "
                                   f"{s.train.val_fraction} validation (early stopping); model calibration: "
                                   + fd.mode},
                 "templates": vocab.n_templates, "train_windows": sum(len(x.windows) for x in sessions),
                 "live_windows": live,
                 "train_session_len_p50_p99": [float(np.percentile(lengths, 50)), float(np.percentile(lengths, 99))],
                 "history": span},
        "training": {"best_epoch": result.best_epoch, "history": result.history, "seconds": round(result.seconds, 1),
                     "crossfit_seconds": round(fd.fold_seconds, 1), "parse_seconds": round(t_parse, 1),
                     "device": str(resolve_device(s.train.device))},
        "thresholds": thresholds.to_json(),
        "calibration": {"mode": fd.mode, **promise.to_json(),
                        "novelty_forward": [n.to_json() for n in novelty],
                        "forward_unseen": {"sessions": forward[0], "of": forward[1],
                                           "rate": round(forward[0] / forward[1], 5) if forward[1] else None,
                                           "rule_on": UNSEEN_TEMPLATE in promise.rules}},
        "in_period_eval": {"anomalies": len(anomalous), "caught": caught,
                           "recall": round(recall, 4) if recall is not None else None,
                           "fpr_estimate": round(promise.fpr, 5), "fpr_upper_95": round(promise.fpr_upper, 5),
                           "flagged_by_reason": ev["flagged_by_reason"]},
        "warnings": warnings,
    }
    warm = frequent_windows((w for x in sessions for w in x.windows), s.train.warm_windows)
    version = save_bundle(out_dir, family=s.log.family, model_config=model_cfg, state_dict=result.state_dict,
                          center=result.center, vocab=vocab, drain_params=s.drain_params(),
                          drain_state=index.state(), settings=bundle_fields(s), thresholds=thresholds,
                          known_sets=known_sets, key_counts=cal.key_counts.counts,
                          rest=rest, metrics=metrics,
                          warm_windows=warm)
    metrics["total_seconds"] = round(time.perf_counter() - t0, 1)
    (Path(out_dir) / "metrics.json").write_text(json.dumps({"version": version, **metrics}, indent=1) + "\n")
    return TrainReport(version, Path(out_dir), metrics)
