"""Complete logs: per-line gaps and parameters aligned with the keys, deterministic coding, and a model that sees
what keys alone cannot (anomalies that differ only by timing or by a parameter value)."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import pytest

from logbert_core.config import load_settings
from logbert_core.parsing import TemplateIndex
from logbert_core.vocab import FIRST_KEY
from training.baselines import BaselineConfig, make_detector
from training.complete_logs import (
    FIRST_GAP,
    GAP_BUCKET0,
    OTHER_PARAM,
    CompleteConfig,
    CompleteLogDetector,
    LineCoder,
    ParamExtractor,
    SessionLines,
    gap_bucket,
    line_features,
    value_class,
)
from training.data import build_windows, canonical_lines, mine_templates, read_corpus
from training.protocols import (
    COMPLETE_EXTRAS,
    COMPLETE_KEYS,
    COMPLETE_MEAN,
    LOGBERT_COMPLETE,
    RAW_METHODS,
    EvalData,
    Split,
    _split_methods,
    complete_results,
)

REPO = Path(__file__).resolve().parents[2]
SETTINGS = load_settings(REPO / "config" / "hdfs.toml")


# -- features from raw lines ----------------------------------------------------------------------------------------
def hdfs_line(ts: str, content: str) -> str:
    return f"081109 {ts} 148 INFO dfs.DataNode: {content}"


LINES = [  # two blocks; out of time order in the file, one line repeated verbatim, one line naming both blocks
    hdfs_line("203620", "Received block blk_1 of size 67108864 from /10.0.0.1"),
    hdfs_line("203615", "Receiving block blk_1 src: /10.0.0.1:4000 dest: /10.0.0.2:50010"),
    hdfs_line("203615", "Receiving block blk_2 src: /10.0.0.3:4001 dest: /10.0.0.2:50010"),
    hdfs_line("203617", "PacketResponder 1 for block blk_1 terminating"),
    hdfs_line("203617", "PacketResponder 1 for block blk_1 terminating"),
    hdfs_line("203700", "Received block blk_2 of size 3212 from /10.0.0.3"),
    hdfs_line("203701", "Deleting block blk_1 file /data/blk_1 and blk_2 file /data/blk_2"),
    hdfs_line("203616", "PacketResponder 0 for block blk_2 terminating"),
]


@pytest.fixture(scope="module")
def parsed(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    path = tmp_path_factory.mktemp("logs") / "x.log"
    path.write_text("\n".join(LINES) + "\n")
    corpus = read_corpus([path], SETTINGS.line_reader())
    index = TemplateIndex(SETTINGS.drain_params())
    vocab = mine_templates(corpus, corpus.sessions, index)
    return corpus, index, vocab


def test_line_features_follow_the_canonical_order_of_the_keys(parsed: tuple) -> None:
    corpus, index, vocab = parsed
    ids = list(corpus.sessions)
    windows = build_windows(corpus, ids, index, vocab, False, max_len=64, stride=32)
    lines = canonical_lines(corpus, ids, index, vocab, False)
    extractor = ParamExtractor(SETTINGS.drain_params().masking,
                               {k: vocab.text(k) for k in range(FIRST_KEY, vocab.size)})
    for sid in ids:
        (keys,) = windows[sid].windows
        feats = line_features(lines[sid], extractor)
        assert list(feats.keys) == keys  # the same keys, in the same (canonical) order
        ts = [ln.timestamp for ln in lines[sid]]
        assert ts == sorted(ts) and feats.gaps[0] is None
        assert list(feats.gaps[1:]) == [b - a for a, b in zip(ts, ts[1:])]
    blk1 = line_features(lines["blk_1"], extractor)
    assert len(blk1.keys) == 4  # the verbatim repeat is one entry, as in the detector's sorted set
    assert blk1.gaps == (None, 2.0, 3.0, 41.0)  # 203615 -> 203617 -> 203620 -> 203701
    size = [dict(p) for p in blk1.params if any(s.endswith(":NUM:0") and v == "67108864" for s, v in p)]
    assert len(size) == 1 and size[0]["0:IP:0"] == "10.0.0.1"  # the size line keeps its sender's address
    first = dict(blk1.params[0])
    assert first == {"0:IP:0": "10.0.0.1:4000", "0:IP:1": "10.0.0.2:50010", "1:BLK:0": "blk_1"}


def test_param_extractor_masks_exactly_as_drain3(parsed: tuple) -> None:
    _, index, vocab = parsed
    extractor = ParamExtractor(SETTINGS.drain_params().masking, {})
    for line in LINES:
        content = line.split(": ", 1)[1]
        text, found = extractor.masked(content)
        assert text == index.masker.mask(content)
        assert all(v in content for _, v in found)


def test_gap_buckets_and_value_classes_are_fixed() -> None:
    n = 20
    table = {None: FIRST_GAP, 0.0: GAP_BUCKET0, 0.4: GAP_BUCKET0, 1.0: 4, 1.9: 4, 2.0: 5, 3.0: 5, 4.0: 6,
             60.0: 9, 3600.0: 15, 1e9: n - 1}
    assert {g: gap_bucket(g, n) for g in table} == table
    assert [value_class(v) for v in ("67108864", "-12", "0x1F3a", "0245a4c8", "10.0.0.1:50010", "core.2275")] == [
        "int8", "-int2", "hex6", "hex8", "9.9.9.9:9", "a.9"]


def session(keys: list[int], gaps: list[float | None], params: list[tuple]) -> SessionLines:
    return SessionLines(tuple(keys), tuple(gaps), tuple(params))


def test_line_coder_is_deterministic_and_keeps_only_frequent_values() -> None:
    size = "0:NUM:0"
    fit = [session([FIRST_KEY] * 3, [None, 0.0, 5.0],
                   [((size, "67108864"),), ((size, str(1000 + i)),), ()]) for i in range(40)]
    a, b = LineCoder().fit(fit), LineCoder().fit(list(reversed(fit)))
    assert a.signatures == b.signatures and a.exact == b.exact == {(FIRST_KEY, size, "67108864")}
    keys, gaps, params = a.encode(fit[0])
    assert keys.tolist() == [FIRST_KEY] * 3 and gaps.tolist() == [FIRST_GAP, GAP_BUCKET0, 6]
    assert len(set(params.tolist())) == 3 and OTHER_PARAM not in params  # exact value, int4 class, no parameters
    odd = session([FIRST_KEY], [None], [((size, "12"),)])  # int2: a class never seen with this key
    assert a.encode(odd)[2].tolist() == [OTHER_PARAM]


# -- the model: evidence that keys alone do not carry ---------------------------------------------------------------
A, B, C, D = (FIRST_KEY + i for i in range(4))
SIZE = (("0:NUM:0", "67108864"),)


def lifecycle(rng: random.Random, late: bool = False, odd_size: bool = False) -> SessionLines:
    """A B C^n D with sub-second or one-second gaps; C carries the block size. Anomalies keep the same keys."""
    n = rng.randint(2, 4)
    keys = [A, B] + [C] * n + [D]
    gaps: list[float | None] = [None] + [float(rng.randint(0, 1)) for _ in keys[1:]]
    params: list[tuple] = [(), (("1:IP:0", f"10.0.0.{rng.randint(1, 2)}"),)] + [SIZE] * n + [()]
    if late:
        gaps[-1] = 4000.0  # D long after the rest
    if odd_size:
        params[2] = (("0:NUM:0", "4242"),)
    return session(keys, gaps, params)


def corpus(seed: int, n: int, **kw: bool) -> list[SessionLines]:
    rng = random.Random(seed)
    return [lifecycle(rng, **kw) for _ in range(n)]


TINY = CompleteConfig(vocab_size=FIRST_KEY + 4, max_len=16, stride=8, n_layer=1, n_head=2, n_embd=32, dropout=0.0,
                      top_g=2, mask_copies=4, mask_ratio=0.3, epochs=12, batch_size=32, lr=5e-3, patience=3, seed=7,
                      num_threads=1)
FIT, VAL = corpus(0, 300), corpus(1, 40)


@pytest.fixture(scope="module")
def detector() -> CompleteLogDetector:
    det = CompleteLogDetector(TINY)
    det.fit(FIT, VAL)
    return det


def test_timing_and_parameter_anomalies_separate_where_keys_cannot(detector: CompleteLogDetector) -> None:
    normal = corpus(2, 60)
    late, odd = corpus(2, 30, late=True), corpus(2, 30, odd_size=True)
    assert [s.keys for s in late] == [s.keys for s in odd] == [s.keys for s in normal[:30]]  # same key sequences
    key_only = make_detector("unseen_count_vector", BaselineConfig())
    key_only.fit([list(s.keys) for s in FIT], [])
    keys_view = key_only.score([list(s.keys) for s in normal[:30] + late + odd])
    assert np.all(keys_view[:30] == keys_view[30:60]) and np.all(keys_view[:30] == keys_view[60:])

    m_normal, m_late, m_odd = (detector.misses(x) for x in (normal, late, odd))
    assert m_late.complete.min() > m_normal.complete.max()
    assert m_odd.complete.min() > m_normal.complete.max()
    assert m_late.extras.min() > m_normal.extras.max()


def test_a_one_line_session_is_judged_by_its_parameter_given_its_template() -> None:
    """Sessions of one line (BGL's node windows mostly are): no context, so the parameter must be judged given the
    line's own key, which stays visible while its gap and parameter are masked."""
    keys = [FIRST_KEY + i for i in range(6)]

    def one(rng: random.Random, odd: bool = False) -> SessionLines:
        k = rng.choice(keys)
        return session([k], [None], [(("0:NUM:0", "7" if odd else str(100 * k)),)])

    rng = random.Random(0)
    fit, val = [one(rng) for _ in range(300)], [one(rng) for _ in range(40)]
    det = CompleteLogDetector(dataclasses.replace(TINY, vocab_size=FIRST_KEY + 6, epochs=8))
    det.fit(fit, val)
    normal, odd = det.misses([one(rng) for _ in range(60)]), det.misses([one(rng, odd=True) for _ in range(20)])
    assert normal.extras.max() == 0.0 and odd.extras.min() > 0.0


def test_same_seed_same_scores(detector: CompleteLogDetector) -> None:
    again = CompleteLogDetector(TINY)
    again.fit(FIT, VAL)
    test = corpus(3, 20) + corpus(3, 5, late=True)
    first, second = detector.misses(test), again.misses(test)
    assert np.array_equal(first.complete, second.complete) and np.array_equal(first.keys, second.keys)
    assert [h["val_loss"] for h in detector.history] == [h["val_loss"] for h in again.history]
    assert np.array_equal(detector.score(test), first.complete)  # scoring twice changes nothing


def test_logbert_complete_is_a_raw_protocol_method_only() -> None:
    assert LOGBERT_COMPLETE in RAW_METHODS
    assert _split_methods(["logbert", LOGBERT_COMPLETE, "deeplog"]) == (True, ["deeplog"])
    with pytest.raises(ValueError, match="raw log lines"):
        _split_methods([LOGBERT_COMPLETE], raw=False)
    with pytest.raises(ValueError, match="unknown method"):
        _split_methods(["logbert_completely"])


def test_complete_results_calibrate_on_normals_and_split_the_budget_between_rules() -> None:
    parts = {"fit": FIT[:150], "val": VAL, "calib": corpus(4, 100), "test": corpus(5, 40) + corpus(5, 5, late=True)
             + corpus(6, 5, odd_size=True), "bad": corpus(7, 4, late=True)}
    ids = {p: [f"{p}:{i}" for i in range(len(x))] for p, x in parts.items()}
    lines = {sid: s for p, x in parts.items() for sid, s in zip(ids[p], x)}
    labels = {sid: True for sid in ids["test"][40:] + ids["bad"]}
    split = Split(ids["fit"], ids["val"], ids["calib"], ids["test"], ids["bad"], rule="synthetic")
    data = EvalData("raw", {k: list(v.keys) for k, v in lines.items()}, {}, labels, True, split, lines=lines)
    cfg = dataclasses.replace(TINY, epochs=6)
    results = complete_results(data, cfg, target_fpr=0.02)
    assert [r.name for r in results] == [LOGBERT_COMPLETE, COMPLETE_MEAN, COMPLETE_KEYS, COMPLETE_EXTRAS]
    first = results[0]
    assert set(first.threshold) == {"key_misses", "gap_param_misses"} and first.history
    assert first.test_scores.shape == (50,) and first.val_scores.shape == (44,)
    assert first.test["recall"] == 1.0 and first.test["fp"] <= 1
    assert first.validation["tp"] == 4
