"""One ingest path: the same hostile and odd lines, fed to the detector's line pipeline, ``logad serve`` and
``logad-train``'s corpus reader, are kept or rejected alike, for the same reasons, into the same sessions and keys;
and all three read them through ``logbert_core.ingest.LineReader.read``."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from logbert_core import ingest
from logbert_core.bundle import load_bundle
from logbert_core.config import load_settings
from logbert_core.parsing import key_of
from logbert_core.windows import member_key
from streamer.service import SessionDetector
from streamer.worker import LinePipeline
from training.data import read_corpus

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "config" / "hdfs.toml"
BUNDLE = REPO / "models" / "hdfs"
GOOD = ("081110 215504 15663 INFO dfs.DataNode$DataXceiver: Receiving block blk_-2815656842321674713 src: "
        "/10.251.38.197:40316 dest: /10.251.38.197:50010")
NEW = "081110 215505 15663 WARN dfs.DataNode$DataXceiver: a message no training line had for blk_7 at all"

# (value as the input carries it, what every path must make of it)
CASES: list[tuple[bytes, str]] = [
    (GOOD.encode(), "ok"),
    (NEW.encode(), "ok"),
    ((GOOD + "\r").encode(), "ok"),  # a CRLF file
    (GOOD.replace(" src:", "\tsrc:").encode(), "ok"),  # a tab is text
    (json.dumps({"log": GOOD.replace("blk_-", "blk_9")}).encode(), "ok"),  # a Fluent Bit record
    (json.dumps({"message": NEW.replace("blk_7", "blk_8")}).encode(), "ok"),  # the second configured field
    (GOOD.replace("Receiving", "Rece\x01iving").encode(), ingest.CONTROL_CHARS),
    (GOOD.replace("Receiving", "Receiving \u202egnivieceR").encode(), ingest.CONTROL_CHARS),  # trojan source
    (GOOD.encode()[:40] + b"\xff\xfe" + GOOD.encode()[40:], ingest.INVALID_UTF8),
    (b'{"log": "081110 215504 1 INFO x: \\ud800 blk_1"}', ingest.INVALID_UTF8),  # a lone surrogate escape
    (b'{"log": 5}', ingest.JSON_WRONG_TYPE),
    (b'{"level": "INFO"}', ingest.JSON_NO_FIELD),
    (b'{"log": "unterminated', ingest.INVALID_JSON),
    (b"   ", ingest.EMPTY),
    (b"x" * 1_100_000, ingest.TOO_LARGE),
    (b"not a log line at all", "format_mismatch"),
    (b"081110 215504 31 INFO dfs.FSNamesystem: no block named here", "no_session_key"),
]


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(BUNDLE)


def outcomes_of_trainer(tmp_path: Path) -> tuple[Counter[str], list[tuple[str, str]]]:
    path = tmp_path / "odd.log"
    path.write_bytes(b"\n".join(v for v, _ in CASES) + b"\n")
    corpus = read_corpus([path], load_settings(CONFIG).line_reader())
    got = Counter(corpus.rejected)
    got["ok"] = len(corpus.records)
    return got, sorted((sid, r.content) for r in corpus.records for sid in r.session_ids)


def test_the_three_ingest_paths_keep_and_reject_alike(tmp_path: Path, bundle, monkeypatch) -> None:
    expected = Counter(want for _, want in CASES)
    settings = load_settings(CONFIG)
    calls: Counter[str] = Counter()
    path = ["trainer"]
    real_read = ingest.LineReader.read

    def read(self, value):  # type: ignore[no-untyped-def]
        calls[path[0]] += 1
        return real_read(self, value)

    monkeypatch.setattr(ingest.LineReader, "read", read)  # every path must go through this one function

    trainer, trainer_entries = outcomes_of_trainer(tmp_path)

    path[0] = "worker"
    pipe = LinePipeline(settings.line_reader(), bundle.template_index(), bundle, False)
    records = [SimpleNamespace(topic="logs.raw", partition=0, offset=i, value=v) for i, (v, _) in enumerate(CASES)]
    parsed = pipe.parse(records)
    worker = Counter(reason for _, reason, _ in parsed.rejects)
    worker["ok"] = len({id(r) for r in parsed.origins})

    # a /detect request carries text: bytes that are not UTF-8 arrive as lone surrogates, as a JSON body can hold
    path[0] = "serve"
    served = json.loads(SessionDetector(settings, bundle).detect([v.decode("utf-8", "surrogateescape")
                                                                   for v, _ in CASES]))
    serve = Counter(r["reason"] for r in served["rejected"])
    serve["ok"] = len(CASES) - len(served["rejected"])

    assert trainer == worker == serve == expected
    assert calls == {"trainer": len(CASES), "worker": len(CASES), "serve": len(CASES)}

    # the kept lines land in the same sessions with the same keys on every path
    index, vocab = bundle.template_index(), bundle.vocab
    trainer_keys = sorted((sid, key_of(index, vocab, content, False)[0]) for sid, content in trainer_entries)
    worker_keys = sorted((e.session_id, member_key(e.member)) for e in parsed.entries)
    assert trainer_keys == worker_keys
    assert {s["session_id"] for s in served["sessions"]} == {sid for sid, _ in trainer_keys}
