"""Evaluation protocols behind ``logad-train evaluate``: data -> split -> LogBERT and baselines -> per-method results.

Two ways in, one split shape, one calibration rule:

* ``raw_protocol`` (the product path): raw log lines -> sessions with the detector's own code. All sessions are
  ordered by their first timestamp; the latest ``test_fraction`` is the *test-within-period* split. The earlier
  sessions are what ``logad-train`` trains on (``train_bundle``, unchanged): its normal sessions split chronologically
  into fit / validation / calibration (``train.val_fraction``, ``train.calib_fraction``). Anomalous sessions of the
  earlier period are never trained on; they join the validation normals to form the labelled *validation* set
  (model selection only). The test split is read once per run, after every threshold is fixed.
* ``sequence_protocol`` (model-level comparison with published figures): pre-parsed sessions of event ids, e.g.
  DeepLog's 4,855 normal HDFS training sessions (file order -> fit / validation / calibration) and a test set of
  anomalous and normal sessions from other files. Windows come from ``logbert_core.windows.session_windows``.

Every method's threshold comes from the calibration sessions (normal by construction) at ``scoring.target_fpr``;
labels only ever decide which sessions are kept out of training and how results are counted.
"""

from __future__ import annotations

import csv
import logging
import math
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from logbert_core.bundle import Bundle, Thresholds, load_bundle
from logbert_core.config import ScoringSection, Settings
from logbert_core.ingest import Rejected
from logbert_core.judge import DISTANCE, KEY_MISSES, NormalSession, RestStats, Verdict, WindowJudge
from logbert_core.runtime import build_judge, resolve_device
from logbert_core.scoring import WindowScore
from logbert_core.vocab import FIRST_KEY, UNK
from logbert_core.windows import session_windows
from training.baselines import BASELINES, BaselineConfig, Calibrated, Session, calibrate_threshold, fit_and_calibrate
from training.complete_logs import CompleteConfig, CompleteLogDetector, ParamExtractor, SessionLines, line_features
from training.crossfit import crossfits, fit_decision, model_config
from training.data import (
    Corpus,
    SessionWindows,
    build_windows,
    canonical_lines,
    describe,
    file_fingerprint,
    inline_labels,
    iter_lines,
    load_labels,
    read_corpus,
    split_chronological,
)
from training.evaluate import learned_pause
from training.split import INTERLEAVE_BLOCK, split_files
from training.train import judge_sessions, train_bundle

log = logging.getLogger(__name__)

LOGBERT = "logbert"  # the product's decision: every enabled rule of logbert_core.judge
LOGBERT_MODEL = "logbert_model_rules"  # the learned rules only (key misses, and distance where enabled)
LOGBERT_KEYS = "logbert_key_misses"  # the paper's rule: masked-key misses only
LOGBERT_EXACT = "logbert_without_model"  # the shipped decision's exact rules only: what the model adds is the rest
LOGBERT_COMPLETE = "logbert_complete"  # key + time gap + parameters per line (training.complete_logs); raw only
COMPLETE_MEAN = "logbert_complete_mean"  # the same fit, key, gap and parameter misses pooled into one ratio
COMPLETE_KEYS = "logbert_complete_key_misses"  # the same fit, key misses only
COMPLETE_EXTRAS = "logbert_complete_gap_param_misses"  # the same fit, gap and parameter misses only
METHODS = (LOGBERT, *BASELINES)  # what "all" runs, on either protocol
RAW_METHODS = (*METHODS, LOGBERT_COMPLETE)  # every method the raw-line protocol accepts


@dataclass
class Split:
    """Session ids of every part; ``rule`` says in words how they were cut."""

    fit: list[str]
    val: list[str]
    calib: list[str]
    test: list[str]
    val_anomalous: list[str]  # anomalies of the earlier period: validation (model selection) only, never fitted
    rule: str

    def counts(self, labels: Mapping[str, bool]) -> dict[str, Any]:
        return {"fit": len(self.fit), "val": len(self.val), "calib": len(self.calib), "test": len(self.test),
                "test_anomalous": sum(labels.get(s, False) for s in self.test),
                "val_anomalous": len(self.val_anomalous)}


@dataclass
class EvalData:
    """The sessions of one protocol: full key sequences, the detector's windows, labels and the split."""

    protocol: str
    sessions: dict[str, list[int]]  # session id -> template keys in the canonical order
    windows: dict[str, list[list[int]]]  # session id -> the windows the detector scores
    labels: dict[str, bool]  # session id -> anomalous; sessions not listed are normal
    labelled: bool  # False: no labels at all (test figures are then flag rates, not P/R)
    split: Split
    data: dict[str, Any] = field(default_factory=dict)  # inputs, fingerprints, parse statistics, notes
    lines: dict[str, SessionLines] | None = None  # raw protocol, on request: per-line gaps and parameters
    # raw protocol: per window of ``windows``, whether the quiet after it was seen (``SessionWindows.seen``);
    # premature_end does not judge the others, as the detector does. Sessions not listed: every one was seen
    quiet: dict[str, list[bool]] = field(default_factory=dict)

    def end_unseen(self, sid: str) -> bool:
        """Whether the session ended too close to the end of the data for its quiet to be seen."""
        q = self.quiet.get(sid)
        return q is not None and bool(q) and not q[-1]

    def seqs(self, ids: Iterable[str]) -> list[Session]:
        return [self.sessions[s] for s in ids]

    def flat_windows(self, ids: Iterable[str]) -> list[list[int]]:
        return [w for s in ids for w in self.windows[s]]

    def truth(self, ids: Sequence[str]) -> np.ndarray:
        return np.array([self.labels.get(s, False) for s in ids], dtype=bool)

    @property
    def validation_ids(self) -> list[str]:
        return self.split.val + self.split.val_anomalous


