"""Message values: raw lines, Fluent Bit JSON, and every kind of bad input gets a reason (never an exception)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamer import decode as d
from streamer.decode import Rejected, ValueDecoder

DEC = ValueDecoder(("log", "message"), max_bytes=1000)


def test_raw_and_json_give_the_same_line():
    line = "081109 203615 148 INFO dfs.DataNode: blk_1 ok"
    assert DEC.decode(line.encode() + b"\n") == line
    assert DEC.decode(json.dumps({"log": line, "@timestamp": 1.5}).encode()) == line
    assert DEC.decode(json.dumps({"message": line}).encode()) == line


@pytest.mark.parametrize("value,reason", [
    (b"", d.EMPTY), (None, d.EMPTY), (b"   \n", d.EMPTY),
    (b"x" * 1001, d.TOO_LARGE),
    (b"\xff\xfe line", d.INVALID_UTF8),
    (b"{not json", d.INVALID_JSON),
    (b'{"other": "x"}', d.JSON_NO_FIELD),
    (b'{"log": 42}', d.JSON_WRONG_TYPE),
    (b'{"log": ""}', d.EMPTY),
    ("line with \u202e bidi override".encode(), d.CONTROL_CHARS),
    (b"line with \x1b[31m escape", d.CONTROL_CHARS),
    (b"two\nlines", d.CONTROL_CHARS),
    (b'{"log": "blk_1 half a pair \\ud800 here"}', d.INVALID_UTF8),  # valid UTF-8 and JSON; no encoder takes it
    (b'{"log": "blk_1 \\udfff"}', d.INVALID_UTF8),
])
def test_bad_values_are_rejected_with_a_reason(value, reason):
    out = DEC.decode(value)
    assert isinstance(out, Rejected) and out.reason == reason and out.detail


@given(st.binary(max_size=2000))
def test_any_bytes_decode_without_raising(value):
    out = DEC.decode(value)
    assert isinstance(out, str | Rejected)
    if isinstance(out, Rejected):
        assert out.reason in d.REASONS


def test_a_json_escaped_pair_is_one_character_and_kept():
    assert DEC.decode(b'{"log": "blk_1 smile \\ud83d\\ude00"}') == "blk_1 smile \U0001f600"


@given(st.text(alphabet=st.characters(exclude_categories=()), max_size=200))  # surrogates included
def test_every_decoded_line_encodes_to_utf8(text):
    out = DEC.decode(json.dumps({"log": text}).encode())
    if isinstance(out, str):
        out.encode("utf-8")  # what Redis, Kafka and the event's JSON will do with it


def test_json_nested_deeper_than_the_parser_is_rejected():
    value = b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    out = ValueDecoder(("log",), max_bytes=1_000_000).decode(value)
    assert out == Rejected(d.INVALID_JSON, "JSON nested too deeply")
