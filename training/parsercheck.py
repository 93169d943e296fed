"""``logad-train parser-check``: how well parser settings group log lines, against Loghub's reference templates.

Loghub ships, for each of 16 systems, 2,000 lines and the templates they were labelled with
(``<System>_2k.log_templates.csv``; ``<*>`` marks a parameter). A line's reference group is the most specific
reference template that matches it (the most literal text). The line's *content* is the line from where that
template's match starts, which is what a correct ``log.line_regex`` would hand the parser. The measure is grouping
accuracy (Zhu et al., ICSE-SEIP 2019): the share of lines whose mined template groups exactly the lines of their
reference template, no more and no fewer.

This is how the defaults a new log family gets (``ParserSection``: similarity 0.7 and the generic masks) were
chosen: the settings that group best across the 16 systems (docs/evaluation.md, "Parser settings").

Beside the accuracy, the check prints what a family's own lines can say without references, the statistics a
per-family choice would have to rest on: the share of the later half's lines whose template the earlier half never
mined (what the detector would call unseen), the share of lines whose template occurs once, and the description
length of the lines under the mined templates (``description_length``: the minimum-description-length criterion
for a template set). On Loghub none of them follows the accuracy: the least description length picks a setting
that groups worse than the fixed default on 12 of 16 systems and better on one, BGL (docs/evaluation.md), which
is why the defaults are not chosen per family.
"""

from __future__ import annotations

import csv
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from logbert_core.parsing import DrainParams, TemplateIndex

_LITERAL = re.compile(r"[^\s<>*]{3,}")


@dataclass(frozen=True)
class Reference:
    """One system's lines with their reference template, and the lines no reference template matches."""

    system: str
    contents: list[str]  # each matched line from where its template starts
    groups: list[str]  # the reference template of each
    templates: int  # reference templates in the file
    unmatched: int


def _compile(template: str) -> tuple[int, re.Pattern[str], str]:
    literal = template.replace("<*>", "")
    parts = [re.escape(p) for p in template.split("<*>")]
    words = [w for part in template.split("<*>") for w in _LITERAL.findall(part)]
    anchor = max(words, key=len) if words else ""
    return len(literal), re.compile("(.*?)".join(parts) + r"\s*$"), anchor