@dataclass
class MethodResult:
    name: str
    family: str
    threshold: Any  # a float, or a dict of thresholds (LogBERT)
    test_scores: np.ndarray  # (n_test,) aligned with ``EvalData.split.test``
    test_flags: np.ndarray
    val_scores: np.ndarray  # (n_val,) aligned with ``EvalData.validation_ids``
    val_flags: np.ndarray
    test: dict[str, Any]
    validation: dict[str, Any]
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    notes: str = ""
    # the shipped decision only: session id -> the rules that fired in any of its windows (validation and test)
    reasons: dict[str, tuple[str, ...]] = field(default_factory=dict)


def binary_metrics(flags: np.ndarray, truth: np.ndarray, scores: np.ndarray | None = None) -> dict[str, Any]:
    """Session-level P/R/F1/FPR and, given scores, AUC-PR (average precision; None without both classes)."""
    flags, truth = np.asarray(flags, dtype=bool), np.asarray(truth, dtype=bool)
    tp = int((flags & truth).sum())
    fp = int((flags & ~truth).sum())
    fn = int((~flags & truth).sum())
    tn = int((~flags & ~truth).sum())
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    out: dict[str, Any] = {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "precision": round(p, 4), "recall": round(r, 4),
                           "f1": round(f1, 4), "fpr": round(fp / (fp + tn), 5) if fp + tn else None,
                           "flag_rate": round(float(flags.mean()), 5) if flags.size else None}
    auc = None
    if scores is not None and truth.any() and not truth.all():
        from sklearn.metrics import average_precision_score

        auc = round(float(average_precision_score(truth, np.asarray(scores, dtype=np.float64))), 4)
    out["auc_pr"] = auc
    return out


# -- LogBERT -----------------------------------------------------------------------------------------------------
def _tail_rank(calib: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Monotone map of scores onto their place among calibration normals: the empirical CDF in [0, 1], and past the
    largest calibration score ``1 + log1p(excess / |max|)``, so that far-out scores stay ordered."""
    ref = np.sort(calib)
    cdf = np.searchsorted(ref, x, side="left") / len(ref)
    top = ref[-1]
    excess = np.maximum(x - top, 0.0)
    return np.where(x > top, 1.0 + np.log1p(excess / (abs(top) + 1e-9)), cdf)


@dataclass
class LogBERTRun:
    judge: WindowJudge
    calib_scores: list[WindowScore]  # model scores of calibration windows: where a session's score ranks (PR)
    history: list[dict[str, float]]
    seconds: float
    notes: str = ""


def logbert_results(run: LogBERTRun, data: EvalData, scoring: ScoringSection, include_test: bool = True
                    ) -> list[MethodResult]:
    """The product decision and its learned parts, on the validation (and, with ``include_test``, test) sessions.

    Session score for the PR curve: 2 if an exact-evidence rule fired in any window, plus the largest of the window's
    model scores expressed as a rank among calibration windows (``_tail_rank``); the decision itself is the judge's.
    """
    th = run.judge.thresholds
    use_distance = scoring.use_distance
    cal_miss = np.array([s.miss_ratio for s in run.calib_scores])
    cal_dist = np.array([s.distance for s in run.calib_scores])
    test_ids = data.split.test if include_test else []
    ids = data.validation_ids + test_ids
    sub = {sid: SessionWindows(sid, data.windows[sid], 0.0, 0.0, len(data.sessions[sid]), seen=data.quiet.get(sid))
           for sid in ids}
    t0 = time.perf_counter()
    verdicts = judge_sessions(run.judge, sub)
    seconds = run.seconds + time.perf_counter() - t0

    def columns(vs: list[Verdict]) -> tuple[tuple[bool, bool, bool, bool], tuple[float, float, float, float]]:
        miss = np.array([v.score.miss_ratio for v in vs])
        dist = np.array([v.score.distance for v in vs])
        keys = miss > np.array([th.model(KEY_MISSES, v.score.length) for v in vs])
        model = keys | (dist > np.array([th.model(DISTANCE, v.score.length) for v in vs])) if use_distance else keys
        exact = any(r not in (KEY_MISSES, DISTANCE) for v in vs for r in v.reasons)
        r_keys = _tail_rank(cal_miss, miss)
        r_model = np.maximum(r_keys, _tail_rank(cal_dist, dist)) if use_distance else r_keys
        flags = (any(v.anomalous for v in vs), bool(model.any()), bool(keys.any()), exact)
        return flags, (float(r_model.max()) + (2.0 if exact else 0.0), float(r_model.max()), float(r_keys.max()),
                       1.0 if exact else 0.0)

    table = {sid: columns(verdicts[sid]) for sid in ids}
    fired = {sid: tuple(sorted({r for v in verdicts[sid] if v.anomalous for r in v.reasons})) for sid in ids}
    n_val = len(data.validation_ids)
    out = []
    specs = ((LOGBERT, "all enabled rules of logbert_core.judge (the shipped decision)"),
             (LOGBERT_MODEL, "learned rules only: masked-key misses" + (" or distance" if use_distance else "")),
             (LOGBERT_KEYS, "masked-key misses only (the LogBERT paper's rule), our calibration"),
             (LOGBERT_EXACT, "the shipped decision without the model: its exact rules, at the same thresholds"))
    shown = {"miss_ratio": th.miss_ratio, **({"distance": th.distance} if use_distance else {})}
    rules = {**shown, **{k: v for k, v in (("rare", th.rare), ("premature", th.premature), ("unseen", th.unseen),
                                           ("unseen_set", th.unseen_set)) if math.isfinite(v)},
             **({"promise": th.promise.to_json()} if th.promise is not None else {})}
    for col, (name, note) in enumerate(specs):
        flags = np.array([table[s][0][col] for s in ids], dtype=bool)
        scores = np.array([table[s][1][col] for s in ids], dtype=np.float64)
        out.append(MethodResult(
            name=name, family="LogBERT", threshold=rules if name == LOGBERT else shown,
            test_scores=scores[n_val:], test_flags=flags[n_val:], val_scores=scores[:n_val], val_flags=flags[:n_val],
            test=binary_metrics(flags[n_val:], data.truth(test_ids), scores[n_val:]) if include_test else {},
            validation=binary_metrics(flags[:n_val], data.truth(data.validation_ids), scores[:n_val]),
            seconds=round(seconds, 1), history=run.history if name == LOGBERT else [], notes=note,
            reasons=fired if name == LOGBERT else {}))
    return out


def fit_logbert(data: EvalData, settings: Settings, vocab_size: int, progress: bool = False) -> LogBERTRun:
    """LogBERT fitted and calibrated on windows directly, with the product's own pieces (``fit_decision``, as
    ``train_bundle`` does)."""
    s = settings
    t0 = time.perf_counter()
    sp = data.split
    normal_ids = sp.fit + sp.val + sp.calib
    ml, st = s.model.max_len, s.model.stride
    visits: dict[str, dict[Any, tuple[int, int]]] = {}
    rest = None
    if data.protocol == "sequences" and s.scoring.premature_end:
        # Each sequence is a whole session and carries no timestamps: its end is where it rested, and it rested
        # nowhere else (a live detector would also see pauses; with none known, the rule only gets stricter).
        visits = {sid: RestStats.visits([(float(i), k) for i, k in enumerate(data.sessions[sid])], math.inf, ml, st)
                  for sid in normal_ids}
        rest = RestStats.merge(visits.values(), math.inf, ml, st)
    normal = [NormalSession(data.windows[sid], data.quiet.get(sid), visits.get(sid, {})) for sid in normal_ids]
    fd = fit_decision(s, model_config(s, vocab_size), normal_ids, normal, rest, progress)
    return LogBERTRun(fd.cal.judge, fd.cal.calib_scores, fd.result.history, time.perf_counter() - t0,
                      "model rules calibrated on " + fd.mode)


def bundle_run(bundle: Bundle, settings: Settings, data: EvalData, history: list[dict[str, float]],
               seconds: float, mode: str) -> LogBERTRun:
    """The shipped bundle's judge. Calibration windows are scored only to rank sessions for the PR curve."""
    judge = build_judge(bundle, settings, resolve_device(settings.train.device),
                        threads=settings.train.scoring_threads)
    calib_scores = judge.scorer.score(data.flat_windows(data.split.calib))
    return LogBERTRun(judge, calib_scores, history, seconds, f"model rules calibrated on {mode}")


