"""`logad run` start-up: a bad setting or a bundle that does not fit the config stops it with exit code 2 and one
message naming the field; the event explanation is readable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from logbert_core.bundle import load_bundle
from logbert_core.config import load_settings
from logbert_core.judge import DISTANCE, KEY_MISSES, UNSEEN_TEMPLATE, Verdict
from logbert_core.scoring import Candidate, Miss, WindowScore
from logbert_core.vocab import UNK
from logbert_core.windows import member
from streamer.errors import StartupError
from streamer.events import AnomalyEvent, build_event, clip_template
from streamer.render import render_event
from streamer.worker import check_bundle_settings

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "config" / "hdfs.toml"
BUNDLE = REPO / "models" / "hdfs"


def run_cli(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamer.cli", "run", "--config", str(CONFIG), "--model",
                           str(BUNDLE)], capture_output=True, text=True, cwd=REPO, timeout=120,
                          env=dict(os.environ, **env))


@pytest.mark.parametrize("var,value,field", [
    ("LOGAD_HTTP__PORT", "99999", "http.port"),
    ("LOGAD_SESSION__IDLE_TIMEOUT_S", "soon", "session.idle_timeout_s"),
    ("LOGAD_PARSER__SIM_TH", "0.9", "parser.sim_th"),  # valid, but not what the bundle was trained with
])
def test_run_refuses_bad_or_mismatched_settings(var, value, field):
    res = run_cli({var: value})
    assert res.returncode == 2, res.stderr
    assert field in res.stderr and "Traceback" not in res.stderr


def test_bundle_mismatch_names_every_field():
    bundle = load_bundle(BUNDLE)
    settings = load_settings(CONFIG, model={"stride": 16}, scoring={"top_g": 3})
    with pytest.raises(StartupError) as err:
        check_bundle_settings(settings, bundle)
    assert "model.stride" in str(err.value) and "scoring.top_g" in str(err.value)
    check_bundle_settings(load_settings(CONFIG), bundle)  # the shipped config fits the shipped bundle


def test_event_explains_what_was_expected():
    bundle = load_bundle(BUNDLE)
    v = bundle.vocab
    members = (member(4, "a"), member(UNK, "weird"), member(5, "b"))
    score = WindowScore(3, 2, 2 / 3, 9.0, (Miss(1, UNK, (Candidate(6, 0.7), Candidate(7, 0.2))),
                                           Miss(2, 5, (Candidate(8, 0.9),))))
    ev = build_event(event_id="e" * 40, session_id="blk_-1608999687919862906", members=members, lo=0,
                     cause="idle", first_ts=1.0, last_ts=3.0, cut_ms=5_000,
                     verdict=Verdict(True, (UNSEEN_TEMPLATE, KEY_MISSES, DISTANCE), score), vocab=v,
                     unseen_text={members[1][7:]: "weird <NUM> thing"}, miss_threshold=0.1, distance_threshold=5.0,
                     model_version=bundle.version)
    again = AnomalyEvent.model_validate_json(ev.model_dump_json())
    assert again == ev and again.schema_version == 1
    pos = ev.explanation.templates
    assert [p.unexpected for p in pos] == [False, True, True]
    assert pos[1].template == "weird <NUM> thing" and not pos[1].seen_in_training
    assert pos[2].expected[0].template == v.text(8) and pos[2].expected[0].probability == 0.9
    assert ev.explanation.unexpected_positions == [1, 2]
    text = render_event(ev.model_dump_json())
    assert "blk_-1608999687919862906" in text and "weird <NUM> thing" in text and v.text(8) in text
    assert render_event(b'{"not": "an event"}').startswith("[unreadable event")


def test_an_event_of_huge_unseen_lines_stays_far_below_the_record_limit():
    """64 never-seen lines of 500 kB each: shown clipped, so the event can still be published."""
    bundle = load_bundle(BUNDLE)
    members = tuple(member(UNK, f"line {i}") for i in range(64))
    score = WindowScore(64, 0, 0.0, 1.0, ())
    ev = build_event(event_id="e" * 40, session_id="blk_1", members=members, lo=0, cause="idle", first_ts=1.0,
                     last_ts=3.0, cut_ms=5_000, verdict=Verdict(True, (UNSEEN_TEMPLATE,), score), vocab=bundle.vocab,
                     unseen_text={m[7:]: "x" * 500_000 for m in members}, miss_threshold=0.1,
                     distance_threshold=5.0, model_version=bundle.version)
    size = len(ev.model_dump_json().encode())
    assert size < 200_000, size
    assert ev.explanation.templates[0].template.endswith("... [499000 more characters]")
    # the worker stores clipped text and the event clips again: the note keeps the original count
    assert clip_template(clip_template("y" * 100_000)).endswith("... [99000 more characters]")
    assert clip_template("z" * 1000) == "z" * 1000