def read_reference(folder: Path) -> Reference:
    """``folder``: a Loghub system folder holding ``<System>_2k.log`` and ``<System>_2k.log_templates.csv``."""
    system = folder.name
    log_path, csv_path = folder / f"{system}_2k.log", folder / f"{system}_2k.log_templates.csv"
    for p in (log_path, csv_path):
        if not p.is_file():
            raise ValueError(f"{folder}: no {p.name} (a Loghub system folder holds <System>_2k.log and "
                             "<System>_2k.log_templates.csv)")
    with open(csv_path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "EventTemplate" not in rows[0]:
        raise ValueError(f"{csv_path}: expected a header with EventTemplate")
    compiled = sorted((_compile(r["EventTemplate"]) for r in rows), key=lambda c: -c[0])  # most specific first
    contents, groups, unmatched = [], [], 0
    with open(log_path, encoding="utf-8", errors="replace") as fh:
        for raw in fh:
            line = raw.rstrip("\n")
            for _, pattern, anchor in compiled:
                if anchor and anchor not in line:  # cheap filter: the template's longest word must be there
                    continue
                m = pattern.search(line)
                if m:
                    contents.append(line[m.start():])
                    groups.append(pattern.pattern)
                    break
            else:
                unmatched += 1
    return Reference(system, contents, groups, len(rows), unmatched)


def grouping_accuracy(mined: Sequence[int], reference: Sequence[str]) -> float:
    """Share of lines whose mined group is exactly their reference group."""
    if len(mined) != len(reference):
        raise ValueError(f"{len(mined)} mined ids for {len(reference)} reference groups")
    if not mined:
        return 0.0
    by_mined: dict[int, set[int]] = defaultdict(set)
    by_ref: dict[str, set[int]] = defaultdict(set)
    for i, (m, r) in enumerate(zip(mined, reference)):
        by_mined[m].add(i)
        by_ref[r].add(i)
    right = sum(len(lines) for lines in by_ref.values() if by_mined[mined[next(iter(lines))]] == lines)
    return right / len(mined)


def later_unseen_share(mined: Sequence[int]) -> float:
    """Share of the lines of the later half (by position) whose template id no line of the earlier half has."""
    cut = len(mined) // 2
    later = mined[cut:]
    if not later:
        return 0.0
    earlier = set(mined[:cut])
    return sum(m not in earlier for m in later) / len(later)


def singleton_share(mined: Sequence[int]) -> float:
    """Share of the lines whose template id occurs on no other line."""
    if not mined:
        return 0.0
    counts = Counter(mined)
    return sum(1 for c in counts.values() if c == 1) / len(mined)


def description_length(contents: Sequence[str], mined: Sequence[int], templates: dict[int, str]) -> float:
    """Bits to send ``contents`` as template + parameters (a two-part code, the MDL view of log parsing):
    each template's text (8 bits a character), each line's template (entropy code over the lines), and, for every
    template position where a line's token differs from the template's, a dictionary of the distinct values
    (8 bits a character) and each line's value (entropy code over that position's values). A line whose token
    count differs from its template's is sent whole. Masked tokens are parameters like any other, so settings
    with and without masks compare on the same text."""
    n = len(mined)
    if not n:
        return 0.0
    per_template = Counter(mined)
    bits = sum(8.0 * (len(templates[t]) + 1) for t in per_template)
    bits += sum(-k * math.log2(k / n) for k in per_template.values())
    values: dict[tuple[int, int], Counter[str]] = defaultdict(Counter)
    for content, t in zip(contents, mined):
        tokens, slots = content.split(), templates[t].split()
        if len(tokens) != len(slots):
            bits += 8.0 * (len(content) + 1)
            continue
        for i, (token, slot) in enumerate(zip(tokens, slots)):
            if token != slot:
                values[(t, i)][token] += 1
    for seen in values.values():
        total = sum(seen.values())
        bits += sum(8.0 * (len(v) + 1) - k * math.log2(k / total) for v, k in seen.items())
    return bits


@dataclass(frozen=True)
class CheckRow:
    system: str
    lines: int
    reference_templates: int
    unmatched: int
    scores: dict[str, tuple[float, int]]  # setting name -> (grouping accuracy, templates mined)
    # setting name -> (later_unseen_share, singleton_share, description_length in bits)
    label_free: dict[str, tuple[float, float, float]]


def check(references: Iterable[Reference], settings: Sequence[tuple[str, DrainParams]]) -> list[CheckRow]:
    rows = []
    for ref in references:
        scores, label_free = {}, {}
        for name, params in settings:
            index = TemplateIndex(params)
            mined = [index.mine(c) for c in ref.contents]
            templates = index.templates()
            scores[name] = (grouping_accuracy(mined, ref.groups), len(templates))
            label_free[name] = (later_unseen_share(mined), singleton_share(mined),
                                description_length(ref.contents, mined, templates))
        rows.append(CheckRow(ref.system, len(ref.contents), ref.templates, ref.unmatched, scores, label_free))
    return rows


def markdown(rows: Sequence[CheckRow], names: Sequence[str]) -> str:
    head = "| system | lines | reference templates | " + " | ".join(f"{n}: accuracy / templates" for n in names)
    out = [head + " |", "|---|---|---|" + "---|" * len(names)]
    for r in rows:
        cells = [f"{r.scores[n][0]:.3f} / {r.scores[n][1]}" for n in names]
        lines = f"{r.lines}" + (f" ({r.unmatched} unmatched)" if r.unmatched else "")
        out.append(f"| {r.system} | {lines} | {r.reference_templates} | " + " | ".join(cells) + " |")
    if rows:
        means = [sum(r.scores[n][0] for r in rows) / len(rows) for n in names]
        best = [sum(r.scores[n][0] >= max(r.scores[m][0] for m in names) - 1e-9 for r in rows) for n in names]
        out.append("| mean (best of the settings, systems) | | | "
                   + " | ".join(f"{m:.3f} ({b})" for m, b in zip(means, best)) + " |")
        oracle = sum(max(r.scores[n][0] for n in names) for r in rows) / len(rows)
        fixed = max(range(len(names)), key=lambda i: means[i])
        out += ["", f"Each system's best of these {len(names)} settings groups at a mean of {oracle:.3f}, against "
                f"{means[fixed]:.3f} for the best single setting ({names[fixed]}): the most that choosing among them "
                "per family, by any criterion, could add here."]
        out += ["", "Without references (the family's own lines only): share of the later half's lines with a template "
                "the earlier half lacks / share of lines whose template occurs once / description length (kbit); "
                "`*` the least description length, and the accuracy of the setting it picks", "",
                "| system | " + " | ".join(names) + " | least description length picks |",
                "|---|" + "---|" * (len(names) + 1)]
        picked = []
        for r in rows:
            pick = min(names, key=lambda n: (r.label_free[n][2], names.index(n)))
            picked.append(r.scores[pick][0])
            cells = [f"{r.label_free[n][0]:.3f} / {r.label_free[n][1]:.3f} / {r.label_free[n][2] / 1000:.1f}"
                     + ("*" if n == pick else "") for n in names]
            out.append(f"| {r.system} | " + " | ".join(cells) + f" | {pick}: {r.scores[pick][0]:.3f} |")
        out.append("| mean accuracy of the picks | " + " | " * len(names) + f"{sum(picked) / len(picked):.3f} |")
    return "\n".join(out) + "\n"
