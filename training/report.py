"""The evaluation report: a directory with the results table (Markdown and JSON), plots, the data fingerprint and the
exact split.

    results.md        the table (test split; validation below it), data fingerprint, split rule, notes
    results.json      everything in results.md, machine-readable, plus per-method thresholds and timings
    split.json        the session ids of every part (fit / val / calib / test / validation anomalies)
    pr_curves.png     precision-recall curves of every method on the test split (labelled data only)
    score_hist.png    score histograms, normal vs anomalous test sessions, one panel per method
    loss.png          training (and validation) loss per epoch of the methods that learn iteratively

With the shipped decision (``logbert``) among labelled results, ``results.md`` also says how it compares with the
best baseline, whether it reaches a goal F1 (``goal_f1``) and by how much it falls short, which rules its errors came
from, and how often each part of the split holds a template the training period never had (``analyse``).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from logbert_core.vocab import UNK
from training.protocols import LOGBERT, EvalData, MethodResult

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
        head: tuple[str, ...] = ("method", "family", "flagged sessions", "flag rate")
        rows: list[tuple[str, ...]] = [(r.name, r.family, str(int(getattr(r, f"{part}_flags").sum())),
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


def max_false_positives(anomalous: int, goal_f1: float) -> int:
    """The most false positives a decision that finds all ``anomalous`` sessions may make and keep F1 >= ``goal_f1``
    (F1 = 2A / (2A + FP)). Every missed anomaly lowers it further."""
    return max(0, math.floor(2 * anomalous * (1 - goal_f1) / goal_f1 + 1e-9))


def _rule_counts(reasons: Mapping[str, tuple[str, ...]], ids: Sequence[str]) -> dict[str, int]:
    counts = Counter(r for sid in ids for r in reasons.get(sid, ()))
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def rule_catches(reasons: Mapping[str, tuple[str, ...]], anomalous: Sequence[str], normal: Sequence[str]
                 ) -> dict[str, dict[str, int]]:
    """Per rule: the anomalies it fired on (its solo catch), those no other rule caught (its marginal catch), the
    anomalies it missed, and the normal sessions it fired on."""
    names = sorted({r for sid in [*anomalous, *normal] for r in reasons.get(sid, ())})
    out = {}
    for name in names:
        solo = sum(name in reasons.get(sid, ()) for sid in anomalous)
        only = sum(reasons.get(sid, ()) == (name,) for sid in anomalous)
        out[name] = {"catches": solo, "only_catch": only, "misses": len(anomalous) - solo,
                     "normal_flagged": sum(name in reasons.get(sid, ()) for sid in normal)}
    return out


def analyse(data: EvalData, results: Sequence[MethodResult], goal_f1: float | None = None) -> dict[str, Any]:
    """How the shipped decision stands, and why it errs: empty without labels or without the ``logbert`` row.

    * ``versus_baselines``: per split, its F1 against the best baseline (every row outside the LogBERT family),
      and the baselines at or above it.
    * ``goal``: with ``goal_f1``, whether the test F1 reaches it, the shortfall, and how many false positives the
      goal allows at full recall.
    * ``errors``: test false positives, true positives and false negatives, with the rules that fired in them.
    * ``unseen_templates``: per part of the split, how many sessions hold a template the bundle's vocabulary lacks
      (``UNK``). Test normals holding them far more often than calibration normals is drift the training period
      could not show, and no threshold calibrated on it can absorb.
    """
    product = next((r for r in results if r.name == LOGBERT), None)
    if product is None or not data.labelled:
        return {}
    out: dict[str, Any] = {"product": LOGBERT}
    baselines = [r for r in results if r.family != "LogBERT"]
    if baselines:
        versus = {}
        for part in ("test", "validation"):
            got = getattr(product, part)
            if not got.get("tp", 0) + got.get("fn", 0):  # no anomalies in this part: F1 says nothing
                continue
            f1 = got.get("f1")
            scored = [(r.name, getattr(r, part).get("f1")) for r in baselines]
            scored = [(n, f) for n, f in scored if f is not None]
            if f1 is None or not scored:
                continue
            best = max(scored, key=lambda nf: nf[1])
            versus[part] = {"f1": f1, "best_baseline": best[0], "best_baseline_f1": best[1],
                            "margin": round(f1 - best[1], 4),
                            "baselines_ahead": [n for n, f in scored if f > f1],
                            "baselines_tied": [n for n, f in scored if f == f1]}
        out["versus_baselines"] = versus
    t = product.test
    anomalous = t["tp"] + t["fn"]
    if goal_f1 is not None:
        out["goal"] = {"f1": goal_f1, "test_f1": t["f1"], "met": t["f1"] >= goal_f1,
                       "shortfall": round(max(0.0, goal_f1 - t["f1"]), 4), "anomalous_sessions": anomalous,
                       "false_positives_allowed_at_full_recall": max_false_positives(anomalous, goal_f1),
                       "false_positives": t["fp"], "false_negatives": t["fn"]}
    test = data.split.test
    truth, flags = data.truth(test), np.asarray(product.test_flags, dtype=bool)
    fp = [s for s, y, f in zip(test, truth, flags) if f and not y]
    tp = [s for s, y, f in zip(test, truth, flags) if f and y]
    fn = [s for s, y, f in zip(test, truth, flags) if not f and y]
    out["errors"] = {"false_positives": len(fp), "false_positives_by_rule": _rule_counts(product.reasons, fp),
                     "true_positives": len(tp), "true_positives_by_rule": _rule_counts(product.reasons, tp),
                     "false_negatives": len(fn),
                     "by_rule": rule_catches(product.reasons, [s for s, y in zip(test, truth) if y],
                                             [s for s, y in zip(test, truth) if not y])}
    groups = {"calibration normals": data.split.calib,
              "test normals": [s for s, y in zip(test, truth) if not y],
              "test anomalies": [s for s, y in zip(test, truth) if y],
              "false positives": fp, "false negatives": fn}
    unseen = {}
    for name, ids in groups.items():
        n = sum(UNK in data.sessions[s] for s in ids)
        unseen[name] = {"sessions": len(ids), "with_unseen_template": n,
                        "share": round(n / len(ids), 4) if ids else None}
    out["unseen_templates"] = unseen
    return out


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def analysis_markdown(a: Mapping[str, Any]) -> list[str]:
    """``analyse``'s findings as report sections (nothing when it found nothing to say)."""
    if not a:
        return []
    md: list[str] = []
    versus, goal = a.get("versus_baselines"), a.get("goal")
    if versus or goal:
        md += ["## How the shipped decision stands", ""]
        for part, v in (versus or {}).items():
            ahead = ", ".join(f"`{n}`" for n in v["baselines_ahead"]) or "none"
            tied = ", ".join(f"`{n}`" for n in v["baselines_tied"]) or "none"
            m = v["margin"]
            word = f"ahead by {_fmt(m)}" if m > 0 else f"behind by {_fmt(-m)}" if m < 0 else "level"
            md.append(f"- {part.capitalize()}: `logbert` F1 {_fmt(v['f1'])}; best baseline `{v['best_baseline']}` "
                      f"F1 {_fmt(v['best_baseline_f1'])} ({word}). Baselines above it: "
                      f"{ahead}; level with it: {tied}.")
        if goal:
            state = "met" if goal["met"] else f"**not met**, short by {_fmt(goal['shortfall'])}"
            md.append(f"- Goal F1 >= {goal['f1']:g} on the test split: {state} (F1 {_fmt(goal['test_f1'])}). With "
                      f"{goal['anomalous_sessions']} anomalous sessions, the goal allows at most "
                      f"{goal['false_positives_allowed_at_full_recall']} false positive(s) at full recall, fewer "
                      f"with any miss; the decision has {goal['false_positives']} false positive(s) and "
                      f"{goal['false_negatives']} miss(es).")
        md.append("")
    e, u = a["errors"], a["unseen_templates"]

    def rules(d: Mapping[str, int]) -> str:
        return ", ".join(f"`{k}` {v}" for k, v in d.items()) or "-"

    md += ["## Where the shipped decision errs (test split)", "",
           "Rules that fired in any window of the session (a session may fire several):", "",
           "| sessions | count | rules |", "|---|---|---|",
           f"| false positives | {e['false_positives']} | {rules(e['false_positives_by_rule'])} |",
           f"| true positives | {e['true_positives']} | {rules(e['true_positives_by_rule'])} |",
           f"| false negatives | {e['false_negatives']} | - |", "",
           "Each rule alone: the test anomalies it catches, those only it catches (what the decision would lose "
           "without it), those it misses, and the test normals it flags:", "",
           "| rule | catches | only it | misses | normals flagged |", "|---|---|---|---|---|"]
    md += [f"| `{k}` | {v['catches']} | {v['only_catch']} | {v['misses']} | {v['normal_flagged']} |"
           for k, v in e.get("by_rule", {}).items()]
    md += ["",
           "Sessions holding a template the training period never had (`UNK`: it fires `unseen_template`):", "",
           "| sessions | count | with an unseen template | share |", "|---|---|---|---|"]
    md += [f"| {k} | {v['sessions']} | {v['with_unseen_template']} | {_pct(v['share'])} |" for k, v in u.items()]
    cal, norm = u["calibration normals"]["share"], u["test normals"]["share"]
    if norm is not None and cal is not None and norm >= 0.01 and norm > 3 * cal:
        md += ["", f"Test normals hold an unseen template in {_pct(norm)} of sessions, calibration normals in "
                   f"{_pct(cal)}: the test period brings templates the training period never showed (drift). "
                   "Those sessions look new to every rule learned from it, and no threshold calibrated on it can "
                   "absorb them; training on a period that covers the new templates can."]
    if cal is not None and cal >= 0.05:
        md += ["", f"Calibration normals, the last normal sessions of the training period, already hold an unseen "
                   f"template in {_pct(cal)} of sessions: the template vocabulary keeps growing within the training "
                   "period itself, so a new template is weak evidence on these logs, and the rules that count it as "
                   "evidence fire on normal sessions at about that rate."]
    fp_u = u["false positives"]
    if fp_u["sessions"] and fp_u["with_unseen_template"]:
        md += ["", f"{fp_u['with_unseen_template']} of the {fp_u['sessions']} false positives hold an unseen "
                   "template."]
    return md + [""]


