"""How much of BGL's drift does retraining take back, and what does retraining on unreviewed logs cost?

    python -m benchmarks.retrain_cadence --shared ../shared/data                  # monthly: about 5 min on 2 cores
    python -m benchmarks.retrain_cadence --shared ../shared/data --every-days 7   # weekly: about 20 min

The benchmark's ``bgl_raw`` suite trains once on the earlier 70 % of ``BGL_dev.log``'s (node, 5-minute) sessions and
judges the latest 30 %, months later: there the decision flags 7 % of the normal windows against a promise of 0.5 %,
most of them for a severe-level template the training part never had (docs/evaluation.md). The trainer's forward test
and the ``LogadUnseenTemplatesRising`` alert say "retrain". This script measures what that buys. It cuts the test
part into consecutive periods of ``--every-days`` days of log time and judges each period with four bundles:

* ``static``: trained once, on the training part (``bgl_raw``'s bundle);
* ``reviewed``: retrained before each period on every earlier line, the labelled alerts left out, as after an
  operator removed the incidents the detector reported and those found otherwise (what ``logad-train`` does with
  labels; an upper bound for a reviewed history);
* ``unreviewed``: retrained on the training part and every later line as it came, alerts included (their labels
  erased): retraining on a schedule without review;
* ``automatic``: as ``unreviewed``, less the sessions the automatic bundles flagged: a pipeline that retrains on
  what the detector judged normal.

The training part keeps its labels in every bundle (it was reviewed once, as the static bundle's history). The
first period is judged by the static bundle in every row (nothing earlier to retrain on). Labels only count
outcomes and, in ``reviewed``, say which earlier sessions were incidents; no threshold is chosen with them. One line
per period, then a JSON summary. Settings are ``config/bgl.toml``'s, as in the benchmark.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import torch

from logbert_core.bundle import load_bundle
from logbert_core.config import Settings, load_settings
from logbert_core.judge import Verdict
from logbert_core.runtime import build_judge, resolve_device
from training.data import Corpus, inline_labels, read_corpus, split_chronological
from training.protocols import bundle_windows
from training.train import judge_sessions, session_metrics, train_bundle

REPO = Path(__file__).resolve().parent.parent
VARIANTS = ("static", "reviewed", "unreviewed", "automatic")


def sessions_of(settings: Settings, path: Path) -> tuple[list[str], dict[str, list[str]], dict[str, float]]:
    """Session ids in the order of their first line's timestamp (``Corpus.chronological``), each session's raw
    lines (file order), and its first line's timestamp."""
    corpus = read_corpus([path], settings.line_reader())
    recs = corpus.records
    lines = {sid: [recs[i].line for i in idx] for sid, idx in corpus.sessions.items()}
    start = {sid: recs[idx[0]].timestamp for sid, idx in corpus.sessions.items()}
    return corpus.chronological(), lines, start


