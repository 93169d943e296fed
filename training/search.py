"""Hyper-parameter search for the product detector: select on the validation split, report the winner on test once.

The data are split as in ``protocols.raw_protocol`` (chronological; the latest sessions are the test split). Every
grid point that changes the model or its training is a fresh ``train_bundle`` run; ``scoring.top_g`` only changes
scoring, so each trained model is re-calibrated per top-g value on the calibration split (normal sessions, no
labels). Candidates are ranked on the validation set (validation normals + the anomalies of the earlier period) by
F1, then by lower FPR, then by grid order. Only the winner is ever scored on the test split.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from logbert_core.config import Settings
from training.protocols import (
    LOGBERT,
    EvalData,
    MethodResult,
    logbert_results,
    raw_protocol,
)

log = logging.getLogger(__name__)

SHORT_NAMES = {"top_g": "scoring.top_g", "n_embd": "model.n_embd", "mask_ratio": "train.mask_ratio",
               "n_layer": "model.n_layer", "n_head": "model.n_head", "max_len": "model.max_len",
               "stride": "model.stride", "lr": "train.lr", "epochs": "train.epochs",
               "hypersphere_weight": "model.hypersphere_weight"}
DEFAULT_GRID: dict[str, list[Any]] = {"scoring.top_g": [3, 5, 8], "model.n_embd": [32, 64],
                                      "train.mask_ratio": [0.15, 0.3]}
RECALIBRATED = "scoring.top_g"  # every grid point retrains: cross-fitted calibration needs the fold models again


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """``["top_g=3,5,8", "model.n_embd=32,64"]`` -> ``{"scoring.top_g": [3, 5, 8], "model.n_embd": [32, 64]}``."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        if not sep or not values:
            raise ValueError(f"grid entry {item!r} must look like name=v1,v2 (e.g. top_g=3,5,8)")
        key = SHORT_NAMES.get(name.strip(), name.strip())
        if key.count(".") != 1:
            raise ValueError(f"grid key {name!r} must be section.field or one of {', '.join(SHORT_NAMES)}")
        if key in grid:
            raise ValueError(f"grid key {key!r} is given twice")
        grid[key] = [_value(v) for v in values.split(",")]
    return grid


def _value(text: str) -> Any:
    try:
        return json.loads(text.strip())
    except json.JSONDecodeError:
        return text.strip()


def with_overrides(settings: Settings, overrides: Mapping[str, Any]) -> Settings:
    """A validated copy of ``settings`` with ``{"section.field": value}`` replaced."""
    data = settings.model_dump()
    for key, value in overrides.items():
        section, fld = key.split(".")
        if section not in data or fld not in data[section]:
            raise ValueError(f"unknown setting {key!r}")
        data[section][fld] = value
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        errors = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ValueError(errors) from exc


