"""``logad-train benchmark``: every labelled data set of the shared data folder, with a full and a small history.

Each suite trains the shipped decision exactly as ``logad-train`` does (``fit_decision``), on the earlier or the
training part only, and scores a later or separate test part once. Nothing is tuned on a test part: the configs
are the repository's (``config/hdfs.toml``, ``config/bgl.toml``) or, for a family no config was written for
(Hadoop), the defaults a new user gets. The *small-history* variant trains on the first 50 normal sessions only,
the situation of a new deployment.

Rows per suite (session level: a session is flagged when any of its windows is):

* ``logbert``: the shipped decision (all rules, one false-positive budget);
* ``logbert_without_model``: its exact rules alone, at the same thresholds;
* ``logbert_key_misses``: LogBERT's key-miss rule alone; its AUC-PR is the model's own ranking;
* ``rule_unseen_event``: "the session holds an event type never seen in normal training" (one line, no threshold);
* ``rule_unseen_set``: "the session's set of event types never occurred in a normal training session";
* ``flag_all``: every test session flagged (what a detector must beat where anomalies are the majority).
"""

from __future__ import annotations

import json
import logging
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from logbert_core.config import Settings
from training.baselines import UnseenSetExact, UnseenTemplate
from training.protocols import (
    LOGBERT,
    LOGBERT_EXACT,
    LOGBERT_KEYS,
    EvalData,
    MethodResult,
    binary_metrics,
    evaluate_raw,
    fit_logbert,
    logbert_results,
    read_id_sequences,
    sequence_data,
    sequence_protocol,
    sequence_vocab_size,
)
from training.report import draw_loss, rule_catches

log = logging.getLogger(__name__)

SMALL_HISTORY = 50
REPO = Path(__file__).resolve().parent.parent
SHOWN = (LOGBERT, LOGBERT_EXACT, LOGBERT_KEYS)
# Published figures (precision / recall / F1, %), from the LogBERT paper's table; its code picks thresholds on the
# test labels and its splits differ from these, so they are context, not a like-for-like comparison.
PUBLISHED = {"hdfs_sequences": "LogBERT 87.02/78.10/82.32; DeepLog 88.44/69.49/77.34",
             "bgl_raw": "LogBERT 89.40/92.32/90.83; DeepLog 89.74/82.78/86.12 (contiguous BGL, 20-line windows)"}


@dataclass
class SuiteResult:
    name: str
    history: int | None  # None: every normal training session
    data: EvalData
    rows: list[dict[str, Any]]
    promise: dict[str, Any]
    training: dict[str, Any]
    seconds: float
    notes: list[str] = field(default_factory=list)
    by_rule: dict[str, dict[str, int]] = field(default_factory=dict)  # ``report.rule_catches`` on the test part


def _row(name: str, m: dict[str, Any]) -> dict[str, Any]:
    keep = ("precision", "recall", "f1", "fpr", "auc_pr", "tp", "fp", "fn", "tn")
    return {"method": name, **{k: m.get(k) for k in keep}}


def simple_rules(data: EvalData) -> list[dict[str, Any]]:
    """The one-line rules on whole sessions (the ``unseen_template`` and ``unseen_set_exact`` baselines), fitted on
    every normal training session and firing on any evidence: no threshold to calibrate."""
    sp = data.split
    normal, test = data.seqs(sp.fit + sp.val + sp.calib), data.seqs(sp.test)
    truth = data.truth(sp.test)
    rows = []
    for name, detector in (("rule_unseen_event", UnseenTemplate()), ("rule_unseen_set", UnseenSetExact())):
        detector.fit(normal, [])
        flags = detector.score(test) > 0
        rows.append(_row(name, binary_metrics(flags, truth, flags.astype(float))))
    return rows + [_row("flag_all", binary_metrics(np.ones(len(test), dtype=bool), truth))]


def _summarise(name: str, history: int | None, data: EvalData, results: Sequence[MethodResult],
               seconds: float, notes: list[str], settings: Settings,
               train_metrics: Mapping[str, Any] | None = None) -> SuiteResult:
    """``train_metrics``: the bundle's metrics where ``logad-train`` trained it (raw suites): its forward test of
    ``unseen_template`` and the warnings the trainer added to the calibration's."""
    by = {r.name: r for r in results}
    rows = [_row(n, by[n].test) for n in SHOWN if n in by] + simple_rules(data)
    th = by[LOGBERT].threshold
    promise = dict(th.get("promise", {})) if isinstance(th, dict) else {}
    if train_metrics is not None:
        promise["forward_unseen"] = train_metrics.get("calibration", {}).get("forward_unseen")
        promise["warnings"] = [*promise.get("warnings", []),
                               *(w for w in train_metrics.get("warnings", []) if w not in promise.get("warnings", []))]
    hist = by[LOGBERT].history
    best = min(hist, key=lambda h: h["val_loss"])["epoch"] if hist else None
    training = {"epochs_run": len(hist), "best_epoch": best, "val_loss": [round(h["val_loss"], 4) for h in hist],
                "train_loss": [round(h["train_loss"], 4) for h in hist], "epochs": settings.train.epochs,
                "patience": settings.train.patience}
    test, truth = data.split.test, data.truth(data.split.test)
    by_rule = rule_catches(by[LOGBERT].reasons, [s for s, y in zip(test, truth) if y],
                           [s for s, y in zip(test, truth) if not y])
    return SuiteResult(name, history, data, rows, promise, training, round(seconds, 1), notes, by_rule)


