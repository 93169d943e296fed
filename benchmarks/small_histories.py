"""Small histories of one log family: disjoint 50-session histories of DeepLog's HDFS normal sessions, each trained
and calibrated as ``logad-train`` does (the shipped decision), and tested on every other normal session of the file
and on anomalous sessions drawn from DeepLog's anomalous file.

    python -m benchmarks.small_histories --shared ../shared/data      # about 8 min on 2 cores

This is the design set of the small-history rules of ``logbert_core/calibration.py`` (a model rule whose
out-of-fold scores have no tail to fit is off; an exact rule at its ceiling is off only when its count shows it
breaks the target): a new deployment's situation, many times over, with test
normals from the same source as the history. It is not part of ``logad-train benchmark``, whose test parts shape
no rule. One line per history, then a JSON summary: the shipped decision, the same without the model rules,
LogBERT's key-miss rule alone, and the one-line "unseen event" rule.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from logbert_core.config import load_settings
from training.benchmark import simple_rules
from training.protocols import (
    LOGBERT,
    LOGBERT_EXACT,
    LOGBERT_KEYS,
    fit_logbert,
    logbert_results,
    read_sequences,
    sequence_data,
    sequence_vocab_size,
)

REPO = Path(__file__).resolve().parents[1]


def one_history(settings: Any, train: list[list[str]], test: list[tuple[str, bool, list[str]]],
                size: int) -> dict[str, Any]:
    data = sequence_data(settings, train, test, size)
    run = fit_logbert(data, settings, sequence_vocab_size(data))
    rows = {r.name: r.test for r in logbert_results(run, data, settings.scoring)}
    rows |= {r["method"]: r for r in simple_rules(data)}  # the benchmark's one-line rules, the same way
    th = run.judge.thresholds
    out: dict[str, Any] = {name: {k: rows[name][k] for k in ("f1", "fp", "fn", "auc_pr")}
                           for name in (LOGBERT, LOGBERT_EXACT, LOGBERT_KEYS, "rule_unseen_event")}
    out["rules"] = list(th.promise.rules) if th.promise is not None else []
    out["miss_ratio_threshold"] = th.miss_ratio
    return out


def outcome(r: dict[str, Any]) -> str:
    """One history's result (``one_history``) on one line."""
    return (f"shipped F1 {r[LOGBERT]['f1']:.3f} ({r[LOGBERT]['fp']} FP, {r[LOGBERT]['fn']} FN) | without the model "
            f"{r[LOGBERT_EXACT]['f1']:.3f} ({r[LOGBERT_EXACT]['fp']} FP) | key misses alone AUC-PR "
            f"{r[LOGBERT_KEYS]['auc_pr']:.3f} | unseen-event rule {r['rule_unseen_event']['f1']:.3f} | rules: "
            f"{', '.join(r['rules'])}")


@click.command()
@click.option("--shared", type=click.Path(exists=True, file_okay=False), default=str(REPO.parent / "shared" / "data"),
              show_default=True, help="The shared data folder (hdfs_sequences/ is read).")
@click.option("--histories", type=click.IntRange(1), default=10, show_default=True)
@click.option("--size", type=click.IntRange(3), default=50, show_default=True, help="Normal sessions per history.")
@click.option("--stride", type=click.IntRange(1), default=480, show_default=True,
              help="History k starts at normal session k * stride (file order).")
@click.option("--anomalies", type=click.IntRange(1), default=600, show_default=True,
              help="Anomalous test sessions, drawn with --seed from deeplog_hdfs_test_abnormal.")
@click.option("--seed", type=int, default=0, show_default=True)
def main(shared: str, histories: int, size: int, stride: int, anomalies: int, seed: int) -> None:
    folder = Path(shared) / "hdfs_sequences"
    settings = load_settings(REPO / "config" / "hdfs.toml")
    normals = read_sequences(folder / "deeplog_hdfs_train")
    abnormal = read_sequences(folder / "deeplog_hdfs_test_abnormal")
    if (histories - 1) * stride + size > len(normals):
        raise click.BadParameter(f"{histories} histories of {size} at stride {stride} need "
                                 f"{(histories - 1) * stride + size} normal sessions; the file has {len(normals)}")
    picked = np.random.default_rng(seed).choice(len(abnormal), size=min(anomalies, len(abnormal)), replace=False)
    bad = [(f"abnormal:{i}", True, abnormal[i]) for i in picked]
    results = []
    for k in range(histories):
        t0 = time.perf_counter()
        lo = k * stride
        rest = normals[:lo] + normals[lo + size:]
        r = one_history(settings, normals[lo:lo + size],
                        [(f"normal:{i}", False, s) for i, s in enumerate(rest)] + bad, size)
        r["sessions"] = [lo, lo + size - 1]
        results.append(r)
        click.echo(f"history {k} (sessions {lo}-{lo + size - 1}, {time.perf_counter() - t0:.0f} s): {outcome(r)}",
                   err=True)
    summary = {f"mean_f1_{name}": round(statistics.mean(r[name]["f1"] for r in results), 4)
               for name in (LOGBERT, LOGBERT_EXACT, LOGBERT_KEYS, "rule_unseen_event")}
    click.echo(json.dumps({"histories": results, **summary}, indent=1, default=float))


if __name__ == "__main__":
    main()