# -- baselines ---------------------------------------------------------------------------------------------------
def baseline_results(data: EvalData, cfg: BaselineConfig, names: Sequence[str], target_fpr: float
                     ) -> list[MethodResult]:
    sp = data.split
    fit_s, val_s, cal_s = data.seqs(sp.fit), data.seqs(sp.val), data.seqs(sp.calib)
    val_ids, test_ids = data.validation_ids, sp.test
    val_q, test_q = data.seqs(val_ids), data.seqs(test_ids)
    out = []
    for name in names:
        t0 = time.perf_counter()
        c: Calibrated = fit_and_calibrate(name, cfg, fit_s, val_s, cal_s, target_fpr)
        vs, ts = c.detector.score(val_q), c.detector.score(test_q)
        vf, tf = c.flags(vs), c.flags(ts)
        out.append(MethodResult(
            name=name, family=c.detector.family, threshold=c.threshold, test_scores=ts, test_flags=tf,
            val_scores=vs, val_flags=vf, test=binary_metrics(tf, data.truth(test_ids), ts),
            validation=binary_metrics(vf, data.truth(val_ids), vs), seconds=round(time.perf_counter() - t0, 1),
            history=list(c.detector.history)))
        log.info("%s: threshold %s, test %s", name, c.threshold, out[-1].test)
    return out


# -- the raw-line protocol ---------------------------------------------------------------------------------------
def _session_keys(sw: SessionWindows, max_len: int, stride: int) -> list[int]:
    """A session's full key sequence, put back together from its (overlapping) windows."""
    keys = [0] * sw.n_lines
    for span, w in zip(session_windows(sw.n_lines, max_len, stride), sw.windows, strict=True):
        keys[span.lo : span.hi] = w
    return keys


def bundle_windows(bundle: Bundle, settings: Settings, corpus: Corpus, quiet_s: float | None = None
                   ) -> dict[str, SessionWindows]:
    """The windows ``bundle`` judges of every session of ``corpus`` (``quiet_s``: as a live stream cuts them)."""
    return build_windows(corpus, corpus.chronological(), bundle.template_index(), bundle.vocab,
                         settings.parser.unknown == "nearest", bundle.model_config.max_len, settings.model.stride,
                         quiet_s, rest_s=learned_pause(bundle))