def _raw_suite(name: str, settings: Settings, inputs: Sequence[Path], labels: Path | None, test_fraction: float,
               out: Path, history: int | None, note: str, interleave: bool = False,
               interleave_days: bool = False) -> SuiteResult:
    """A raw-log suite: ``logad-train`` on the training part, the shipped decision on the test part; the split is
    chronological unless ``interleave`` (``training.split``)."""
    t0 = time.perf_counter()
    ev = evaluate_raw(settings, inputs, labels, test_fraction, out / "bundle_dir", [LOGBERT], history=history,
                      interleave=interleave, interleave_days=interleave_days)
    return _summarise(name, history, ev.data, ev.results, time.perf_counter() - t0, [note], settings,
                      ev.extra.get("train_metrics"))


def hdfs_raw(settings: Settings, shared: Path, out: Path, history: int | None) -> SuiteResult:
    """The earlier 70 % of ``HDFS_2pct_dev.log`` (the repository's ``data/hdfs/train.log.gz``, cut by
    ``logad-train split``): the later 30 % is the demo's hold-out, which the benchmark never reads."""
    hdfs = REPO / "data" / "hdfs"
    return _raw_suite("hdfs_raw", settings, [hdfs / "train.log.gz"], hdfs / "train.labels.csv", 0.25, out, history,
                      "raw lines of data/hdfs/train.log.gz (the earlier 70 % of HDFS_2pct_dev.log; the rest is the "
                      "hold-out, never read here); blocks ordered by first line; the latest 25 % are the test")


def bgl_raw(settings: Settings, shared: Path, out: Path, history: int | None) -> SuiteResult:
    return _raw_suite("bgl_raw", settings, [shared / "bgl" / "BGL_dev.log"], None, 0.3, out, history,
                      "BGL_dev.log (pooled line samples, sorted by time); (node, 5-minute) sessions; the latest 30 % "
                      "of sessions are the test; labels inline")


def bgl_same_period(settings: Settings, shared: Path, out: Path, history: int | None) -> SuiteResult:
    """``BGL_dev.log`` pools random line samples of the whole BGL period, so the logs a BGL user judges after
    training on it are *other lines of the same period*, not a later one: the interleaved split stands for them."""
    return _raw_suite("bgl_same_period", settings, [shared / "bgl" / "BGL_dev.log"], None, 0.3, out, history,
                      "BGL_dev.log; (node, 5-minute) sessions in order of their first line, dealt into blocks of 10: "
                      "the last 3 of each block are the test (other lines of the same period); labels inline",
                      interleave=True)


def bgl_other_days(settings: Settings, shared: Path, out: Path, history: int | None) -> SuiteResult:
    """Other *days* of the period: ``bgl_same_period`` deals sessions one by one, so a test window shares the burst
    its neighbours trained on; here whole days go to one part (``training.split``), which is what logs of the same
    period drawn from other times than the sample's look like."""
    return _raw_suite("bgl_other_days", settings, [shared / "bgl" / "BGL_dev.log"], None, 0.3, out, history,
                      "BGL_dev.log; (node, 5-minute) sessions; the days (UTC) that hold sessions, in order, dealt into "
                      "blocks of 10: the sessions of the last 3 days of each block are the test; labels inline",
                      interleave=True, interleave_days=True)


def _sequences(name: str, settings: Settings, data: EvalData, history: int | None, t0: float,
               notes: list[str]) -> SuiteResult:
    run = fit_logbert(data, settings, sequence_vocab_size(data))
    results = logbert_results(run, data, settings.scoring)
    return _summarise(name, history, data, results, time.perf_counter() - t0, [*notes, run.notes], settings)


