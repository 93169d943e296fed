"""The demo's closing summary: block-level P/R/F1 against the labels, and which rules flagged which blocks."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from logbert_core.config import load_settings
from streamer.demo import _summarise

REPO = Path(__file__).resolve().parents[2]
LINE = "081109 203615 148 INFO dfs.DataNode$PacketResponder: PacketResponder 1 for block {} terminating"


def _event(session: str, *reasons: str) -> SimpleNamespace:
    return SimpleNamespace(session_id=session, explanation=SimpleNamespace(reasons=list(reasons)))


def test_summary_counts_blocks_and_the_rules_behind_them() -> None:
    settings = load_settings(REPO / "config" / "hdfs.toml")
    blocks = [f"blk_{i}" for i in range(1, 6)]
    labels = {"blk_1": True, "blk_2": True, "blk_3": False, "blk_4": False, "blk_5": False}
    events = {"e1": _event("blk_1", "rare_template", "unseen_template"), "e2": _event("blk_1", "rare_template"),
              "e3": _event("blk_3", "premature_end"), "e4": _event("blk_4", "rare_template")}
    s = _summarise([LINE.format(b).encode() for b in blocks], events, 4, labels, settings, 5, 1.0, 2.0, [0])
    assert (s["tp"], s["fp"], s["fn"], s["sessions"]) == (1, 2, 1, 5)
    assert s["precision"] == 0.3333 and s["recall"] == 0.5 and s["f1"] == 0.4
    # a block counts once per rule, however many of its events name it
    assert s["true_positives_by_rule"] == {"rare_template": 1, "unseen_template": 1}
    assert s["false_positives_by_rule"] == {"premature_end": 1, "rare_template": 1}
