"""The parse path's shortcuts give exactly what the slow path gives: the digit-shape lookup cache against plain
masking, the fixed-width timestamp parser against ``datetime.strptime``."""

from __future__ import annotations

import gzip
from datetime import datetime, timezone
from pathlib import Path

import pytest
from drain3.masking import LogMasker, MaskingInstruction
from hypothesis import given, settings
from hypothesis import strategies as st

from logbert_core.bundle import load_bundle
from logbert_core.config import load_settings
from logbert_core.parsing import DrainParams, LineFormat, LineFormatError, SessionRule, TemplateIndex, digit_shape

REPO = Path(__file__).resolve().parents[2]
CONFIGS = ["hdfs", "bgl", "openstack"]


def plain_mask(params: DrainParams, content: str) -> str:
    return LogMasker([MaskingInstruction(rx, name) for rx, name in params.masking], "<", ">").mask(content)


def uncached(index: TemplateIndex) -> TemplateIndex:
    """The same index with the shape cache off: the reference path."""
    ref = TemplateIndex.from_state(index.params, index.state())
    ref._shape = None
    return ref


@pytest.mark.parametrize("name", CONFIGS)
def test_every_shipped_masking_has_a_shape(name):
    params = load_settings(REPO / "config" / f"{name}.toml").drain_params()
    assert digit_shape([rx for rx, _ in params.masking]) is not None


def test_shape_rules():
    # a literal digit followed by a fixed character is kept where that character follows it
    shape = digit_shape([r"0x[0-9a-f]+", r"\d+"])
    assert shape is not None
    assert shape.key("a 12 b") == shape.key("a 90 b")
    assert shape.key("0x1f") != shape.key("1x1f")
    # a set that separates digits splits them into classes
    split = digit_shape([r"[0-5]\d"])
    assert split is not None and split.key("17") != split.key("71") and split.key("17") == split.key("28")
    # a literal digit with no fixed character after it is a class of its own
    alone = digit_shape([r"7+"])
    assert alone is not None and alone.key("7") != alone.key("8") and alone.key("8") == alone.key("9")
    # a back-reference gives no shape (the cache stays off)
    assert digit_shape([r"(\d)\1"]) is None


def test_lookup_with_shape_cache_equals_plain_masking_on_real_hdfs_lines():
    settings = load_settings(REPO / "config" / "hdfs.toml")
    bundle = load_bundle(REPO / "models" / "hdfs")
    fmt, index = settings.line_format(), bundle.template_index()
    ref = uncached(index)
    with gzip.open(REPO / "data" / "hdfs" / "holdout.log.gz", "rt") as fh:
        contents = [fmt.parse(next(fh).rstrip("\n")).content for _ in range(20_000)]
    for nearest in (False, True):
        assert [index.lookup(c, nearest) for c in contents] == [ref.lookup(c, nearest) for c in contents]
    assert 0 < len(index._shapes) < 2_000  # the cache does its job: few shapes for many lines


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["blk_", "-", "0x", " ", ".", ":", "/", "a", "f", "x", "size ", "0", "7", "42",
                                 "255", "1234", "10.250.19.102", "\u0663"]), max_size=14), st.data())
def test_shape_hits_are_exact_for_any_digits(parts, data):
    """Messages that share a shape: the cached answer equals masking each one from scratch."""
    params = load_settings(REPO / "config" / "hdfs.toml").drain_params()
    index = TemplateIndex(params)
    for seen in ("size 42 at 10.0.0.1", "blk_1 size 7", "0x1f . 7"):
        index.mine(seen)
    ref = uncached(index)
    text = "".join(parts)
    variants = [text] + ["".join(data.draw(st.sampled_from("0123456789")) if ch.isascii() and ch.isdigit() else ch
                                 for ch in text) for _ in range(3)]
    for v in variants:
        got = index.lookup(v)
        assert got == ref.lookup(v)
        if got.template_id is None:
            assert got.template == plain_mask(params, v)


@pytest.mark.parametrize("fmt", ["%y%m%d %H%M%S", "%Y-%m-%d %H:%M:%S", "%Y.%m.%d-%H.%M.%S", "%d/%m/%Y %H:%M"])
@pytest.mark.parametrize("text", ["081109 203615", "2008-11-09 20:36:15", "2008.11.09-20.36.15", "09/11/2008 20:36",
                                  "081309 203615", "080229 000000", "070229 000000", "691231 235959",
                                  "2008-02-30 10:00:00", "2008-11-09 20:36:60", "08119 203615", "081109  203615",
                                  "0811\u06619 203615"])
def test_fixed_width_timestamps_match_strptime(fmt, text):
    rule = SessionRule("regex", key_regex=r"x")
    fast = LineFormat(r"(?P<ts>.*?)\|(?P<content>.*)", ["ts"], fmt, rule)
    try:
        want: float | None = datetime.strptime(text, fmt).replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        want = None
    try:
        got: float | None = fast.parse(f"{text}|x").timestamp
    except LineFormatError as exc:
        assert exc.reason == "bad_timestamp"
        got = None
    assert got == want