def hdfs_sequences(settings: Settings, shared: Path, out: Path, history: int | None) -> SuiteResult:
    t0 = time.perf_counter()
    data = sequence_protocol(settings, shared / "hdfs_sequences" / "deeplog_hdfs_train",
                             shared / "hdfs_sequences" / "deeplog_hdfs_test_abnormal",
                             shared / "hdfs" / "HDFS_2pct_dev.event_sequences.csv",
                             REPO / "data" / "hdfs" / "train.labels.csv", history=history)
    return _sequences("hdfs_sequences", settings, data, history, t0,
                      ["DeepLog's normal training sessions (file order); test: all 16,838 anomalous HDFS sessions "
                       "and the normal blocks of the 2 % sample outside the demo's hold-out"])


def hadoop_sequences(settings: Settings, shared: Path, out: Path, history: int | None) -> SuiteResult:
    t0 = time.perf_counter()
    d = shared / "hadoop_sequences"
    train = [seq for _, seq in read_id_sequences(d / "hadoop_train")]
    test = [(f"normal:{sid}", False, seq) for sid, seq in read_id_sequences(d / "hadoop_test_normal")]
    test += [(f"abnormal:{sid}", True, seq) for sid, seq in read_id_sequences(d / "hadoop_test_abnormal")]
    data = sequence_data(settings, train, test, history)
    return _sequences("hadoop_sequences", settings, data, history, t0,
                      [f"{len(train)} normal training containers; test: 150 normal and 811 anomalous containers; "
                       "default settings (no config was written for this family)"])


SUITES: dict[str, tuple[str | None, Callable[[Settings, Path, Path, int | None], SuiteResult], bool]] = {
    # name: (config file, runner, whether a small-history variant is run: Hadoop's history is already 17)
    "hdfs_raw": ("config/hdfs.toml", hdfs_raw, True),
    "hdfs_sequences": ("config/hdfs.toml", hdfs_sequences, True),
    "bgl_raw": ("config/bgl.toml", bgl_raw, True),
    "bgl_same_period": ("config/bgl.toml", bgl_same_period, True),
    "bgl_other_days": ("config/bgl.toml", bgl_other_days, True),
    "hadoop_sequences": (None, hadoop_sequences, False),
}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                flags = Path("/proc/cpuinfo").read_text()
                cpu += ", AMX" if "amx_tile" in flags else ", no AMX"
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}; {torch.get_num_threads()} torch threads; {gpu}; torch {torch.__version__}"


