"""Windows cut offline as the detector cuts them, with the per-window flag of whether the quiet after it was seen."""

from __future__ import annotations

from pathlib import Path

from logbert_core.config import load_settings
from logbert_core.parsing import TemplateIndex
from training.data import build_windows, mine_templates, read_corpus

ROOT = Path(__file__).resolve().parents[2]


def hdfs_line(hhmmss: str, blk: str, n: int) -> str:
    return (f"081110 {hhmmss} 143 INFO dfs.DataNode$PacketResponder: PacketResponder {n} for block {blk} "
            "terminating")


def test_quiet_flags_follow_the_rest_horizon(tmp_path: Path) -> None:
    """Block A pauses 59 s (a close at the 30 s idle timeout, but shorter than the 300 s rest horizon: not seen to
    stop there), then 340 s (seen), then ends 700 s before the data does (seen). Block B ends 100 s before the data
    (not seen: the data ended first)."""
    log = tmp_path / "x.log"
    a, b = "blk_1", "blk_2"
    log.write_text("\n".join([hdfs_line("100000", a, 0), hdfs_line("100001", a, 1), hdfs_line("100100", a, 2),
                              hdfs_line("100640", a, 0), hdfs_line("101639", b, 1), hdfs_line("101640", b, 2),
                              hdfs_line("101820", "blk_3", 0)]) + "\n")
    s = load_settings(ROOT / "config" / "hdfs.toml")
    corpus = read_corpus([log], s.line_reader())
    index = TemplateIndex(s.drain_params())
    vocab = mine_templates(corpus, list(corpus.sessions), index)
    live = build_windows(corpus, [a, b], index, vocab, False, 64, 32, quiet_s=30, rest_s=300)
    assert [len(w) for w in live[a].windows] == [2, 3, 4]
    assert live[a].quiet_seen() == [False, True, True]
    assert live[b].quiet_seen() == [False]
    replay = build_windows(corpus, [a, b], index, vocab, False, 64, 32, rest_s=300)
    assert [len(w) for w in replay[a].windows] == [4] and replay[a].quiet_seen() == [True]
    assert build_windows(corpus, [a], index, vocab, False, 64, 32)[a].quiet_seen() == [True]  # no horizon: all
