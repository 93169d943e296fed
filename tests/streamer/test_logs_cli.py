"""The process as an operator runs it: ``--log-format json`` / ``LOGAD_LOG_FORMAT``, ``LOGAD_LOG_LEVEL``, ``-v`` before
or after the subcommand, ``--version``. Each case is a real ``logad`` process, so the logging set-up is the one it
gets, not pytest's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# `logad` with one extra command that logs at each level, with an extra= field, and an exception
PROBE = """
import logging, os
from streamer.cli import main

@main.command()
def probe():
    log = logging.getLogger("logad.probe")
    log.debug("debug line")
    log.info("partitions assigned: %s", [0, 1], extra={"partition_count": 2})
    log.warning("redis failed; retrying")
    try:
        raise ConnectionError("gone")
    except ConnectionError:
        log.exception("scorer thread failed")
    if os.environ.get("PROBE_CRASH"):
        raise RuntimeError("unhandled")

main(prog_name="logad")
"""


def logad(*args: str, env: dict[str, str] | None = None, code: str | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("LOGAD_LOG_")}
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "streamer.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120, env={**base, **(env or {})})


def probe(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return logad(*args, env=env, code=PROBE)


def json_lines(stderr: str) -> list[dict]:
    lines = [line for line in stderr.splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # every line is one JSON object, or this fails


def test_json_logs_one_object_per_line_with_extras_and_exception():
    res = probe("--log-format", "json", "probe")
    assert res.returncode == 0, res.stderr
    records = json_lines(res.stderr)
    assert [r["level"] for r in records] == ["WARNING", "ERROR"]  # default level WARNING, as in text
    assert all(r["logger"] == "logad.probe" and r["ts"].endswith("Z") for r in records)
    assert "ConnectionError: gone" in records[1]["exception"]


def test_environment_chooses_format_and_level():
    res = probe("probe", env={"LOGAD_LOG_FORMAT": "json", "LOGAD_LOG_LEVEL": "debug"})
    records = json_lines(res.stderr)
    assert [r["level"] for r in records] == ["DEBUG", "INFO", "WARNING", "ERROR"]
    info = records[1]
    assert info["message"] == "partitions assigned: [0, 1]" and info["partition_count"] == 2
    res = probe("probe", env={"LOGAD_LOG_FORMAT": "json", "LOGAD_LOG_LEVEL": "ERROR"})
    assert [r["level"] for r in json_lines(res.stderr)] == ["ERROR"]


@pytest.mark.parametrize("args", [["-v", "probe"], ["probe", "-v"], ["--verbose", "probe", "--verbose"]])
def test_v_before_or_after_the_subcommand(args):
    res = probe("--log-format", "json", *args, env={"LOGAD_LOG_LEVEL": "ERROR"})  # -v wins over a quieter level
    assert res.returncode == 0, res.stderr
    assert [r["level"] for r in json_lines(res.stderr)] == ["INFO", "WARNING", "ERROR"]


def test_text_stays_the_default():
    res = probe("probe")
    lines = res.stderr.splitlines()
    assert any(" WARNING logad.probe: redis failed; retrying" in line for line in lines)
    assert not any("partitions assigned" in line for line in lines)
    assert "Traceback" in res.stderr  # log.exception's traceback, as before


def test_an_uncaught_exception_is_a_json_line_too():
    res = probe("--log-format", "json", "probe", env={"PROBE_CRASH": "1"})
    assert res.returncode == 1
    last = json_lines(res.stderr)[-1]
    assert last["level"] == "CRITICAL" and "RuntimeError: unhandled" in last["exception"]


def test_a_bad_level_stops_with_a_message():
    res = probe("probe", env={"LOGAD_LOG_LEVEL": "loud"})
    assert res.returncode == 2
    assert "LOGAD_LOG_LEVEL" in res.stderr and "DEBUG, INFO, WARNING, ERROR" in res.stderr
    assert "Traceback" not in res.stderr


def test_version_names_the_package_torch_and_python():
    from logbert_core.build import build_info

    res = logad("--version")
    assert res.returncode == 0
    b = build_info()
    assert res.stdout.strip() == f"logad {b['version']} (torch {b['torch']}, python {b['python']})"


def test_every_subcommand_takes_v():
    from click.testing import CliRunner

    from streamer.cli import main

    def walk(group, path=()):
        for name, cmd in group.commands.items():
            yield (*path, name), cmd
            if hasattr(cmd, "commands"):
                yield from walk(cmd, (*path, name))

    commands = dict(walk(main))
    assert {("run",), ("alerts", "forward"), ("model", "use")} <= set(commands)
    for path, cmd in commands.items():
        assert any("-v" in p.opts for p in cmd.params), path
    res = CliRunner().invoke(main, ["alerts", "forward", "-v", "--help"])
    assert res.exit_code == 0 and "-v, --verbose" in res.output


def test_run_accepts_v_after_the_subcommand(tmp_path):
    res = logad("run", "-v", "--config", "config/hdfs.toml", "--model", str(tmp_path / "none"))
    assert res.returncode == 2 and "No such option" not in res.stderr
    assert res.stderr.startswith("logad run: ")  # the bundle error, past parsing


def test_build_info_is_exported_by_the_detector_and_the_api():
    from prometheus_client import REGISTRY, generate_latest

    from logbert_core.build import build_info
    from streamer import metrics as m

    b = build_info()
    line = f'logad_build_info{{python="{b["python"]}",torch="{b["torch"]}",version="{b["version"]}"}} 1.0'
    for registry in (REGISTRY, m.SERVE_REGISTRY):
        text = generate_latest(registry).decode()
        assert "# TYPE logad_build_info gauge" in text and line in text.splitlines()
