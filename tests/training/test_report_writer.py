"""write_report: the table, the split and the plots land in the report directory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from logbert_core.vocab import UNK
from training.protocols import EvalData, MethodResult, Split, binary_metrics
from training.report import markdown_table, max_false_positives, write_report


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


def _fixed(name: str, family: str, data: EvalData, flags: np.ndarray,
           reasons: dict[str, tuple[str, ...]] | None = None) -> MethodResult:
    truth, vtruth = data.truth(data.split.test), data.truth(data.validation_ids)
    scores, vflags = flags.astype(float), np.zeros(vtruth.size, dtype=bool)
    return MethodResult(name, family, 0.5, scores, flags, vflags.astype(float), vflags,
                        binary_metrics(flags, truth, scores), binary_metrics(vflags, vtruth, vflags.astype(float)),
                        0.1, reasons=reasons or {})


def test_analysis_compares_with_baselines_holds_a_goal_and_explains_errors(tmp_path: Path) -> None:
    data = _data()  # test: s20..s39, anomalous s35..s39
    data.sessions["s21"] = [4, UNK, 6]  # a normal test session with a template training never had
    data.sessions["s36"] = [UNK]
    test = data.split.test
    product = np.array([s in ("s21", "s22") or s >= "s35" for s in test])  # all 5 anomalies, 2 false positives
    reasons = {"s21": ("rare_template", "unseen_template"), "s22": ("masked_key_misses",),
               **{f"s{i}": ("rare_template",) for i in range(35, 40)}}
    baseline = np.array([s >= "s36" for s in test])  # 4 of 5 anomalies, no false positive
    results = [_fixed("logbert", "LogBERT", data, product, reasons), _fixed("rule_b", "exact", data, baseline)]
    doc = write_report(tmp_path / "rep", data, results, title="t", params={}, goal_f1=0.99)
    a = doc["analysis"]
    # F1 2*5 / (2*5 + 2) = 0.8333; the baseline 2*4 / (2*4 + 1) = 0.8889
    assert a["versus_baselines"]["test"] == {"f1": 0.8333, "best_baseline": "rule_b", "best_baseline_f1": 0.8889,
                                             "margin": -0.0556, "baselines_ahead": ["rule_b"], "baselines_tied": []}
    assert a["goal"]["met"] is False and a["goal"]["shortfall"] == 0.1567
    assert "validation" not in a["versus_baselines"]  # no validation anomalies here: no F1 to compare
    assert a["goal"]["false_positives_allowed_at_full_recall"] == 0  # 2*5*0.01/0.99 < 1
    assert a["errors"]["false_positives_by_rule"] == {"masked_key_misses": 1, "rare_template": 1,
                                                      "unseen_template": 1}
    assert a["errors"]["true_positives_by_rule"] == {"rare_template": 5} and a["errors"]["false_negatives"] == 0
    u = a["unseen_templates"]
    assert u["test normals"] == {"sessions": 15, "with_unseen_template": 1, "share": 0.0667}
    assert u["calibration normals"]["with_unseen_template"] == 0 and u["false positives"]["with_unseen_template"] == 1
    md = (tmp_path / "rep" / "results.md").read_text()
    assert "best baseline `rule_b` F1 0.8889 (behind by 0.0556). Baselines above it: `rule_b`" in md
    assert "**not met**, short by 0.1567" in md
    assert "| false positives | 2 | `masked_key_misses` 1, `rare_template` 1, `unseen_template` 1 |" in md
    assert "the test period brings templates the training period never showed (drift)" in md
    assert "keeps growing within the training period" not in md  # calibration normals hold none


def test_analysis_names_drift_inside_the_training_period(tmp_path: Path) -> None:
    data = _data()
    for sid in ("s15", "s16", "s21", "s22"):  # 2 of 5 calibration normals, 2 of 15 test normals
        data.sessions[sid] = [4, UNK]
    test = data.split.test
    flags = np.array([s >= "s35" for s in test])
    doc = write_report(tmp_path / "rep", data, [_fixed("logbert", "LogBERT", data, flags)], title="t", params={})
    assert doc["analysis"]["unseen_templates"]["calibration normals"]["share"] == 0.4
    md = (tmp_path / "rep" / "results.md").read_text()
    assert "already hold an unseen template in 40.0 % of sessions" in md
    assert "(drift)" not in md  # the test period is no worse than the calibration one


def test_max_false_positives_at_a_goal() -> None:
    assert max_false_positives(40, 0.99) == 0  # 80 * 0.01 / 0.99 = 0.81
    assert max_false_positives(100, 0.99) == 2  # 200 * 0.01 / 0.99 = 2.02
    assert max_false_positives(347, 0.90) == 77  # 694 * 0.1 / 0.9 = 77.1


def test_no_analysis_without_the_shipped_decision_or_labels(tmp_path: Path) -> None:
    data = _data()
    doc = write_report(tmp_path / "rep", data, [_result("model_a", data, 0, False)], title="t", params={},
                       goal_f1=0.9)
    assert doc["analysis"] == {}
    assert "How the shipped decision stands" not in (tmp_path / "rep" / "results.md").read_text()
