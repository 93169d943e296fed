"""The evaluation report: a directory with the results table (Markdown and JSON), plots, the data fingerprint and the
exact split.

    results.md        the table (test split; validation below it), data fingerprint, split rule, notes
    results.json      everything in results.md, machine-readable, plus per-method thresholds and timings
    split.json        the session ids of every part (fit / val / calib / test / validation anomalies)
    pr_curves.png     precision-recall curves of every method on the test split (labelled data only)
    score_hist.png    score histograms, normal vs anomalous test sessions, one panel per method
    loss.png          training (and validation) loss per epoch of the methods that learn iteratively
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.protocols import EvalData, MethodResult

COLUMNS = ("method", "family", "precision", "recall", "f1", "fpr", "auc_pr", "tp", "fp", "fn", "tn")
STAT_FIELDS = ("input_lines", "lines", "sessions", "sessions_in_both_parts", "templates", "session_length",
               "unseen_template_sessions_test", "empty_sessions_dropped", "unseen_event_ids_in_test")
EXTRA_COLUMNS = ("precision_at_paper_prevalence", "f1_at_paper_prevalence")  # sequence protocol only


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1e6 else f"{v:.3g}"
    return str(v)


def markdown_table(results: Sequence[MethodResult], part: str, labelled: bool = True) -> str:
    """One row per method; ``part`` is "test" or "validation"."""
    if not labelled:
        head = ("method", "family", "flagged sessions", "flag rate")
        rows = [(r.name, r.family, str(int(getattr(r, f"{part}_flags").sum())),
                 _fmt(getattr(r, part)["flag_rate"])) for r in results]
    else:
        extra = tuple(c for c in EXTRA_COLUMNS if results and all(c in getattr(r, part) for r in results))
        head = COLUMNS + extra
        rows = [(r.name, r.family, *(_fmt(getattr(r, part).get(c)) for c in head[2:])) for r in results]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, np.generic):
        return _json_safe(v.item())
    return v


def write_report(out_dir: str | Path, data: EvalData, results: Sequence[MethodResult], *, title: str,
                 params: Mapping[str, Any], notes: Sequence[str] = ()) -> dict[str, Any]:
    """Write the report files; returns the JSON document (also written to results.json)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts = data.split.counts(data.labels)
    doc: dict[str, Any] = {
        "title": title, "protocol": data.protocol, "labelled": data.labelled, "params": dict(params),
        "data": data.data, "split": {"rule": data.split.rule, **counts},
        "methods": [{"name": r.name, "family": r.family, "threshold": r.threshold, "test": r.test,
                     "validation": r.validation, "seconds": r.seconds, "notes": r.notes,
                     "epochs": len(r.history)} for r in results],
        "notes": list(notes),
    }
    doc = _json_safe(doc)
    (out / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
    sp = data.split
    (out / "split.json").write_text(json.dumps(
        {"rule": sp.rule, "fit": sp.fit, "val": sp.val, "calib": sp.calib, "test": sp.test,
         "val_anomalous": sp.val_anomalous}, indent=0) + "\n")
    md = [f"# {title}", "",
          f"Protocol: `{data.protocol}`. Split: {sp.rule}.", "",
          "Sessions: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + ".", ""]
    fp = data.data.get("inputs", {})
    md += ["Data (sha256):", ""] + [f"- `{p}`: `{h}`" for p, h in fp.items()] + [""]
    stats = {k: v for k, v in data.data.items() if k in STAT_FIELDS}
    if stats:
        md += ["Parse and session statistics:", ""] + [f"- {k}: {json.dumps(v)}" for k, v in stats.items()] + [""]
    what = "test split" if data.labelled else "test split (no labels: flag rates only)"
    md += [f"## Results on the {what}", "",
           "Every threshold comes from the calibration split (held-out normal sessions) at target FPR "
           f"{params.get('target_fpr')}; no label chose any threshold.", "",
           markdown_table(results, "test", data.labelled), ""]
    if data.split.val_anomalous or data.labelled:
        md += ["## Validation (model selection only: validation normals + anomalies of the earlier period)", "",
               markdown_table(results, "validation", data.labelled), ""]
    md += ["## Methods", ""] + [f"- `{r.name}` ({r.family}, {r.seconds} s): threshold {_fmt_th(r.threshold)}"
                               + (f"; {r.notes}" if r.notes else "") for r in results] + [""]
    if notes:
        md += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    md += ["Plots: `pr_curves.png`, `score_hist.png`, `loss.png`. Exact split: `split.json`.", ""]
    (out / "results.md").write_text("\n".join(md))
    plot_report(out, data, results)
    return doc


def _fmt_th(th: Any) -> str:
    if isinstance(th, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in th.items())
    return _fmt(th)


def plot_report(out: Path, data: EvalData, results: Sequence[MethodResult]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    truth = data.truth(data.split.test)
    # precision-recall curves
    fig, ax = plt.subplots(figsize=(7, 6))
    if data.labelled and truth.any() and not truth.all():
        from sklearn.metrics import precision_recall_curve

        colors = plt.get_cmap("tab20").colors
        for i, r in enumerate(results):
            p, rc, _ = precision_recall_curve(truth, r.test_scores)
            color, style = colors[i % len(colors)], ("-", "--", ":", "-.")[i // 10 % 4]
            ax.step(rc, p, where="post", label=f"{r.name} (AP {_fmt(r.test['auc_pr'])})", lw=1.2, color=color,
                    ls=style)
            ax.plot([r.test["recall"]], [r.test["precision"]], "o", ms=5, color=color)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0, 1.01)
        ax.set_ylim(0, 1.01)
        ax.legend(fontsize=7, loc="lower left")
        ax.set_title("Precision-recall, test split (dots: calibrated operating points)")
    else:
        ax.text(0.5, 0.5, "no labelled anomalies in the test split", ha="center", va="center")
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(out / "pr_curves.png", dpi=110)
    plt.close(fig)

    # score histograms
    n = len(results)
    cols = 4
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    for ax, r in zip(axes.flat, results):
        s = np.asarray(r.test_scores, dtype=np.float64)
        finite = np.isfinite(s)
        if finite.any():
            lo, hi = float(s[finite].min()), float(s[finite].max())
            bins = np.linspace(lo, hi if hi > lo else lo + 1, 40)
            ax.hist(s[finite & ~truth], bins=bins, alpha=0.6, label="normal", log=True)
            if truth.any():
                ax.hist(s[finite & truth], bins=bins, alpha=0.6, label="anomalous", log=True)
        if isinstance(r.threshold, (int, float)) and math.isfinite(r.threshold):
            ax.axvline(r.threshold, color="k", ls="--", lw=0.8)
        ax.set_title(r.name, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[n:]:
        ax.set_axis_off()
    fig.suptitle("Session scores on the test split (log counts; dashed: threshold)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "score_hist.png", dpi=100)
    plt.close(fig)

    # loss per epoch
    learned = [r for r in results if r.history]
    fig, axes = plt.subplots(1, max(1, len(learned)), figsize=(4.5 * max(1, len(learned)), 3.4), squeeze=False)
    for ax, r in zip(axes.flat, learned):
        ep = [h["epoch"] for h in r.history]
        ax.plot(ep, [h["train_loss"] for h in r.history], "o-", ms=3, label="train")
        if "val_loss" in r.history[0]:
            ax.plot(ep, [h["val_loss"] for h in r.history], "s-", ms=3, label="validation")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("loss")
        ax.set_title(r.name, fontsize=9)
        ax.legend(fontsize=7)
    if not learned:
        axes[0, 0].text(0.5, 0.5, "no iteratively trained method", ha="center", va="center")
        axes[0, 0].set_axis_off()
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=100)
    plt.close(fig)