def periods(ids: Sequence[str], start: dict[str, float], seconds: float) -> list[list[str]]:
    """Sessions (in order of their start) cut into consecutive periods of ``seconds`` of log time from the first
    one's start; periods without a session are left out."""
    out: dict[int, list[str]] = {}
    for sid in ids:
        out.setdefault(int((start[sid] - start[ids[0]]) // seconds), []).append(sid)
    return [out[k] for k in sorted(out)]


def unlabelled(line: str) -> str:
    """A BGL line with its alert label erased: the first field becomes "-" (normal), as a raw log has no labels."""
    return "- " + line.split(" ", 1)[1] if " " in line else line


def write_lines(path: Path, ids: Sequence[str], lines: dict[str, list[str]], erase: Sequence[str] = ()) -> Path:
    """The lines of sessions ``ids``, in order; those of the sessions ``erase`` with their labels erased."""
    unreviewed = set(erase)
    with open(path, "w", encoding="utf-8") as fh:
        for sid in [*ids, *erase]:
            for line in lines[sid]:
                fh.write((unlabelled(line) if sid in unreviewed else line) + "\n")
    return path


def judge_part(settings: Settings, bundle_dir: Path, corpus: Corpus, threads: int
               ) -> tuple[dict[str, list[Verdict]], str]:
    """One period's verdicts by the bundle, and the bundle's version."""
    bundle = load_bundle(bundle_dir)
    judge = build_judge(bundle, settings, resolve_device(settings.train.device), threads=threads)
    return judge_sessions(judge, bundle_windows(bundle, settings, corpus)), bundle.version


def train(settings: Settings, log: Path, out: Path, source: str) -> Path:
    train_bundle(settings, [log], out, None, progress=False, source=source)
    return out


@click.command()
@click.option("--shared", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="the shared data folder (holds bgl/BGL_dev.log)")
@click.option("--every-days", default=30.0, show_default=True,
              help="retrain this often: the test part is cut into consecutive periods of this many days of log time")
@click.option("--test-fraction", default=0.3, show_default=True, help="the latest share of sessions judged "
              "(bgl_raw's)")
@click.option("--variants", default=",".join(VARIANTS), show_default=True,
              help="the bundles to compare (static always runs: the others start from it)")
@click.option("--threads", default=2, show_default=True, help="torch threads")
def main(shared: Path, every_days: float, test_fraction: float, variants: str, threads: int) -> None:
    if not every_days > 0:
        raise click.BadParameter(f"{every_days}: a period of more than 0 days", param_hint="--every-days")
    wanted = {v.strip() for v in variants.split(",") if v.strip()}
    if wanted - set(VARIANTS):
        raise click.BadParameter(f"{', '.join(sorted(wanted - set(VARIANTS)))}: not one of {', '.join(VARIANTS)}",
                                 param_hint="--variants")
    chosen = [v for v in VARIANTS if v in wanted or v == "static"]
    torch.set_num_threads(threads)
    settings = load_settings(REPO / "config" / "bgl.toml")
    t0 = time.perf_counter()
    order, lines, start = sessions_of(settings, shared / "bgl" / "BGL_dev.log")
    history, test = split_chronological(order, [test_fraction])
    parts = periods(test, start, every_days * 86_400)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="logad-cadence-") as tmp:
        work = Path(tmp)
        static = train(settings, write_lines(work / "history.log", history, lines), work / "static",
                       "bgl_raw's training part")
        earlier: list[str] = []  # sessions of the periods judged so far
        flagged: set[str] = set()  # ... that the automatic bundles flagged
        # per variant, the verdicts and labels of every period (session ids differ between periods)
        everything: dict[str, tuple[dict[str, list[Verdict]], dict[str, bool]]] = {v: ({}, {}) for v in chosen}
        for k, part in enumerate(parts):
            # read once: every variant judges the same lines (each with its own bundle's templates)
            corpus = read_corpus([write_lines(work / f"part{k}.log", part, lines)], settings.line_reader())
            labels = inline_labels(corpus)
            row: dict[str, Any] = {"part": k, "sessions": len(part), "history_sessions": len(history) + len(earlier),
                                   "days": round((start[part[-1]] - start[part[0]]) / 86_400, 1)}
            for variant in chosen:
                if k == 0 or variant == "static":
                    bundle = static
                else:
                    # the training part keeps its labels in every variant (it was reviewed once); the periods since:
                    if variant == "reviewed":  # labels kept: the alerts are left out
                        ids, erase = [*history, *earlier], []
                    elif variant == "unreviewed":  # as they came
                        ids, erase = history, earlier
                    else:  # as they came, less what the detector flagged
                        ids, erase = history, [sid for sid in earlier if sid not in flagged]
                    log = write_lines(work / f"{variant}{k}.log", ids, lines, erase)
                    bundle = train(settings, log, work / f"{variant}{k}", f"{variant} history before period {k}")
                verdicts, version = judge_part(settings, bundle, corpus, threads)
                row[variant] = {"bundle": version, **session_metrics(verdicts, labels)}
                everything[variant][0].update(verdicts)
                everything[variant][1].update(labels)
                if variant == "automatic":
                    flagged |= {sid for sid, vs in verdicts.items() if any(v.anomalous for v in vs)}
            rows.append(row)
            earlier += part
            outcome = "; ".join(f"{v} F1 {row[v]['f1']:.3f} (TP {row[v]['tp']}, FP {row[v]['fp']} of "
                                f"{row[v]['fp'] + row[v]['tn']}, FN {row[v]['fn']})" for v in chosen)
            click.echo(f"part {k} ({len(part)} sessions over {row['days']} days, history {row['history_sessions']}): "
                       + outcome)
    totals = {}
    for v in chosen:
        t = totals[v] = session_metrics(*everything[v])
        click.echo(f"all parts, {v}: F1 {t['f1']:.3f}, FPR {t['fpr']:.4f} (TP {t['tp']}, FP {t['fp']}, FN {t['fn']})")
    click.echo(json.dumps({"seconds": round(time.perf_counter() - t0, 1), "every_days": every_days, "parts": rows,
                           "totals": totals}, indent=1))


if __name__ == "__main__":
    main()