def parse_stats(inputs: Sequence[str | Path], settings: Settings) -> dict[str, Any]:
    """Lines of the input files: how many parse into a session, and the rejected ones by reason."""
    read = settings.line_reader().read
    rejected: Counter[str] = Counter()
    total = 0
    for line in iter_lines(inputs):
        total += 1
        rec = read(line.encode("utf-8", "surrogateescape"))
        if isinstance(rec, Rejected):
            rejected[rec.reason] += 1
    return {"lines": total, "parsed": total - sum(rejected.values()), "rejected_by_reason": dict(rejected)}


def _sha(paths: Sequence[str | Path]) -> dict[str, str]:
    return {str(p): file_fingerprint([p]) for p in paths}


def _session_lines(bundle: Bundle, settings: Settings, train: Corpus, test: Corpus,
                   sessions: Mapping[str, list[int]]) -> dict[str, SessionLines]:
    """Gaps and parameters of every session's lines, from the same records and canonical order as its keys."""
    index, vocab = bundle.template_index(), bundle.vocab
    nearest = settings.parser.unknown == "nearest"
    extractor = ParamExtractor(bundle.drain_params.masking,
                               {k: vocab.text(k) for k in range(FIRST_KEY, vocab.size)},
                               bundle.drain_params.extra_delimiters)
    out: dict[str, SessionLines] = {}
    for corpus in (train, test):
        for sid, lines in canonical_lines(corpus, corpus.chronological(), index, vocab, nearest).items():
            feats = line_features(lines, extractor)
            if list(feats.keys) != sessions[sid]:
                raise RuntimeError(f"line features of session {sid!r} are not aligned with its keys")
            out[sid] = feats
    return out


@dataclass
class RawRun:
    data: EvalData
    bundle: Bundle
    logbert: LogBERTRun
    train_metrics: dict[str, Any]


def keep_history(settings: Settings, path: Path, labels_csv: str | Path | None, history: int) -> dict[str, int]:
    """Rewrite the training part ``path`` to hold only its first ``history`` normal sessions (by first timestamp)
    and the anomalous sessions that began before the next normal one: the history a new deployment has."""
    if history < 3:
        raise ValueError(f"history={history}: need at least 3 normal sessions (fit, validation, calibration)")
    corpus = read_corpus([path], settings.line_reader())
    labels = load_labels(labels_csv) if labels_csv else inline_labels(corpus)
    order = corpus.chronological()
    normal = [sid for sid in order if not labels.get(sid, False)]
    if len(normal) <= history:
        return {"normal": len(normal), "anomalous": len(order) - len(normal)}
    cutoff = corpus.records[corpus.sessions[normal[history]][0]].timestamp
    keep = set(normal[:history]) | {sid for sid in order if labels.get(sid, False)
                                    and corpus.records[corpus.sessions[sid][0]].timestamp < cutoff}
    rows = sorted({i for sid in keep for i in corpus.sessions[sid]})
    path.write_text("".join(corpus.records[i].line.rstrip("\n") + "\n" for i in rows))
    return {"normal": history, "anomalous": len(keep) - history}


