"""Golden tables: raw line -> record and template, with the shipped HDFS and BGL configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from logbert_core.config import load_settings
from logbert_core.parsing import LineFormatError, TemplateIndex

CONFIG = Path(__file__).resolve().parents[2] / "config"

HDFS_GOLDEN = [
    ("081109 203615 148 INFO dfs.DataNode$PacketResponder: PacketResponder 1 for block blk_38865049064139660 "
     "terminating", ("blk_38865049064139660",), "PacketResponder <NUM> for block <BLK> terminating"),
    ("081109 204005 35 INFO dfs.FSNamesystem: BLOCK* NameSystem.addStoredBlock: blockMap updated: "
     "10.251.73.220:50010 is added to blk_7128370237687728475 size 67108864", ("blk_7128370237687728475",),
     "BLOCK* NameSystem.addStoredBlock: blockMap updated: <IP> is added to <BLK> size <NUM>"),
    ("081109 203518 143 INFO dfs.DataNode$DataXceiver: Receiving block blk_-1608999687919862906 src: "
     "/10.250.19.102:54106 dest: /10.250.19.102:50010", ("blk_-1608999687919862906",),
     "Receiving block <BLK> src: /<IP> dest: /<IP>"),
    ("081111 054326 19 INFO dfs.FSNamesystem: BLOCK* ask 10.250.11.85:50010 to delete  blk_-1 blk_2",
     ("blk_-1", "blk_2"), None),
]


@pytest.fixture(scope="module")
def hdfs():
    return load_settings(CONFIG / "hdfs.toml")


@pytest.mark.parametrize("line,sessions,template", HDFS_GOLDEN)
def test_hdfs_golden(hdfs, line, sessions, template):
    rec = hdfs.line_format().parse(line)
    assert rec.session_ids == sessions
    if template is not None:
        index = TemplateIndex(hdfs.drain_params())
        tid = index.mine(rec.content)
        assert index.templates()[tid] == template
        found = index.lookup(rec.content)
        assert (found.template_id, found.template, found.exact) == (tid, template, True)


def test_hdfs_timestamp_is_utc_seconds(hdfs):
    rec = hdfs.line_format().parse(HDFS_GOLDEN[0][0])
    assert rec.timestamp == 1226262975.0  # 2008-11-09 20:36:15 UTC


@pytest.mark.parametrize("line,reason", [
    ("not a log line", "format_mismatch"),
    ("081109 203615 148 INFO dfs.DataNode: no block id here", "no_session_key"),
    ("089999 203615 148 INFO dfs.DataNode: blk_1 bad month", "bad_timestamp"),
])
def test_hdfs_rejects_with_reason(hdfs, line, reason):
    with pytest.raises(LineFormatError) as err:
        hdfs.line_format().parse(line)
    assert err.value.reason == reason


def test_bgl_sessions_are_node_and_window():
    s = load_settings(CONFIG / "bgl.toml")
    line = ("- 1117838570 2005.06.03 R02-M1-N0-C:J12-U11 2005-06-03-15.42.50.675872 R02-M1-N0-C:J12-U11 RAS "
            "KERNEL INFO instruction cache parity error corrected")
    rec = s.line_format().parse(line)
    assert rec.session_ids == ("R02-M1-N0-C:J12-U11@1117838400",)
    assert rec.content == "instruction cache parity error corrected"
    assert rec.label == "-" and rec.level == "INFO"  # the level decides whether a new template can be routine


def test_lookup_never_changes_trained_state(hdfs):
    fmt = hdfs.line_format()
    index = TemplateIndex(hdfs.drain_params())
    index.mine(fmt.parse(HDFS_GOLDEN[0][0]).content)
    before = index.state()
    novel = index.lookup("Something entirely different happened here")
    assert novel.template_id is None and novel.template == "Something entirely different happened here"
    assert index.state() == before


def test_nearest_maps_close_template(hdfs):
    index = TemplateIndex(hdfs.drain_params())
    tid = index.mine("PacketResponder 1 for block blk_1 terminating")
    changed = "PacketResponder 1 for block blk_1 terminating early"  # one more token: no exact match
    assert index.lookup(changed).template_id is None
    assert index.lookup("PacketResponder 1 for block blk_1 finishing", nearest=True).template_id == tid


def test_state_round_trip_gives_identical_lookups(hdfs):
    fmt = hdfs.line_format()
    index = TemplateIndex(hdfs.drain_params())
    for line, _, _ in HDFS_GOLDEN:
        index.mine(fmt.parse(line).content)
    restored = TemplateIndex.from_state(hdfs.drain_params(), index.state())
    assert restored.state() == index.state()
    for line, _, _ in HDFS_GOLDEN:
        content = fmt.parse(line).content
        assert restored.lookup(content) == index.lookup(content)


@pytest.mark.parametrize("epoch", ["99999999999999", "9" * 400])  # year 3170843; a float overflow to infinity
def test_timestamps_no_datetime_can_hold_are_rejected(epoch):
    s = load_settings(CONFIG / "bgl.toml")
    line = (f"- {epoch} 2005.06.03 R02-M1-N0-C:J12-U11 2005-06-03-15.42.50.675872 R02-M1-N0-C:J12-U11 RAS "
            "KERNEL INFO instruction cache parity error corrected")
    with pytest.raises(LineFormatError) as err:
        s.line_format().parse(line)
    assert err.value.reason == "bad_timestamp" and "years 1 to 9999" in str(err.value)
