"""Bad input to logad-train: one line that names the user's file and what is wrong, exit 1 or 2, never a traceback,
and nothing trained or written first."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

from logbert_core.bundle import load_bundle
from logbert_core.config import load_settings
from training.cli import main
from training.data import check_labels, iter_lines, load_labels
from training.evaluate import evaluate_bundle
from training.search import checked_grid, parse_grid

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "config" / "hdfs.toml"
TRAIN = REPO / "data" / "hdfs" / "train.log.gz"
LABELS = REPO / "data" / "hdfs" / "train.labels.csv"
FAST = {"LOGAD_TRAIN__EPOCHS": "1", "LOGAD_MODEL__N_EMBD": "32"}
COMMANDS = ("train", "split", "evaluate", "search")


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 lines, 27 blocks."""
    path = tmp_path_factory.mktemp("data") / "small.log"
    with gzip.open(TRAIN, "rt") as fh:
        path.write_text("".join(line for _, line in zip(range(300), fh)))
    return path


def run(command: str, inputs: list[Path], out: Path, *extra: str) -> tuple[int, str]:
    args = [command, "--config", str(CONFIG), "--out", str(out), *extra]
    for p in inputs:
        args += ["--input", str(p)]
    if command != "split":
        args += ["--no-progress", "--runs-file", "", "--no-mlflow"]
    result = CliRunner().invoke(main, args, env=FAST)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception  # no traceback
    return result.exit_code, result.output


def fails(command: str, inputs: list[Path], out: Path, *extra: str) -> str:
    """The one-line ``Error: ...`` of a job that failed with exit code 1; nothing written."""
    code, output = run(command, inputs, out, *extra)
    assert code == 1, output
    assert not out.exists()
    (error,) = [line for line in output.splitlines() if line.startswith("Error: ")]
    return error


# -- 1, 6: no sessions, too few sessions ------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["train", "split"])
@pytest.mark.parametrize(("content", "expected"), [
    (b"", "no log lines (empty input)"),
    (b"hello world\nnot a log line\n", "no line parses into a session (rejected lines: 2 format_mismatch)"),
    (bytes(range(256)) * 8, "no line parses into a session (rejected lines: "),
])
def test_train_and_split_refuse_a_log_without_sessions(tmp_path: Path, command: str, content: bytes,
                                                      expected: str) -> None:
    log = tmp_path / "input.log"
    log.write_bytes(content)
    assert fails(command, [log], tmp_path / "out").startswith(f"Error: {log}: {expected}")


def test_train_refuses_too_few_sessions_naming_the_input(tmp_path: Path, small: Path) -> None:
    one = tmp_path / "one.log"
    one.write_text(small.read_text().splitlines()[0] + "\n")
    assert fails("train", [one], tmp_path / "out") == (
        f"Error: {one}: too few normal sessions (1) to split into fit/validation/calibration")


def test_split_refuses_too_few_sessions(tmp_path: Path, small: Path) -> None:
    one = tmp_path / "one.log"
    one.write_text(small.read_text().splitlines()[0] + "\n")
    assert fails("split", [one], tmp_path / "out") == (
        f"Error: {one}: too few sessions (1) to split into train and test at test fraction 0.3")


# -- 2: broken gzip ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", COMMANDS)
def test_a_broken_gzip_input_is_named_by_every_command(tmp_path: Path, small: Path, command: str) -> None:
    fake = tmp_path / "fake.log.gz"
    fake.write_bytes(small.read_bytes())
    assert fails(command, [fake], tmp_path / "out").startswith(f"Error: {fake}: not a valid gzip file")
    truncated = tmp_path / "truncated.log.gz"
    truncated.write_bytes(gzip.compress(small.read_bytes())[:3000])
    assert fails(command, [truncated], tmp_path / "out") == f"Error: {truncated}: truncated gzip file (it ends " \
                                                             "before its end-of-stream marker)"


def test_iter_lines_names_the_broken_file(tmp_path: Path, small: Path) -> None:
    good = tmp_path / "good.log.gz"
    good.write_bytes(gzip.compress(small.read_bytes()))
    bad = tmp_path / "bad.log.gz"
    bad.write_bytes(b"plain text\n")
    assert len(list(iter_lines([good]))) == 300
    with pytest.raises(ValueError, match=f"^{bad}: not a valid gzip file"):
        list(iter_lines([good, bad]))


# -- 3: output paths checked before any work ---------------------------------------------------------------------
@pytest.mark.parametrize("command", COMMANDS)
def test_an_out_dir_under_a_file_is_refused_up_front(tmp_path: Path, small: Path, command: str) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    code, output = run(command, [small], afile / "sub")
    assert code == 2
    assert f"Invalid value for '--out': cannot create {afile / 'sub'}: {afile} exists and is not a directory" \
        in output