def raw_protocol(settings: Settings, inputs: Sequence[str | Path], labels_csv: str | Path | None,
                 test_fraction: float, bundle_dir: str | Path, progress: bool = False,
                 line_feats: bool = False, live: bool = False, history: int | None = None,
                 interleave: bool = False, interleave_days: bool = False) -> RawRun:
    """Chronological split of raw log files; LogBERT trained by ``train_bundle`` on the earlier part.

    ``live``: LogBERT judges the windows a live detector would cut at the log's own pace (a closing window wherever
    a session went quiet for ``session.idle_timeout_s``, ``logbert_core.windows.live_windows``) instead of those
    of a fast replay. Baselines always see whole sessions.

    ``line_feats`` also builds ``EvalData.lines`` (time gaps and parameter values of every session's lines, in the
    canonical order of its keys) for ``logbert_complete``.
    """
    s = settings
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="logad-eval-") as tmp:
        work = Path(tmp)
        summary = split_files(s, inputs, labels_csv, test_fraction, work, interleave, interleave_days)
        if history is not None:  # a new deployment's history: the first sessions of the training part only
            summary["history"] = keep_history(s, work / "train.log", work / "train.labels.csv" if labels_csv
                                              else None, history)
        train_labels = work / "train.labels.csv" if labels_csv else None
        report = train_bundle(s, [work / "train.log"], bundle_dir, train_labels, progress=progress,
                              source=f"the earlier part of {describe(inputs)}")
        bundle = load_bundle(bundle_dir)
        reader = s.line_reader()
        train_corpus = read_corpus([work / "train.log"], reader)
        test_corpus = read_corpus([work / "test.log"], reader)
    fit_seconds = time.perf_counter() - t0
    train_w, test_w = bundle_windows(bundle, s, train_corpus), bundle_windows(bundle, s, test_corpus)
    if labels_csv:
        labels, labelled = load_labels(labels_csv), True
    else:
        labels = inline_labels(train_corpus) | inline_labels(test_corpus)
        labelled = bool(labels)
    order = train_corpus.chronological()
    normal = [sid for sid in order if not labels.get(sid, False)]
    fit_ids, val_ids, calib_ids = split_chronological(normal, [s.train.val_fraction, s.train.calib_fraction])
    made = report.metrics["data"]["split"]
    if (made["normal"], made["val"]) != (len(normal), len(val_ids)):
        raise RuntimeError(f"split drifted from train_bundle's: {made} vs {len(normal)} normal, {len(val_ids)} "
                           "validation")
    shared = set(train_w) & set(test_w)  # a line naming sessions of both parts is written to both files
    test_ids = [sid for sid in test_corpus.chronological() if sid not in shared]
    unit = "days (UTC, of each session's first line)" if interleave_days else "sessions ordered by first timestamp"
    test_rule = (f"all {unit}, dealt into blocks of {INTERLEAVE_BLOCK}: the last "
                 f"{test_fraction} of each block are the test (other lines of the same period)" if interleave else
                 f"all sessions ordered by first timestamp; the last {test_fraction} are the test-within-period split")
    split = Split(fit_ids, val_ids, calib_ids, test_ids, [sid for sid in order if labels.get(sid, False)],
                  rule=f"{test_rule}; the training part's normal sessions: last {s.train.calib_fraction} calibration, "
                       f"{s.train.val_fraction} before that validation, the rest fit; the training part's anomalies: "
                       "validation only")
    if live:  # LogBERT's windows as a live stream cuts them; sessions (for the baselines) stay whole
        quiet = s.session.idle_timeout_s
        lw = {**bundle_windows(bundle, s, train_corpus, quiet), **bundle_windows(bundle, s, test_corpus, quiet)}
    else:
        lw = {**train_w, **test_w}
    windows = {k: v.windows for k, v in lw.items()}
    # The baselines see every unseen template as UNK, routine level or not: they are the plain rules
    routine = bundle.vocab.routine_keys
    sessions = {k: [UNK if x in routine else x for x in _session_keys(v, bundle.model_config.max_len, s.model.stride)]
                for part in (train_w, test_w) for k, v in part.items()}
    lines = _session_lines(bundle, s, train_corpus, test_corpus, sessions) if line_feats else None
    lengths = np.array([len(v) for v in sessions.values()])
    data = EvalData(
        protocol="raw", sessions=sessions, windows=windows, labels=labels, labelled=labelled, split=split,
        data={"inputs": _sha(inputs), "labels": _sha([labels_csv]) if labels_csv else "inline" if labelled else "none",
              "input_lines": parse_stats(inputs, s),
              "lines": {"train_part": len(train_corpus.records), "test_part": len(test_corpus.records)},
              "split_files": summary, "sessions": len(sessions), "sessions_in_both_parts": len(shared),
              "templates": bundle.vocab.n_templates,
              "session_length": {"p50": float(np.percentile(lengths, 50)), "p99": float(np.percentile(lengths, 99)),
                                 "max": int(lengths.max())},
              "unseen_template_sessions_test": sum(UNK in sessions[x] for x in test_ids)},
        lines=lines, quiet={k: v.seen for k, v in lw.items() if v.seen is not None and not all(v.seen)})
    curve: list[dict[str, float]] = report.metrics["training"]["history"]
    run = bundle_run(bundle, s, data, curve, report.metrics["training"]["seconds"],
                     report.metrics["calibration"]["mode"])
    log.info("raw protocol ready in %.1f s (bundle %s)", fit_seconds, bundle.version)
    return RawRun(data, bundle, run, report.metrics)


# -- the pre-parsed sequence protocol ----------------------------------------------------------------------------
def read_sequences(path: str | Path) -> list[list[str]]:
    """One session per line, space-separated event ids (DeepLog's files)."""
    with open(path) as fh:
        return [line.split() for line in fh if line.strip()]


def read_sequence_csv(path: str | Path, keep: set[str] | None = None) -> list[tuple[str, bool, list[str]]]:
    """``BlockId,Label,EventSequence`` rows -> (block id, anomalous, event ids), optionally only blocks in ``keep``."""
    out = []
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:3]] != ["BlockId", "Label", "EventSequence"]:
            raise ValueError(f"{path}: expected the header 'BlockId,Label,EventSequence', got {header}")
        for row in reader:
            if len(row) < 3 or (keep is not None and row[0] not in keep):
                continue
            label = row[1].strip().lower()
            if label not in ("normal", "anomaly"):
                raise ValueError(f"{path}: unknown label {row[1]!r} for {row[0]!r}")
            out.append((row[0], label == "anomaly", row[2].split()))
    return out


def read_id_sequences(path: str | Path) -> list[tuple[str, list[str]]]:
    """``session_id,space-separated event ids`` per line (ait's Hadoop files) -> (session id, event ids)."""
    out = []
    with open(path) as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            sid, sep, seq = line.rstrip("\n").partition(",")
            if not sep:
                raise ValueError(f"{path}:{n}: expected 'session_id,event ids', got {line[:80]!r}")
            out.append((sid, seq.split()))
    return out


