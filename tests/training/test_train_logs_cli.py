"""``logad-train`` logs as ``logad`` does: ``--log-format json`` / ``LOGAD_LOG_FORMAT``, ``LOGAD_LOG_LEVEL``, ``-v``
before or after the subcommand (also when ``train`` is implied), ``--version``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import logging
from training.cli import main

@main.command()
def probe():
    logging.getLogger("training.probe").info("epoch %d", 1, extra={"val_loss": 0.5})
    logging.getLogger("training.probe").warning("few sessions")

main(prog_name="logad-train")
"""


def train_cli(*args: str, env: dict[str, str] | None = None, code: str | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("LOGAD_LOG_")}
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "training.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120, env={**base, **(env or {})})


@pytest.mark.parametrize("args", [["-v", "probe"], ["probe", "-v"]])
def test_json_logs_and_v_anywhere(args):
    res = train_cli("--log-format", "json", *args, code=PROBE)
    assert res.returncode == 0, res.stderr
    records = [json.loads(line) for line in res.stderr.splitlines()]
    assert [(r["level"], r["message"]) for r in records] == [("INFO", "epoch 1"), ("WARNING", "few sessions")]
    assert records[0]["val_loss"] == 0.5 and records[0]["logger"] == "training.probe"


def test_level_and_format_from_the_environment():
    res = train_cli("probe", code=PROBE, env={"LOGAD_LOG_FORMAT": "json", "LOGAD_LOG_LEVEL": "ERROR"})
    assert res.returncode == 0 and res.stderr == ""
    res = train_cli("probe", code=PROBE)  # text at WARNING, as before
    assert res.stderr.rstrip().endswith("WARNING training.probe: few sessions")
    assert "epoch" not in res.stderr


@pytest.mark.parametrize("lead", [[], ["-v"], ["--log-format", "json"], ["--log-format=json", "--log-level", "info"]])
def test_train_is_still_the_default_subcommand_after_the_group_options(lead, tmp_path):
    res = train_cli(*lead, "--config", "config/hdfs.toml", "--input", str(tmp_path / "missing.log"),
                    "--out", str(tmp_path / "b"), "-v")
    assert res.returncode == 2
    assert "'--input'" in res.stderr and "does not exist" in res.stderr  # train parsed it, -v included


def test_version():
    from logbert_core.build import describe

    res = train_cli("--version")
    assert res.returncode == 0 and res.stdout.strip() == describe("logad-train")
