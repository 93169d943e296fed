"""logad-train evaluate and search end to end on a small real slice, and on tiny pre-parsed sequence files."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from training.cli import main
from training.runs import read_runs

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "config" / "hdfs.toml"
TRAIN = REPO / "data" / "hdfs" / "train.log.gz"
LABELS = REPO / "data" / "hdfs" / "train.labels.csv"
# tiny and short: these tests check what the commands write, not how well the model learns
FAST = {"LOGAD_TRAIN__EPOCHS": "2", "LOGAD_MODEL__N_EMBD": "32", "LOGAD_TRAIN__SEED": "5",
        "LOGAD_TRAIN__MIN_EPOCH_STEPS": "5"}
REPORT_FILES = ("results.md", "results.json", "split.json", "pr_curves.png", "score_hist.png", "loss.png")


@pytest.fixture(scope="module")
def slice_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "slice.log"
    with gzip.open(TRAIN, "rt") as fh, open(path, "w") as out:
        for _, line in zip(range(12000), fh):
            out.write(line)
    return path


def invoke(args: list[str]) -> str:
    result = CliRunner().invoke(main, args, env=FAST, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.slow
def test_evaluate_raw_logs_writes_the_report_and_a_run_record(tmp_path: Path, slice_file: Path) -> None:
    out, runs = tmp_path / "report", tmp_path / "runs.jsonl"
    text = invoke(["evaluate", "--config", str(CONFIG), "--input", str(slice_file), "--labels", str(LABELS),
                   "--out", str(out), "--no-progress", "--baseline-epochs", "1", "--runs-file", str(runs),
                   "--no-mlflow", "--methods", "logbert,deeplog,pca,unseen_set_subset"])
    assert "report written to" in text and "logbert" in text
    for name in REPORT_FILES:
        assert (out / name).is_file(), name
    doc = json.loads((out / "results.json").read_text())
    assert [m["name"] for m in doc["methods"]] == ["logbert", "logbert_model_rules", "logbert_key_misses",
                                                   "logbert_without_model", "deeplog", "pca", "unseen_set_subset"]
    split = json.loads((out / "split.json").read_text())
    parts = [set(split[k]) for k in ("fit", "val", "calib", "test")]
    assert all(a.isdisjoint(b) for i, a in enumerate(parts) for b in parts[i + 1 :])
    assert doc["split"]["test"] == len(split["test"]) > 0
    assert "model rules calibrated on" in " ".join(doc["notes"])  # how the thresholds were calibrated
    assert "premature_end does not judge" in " ".join(doc["notes"])  # the slice cuts its last blocks off
    (record,) = read_runs(runs)
    assert record["command"] == "evaluate" and record["bundle_version"].startswith("hdfs-")
    assert record["metrics"]["logbert"]["f1"] == doc["methods"][0]["test"]["f1"]
    assert record["data"]["inputs"][str(slice_file)] == doc["data"]["inputs"][str(slice_file)]


@pytest.mark.slow
def test_evaluate_sequences_protocol(tmp_path: Path) -> None:
    normal = ["5 5 22 11 9 11 9 26 26 23 21", "5 22 5 11 9 11 9 26 26 23 23 21 21", "22 5 5 11 9 26 23 21"]
    train = tmp_path / "train"
    train.write_text("\n".join(normal * 60) + "\n")
    abnormal = tmp_path / "abnormal"
    abnormal.write_text("5 22 5 11 9 26 3 3 3\n5 22\n5 5 22 11 9 11 9 26 26 23 21 18 18 18 18\n")
    csv_path = tmp_path / "normal.csv"
    csv_path.write_text("BlockId,Label,EventSequence\n" + "".join(
        f"blk_{i},Normal,{normal[i % 3]}\n" for i in range(30)) + "blk_99,Anomaly,5 3 3\n")
    out = tmp_path / "seq"
    invoke(["evaluate", "--config", str(CONFIG), "--sequences-train", str(train), "--sequences-abnormal",
            str(abnormal), "--sequences-normal", str(csv_path), "--out", str(out), "--no-progress",
            "--baseline-epochs", "1", "--runs-file", "", "--no-mlflow"])
    doc = json.loads((out / "results.json").read_text())
    assert doc["protocol"] == "sequences"
    assert doc["split"]["test"] == 33 and doc["split"]["test_anomalous"] == 3  # the CSV's anomaly row is not used
    assert {m["name"] for m in doc["methods"]} >= {"logbert", "deeplog", "loganomaly", "pca", "iforest"}
    assert "precision_at_paper_prevalence" in doc["methods"][0]["test"]
    assert doc["data"]["unseen_event_ids_in_test"] == ["3", "18"]
    # "5 22" holds only known keys, in a set that is part of every normal lifecycle: the set rule (no normal session
    # ever was just that) and the end rule (no normal session stopped there) tell
    logbert = doc["methods"][0]
    assert logbert["threshold"]["premature"] is not None and logbert["threshold"]["promise"]["sessions"] == 180
    assert (logbert["test"]["tp"], logbert["test"]["fp"]) == (3, 0)


def test_evaluate_needs_one_kind_of_input(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["evaluate", "--config", str(CONFIG), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "give --input" in result.output


@pytest.mark.slow
def test_search_selects_on_validation_and_scores_the_winner_once(tmp_path: Path, slice_file: Path) -> None:
    out, runs = tmp_path / "search", tmp_path / "runs.jsonl"
    text = invoke(["search", "--config", str(CONFIG), "--input", str(slice_file), "--labels", str(LABELS),
                   "--grid", "top_g=2,5", "--out", str(out), "--no-progress", "--runs-file", str(runs),
                   "--no-mlflow"])
    assert "winner" in text
    doc = json.loads((out / "search.json").read_text())
    assert [c["params"]["scoring.top_g"] for c in doc["candidates"]] == [2, 5]
    assert all("test" not in c for c in doc["candidates"])
    best = max(doc["candidates"], key=lambda c: (c["validation"]["f1"], -c["validation"]["fpr"]))
    assert doc["winner"]["validation"]["f1"] == best["validation"]["f1"]
    assert set(doc["winner"]["test"]) >= {"precision", "recall", "f1", "fpr", "auc_pr"}
    assert (out / "search.md").is_file()
    (record,) = read_runs(runs)
    assert record["command"] == "search" and record["metrics"]["candidates"] == 2


@pytest.mark.slow
def test_train_appends_a_run_record(tmp_path: Path, slice_file: Path) -> None:
    runs = tmp_path / "runs.jsonl"
    invoke(["--config", str(CONFIG), "--input", str(slice_file), "--labels", str(LABELS), "--out",
            str(tmp_path / "bundle"), "--no-progress", "--runs-file", str(runs), "--no-mlflow"])
    (record,) = read_runs(runs)
    assert record["command"] == "train" and record["params"]["model.n_embd"] == 32
    assert record["data"]["sha256"] and record["bundle_version"].startswith("hdfs-")
    assert set(record["metrics"]["in_period_eval"]) >= {"anomalies", "caught", "recall", "fpr_estimate"}


@pytest.mark.slow
def test_evaluate_live_judges_live_windows_and_says_so(tmp_path: Path, slice_file: Path) -> None:
    out = tmp_path / "live"
    invoke(["evaluate", "--config", str(CONFIG), "--input", str(slice_file), "--labels", str(LABELS),
            "--out", str(out), "--no-progress", "--runs-file", "", "--no-mlflow", "--methods", "logbert,rare_key",
            "--live"])
    doc = json.loads((out / "results.json").read_text())
    notes = " ".join(doc["notes"])
    assert "Live windows" in notes and "model rules calibrated on" in notes
    assert doc["params"]["option.live"] is True


@pytest.mark.slow
def test_evaluate_history_trains_on_the_first_normal_sessions_only(tmp_path: Path, slice_file: Path) -> None:
    out = tmp_path / "report"
    invoke(["evaluate", "--config", str(CONFIG), "--input", str(slice_file), "--labels", str(LABELS), "--out",
            str(out), "--no-progress", "--methods", "logbert", "--history", "30", "--runs-file", ""])
    split = json.loads((out / "split.json").read_text())
    assert len(split["fit"]) + len(split["val"]) + len(split["calib"]) == 30
    doc = json.loads((out / "results.json").read_text())
    promise = doc["methods"][0]["threshold"]["promise"]
    assert promise["sessions"] == 30 and promise["model_sessions"] == 30  # a small history: cross-fitted
    assert any("cannot vouch" in w for w in promise["warnings"])
