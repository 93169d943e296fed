"""The log line formats both command lines share: JSON fields, extras, exceptions; the level rule; build info."""

from __future__ import annotations

import json
import logging
import re
import sys

import pytest

from logbert_core import logs
from logbert_core.build import build_info, describe

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def record(msg: str = "scored %d windows", *args: object, lvl: int = logging.INFO, exc: bool = False,
           **extra: object) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise RuntimeError("redis went away")
        except RuntimeError:
            exc_info = sys.exc_info()
    logger = logging.getLogger("streamer.worker")
    return logger.makeRecord(logger.name, lvl, __file__, 1, msg, args or ((3,) if "%" in msg else ()), exc_info,
                             extra=extra or None)


def test_json_line_has_the_core_fields_in_order():
    r = record()
    r.created = 1_700_000_000.25
    line = logs.JsonFormatter().format(r)
    assert "\n" not in line
    out = json.loads(line)
    assert list(out) == ["ts", "level", "logger", "message"]
    assert out == {"ts": "2023-11-14T22:13:20.250Z", "level": "INFO", "logger": "streamer.worker",
                   "message": "scored 3 windows"}


def test_extra_fields_are_kept_sorted_and_never_replace_core_fields():
    r = record(partition=3, topic="logs.raw", level="mine", ts=1, _private=True)
    out = json.loads(logs.JsonFormatter().format(r))
    assert out["level"] == "INFO" and RFC3339_UTC.match(out["ts"])
    assert out["level_"] == "mine" and out["ts_"] == 1  # renamed, not lost
    assert "_private" not in out and "pathname" not in out and "args" not in out  # only what extra= passed
    extras = [k for k in out if k not in ("ts", "level", "logger", "message")]
    assert extras == sorted(extras) and {"partition", "topic"} <= set(extras)
    assert out["partition"] == 3 and out["topic"] == "logs.raw"


def test_values_json_cannot_hold_are_written_as_text():
    out = json.loads(logs.JsonFormatter().format(record(where={1, 2}.__class__)))
    assert out["where"] == "<class 'set'>"


def test_exception_text_is_one_field_of_the_one_line():
    line = logs.JsonFormatter().format(record("lost Redis", lvl=logging.ERROR, exc=True))
    assert line.count("\n") == 0
    out = json.loads(line)
    assert out["level"] == "ERROR" and out["message"] == "lost Redis"
    assert out["exception"].startswith("Traceback") and "RuntimeError: redis went away" in out["exception"]


def test_non_ascii_messages_stay_readable():
    out = logs.JsonFormatter().format(record("template %s", "Größe"))
    assert "Größe" in out


def test_text_format_is_the_one_people_read():
    r = record()
    line = logs.formatter("text").format(r)
    assert line.endswith(" INFO streamer.worker: scored 3 windows")
    with pytest.raises(ValueError, match="text, json"):
        logs.formatter("xml")


@pytest.mark.parametrize("name,verbose,expected", [
    (None, False, logging.WARNING), ("", False, logging.WARNING), (None, True, logging.INFO),
    ("debug", False, logging.DEBUG), ("DEBUG", True, logging.DEBUG),  # -v never makes it quieter
    ("ERROR", False, logging.ERROR), ("error", True, logging.INFO), (" Warning ", False, logging.WARNING),
])
def test_level_rule(name, verbose, expected):
    assert logs.level(name, verbose) == expected


def test_unknown_level_names_the_choices():
    with pytest.raises(ValueError, match="DEBUG, INFO, WARNING, ERROR"):
        logs.level("loud")


def test_uncaught_hook_logs_one_critical_record(caplog):
    hook = logs.uncaught_hook(logging.getLogger("logad"))
    try:
        raise KeyError("k")
    except KeyError as exc:
        with caplog.at_level(logging.CRITICAL, logger="logad"):
            hook(KeyError, exc, exc.__traceback__)
    (rec,) = caplog.records
    assert rec.levelno == logging.CRITICAL and rec.exc_info is not None and "KeyError" in rec.getMessage()


def test_build_info_is_bounded_and_describes_itself():
    info = build_info()
    assert set(info) == {"version", "python", "torch"} and all(info.values())
    assert info["python"] == ".".join(map(str, sys.version_info[:3]))
    assert describe("logad") == f"logad {info['version']} (torch {info['torch']}, python {info['python']})"


def test_lower_to_info_never_makes_the_root_quieter(monkeypatch):
    root = logging.getLogger()
    monkeypatch.setattr(root, "level", logging.WARNING)
    logs.lower_to_info()
    assert root.level == logging.INFO
    root.setLevel(logging.DEBUG)
    logs.lower_to_info()
    assert root.level == logging.DEBUG