def checked_grid(settings: Settings, grid: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
    """Every grid point validated as the winner's settings will be, before any training; returns the grid with
    each value as the settings hold it (``"5"`` -> ``5``), so a bad value fails now, not after hours of training."""
    if not all(grid.values()):
        raise ValueError("the grid needs at least one value per key")
    keys = list(grid)
    held: dict[str, dict[int, Any]] = {k: {} for k in keys}  # key -> {index of the value: validated value}
    for picks in itertools.product(*(range(len(grid[k])) for k in keys)):
        point = {k: grid[k][i] for k, i in zip(keys, picks)}
        try:
            data = with_overrides(settings, point).model_dump(mode="json")
        except ValueError as exc:
            raise ValueError(f"grid point {point} is invalid: {exc}") from exc
        for k, i in zip(keys, picks):
            section, fld = k.split(".")
            held[k][i] = data[section][fld]
    return {k: [held[k][i] for i in range(len(grid[k]))] for k in keys}


@dataclass
class Candidate:
    params: dict[str, Any]
    validation: dict[str, Any]
    bundle_dir: str
    bundle_version: str


@dataclass
class SearchResult:
    candidates: list[Candidate]
    winner: Candidate
    winner_results: list[MethodResult]  # LogBERT rows of the winner, validation and test
    data: EvalData
    winner_settings: Settings


def _rank(c: Candidate) -> tuple[float, float]:
    v = c.validation
    return (-v["f1"], v["fpr"] if v["fpr"] is not None else 1.0)


def search(settings: Settings, inputs: Sequence[str | Path], labels_csv: str | Path | None, test_fraction: float,
           grid: Mapping[str, Sequence[Any]], out_dir: str | Path, progress: bool = False) -> SearchResult:
    out = Path(out_dir)
    grid = checked_grid(settings, grid)
    retrain_keys = list(grid)
    candidates: list[Candidate] = []
    runs: dict[str, Any] = {}
    data: EvalData | None = None
    for i, values in enumerate(itertools.product(*(grid[k] for k in retrain_keys))):
        fixed = dict(zip(retrain_keys, values))
        s = with_overrides(settings, fixed)
        bundle_dir = out / "candidates" / f"{i:02d}"
        raw = raw_protocol(s, inputs, labels_csv, test_fraction, bundle_dir / "bundle", progress)
        if data is not None and (raw.data.split.test, raw.data.split.val) != (data.split.test, data.split.val):
            raise RuntimeError("the split changed between grid points; search needs one split")
        data = raw.data
        run = raw.logbert
        res = logbert_results(run, raw.data, s.scoring, include_test=False)[0]
        params = {**fixed, RECALIBRATED: s.scoring.top_g}
        candidates.append(Candidate(params, res.validation, str(bundle_dir / "bundle"), raw.bundle.version))
        runs[json.dumps(params, sort_keys=True)] = (run, s)
        log.info("candidate %s: validation %s", params, res.validation)
    assert data is not None, "empty grid"
    winner = min(candidates, key=_rank)  # min() keeps the first of equals: grid order breaks ties
    run, s = runs[json.dumps(winner.params, sort_keys=True)]
    winner_settings = with_overrides(s, {RECALIBRATED: winner.params[RECALIBRATED]})
    results = [r for r in logbert_results(run, data, s.scoring, include_test=True) if r.name == LOGBERT]
    return SearchResult(candidates, winner, results, data, winner_settings)


def write_search_report(out_dir: str | Path, result: SearchResult, grid: Mapping[str, Sequence[Any]],
                        base: Mapping[str, Any]) -> dict[str, Any]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    w = result.winner_results[0]
    doc = {"grid": {k: list(v) for k, v in grid.items()}, "base": dict(base),
           "selection": "validation F1, then lower validation FPR, then grid order; test scored for the winner only",
           "split": {"rule": result.data.split.rule, **result.data.split.counts(result.data.labels)},
           "data": {"inputs": result.data.data.get("inputs")},
           "candidates": [{"params": c.params, "validation": c.validation, "bundle_version": c.bundle_version}
                          for c in result.candidates],
           "winner": {"params": result.winner.params, "bundle_dir": result.winner.bundle_dir,
                      "bundle_version": result.winner.bundle_version, "validation": w.validation, "test": w.test}}
    (out / "search.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    keys = list(grid)
    lines = ["# LogBERT hyper-parameter search", "", f"Split: {result.data.split.rule}.", "",
             "Selection: " + str(doc["selection"]) + ".", "",
             "| " + " | ".join([*keys, "val P", "val R", "val F1", "val FPR", "val AUC-PR"]) + " |",
             "|" + "---|" * (len(keys) + 5)]
    for c in result.candidates:
        v = c.validation
        mark = " **(winner)**" if c is result.winner else ""
        lines.append("| " + " | ".join([*(str(c.params[k]) for k in keys),
                                         *(str(v[m]) for m in ("precision", "recall", "f1", "fpr", "auc_pr"))])
                     + mark + " |")
    t = w.test
    lines += ["", f"Winner {result.winner.params} on the test split (scored once): P {t['precision']} "
                  f"R {t['recall']} F1 {t['f1']} FPR {t['fpr']} AUC-PR {t['auc_pr']} "
                  f"(tp {t['tp']} fp {t['fp']} fn {t['fn']} tn {t['tn']}).", ""]
    lines += [f"The winner's bundle is `{result.winner.bundle_dir}`. To ship it, put the winning values in the "
              "config and train with `logad-train`.", ""]
    (out / "search.md").write_text("\n".join(lines))
    return doc
