"""Routine novelty end to end: a history where new INFO templates keep coming trains a bundle whose vocabulary
gives them their level's key, and the detector's three ingest paths (the worker's line pipeline, ``logad serve``,
the trainer's windows) agree on it; a new FATAL template stays ``UNK`` and flags its window."""

from __future__ import annotations

import json
import string
from itertools import product
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from logbert_core.bundle import load_bundle
from logbert_core.config import Settings, load_settings
from logbert_core.judge import UNSEEN_TEMPLATE
from logbert_core.vocab import UNK
from logbert_core.windows import member_key
from streamer.service import SessionDetector
from streamer.worker import LinePipeline
from training.data import build_windows, read_corpus
from training.train import train_bundle

REPO = Path(__file__).resolve().parents[2]
NODE = "R02-M1-N0-C:J12-U11"
T0 = 1117838400
WORDS = ["".join(p) for p in product(string.ascii_lowercase, repeat=3)]


def line(t: int, level: str, message: str, label: str = "-") -> str:
    return f"{label} {t} 2005.06.03 {NODE} 2005-06-03-15.42.50.675872 {NODE} RAS KERNEL {level} {message}"


def novel(k: int) -> str:
    """A message no other ``novel(j)`` shares a template with (Drain's similarity 1/4 < the 0.5 of bgl.toml)."""
    w = WORDS[k]
    return f"{w} {w} {w} ready"


def history(n: int) -> list[str]:
    """``n`` clock windows of one node; every 4th window of the later half brings a new INFO template."""
    out = []
    for i in range(n):
        t = T0 + 300 * i
        out += [line(t, "INFO", "instruction cache parity error corrected"),
                line(t + 1, "INFO", "generating core.2275"),
                line(t + 2, "FATAL", "data TLB error interrupt")]
        if i >= n // 2 and i % 4 == 0:
            out.append(line(t + 3, "INFO", novel(i)))
    return out


def tiny() -> Settings:
    return load_settings(REPO / "config" / "bgl.toml", model={"n_embd": 16, "n_layer": 1, "n_head": 2},
                         train={"epochs": 1, "min_epoch_steps": 0, "crossfit_max_sessions": 0})


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("routine")
    log = root / "bgl.log"
    log.write_text("\n".join(history(240)) + "\n")
    train_bundle(tiny(), [log], root / "bundle", progress=False)
    return root / "bundle"


@pytest.mark.slow
def test_routine_info_novelty_gets_its_key_in_every_ingest_path(bundle_dir: Path, tmp_path: Path) -> None:
    bundle = load_bundle(bundle_dir)
    vocab = bundle.vocab
    assert vocab.routine_levels == ("INFO",)
    calibration = json.loads((bundle_dir / "metrics.json").read_text())["calibration"]
    forward = calibration["novelty_forward"]
    assert forward == [{"level": "INFO", "sessions": 30, "of": 120, "lower_95": forward[0]["lower_95"],
                        "routine": True}]
    # the forward test of unseen_template leaves the routine level out: no later session is new to the rule
    assert {k: calibration["forward_unseen"][k] for k in ("sessions", "of", "rate")} == {"sessions": 0, "of": 120,
                                                                                        "rate": 0.0}
    routine = vocab.key(None, "INFO")
    t = T0 + 300 * 1000
    fresh = [line(t, "INFO", novel(5000)), line(t + 1, "FATAL", novel(5001)),
             line(t, "INFO", "instruction cache parity error corrected")]
    settings = tiny()

    # the trainer's windows
    path = tmp_path / "fresh.log"
    path.write_text("\n".join(fresh) + "\n")
    corpus = read_corpus([path], settings.line_reader())
    (sid,) = corpus.sessions
    windows = build_windows(corpus, [sid], bundle.template_index(), vocab, False, 64, 32)
    known = vocab.key(bundle.template_index().lookup("instruction cache parity error corrected").template_id)
    assert sorted(windows[sid].windows[0]) == sorted([routine, UNK, known])

    # the worker's line pipeline
    pipe = LinePipeline(settings.line_reader(), bundle.template_index(), bundle, False)
    records = [SimpleNamespace(topic="logs.raw", partition=0, offset=i, value=x.encode()) for i, x in enumerate(fresh)]
    parsed = pipe.parse(records)
    assert [member_key(e.member) for e in parsed.entries] == [routine, UNK, known] and parsed.unseen == 2

    # logad serve: the new INFO template alone is no novelty evidence, the new FATAL one is
    detector = SessionDetector(settings, bundle, device="cpu")
    only_info = json.loads(detector.detect([fresh[0], fresh[2]]))["sessions"][0]
    with_fatal = json.loads(detector.detect(fresh))["sessions"][0]
    assert UNSEEN_TEMPLATE not in only_info["reasons"]
    assert UNSEEN_TEMPLATE in with_fatal["reasons"] and with_fatal["anomalous"]