def test_train_will_not_replace_a_directory_that_is_not_a_bundle(tmp_path: Path, small: Path) -> None:
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    code, output = run("train", [small], keep)
    assert code == 2 and "Invalid value for '--out'" in output and "holds files but no model bundle" in output
    assert (keep / "notes.txt").read_text() == "mine"
    code, output = run("train", [small], Path("."))
    assert code == 2 and "name the bundle directory" in output


def test_an_unwritable_runs_file_is_named_up_front_and_the_job_runs_without_it(tmp_path: Path, small: Path) -> None:
    """The record is a by-product: a read-only image with the default path must still train (docker compose)."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    result = CliRunner().invoke(main, ["train", "--config", str(CONFIG), "--input", str(small), "--out",
                                       str(tmp_path / "b"), "--runs-file", str(afile / "runs.jsonl"),
                                       "--no-progress", "--no-mlflow"], env=FAST)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "b" / "bundle.json").is_file()
    assert f"the run record will not be written: cannot write {afile / 'runs.jsonl'} ({afile} exists and is not " \
           "a directory)" in result.output
    assert afile.read_text() == "x"


# -- 4: the labels CSV -------------------------------------------------------------------------------------------
def write(tmp_path: Path, text: str, name: str = "labels.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_labels_accept_the_loghub_forms(tmp_path: Path) -> None:
    path = write(tmp_path, "\ufeffBlockId,Label\nblk_1,Normal\nblk_2,Anomaly\n\nblk_3,0\nblk_4, 1 \n"
                           "blk_2,anomaly\nblk_5,NORMAL\n")
    assert load_labels(path) == {"blk_1": False, "blk_2": True, "blk_3": False, "blk_4": True, "blk_5": False}
    assert load_labels(write(tmp_path, "session_id,label\nx,1\n")) == {"x": True}
    assert len(load_labels(LABELS)) == 4830


@pytest.mark.parametrize(("text", "expected"), [
    ("", "{path}: no header; expected 'BlockId,Label' on line 1"),
    ("blk_1,Anomaly\nblk_2,Normal\n", "{path}, line 1: a data row where the header 'BlockId,Label' should be"),
    ("Label,BlockId\nAnomaly,blk_1\n", "{path}, line 1: expected the header 'BlockId,Label' (an id column, then "
                                       "Label), got 'Label,BlockId'"),
    ("BlockId\nblk_1\n", "{path}, line 1: expected the header 'BlockId,Label'"),
    ("BlockId,Label\nblk_1,Normal\nblk_2\n", "{path}, line 3: expected 'id,label', got 'blk_2'"),
    ("BlockId,Label\n,Anomaly\n", "{path}, line 2: expected 'id,label', got ',Anomaly'"),
    ("BlockId,Label\nblk_1,Normal\nblk_2,bad\n", "{path}, line 3: unknown label 'bad' for 'blk_2'"),
    ("BlockId,Label\nblk_1,Anomaly\nblk_2,Normal\nblk_1,Normal\n",
     "{path}: 'blk_1' is labelled Anomaly on line 2 but Normal on line 4"),
])
def test_labels_that_cannot_be_read_name_the_file_and_line(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ValueError) as info:
        load_labels(path)
    assert str(info.value).startswith(expected.format(path=path))


def test_a_binary_labels_file_is_named(tmp_path: Path, small: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_bytes(b"BlockId,Label\n" + bytes(range(128, 256)) * 4)
    for command in ("train", "split"):
        assert fails(command, [small], tmp_path / "out", "--labels", str(path)) == (
            f"Error: {path}: not a text CSV file (bytes that are not UTF-8)")


def test_conflicting_labels_stop_training_before_it_starts(tmp_path: Path, small: Path) -> None:
    path = write(tmp_path, "BlockId,Label\nblk_1,Anomaly\nblk_1,Normal\n")
    assert fails("train", [small], tmp_path / "out", "--labels", str(path)) == (
        f"Error: {path}: 'blk_1' is labelled Anomaly on line 2 but Normal on line 3")


@pytest.mark.parametrize("command", ["train", "split", "evaluate"])
def test_labels_of_another_log_are_refused(tmp_path: Path, small: Path, command: str) -> None:
    path = write(tmp_path, "BlockId,Label\nblk_1,Anomaly\nblk_2,Normal\n")
    error = fails(command, [small], tmp_path / "out", "--labels", str(path))
    assert error.startswith(f"Error: {path}: none of its 2 ids names a session of {small} (ids like 'blk_1', "
                            "sessions like 'blk_")
    assert error.endswith("is it the labels file of this log?")


def test_labels_naming_some_missing_sessions_are_a_warning(tmp_path: Path, small: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="training.data"):
        code, output = run("split", [small], tmp_path / "out", "--labels", str(LABELS))
    assert code == 0, output
    assert f"{LABELS}: 4803 of its 4830 ids name no session of {small}; they are ignored" in caplog.messages
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="training.data"):
        check_labels({}, ["blk_1"], "empty.csv", "x.log")
    assert caplog.messages == ["empty.csv holds no labels: every session of x.log counts as normal"]


def test_evaluate_bundle_refuses_labels_of_another_log(tmp_path: Path, small: Path) -> None:
    path = write(tmp_path, "BlockId,Label\nblk_1,Anomaly\n")
    with pytest.raises(ValueError, match=f"^{path}: none of its 1 ids names a session of {small}"):
        evaluate_bundle(load_bundle(REPO / "models" / "hdfs"), load_settings(CONFIG), [small], path)


def test_normal_ids_that_name_no_normal_row_are_refused(tmp_path: Path) -> None:
    seqs = write(tmp_path, "5 22 11 9\n" * 30, "train")
    abnormal = write(tmp_path, "5 3 3\n", "abnormal")
    normal = write(tmp_path, "BlockId,Label,EventSequence\nblk_1,Normal,5 22 11 9\n", "normal.csv")
    ids = write(tmp_path, "BlockId,Label\nblk_9,Normal\n", "ids.csv")
    result = CliRunner().invoke(main, ["evaluate", "--config", str(CONFIG), "--sequences-train", str(seqs),
                                       "--sequences-abnormal", str(abnormal), "--sequences-normal", str(normal),
                                       "--normal-ids", str(ids), "--out", str(tmp_path / "out"), "--runs-file", "",
                                       "--no-mlflow"], env=FAST)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert f"Error: {ids}: none of its ids names a normal row of {normal}" in result.output


# -- 5: evaluate names the user's input, not its temporary split -------------------------------------------------
def test_evaluate_names_the_users_input(tmp_path: Path, small: Path) -> None:
    empty = write(tmp_path, "", "empty.log")
    assert fails("evaluate", [empty], tmp_path / "out") == f"Error: {empty}: no log lines (empty input)"
    few = write(tmp_path, "".join(small.read_text().splitlines(keepends=True)[:8]), "few.log")  # 3 blocks
    assert fails("evaluate", [few], tmp_path / "out") == (f"Error: the earlier part of {few}: too few normal "
                                                          "sessions (2) to split into fit/validation/calibration")


# -- 6: split writes nothing when nothing parses -----------------------------------------------------------------
def test_split_of_a_non_matching_log_fails_and_writes_nothing(tmp_path: Path) -> None:
    log = write(tmp_path, "2024-01-01 something else entirely\n", "nomatch.log")
    out = tmp_path / "out"
    assert fails("split", [log], out) == (f"Error: {log}: no line parses into a session (rejected lines: 1 "
                                          "format_mismatch); is it a log of the configured family?")
    assert not out.exists()


# -- 7: every grid value validated before any training -----------------------------------------------------------
@pytest.mark.parametrize(("grid", "expected"), [
    ("top_g=abc", "'scoring.top_g': 'abc'} is invalid: scoring.top_g: Input should be a valid integer"),
    ("n_embd=32,33", "'model.n_embd': 33} is invalid: model: Value error, model.n_embd (33) must be a multiple of "
                     "model.n_head"),
    ("top_g=5,0", "'scoring.top_g': 0} is invalid: scoring.top_g: Input should be greater than 0"),
    ("model.bogus=1", "'model.bogus': 1} is invalid: unknown setting 'model.bogus'"),
])
def test_search_validates_every_grid_value_before_training(tmp_path: Path, small: Path, grid: str,
                                                           expected: str) -> None:
    assert fails("search", [small], tmp_path / "out", "--grid", "mask_ratio=0.15", "--grid", grid) \
        .startswith("Error: grid point {'train.mask_ratio': 0.15, " + expected)


def test_the_grid_holds_values_as_the_settings_do() -> None:
    settings = load_settings(CONFIG)
    assert checked_grid(settings, parse_grid(["top_g=3.0,5", "mask_ratio=0.3"])) == {
        "scoring.top_g": [3, 5], "train.mask_ratio": [0.3]}
    with pytest.raises(ValueError, match="grid key 'scoring.top_g' is given twice"):
        parse_grid(["top_g=3", "scoring.top_g=5"])