def sequence_protocol(settings: Settings, train_path: str | Path, abnormal_path: str | Path,
                      normal_csv: str | Path, normal_ids_csv: str | Path | None = None,
                      history: int | None = None) -> EvalData:
    """Fit / validation / calibration from the normal training file (file order); test = the anomalous file plus
    the *normal* rows of ``normal_csv`` (restricted to the block ids listed in ``normal_ids_csv`` when given).
    ``history``: train on the first this many normal sessions only (a new deployment's small history)."""
    train = read_sequences(train_path)
    abnormal = read_sequences(abnormal_path)
    keep = set(load_labels(normal_ids_csv)) if normal_ids_csv else None
    normal_rows = [r for r in read_sequence_csv(normal_csv, keep) if not r[1]]
    if keep is not None and not normal_rows:
        raise ValueError(f"{normal_ids_csv}: none of its ids names a normal row of {normal_csv}")
    test = [(f"normal:{b}", False, seq) for b, _, seq in normal_rows]
    test += [(f"abnormal:{i}", True, seq) for i, seq in enumerate(abnormal)]
    data = sequence_data(settings, train, test, history)
    data.data.update({
        "inputs": _sha([train_path, abnormal_path, normal_csv]),
        "normal_ids_from": _sha([normal_ids_csv]) if normal_ids_csv else None,
        "sessions": {"train_file": len(train), "abnormal_file": len(abnormal), "normal_rows_used": len(normal_rows)}})
    data.split.rule += ("; test = every session of the anomalous file + the normal rows of the normal file"
                        + (f" whose block id is listed in {normal_ids_csv}" if normal_ids_csv else ""))
    return data


def sequence_data(settings: Settings, train: Sequence[Sequence[str]], test: Sequence[tuple[str, bool, Sequence[str]]],
                  history: int | None = None) -> EvalData:
    """Pre-parsed sessions of event ids: normal training sessions in time (file) order, and labelled test sessions
    ``(id, anomalous, event ids)``. Event ids never seen in the normal training sessions become ``UNK``."""
    s = settings
    if history is not None:
        if history < 3:
            raise ValueError(f"history={history}: need at least 3 normal sessions (fit, validation, calibration)")
        train = train[:history]
    train_ids = [f"train:{i}" for i in range(len(train))]
    fit_ids, val_ids, calib_ids = split_chronological(train_ids, [s.train.val_fraction, s.train.calib_fraction])
    raw: dict[str, Sequence[str]] = dict(zip(train_ids, train))
    events = sorted({e for sid in train_ids for e in raw[sid]}, key=lambda e: (len(e), e))
    key_of = {e: FIRST_KEY + i for i, e in enumerate(events)}  # events never in normal training -> UNK
    labels: dict[str, bool] = {}
    for sid, anomalous, seq in test:
        if sid in raw:
            raise ValueError(f"test session id {sid!r} is given twice")
        raw[sid] = seq
        if anomalous:
            labels[sid] = True
    sessions = {sid: [key_of.get(e, UNK) for e in seq] for sid, seq in raw.items() if seq}
    empty = [sid for sid, seq in raw.items() if not seq]
    test_ids = [sid for sid, _, _ in test if sid in sessions]
    ml, st = s.model.max_len, s.model.stride
    windows = {sid: [keys[sp.lo : sp.hi] for sp in session_windows(len(keys), ml, st)]
               for sid, keys in sessions.items()}
    lengths = np.array([len(v) for v in sessions.values()])
    split = Split(fit_ids, val_ids, calib_ids, test_ids, [],
                  rule=f"normal training sessions in file order{f' (the first {history} only)' if history else ''}: "
                       f"last {s.train.val_fraction} validation, the rest fit and calibration "
                       "(train.crossfit_max_sessions says how the model rules are calibrated)")
    return EvalData(
        protocol="sequences", sessions=sessions, windows=windows, labels=labels, labelled=True, split=split,
        data={"empty_sessions_dropped": len(empty), "templates": len(events), "history": history,
              "event_id_to_key": key_of,
              "unseen_event_ids_in_test": sorted({e for sid in test_ids for e in raw[sid]} - set(key_of),
                                                 key=lambda e: (len(e), e)),
              "session_length": {"p50": float(np.percentile(lengths, 50)), "p99": float(np.percentile(lengths, 99)),
                                 "max": int(lengths.max())}})


def sequence_vocab_size(data: EvalData) -> int:
    return FIRST_KEY + int(data.data["templates"])


def baseline_config(settings: Settings, **overrides: Any) -> BaselineConfig:
    """Baselines share the product's top_g and seed."""
    return BaselineConfig(**{"top_g": settings.scoring.top_g, "seed": settings.train.seed,
                             "num_threads": torch.get_num_threads(), **overrides})


def thresholds_json(th: Thresholds) -> dict[str, Any]:
    """The bundle's thresholds; ``None`` for a rule the bundle has no threshold for (it is off)."""
    return th.to_json()


# -- whole runs ----------------------------------------------------------------------------------------------------
PAPER_HDFS_NORMAL_TEST = 553_366  # normal test sessions of DeepLog's HDFS split (not available here)


@dataclass
class Evaluation:
    data: EvalData
    results: list[MethodResult]
    notes: list[str]
    extra: dict[str, Any]  # bundle version, thresholds, training metrics


def _split_methods(methods: Sequence[str], raw: bool = True) -> tuple[bool, list[str]]:
    if not raw and LOGBERT_COMPLETE in methods:
        raise ValueError(f"{LOGBERT_COMPLETE} needs raw log lines (timestamps and parameter values); the sequence "
                         "protocol has event ids only: evaluate it with --input")
    allowed = RAW_METHODS if raw else METHODS
    unknown = [m for m in methods if m not in allowed]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(allowed)}")
    return LOGBERT in methods, [m for m in methods if m in BASELINES]


