"""The runs store: one JSON line per run, appended; MLflow stays optional."""

from __future__ import annotations

import json
from pathlib import Path

from training.runs import append_run, flatten, make_record, read_runs, record_run


def test_records_are_appended_one_line_each(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "runs.jsonl"
    a = make_record("train", {"model.n_embd": 32}, {"sha256": "x"}, {"f1": 0.5}, "hdfs-abc", {"bundle": "m"})
    b = make_record("evaluate", {"model.n_embd": 64}, {"sha256": "y"}, {"logbert": {"f1": 0.7}})
    append_run(a, path)
    append_run(b, path)
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["run_id"] == a["run_id"]
    runs = read_runs(path)
    assert [r["command"] for r in runs] == ["train", "evaluate"]
    assert runs[0]["bundle_version"] == "hdfs-abc" and runs[1]["metrics"]["logbert"]["f1"] == 0.7
    assert read_runs(tmp_path / "missing.jsonl") == []


def test_record_run_can_be_switched_off(tmp_path: Path) -> None:
    rec = make_record("train", {}, {}, {})
    assert record_run(rec, "", mlflow=False) is None
    assert record_run(rec, tmp_path / "r.jsonl", mlflow=False) == tmp_path / "r.jsonl"
    assert len(read_runs(tmp_path / "r.jsonl")) == 1


def test_flatten() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": [2]}}, "e": "x"}) == {"a.b": 1, "a.c.d": [2], "e": "x"}