def run_benchmark(load: Callable[[str | None], Settings], shared: Path, out: Path, only: Sequence[str] = (),
                  small: bool = True) -> list[SuiteResult]:
    unknown = [n for n in only if n not in SUITES]
    if unknown:
        raise ValueError(f"unknown suite(s) {unknown}; choose from {', '.join(SUITES)}")
    if not (shared / "README.md").is_file() and not (shared / "hdfs").is_dir():
        raise ValueError(f"{shared}: not the shared data folder (expected hdfs/, bgl/, hdfs_sequences/, "
                         "hadoop_sequences/)")
    results = []
    for name, (config, runner, has_small) in SUITES.items():
        if only and name not in only:
            continue
        settings = load(config)
        for history in ([None, SMALL_HISTORY] if small and has_small else [None]):
            label = f"{name}{'' if history is None else f'_h{history}'}"
            log.info("benchmark %s ...", label)
            r = runner(settings, shared, out / label, history)
            log.info("benchmark %s: %s", label, r.rows[0])
            results.append(r)
    write(out, results)
    return results


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def markdown(results: Sequence[SuiteResult]) -> str:
    lines = ["| suite | history | test (normal / anomalous) | method | P | R | F1 | FPR | AUC-PR | TP | FP | FN |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        truth = r.data.truth(r.data.split.test)
        hist = "all" if r.history is None else f"first {r.history}"
        n_normal = len(r.data.split.fit) + len(r.data.split.val) + len(r.data.split.calib)
        test = f"{int((~truth).sum())} / {int(truth.sum())}"
        for i, row in enumerate(r.rows):
            name = f"**{row['method']}**" if row["method"] == LOGBERT else row["method"]
            lead = [r.name, f"{hist} ({n_normal})", test] if i == 0 else ["", "", ""]
            lines.append("| " + " | ".join([*lead, name, *(_fmt(row[k]) for k in
                                                          ("precision", "recall", "f1", "fpr", "auc_pr", "tp", "fp",
                                                           "fn"))]) + " |")
    lines += ["", "What each shipped decision promised on its normal training history (no test label involved):", "",
              "| suite | history | level | est. FPR | 95 % bound | forward test | sessions / model sessions | "
              "rules that can fire | epochs (best) | published |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        p = r.promise
        hist = "all" if r.history is None else f"first {r.history}"
        lines.append("| " + " | ".join([r.name, hist, _fmt(p.get("level")), _fmt(p.get("fpr")),
                                         _fmt(p.get("fpr_upper")), _forward_cell(p.get("forward_unseen")),
                                         f"{p.get('sessions')} / {p.get('model_sessions')}",
                                         ", ".join(p.get("rules", [])),
                                         f"{r.training['epochs_run']} ({r.training['best_epoch']})",
                                         PUBLISHED.get(r.name, "-")]) + " |")
    lines += ["", "Validation loss of the model the decision uses, by epoch (`*`: the epoch kept; plotted with the "
              "training loss in `loss_curves.png`):", ""]
    lines += [f"- {r.name} ({'all' if r.history is None else f'first {r.history}'}): {loss_line(r.training)}"
              for r in results]
    lines += ["", "Each rule of the shipped decision on the test part: anomalies caught / caught by no other rule / "
              "normal sessions flagged:", ""]
    for r in results:
        hist = "all" if r.history is None else f"first {r.history}"
        cells = "; ".join(f"`{k}` {v['catches']}/{v['only_catch']}/{v['normal_flagged']}" for k, v in
                          r.by_rule.items()) or "no rule fired"
        lines.append(f"- {r.name} ({hist}): {cells}")
    warn = [(r, w) for r in results for w in r.promise.get("warnings", [])]
    if warn:
        lines += ["", "Warnings the trainer gave:", ""]
        lines += [f"- {r.name} ({'all' if r.history is None else f'first {r.history}'}): {w}" for r, w in warn]
    return "\n".join(lines) + "\n"


def _forward_cell(fw: Mapping[str, Any] | None) -> str:
    """The forward test of ``unseen_template`` (``logbert_core.novelty.forward_unseen``): later normal sessions with
    a template the earlier half never had; "-" where not measured (sequence suites) or the rule cannot fire."""
    if not fw or not fw.get("rule_on") or not fw.get("of"):
        return "-"
    return f"{fw['rate']:.4f} ({fw['sessions']} / {fw['of']})"


def loss_line(training: dict[str, Any]) -> str:
    """``1.204, 0.981*, 0.990, ...``, and why the fit stopped: the loss stopped improving (``patience`` epochs
    without a better one), or the epoch cap (``epochs``) came first, with the kept epoch the last one (the loss
    was still falling: more epochs might have helped) or not."""
    val, best = training.get("val_loss", []), training.get("best_epoch")
    if not val or best is None:
        return "no model trained"
    cells = ", ".join(f"{v:.4f}{'*' if i + 1 == best else ''}" for i, v in enumerate(val))
    run, cap, patience = len(val), training.get("epochs"), training.get("patience")
    if best == run:
        state = "still falling when the epochs ran out"
    elif run == cap and patience is not None and run - best < patience:
        state = f"best at epoch {best}; the {cap}-epoch cap came before {patience} epochs without a better one"
    else:
        state = f"no better after epoch {best}: stopped {run - best} epoch{'s' if run - best > 1 else ''} later"
    return f"{cells} ({state})"


def plot_losses(out: Path, results: Sequence[SuiteResult]) -> None:
    """``loss_curves.png``: training and validation loss by epoch, one panel per suite and history. Skipped, with
    a log line, where matplotlib (the ``train`` extra) is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib is not installed: no loss_curves.png (pip install 'logad[train]')")
        return
    shown = [r for r in results if r.training.get("val_loss")]
    if not shown:
        return
    cols = min(4, len(shown))
    rows = -(-len(shown) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False)
    for ax, r in zip(axes.flat, shown):
        val = r.training["val_loss"]
        draw_loss(ax, range(1, len(val) + 1), r.training.get("train_loss", []), val,
                  f"{r.name} ({'all' if r.history is None else f'first {r.history}'})", r.training.get("best_epoch"))
    for ax in list(axes.flat)[len(shown):]:
        ax.set_axis_off()
    fig.suptitle("LogBERT loss by epoch (dashed: the epoch kept)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "loss_curves.png", dpi=100)
    plt.close(fig)


def write(out: Path, results: Sequence[SuiteResult]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    doc = {"machine": machine(), "suites": [
        {"name": r.name, "history": r.history, "rows": r.rows, "promise": r.promise, "training": r.training,
         "by_rule": r.by_rule,
         "seconds": r.seconds, "notes": r.notes, "split": r.data.split.rule,
         "split_counts": r.data.split.counts(r.data.labels)} for r in results]}
    (out / "benchmark.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    head = ["# logad benchmark", "", f"Machine: {doc['machine']}.", ""]
    notes = ["", "Splits:", ""] + [f"- {r.name}{'' if r.history is None else f' (first {r.history})'}: "
                                   f"{r.data.split.rule}. {' '.join(r.notes)} ({r.seconds} s)" for r in results]
    (out / "benchmark.md").write_text("\n".join(head) + markdown(results) + "\n".join(notes) + "\n")
    plot_losses(out, results)