def write_report(out_dir: str | Path, data: EvalData, results: Sequence[MethodResult], *, title: str,
                 params: Mapping[str, Any], notes: Sequence[str] = (), goal_f1: float | None = None
                 ) -> dict[str, Any]:
    """Write the report files; returns the JSON document (also written to results.json). ``goal_f1``: the test F1
    the shipped decision is held to in the analysis (``analyse``)."""
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
        "analysis": analyse(data, results, goal_f1),
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
           "Every threshold comes from normal training sessions only, at target FPR "
           f"{params.get('target_fpr')} (LogBERT: one level for all its rules, leave-one-out and out-of-fold; "
           "baselines: their calibration split); no label chose any threshold.", "",
           markdown_table(results, "test", data.labelled), ""]
    shipped = next((r for r in results if isinstance(r.threshold, dict) and "promise" in r.threshold), None)
    if shipped is not None:
        p = shipped.threshold["promise"]
        md += [f"What the shipped decision promised before the test: FPR {p['fpr']:.4f} (95 % bound "
               f"{p['fpr_upper']:.4f}, target {p['target_fpr']}) from {p['sessions']} normal sessions and "
               f"{p['model_sessions']} model-calibration sessions; rules that can fire: {', '.join(p['rules'])}.", ""]
        md += [f"- warning: {w}" for w in p["warnings"]] + ([""] if p["warnings"] else [])
    if data.split.val_anomalous or data.labelled:
        md += ["## Validation (model selection only: validation normals + anomalies of the earlier period)", "",
               markdown_table(results, "validation", data.labelled), ""]
    md += analysis_markdown(doc["analysis"])
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
        return ", ".join(f"{k} {_fmt(v)}" for k, v in th.items() if k != "promise")
    return _fmt(th)


