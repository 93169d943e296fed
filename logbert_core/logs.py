"""How logad's processes write their own log lines: the text format people read, or one JSON object per line for a
log collector. Shared by ``logad`` and ``logad-train``.

Formatters turn a ``logging.LogRecord`` into a string and the level is parsed from a name. ``install`` and
``lower_to_info`` are the one implementation of both command lines' ``--log-format``/``--log-level``/``-v``; reading
the options and ``LOGAD_LOG_FORMAT`` / ``LOGAD_LOG_LEVEL`` is the command lines' business (this module knows no click).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from types import TracebackType
from typing import Any

FORMATS = ("text", "json")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has (plus what Formatter.format adds); anything else came from ``extra=``.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_RESERVED = frozenset({"ts", "level", "logger", "message", "exception", "stack"})


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: ``ts`` (RFC 3339, UTC, milliseconds), ``level``, ``logger``,
    ``message``, then the fields a call passed with ``extra=`` (sorted by name), then ``exception`` and ``stack``
    (the formatted traceback and stack) when present.

    An ``extra`` field named like a core field (``ts``, ``level``, ``logger``, ``exception``, ``stack``) is written as
    that name plus ``_``, so the core fields keep their meaning. Values JSON cannot hold are written as ``str()``.
    """

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, tz=timezone.utc)
        out: dict[str, Any] = {"ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                               "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        for key in sorted(vars(record).keys() - _RECORD_ATTRS):
            if key.startswith("_"):
                continue
            out[key + "_" if key in _RESERVED else key] = vars(record)[key]
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def formatter(kind: str) -> logging.Formatter:
    """The formatter of ``--log-format`` ``text`` or ``json``."""
    if kind == "json":
        return JsonFormatter()
    if kind == "text":
        return logging.Formatter(TEXT_FORMAT)
    raise ValueError(f"log format {kind!r}: use one of {', '.join(FORMATS)}")


def level(name: str | None, verbose: bool = False) -> int:
    """The root level: ``name`` (``LOGAD_LOG_LEVEL``, any case; WARNING when unset or empty), lowered to INFO by
    ``-v``. ``-v`` never makes a process quieter than the level asked for."""
    name = (name or "WARNING").strip().upper()
    if name not in LEVELS:
        raise ValueError(f"log level {name!r}: use one of {', '.join(LEVELS)}")
    value: int = getattr(logging, name)
    return min(value, logging.INFO) if verbose else value


def uncaught_hook(logger: logging.Logger) -> Callable[[type[BaseException], BaseException, TracebackType | None],
                                                       None]:
    """A ``sys.excepthook`` that writes an uncaught exception as one CRITICAL record of ``logger`` (with its
    traceback in ``exception``), so a crash of a JSON-logging process is still one parseable line."""

    def hook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        logger.critical("uncaught %s: %s", kind.__name__, exc, exc_info=(kind, exc, tb))

    return hook


def install(log_format: str, log_level: str | None, verbose: bool, logger: logging.Logger) -> None:
    """A process's own logging: one handler on stderr in ``log_format``, the root at ``level(log_level, verbose)``,
    and with JSON an excepthook that writes a crash as one record of ``logger``, not a bare traceback.

    ``ValueError`` for an unknown level or format, before anything is installed."""
    root_level = level(log_level, verbose)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    logging.basicConfig(level=root_level, handlers=[handler])
    if log_format == "json":
        sys.excepthook = uncaught_hook(logger)


def lower_to_info() -> None:
    """``-v`` after the subcommand (``logad run -v``): the same as before it, INFO unless the root logs more already."""
    root = logging.getLogger()
    if root.getEffectiveLevel() > logging.INFO:
        root.setLevel(logging.INFO)
