"""logad-train benchmark on a tiny shared-data folder, and evaluate --history on the small real slice."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from training.benchmark import SMALL_HISTORY, SUITES, loss_line
from training.cli import main

FAST = {"LOGAD_TRAIN__EPOCHS": "2", "LOGAD_MODEL__N_EMBD": "32", "LOGAD_TRAIN__SEED": "5"}
LIFECYCLE = "1 2 3 4 5 6"


def shared_folder(root: Path) -> Path:
    d = root / "hadoop_sequences"
    d.mkdir(parents=True)
    (root / "README.md").write_text("tiny stand-in for ../shared/data\n")
    (d / "hadoop_train").write_text("".join(f"app/c{i},{LIFECYCLE}\n" for i in range(20)))
    (d / "hadoop_test_normal").write_text("".join(f"app/n{i},{LIFECYCLE}\n" for i in range(6)))
    (d / "hadoop_test_abnormal").write_text("app/a0,1 2 3 99 99\napp/a1,1 2 98\napp/a2,1 2 3 4 5 6 97\n")
    return root


def test_benchmark_writes_one_table_with_the_shipped_decision_and_the_one_line_rules(tmp_path: Path) -> None:
    shared, out = shared_folder(tmp_path / "shared"), tmp_path / "out"
    result = CliRunner().invoke(main, ["benchmark", "--shared", str(shared), "--only", "hadoop_sequences",
                                       "--out", str(out)], env=FAST, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "benchmark.json").read_text())
    (suite,) = doc["suites"]
    rows = {r["method"]: r for r in suite["rows"]}
    assert list(rows) == ["logbert", "logbert_without_model", "logbert_key_misses", "rule_unseen_event",
                          "rule_unseen_set", "flag_all"]
    # every anomaly holds an event id no training container had: the one-line rule and the shipped decision see it
    assert rows["rule_unseen_event"]["tp"] == 3 and rows["rule_unseen_event"]["fp"] == 0
    assert rows["logbert"]["tp"] == 3 and rows["logbert"]["fp"] == 0
    # 20 sessions cannot vouch for target 0.005: the promise says so, and the model rules were cross-fitted
    assert suite["promise"]["sessions"] == 20 and suite["promise"]["model_sessions"] == 20
    assert any("cannot vouch" in w for w in suite["promise"]["warnings"])
    training = suite["training"]
    assert len(training["val_loss"]) == len(training["train_loss"]) == training["epochs_run"] and "machine" in doc
    md = (out / "benchmark.md").read_text()
    assert "| hadoop_sequences | all (20) | 6 / 3 | **logbert** |" in md and "Machine:" in md
    # the validation loss curve, with the epoch kept marked, in the report and as a plot
    (curve,) = [ln for ln in md.splitlines() if ln.startswith("- hadoop_sequences (all): ") and "*" in ln]
    assert f"{training['val_loss'][training['best_epoch'] - 1]:.4f}*" in curve
    assert (out / "loss_curves.png").stat().st_size > 0


def test_benchmark_refuses_an_unknown_suite(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["benchmark", "--shared", str(shared_folder(tmp_path / "s")), "--only", "nope",
                                       "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and "unknown suite(s) ['nope']" in result.output


def test_every_suite_but_the_smallest_has_a_small_history_variant() -> None:
    assert SMALL_HISTORY == 50
    assert {n for n, (_, _, small) in SUITES.items() if small} == {"hdfs_raw", "hdfs_sequences", "bgl_raw",
                                                                   "bgl_same_period", "bgl_other_days"}


def test_an_interleaved_split_deals_every_block_of_ten(tmp_path: Path) -> None:
    """``interleave``: sessions in order of their first line, the last 3 of every 10 to the test; the training
    part keeps the rest, and no session is in both."""
    from logbert_core.config import load_settings
    from training.split import split_files

    log = tmp_path / "bgl.log"
    rows = [f"- {1117838570 + 600 * i} 2005.06.03 R0{i % 10}-M1-N0-C:J12-U11 2005-06-03-15.42.50.675872 "
            f"R0{i % 10}-M1-N0-C:J12-U11 RAS KERNEL INFO line {i}" for i in range(40)]
    log.write_text("\n".join(rows) + "\n")
    settings = load_settings(Path(__file__).resolve().parents[2] / "config" / "bgl.toml")
    out = split_files(settings, [log], None, 0.3, tmp_path / "parts", interleave=True)
    assert out["split"] == "interleaved" and out["sessions"] == {"train": 28, "test": 12}
    test = (tmp_path / "parts" / "test.log").read_text().splitlines()
    assert [r.split()[-1] for r in test] == [str(i) for i in range(40) if i % 10 >= 7]


def test_a_day_interleaved_split_deals_whole_days(tmp_path: Path) -> None:
    """``interleave_days``: the days that hold sessions, in order, the last 3 of every 10 to the test; every
    session of a test day is in the test, whatever its place among the sessions."""
    from logbert_core.config import load_settings
    from training.split import DAY_S, split_files

    log = tmp_path / "bgl.log"
    start = 1117929600  # 2005-06-05 00:00:00 UTC
    # 12 days with sessions (day 4 has none), three 5-minute sessions a day on different nodes
    days = [d for d in range(13) if d != 4]
    rows = [f"- {start + d * DAY_S + 600 * j} 2005.06.05 R0{j}-M1-N0-C:J12-U11 2005-06-05-00.00.00.000000 "
            f"R0{j}-M1-N0-C:J12-U11 RAS KERNEL INFO day {d} node {j}" for d in days for j in range(3)]
    log.write_text("\n".join(rows) + "\n")
    settings = load_settings(Path(__file__).resolve().parents[2] / "config" / "bgl.toml")
    out = split_files(settings, [log], None, 0.3, tmp_path / "parts", interleave=True, interleave_days=True)
    assert out["split"] == "interleaved by day" and out["sessions"] == {"train": 27, "test": 9}
    test = (tmp_path / "parts" / "test.log").read_text().splitlines()
    test_days = sorted({int(r.split()[-3]) for r in test})
    assert test_days == [8, 9, 10]  # the 8th to 10th days holding sessions (day 4 holds none)
    train = (tmp_path / "parts" / "train.log").read_text().splitlines()
    assert not {int(r.split()[-3]) for r in train} & set(test_days)


def test_the_forward_test_cell_shows_the_rate_where_unseen_template_can_fire() -> None:
    from training.benchmark import _forward_cell

    fw = {"sessions": 72, "of": 12781, "rate": 0.00563, "rule_on": True}
    assert _forward_cell(fw) == "0.0056 (72 / 12781)"
    assert _forward_cell({**fw, "rule_on": False}) == "-" and _forward_cell(None) == "-"


def test_the_loss_line_says_whether_the_fit_had_converged() -> None:
    run = {"epochs": 20, "patience": 2}
    assert loss_line({**run, "val_loss": [1.0, 0.5, 0.6, 0.7], "best_epoch": 2}) == (
        "1.0000, 0.5000*, 0.6000, 0.7000 (no better after epoch 2: stopped 2 epochs later)")
    assert loss_line({**run, "val_loss": [1.0, 0.5], "best_epoch": 2}).endswith(
        "(still falling when the epochs ran out)")
    capped = {"epochs": 3, "patience": 2, "val_loss": [1.0, 0.5, 0.6], "best_epoch": 2}
    assert loss_line(capped).endswith("(best at epoch 2; the 3-epoch cap came before 2 epochs without a better one)")
    assert loss_line({"val_loss": [], "best_epoch": None}) == "no model trained"