def draw_loss(ax: Any, epochs: Sequence[float], train: Sequence[float], val: Sequence[float], title: str,
              kept: int | None = None) -> None:
    """One loss-by-epoch panel (matplotlib axes ``ax``): training and, where there is one, validation loss; the
    epoch ``kept`` dashed. ``evaluate``'s ``loss.png`` and the benchmark's ``loss_curves.png`` draw with it."""
    from matplotlib.ticker import MaxNLocator

    if train:
        ax.plot(epochs, train, "o-", ms=3, label="train")
    if val:
        ax.plot(epochs, val, "s-", ms=3, label="validation")
    if kept:
        ax.axvline(kept, color="k", ls="--", lw=0.8)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)


def plot_report(out: Path, data: EvalData, results: Sequence[MethodResult]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    truth = data.truth(data.split.test)
    # precision-recall curves
    fig, ax = plt.subplots(figsize=(7, 6))
    if data.labelled and truth.any() and not truth.all():
        from sklearn.metrics import precision_recall_curve

        colors = plt.get_cmap("tab20").colors  # type: ignore[attr-defined]  # a ListedColormap
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
        val = [h["val_loss"] for h in r.history] if "val_loss" in r.history[0] else []
        draw_loss(ax, [h["epoch"] for h in r.history], [h["train_loss"] for h in r.history], val, r.name)
    if not learned:
        axes[0, 0].text(0.5, 0.5, "no iteratively trained method", ha="center", va="center")
        axes[0, 0].set_axis_off()
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=100)
    plt.close(fig)
