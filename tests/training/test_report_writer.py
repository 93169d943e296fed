"""write_report: the table, the split and the plots land in the report directory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from training.protocols import EvalData, MethodResult, Split, binary_metrics
from training.report import markdown_table, write_report


def _data() -> EvalData:
    ids = [f"s{i}" for i in range(40)]
    sessions = {sid: [4, 5, 6] for sid in ids}
    split = Split(ids[:10], ids[10:15], ids[15:20], ids[20:], [], rule="first 10 fit, then 5 val, 5 calib, 20 test")
    labels = {sid: True for sid in ids[35:]}
    return EvalData("raw", sessions, {k: [v] for k, v in sessions.items()}, labels, True, split,
                    data={"inputs": {"x.log": "ab" * 32}, "templates": 3, "sessions": 40})


def _result(name: str, data: EvalData, seed: int, history: bool) -> MethodResult:
    rng = np.random.default_rng(seed)
    truth = data.truth(data.split.test)
    scores = rng.normal(size=truth.size) + 3 * truth
    flags = scores > 1.5
    vtruth = data.truth(data.validation_ids)
    vscores = rng.normal(size=vtruth.size)
    hist = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e} for e in range(1, 4)] if history else []
    return MethodResult(name, "test", 1.5, scores, flags, vscores, vscores > 1.5,
                        binary_metrics(flags, truth, scores), binary_metrics(vscores > 1.5, vtruth, vscores), 0.1,
                        hist)


def test_report_writes_table_json_split_and_plots(tmp_path: Path) -> None:
    data = _data()
    results = [_result("model_a", data, 0, True), _result("rule_b", data, 1, False)]
    doc = write_report(tmp_path / "rep", data, results, title="Synthetic", params={"target_fpr": 0.01},
                       notes=["a note"])
    out = tmp_path / "rep"
    for name in ("results.md", "results.json", "split.json", "pr_curves.png", "score_hist.png", "loss.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "pr_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "results.json").read_text())
    assert saved == doc
    assert [m["name"] for m in saved["methods"]] == ["model_a", "rule_b"]
    assert saved["split"]["test"] == 20 and saved["split"]["test_anomalous"] == 5
    split = json.loads((out / "split.json").read_text())
    assert split["fit"] == [f"s{i}" for i in range(10)] and len(split["test"]) == 20
    md = (out / "results.md").read_text()
    assert "| model_a | test |" in md and "`x.log`: `" + "ab" * 32 in md and "- a note" in md


def test_unlabelled_tables_show_flag_rates() -> None:
    data = _data()
    table = markdown_table([_result("m", data, 0, False)], "test", labelled=False)
    assert table.splitlines()[0] == "| method | family | flagged sessions | flag rate |"
