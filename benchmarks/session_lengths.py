"""Does the decision's false-positive rate hold on sessions longer than those it was calibrated on?

    python -m benchmarks.session_lengths --shared ../shared/data      # about 2 min on 2 cores

BGL's shared sample (``BGL_dev.log``) holds about one line per (node, 5-minute) window: 27,370 of the 27,905 normal
windows of ``bgl_other_days``' training part hold one line. A full BGL stream holds dozens per window. The sample
cannot give such windows, but it can give longer sessions of the same normal lines: the script trains a bundle on
``bgl_other_days``' training part (``config/bgl.toml``, 5-minute windows, as ``logad-train benchmark`` does), then
judges that suite's test part cut into (node, window) sessions of 5 minutes, 1 hour, 1 day and 1 week. Longer
windows put more of a node's lines, days apart, into one session. For each cut it prints the normal sessions by
length (1, 2-3, 4-10, 11-64, 65+ lines), how many of them the shipped decision flags and by which rule, and how
many anomalous sessions it catches. One line per cut, then a JSON summary. No label chooses anything here: the
bundle is the benchmark's, and the cuts only regroup the test part's lines.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch

from logbert_core.bundle import load_bundle
from logbert_core.config import load_settings
from logbert_core.runtime import build_judge, resolve_device
from training.data import inline_labels, read_corpus
from training.protocols import bundle_windows
from training.split import split_files
from training.train import judge_sessions, train_bundle

REPO = Path(__file__).resolve().parent.parent
BUCKETS = ((1, 1), (2, 3), (4, 10), (11, 64), (65, None))


def bucket(n: int) -> str:
    for lo, hi in BUCKETS:
        if hi is None or n <= hi:
            return f"{lo}+" if hi is None else str(lo) if lo == hi else f"{lo}-{hi}"
    raise AssertionError(n)


def judge_cut(settings: Any, bundle: Any, judge: Any, test_log: Path, window_s: int) -> dict[str, Any]:
    s = settings.model_copy(update={"session": settings.session.model_copy(update={"window_s": window_s})})
    corpus = read_corpus([test_log], s.line_reader())
    labels = inline_labels(corpus)
    windows = bundle_windows(bundle, s, corpus)
    verdicts = judge_sessions(judge, windows)
    by_length: dict[str, dict[str, Any]] = {}
    caught = anomalous = 0
    for sid, sw in windows.items():
        fired = sorted({r for v in verdicts[sid] if v.anomalous for r in v.reasons})
        if labels.get(sid, False):
            anomalous += 1
            caught += bool(fired)
            continue
        row = by_length.setdefault(bucket(sw.n_lines), {"normal": 0, "flagged": 0, "rules": Counter()})
        row["normal"] += 1
        row["flagged"] += bool(fired)
        row["rules"].update(fired)
    order = [bucket(lo) for lo, _ in BUCKETS]
    rows = {k: {**by_length[k], "rules": dict(sorted(by_length[k]["rules"].items()))} for k in order if k in by_length}
    normal = sum(r["normal"] for r in rows.values())
    flagged = sum(r["flagged"] for r in rows.values())
    lengths = np.array([sw.n_lines for sid, sw in windows.items() if not labels.get(sid, False)])
    return {"window_s": window_s, "normal": normal, "flagged": flagged, "fpr": round(flagged / max(1, normal), 4),
            "lines_p90": float(np.percentile(lengths, 90)), "lines_max": int(lengths.max()),
            "anomalous": anomalous, "caught": caught, "by_length": rows}


@click.command()
@click.option("--shared", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="the shared data folder (holds bgl/BGL_dev.log)")
@click.option("--windows", default="300,3600,86400,604800", show_default=True,
              help="session window lengths to cut the test part into, in seconds")
@click.option("--threads", default=2, show_default=True, help="torch threads")
def main(shared: Path, windows: str, threads: int) -> None:
    torch.set_num_threads(threads)
    settings = load_settings(REPO / "config" / "bgl.toml")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="logad-lengths-") as tmp:
        work = Path(tmp)
        split_files(settings, [shared / "bgl" / "BGL_dev.log"], None, 0.3, work, interleave=True,
                    interleave_days=True)
        train_bundle(settings, [work / "train.log"], work / "bundle", None, progress=False,
                     source="bgl_other_days' training part")
        bundle = load_bundle(work / "bundle")
        judge = build_judge(bundle, settings, resolve_device(settings.train.device), threads=threads)
        out = []
        for w in (int(x) for x in windows.split(",") if x.strip()):
            r = judge_cut(settings, bundle, judge, work / "test.log", w)
            out.append(r)
            parts = "; ".join(f"{k} lines: {v['flagged']}/{v['normal']} {v['rules']}"
                              for k, v in r["by_length"].items())
            click.echo(f"window {w:>7} s: normal sessions flagged {r['flagged']}/{r['normal']} (FPR {r['fpr']:.4f}); "
                       f"anomalous caught {r['caught']}/{r['anomalous']}; {parts}")
    th = bundle.thresholds
    click.echo(json.dumps({"bundle": bundle.version, "seconds": round(time.perf_counter() - t0, 1),
                           "by_length_thresholds": {r: {str(c): round(t, 4) for c, t in tab.items()}
                                                    for r, tab in th.by_length.items()},
                           "cuts": out}, indent=1))


if __name__ == "__main__":
    main()