def complete_config(settings: Settings, vocab_size: int, **overrides: Any) -> CompleteConfig:
    """``logbert_complete`` with the product's encoder size, windowing, masking, top-g, seed and epochs.

    It fits and scores on one CPU thread: with torch's default threads, two runs of the same HDFS evaluation gave
    different fits (different early stops, key-miss F1 0.86 vs 0.58), on a machine shared with other jobs.
    """
    s = settings
    base = dict(vocab_size=vocab_size, max_len=s.model.max_len, stride=s.model.stride, n_layer=s.model.n_layer,
                n_head=s.model.n_head, n_embd=s.model.n_embd, dropout=s.model.dropout, top_g=s.scoring.top_g,
                mask_copies=s.scoring.mask_copies, mask_ratio=s.train.mask_ratio, epochs=s.train.epochs,
                batch_size=s.train.batch_size, lr=s.train.lr, patience=s.train.patience, seed=s.train.seed,
                device=str(resolve_device(s.train.device)), num_threads=1)  # one thread: the same fit from run to run
    return CompleteConfig(**{**base, **overrides})


def complete_results(data: EvalData, cfg: CompleteConfig, target_fpr: float) -> list[MethodResult]:
    """``logbert_complete`` and its diagnostics (one fit), calibrated by the product's rule.

    ``logbert_complete`` flags a session when its key-miss ratio *or* its gap/parameter-miss ratio exceeds its own
    threshold, each the ``1 - target_fpr / 2`` quantile of the calibration sessions (the FPR budget split between
    the two rules, as ``logbert_core.judge.calibrate`` splits it between its rules); its PR score is the larger of
    the two ratios' ranks among the calibration sessions (``_tail_rank``). The other rows each calibrate one ratio at
    the full ``target_fpr``: ``logbert_complete_mean`` pools the three heads' misses into one ratio (the first design,
    measured and kept for comparison), and the key-only and gap/parameter-only ratios.
    """
    if data.lines is None:
        raise ValueError(f"{LOGBERT_COMPLETE} needs EvalData.lines (raw_protocol(..., line_feats=True))")
    t0 = time.perf_counter()
    sp = data.split
    det = CompleteLogDetector(cfg)
    det.fit([data.lines[s] for s in sp.fit], [data.lines[s] for s in sp.val])
    val_ids, test_ids = data.validation_ids, sp.test
    cal = det.misses([data.lines[s] for s in sp.calib])
    val = det.misses([data.lines[s] for s in val_ids])
    test = det.misses([data.lines[s] for s in test_ids])
    seconds = round(time.perf_counter() - t0, 1)
    n_val = len(val_ids)
    stats = f"{len(det.coder.signatures)} parameter signatures, {len(det.coder.exact)} exact values"

    def result(name: str, threshold: Any, scores: np.ndarray, flags: np.ndarray, note: str) -> MethodResult:
        vs, ts, vf, tf = scores[:n_val], scores[n_val:], flags[:n_val], flags[n_val:]
        log.info("%s: threshold %s", name, threshold)
        return MethodResult(
            name=name, family=det.family, threshold=threshold, test_scores=ts, test_flags=tf, val_scores=vs,
            val_flags=vf, test=binary_metrics(tf, data.truth(test_ids), ts),
            validation=binary_metrics(vf, data.truth(val_ids), vs), seconds=seconds,
            history=list(det.history) if name == LOGBERT_COMPLETE else [], notes=f"{note}; {stats}")

    def both(rule: str) -> np.ndarray:
        return np.concatenate([getattr(val, rule), getattr(test, rule)])

    th_k, th_e = (calibrate_threshold(getattr(cal, r), target_fpr / 2) for r in ("keys", "extras"))
    rank = np.maximum(_tail_rank(cal.keys, both("keys")), _tail_rank(cal.extras, both("extras")))
    out = [result(LOGBERT_COMPLETE, {"key_misses": th_k, "gap_param_misses": th_e}, rank,
                  (both("keys") > th_k) | (both("extras") > th_e),
                  "key-miss ratio or gap/parameter-miss ratio above its threshold (target FPR split in two)")]
    for name, rule, note in ((COMPLETE_MEAN, "complete", "misses of key, gap and parameter / (3 x length)"),
                             (COMPLETE_KEYS, "keys", "key misses only / length"),
                             (COMPLETE_EXTRAS, "extras", "gap and parameter misses only / (2 x length)")):
        th = calibrate_threshold(getattr(cal, rule), target_fpr)
        out.append(result(name, th, both(rule), both(rule) > th, f"the same model: {note}"))
    return out


