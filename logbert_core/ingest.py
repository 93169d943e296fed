"""One ingest path: bytes -> one log record, or a rejection with a bounded reason.

The detector (a Kafka message value), ``logad serve`` (a line of a request) and ``logad-train`` (a line of a file)
all turn input into records with ``LineReader.read``, so training sees exactly the lines the detector keeps, and
rejects what the detector would dead-letter, for the same reason (``tests/test_ingest.py`` feeds the same hostile
and odd lines through all three).

A value is either the raw UTF-8 line or a JSON object as Fluent Bit's Kafka output sends it, with the line under the
first configured field present (``log``, ``message``, ...). The line then goes through the family's line format
(``logbert_core.parsing.LineFormat``). A rejection's reason is a short, fixed string so it can label a metric:
a decoding reason below, or the line format's (``format_mismatch``, ``no_session_key``, ...).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from logbert_core.parsing import LineFormat, LineFormatError, LogRecord

# C0 controls other than TAB, DEL, C1 controls, and the Unicode bidi overrides/isolates (trojan-source style text)
_HOSTILE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]")
# lone surrogates: UTF-8 cannot carry them, but a JSON "\ud800" escape can; no encoder downstream (Redis, Kafka,
# the event's JSON) would take the string
_SURROGATE = re.compile("[\ud800-\udfff]")

EMPTY = "empty"
TOO_LARGE = "too_large"
INVALID_UTF8 = "invalid_utf8"
INVALID_JSON = "invalid_json"
JSON_NO_FIELD = "json_missing_field"
JSON_WRONG_TYPE = "json_wrong_type"
CONTROL_CHARS = "control_characters"
REASONS = (EMPTY, TOO_LARGE, INVALID_UTF8, INVALID_JSON, JSON_NO_FIELD, JSON_WRONG_TYPE, CONTROL_CHARS)


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: str
    detail: str


class ValueDecoder:
    """Decodes message values; never raises on bad input."""

    __slots__ = ("fields", "max_bytes")

    def __init__(self, fields: Sequence[str], max_bytes: int) -> None:
        self.fields = tuple(fields)
        self.max_bytes = max_bytes

    def decode(self, value: bytes | None) -> str | Rejected:
        if not value or not value.strip():
            return Rejected(EMPTY, "empty value")
        if len(value) > self.max_bytes:
            return Rejected(TOO_LARGE, f"{len(value)} bytes > limit {self.max_bytes}")
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            return Rejected(INVALID_UTF8, f"invalid UTF-8 at byte {exc.start}")
        if text.lstrip().startswith("{"):
            return self._from_json(text)
        return self._clean(text)

    def _from_json(self, text: str) -> str | Rejected:
        try:
            obj = json.loads(text)
        except ValueError as exc:
            return Rejected(INVALID_JSON, str(exc)[:200])
        except RecursionError:  # thousands of nested brackets: deeper than the parser's stack
            return Rejected(INVALID_JSON, "JSON nested too deeply")
        if not isinstance(obj, dict):
            return Rejected(INVALID_JSON, "JSON value is not an object")
        for name in self.fields:
            if name in obj:
                line = obj[name]
                if not isinstance(line, str):
                    return Rejected(JSON_WRONG_TYPE, f"field {name!r} is {type(line).__name__}, expected a string")
                m = _SURROGATE.search(line)
                if m is not None:
                    return Rejected(INVALID_UTF8, f"field {name!r} holds a lone surrogate U+{ord(m.group()):04X} "
                                                  f"at {m.start()} (a JSON \\u escape no UTF-8 text can carry)")
                return self._clean(line)
        return Rejected(JSON_NO_FIELD, f"none of the fields {list(self.fields)} in the JSON object")

    @staticmethod
    def _clean(text: str) -> str | Rejected:
        line = text.rstrip("\r\n")
        if not line.strip():
            return Rejected(EMPTY, "blank line")
        m = _HOSTILE.search(line)
        if m is not None:
            return Rejected(CONTROL_CHARS, f"control or bidi character U+{ord(m.group()):04X} at {m.start()}")
        return line


class LineReader:
    """Decoder and line format together: the one function from bytes to a ``LogRecord``."""

    __slots__ = ("decoder", "fmt")

    def __init__(self, fmt: LineFormat, fields: Sequence[str], max_bytes: int) -> None:
        self.decoder = ValueDecoder(fields, max_bytes)
        self.fmt = fmt

    def read(self, value: bytes | None) -> LogRecord | Rejected:
        """The record of one input value (its ``line`` is the decoded line); never raises on bad input."""
        line = self.decoder.decode(value)
        if isinstance(line, Rejected):
            return line
        try:
            return self.fmt.parse(line)
        except LineFormatError as exc:
            return Rejected(exc.reason, str(exc))