def evaluate_raw(settings: Settings, inputs: Sequence[str | Path], labels_csv: str | Path | None,
                 test_fraction: float, out_dir: str | Path, methods: Sequence[str] = METHODS,
                 progress: bool = False, baseline: Mapping[str, Any] | None = None, live: bool = False,
                 history: int | None = None, interleave: bool = False, interleave_days: bool = False
                 ) -> Evaluation:
    """Protocol (a)/(c)/(d): raw lines -> sessions; LogBERT as ``logad-train`` ships it, baselines beside it.
    ``live``: LogBERT judges live-stream windows (``raw_protocol``); ``interleave``: ``split_files``."""
    use_logbert, baselines = _split_methods(methods)
    use_complete = LOGBERT_COMPLETE in methods
    raw = raw_protocol(settings, inputs, labels_csv, test_fraction, Path(out_dir) / "bundle", progress,
                       line_feats=use_complete, live=live, history=history, interleave=interleave,
                       interleave_days=interleave_days)
    results = logbert_results(raw.logbert, raw.data, settings.scoring) if use_logbert else []
    if use_complete:
        results += complete_results(raw.data, complete_config(settings, raw.bundle.vocab.size),
                                    settings.scoring.target_fpr)
    results += baseline_results(raw.data, baseline_config(settings, **(baseline or {})), baselines,
                                settings.scoring.target_fpr)
    notes = [
        "Test-within-period: the test sessions are the latest sessions of the same input files (the same days of "
        "logs as training), not a later period; the final hold-out is evaluated elsewhere, once.",
        "LogBERT is trained by `train_bundle` (the `logad-train` job, unchanged) on the earlier part; its bundle is "
        f"written to `bundle/` (version {raw.bundle.version}). {raw.logbert.notes}.",
        "A session is flagged when any of its windows is (LogBERT) / when its score exceeds the threshold "
        "(baselines, one score per session). The calibration split is normal sessions only, so its flag rate is the "
        "target FPR by construction; the validation and test FPRs are honest estimates.",
    ]
    if live:
        notes.append("Live windows: LogBERT judged the windows a live stream cuts at the log's own pace (a session "
                     "closes whenever it is quiet for session.idle_timeout_s and reopens with its next line); the "
                     "baselines judged whole sessions.")
    unseen_end = sum(raw.data.end_unseen(sid) for sid in raw.data.split.test)
    if unseen_end:
        notes.append(f"{unseen_end} test session(s) end less than {settings.session.rest_s:g} s before the "
                     "data does: nobody can tell whether they stopped, so premature_end does not judge their last "
                     "window (the detector holds such a verdict until its input has gone on that long); the other "
                     "rules judge them.")
    if not raw.data.labelled:
        notes.append("The input carries no labels: every session counts as normal, so the figures are flag rates "
                     "(false-alarm rates if the logs were indeed normal), not precision or recall.")
    extra = {"bundle_version": raw.bundle.version, "thresholds": thresholds_json(raw.bundle.thresholds),
             "train_metrics": {k: v for k, v in raw.train_metrics.items() if k != "training"},
             "train_best_epoch": raw.train_metrics["training"]["best_epoch"]}
    return Evaluation(raw.data, results, notes, extra)


def evaluate_sequences(settings: Settings, train_path: str | Path, abnormal_path: str | Path,
                       normal_csv: str | Path, normal_ids_csv: str | Path | None, methods: Sequence[str] = METHODS,
                       progress: bool = False, baseline: Mapping[str, Any] | None = None,
                       history: int | None = None) -> Evaluation:
    """Protocol (b): pre-parsed event-id sessions, the paper-comparable model-level setting."""
    use_logbert, baselines = _split_methods(methods, raw=False)
    data = sequence_protocol(settings, train_path, abnormal_path, normal_csv, normal_ids_csv, history)
    results: list[MethodResult] = []
    extra: dict[str, Any] = {}
    if use_logbert:
        run = fit_logbert(data, settings, sequence_vocab_size(data), progress)
        results += logbert_results(run, data, settings.scoring)
        extra["thresholds"] = thresholds_json(run.judge.thresholds)
    results += baseline_results(data, baseline_config(settings, **(baseline or {})), baselines,
                                settings.scoring.target_fpr)
    n_normal = int((~data.truth(data.split.test)).sum())
    for r in results:  # precision had the test set the paper's share of normal sessions (an extrapolation)
        tp, fpr = r.test["tp"], r.test["fpr"] or 0.0
        est_fp = fpr * PAPER_HDFS_NORMAL_TEST
        p = tp / (tp + est_fp) if tp + est_fp else 0.0
        rc = r.test["recall"]
        r.test["precision_at_paper_prevalence"] = round(p, 4)
        r.test["f1_at_paper_prevalence"] = round(2 * p * rc / (p + rc), 4) if p + rc else 0.0
    notes = [
        f"Normal test sessions: {n_normal} normal blocks of the 2% HDFS sample (event sequences in ait's numbering, "
        "near-identical to DeepLog's), not DeepLog's 553,366 normal test sessions, which are not available here. "
        "With far fewer normals than anomalies, precision is much higher than it would be on the paper's test set; "
        "`precision_at_paper_prevalence` extrapolates it as TP / (TP + FPR x 553,366). It is an estimate from the "
        "measured FPR, not a measurement.",
        "Thresholds come from held-out normal training sessions at the target FPR; the papers' code picks its "
        "threshold on the test labels.",
        f"The {len(data.split.fit) + len(data.split.val) + len(data.split.calib)} normal training sessions are split "
        f"in file order (the papers train on all 4,855): validation ({len(data.split.val)}) stops training early; "
        "templates, sets and counts come from all of them; the model's thresholds from "
        + ("out-of-fold models" if crossfits(settings, len(data.split.fit) + len(data.split.val)
                                             + len(data.split.calib)) else
           f"the last {len(data.split.calib)}, kept out of the fit") + ".",
        f"Models are small (LogBERT {settings.model.n_layer} layers x {settings.model.n_embd}, windows of "
        f"{settings.model.max_len} keys with stride {settings.model.stride}; LSTMs of 2 x 64) and trained for "
        "minutes on a CPU; top-g is the config's scoring.top_g "
        f"({settings.scoring.top_g}) for LogBERT, DeepLog and LogAnomaly alike. LogAnomaly has no template2vec.",
        "The anomalous file holds every anomalous block of HDFS v1, including the few that are also in "
        "data/hdfs/holdout; it has no block ids, so they cannot be removed. Nothing is tuned on this protocol.",
    ]
    if data.data["unseen_event_ids_in_test"]:
        notes.append(f"Event ids in the test sessions never seen in the fit split (mapped to UNK): "
                     f"{', '.join(data.data['unseen_event_ids_in_test'])}.")
    return Evaluation(data, results, notes, extra)
