"""The detector end to end against a real tansu broker and a real redis-server, on real held-out HDFS lines.

Each test compares what arrives on the output topic with the offline (batch) decision of the same bundle on the same
lines: streaming must neither lose nor invent anomalies, whatever the worker count, restarts or message format.
"""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from logbert_core.bundle import load_bundle
from logbert_core.config import load_settings
from streamer.events import AnomalyEvent
from streamer.kafka_io import committed_offsets, end_offsets, ensure_topics, produce_lines, read_all
from streamer.worker import Worker
from training.evaluate import evaluate_bundle

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "config" / "hdfs.toml"
BUNDLE = REPO / "models" / "hdfs"
HOLDOUT = REPO / "data" / "hdfs" / "holdout.log.gz"
N_LINES = 4000


@pytest.fixture(scope="module")
def lines() -> list[str]:
    with gzip.open(HOLDOUT, "rt") as fh:
        return [next(fh).rstrip("\n") for _ in range(N_LINES)]


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(BUNDLE)


@pytest.fixture(scope="module")
def expected(lines, bundle, tmp_path_factory) -> dict[str, int]:
    """Offline reference: session -> number of anomalous windows, computed in batch by the same bundle."""
    path = tmp_path_factory.mktemp("ref") / "lines.log"
    path.write_text("\n".join(lines) + "\n")
    settings = load_settings(CONFIG)
    verdicts, _ = evaluate_bundle(bundle, settings, [path], None)
    flagged = {sid: sum(v.anomalous for v in vs) for sid, vs in verdicts.items()}
    out = {sid: n for sid, n in flagged.items() if n}
    assert out, "the reference slice must contain anomalies for these tests to mean anything"
    return out


def settings_for(broker, redis_url, topic, group, **extra):
    return load_settings(CONFIG, kafka={"bootstrap_servers": broker.url, "input_topic": topic,
                                        "output_topic": f"{topic}.out", "group_id": group,
                                        "session_timeout_ms": 6000},
                         redis={"url": redis_url, "namespace": group}, session={"idle_timeout_s": 2.0},
                         http={"port": 0}, detector={"sweep_interval_s": 0.5}, **extra)


def start_worker(settings, bundle) -> tuple[Worker, threading.Thread]:
    worker = Worker(settings, bundle)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    return worker, thread


def wait_done(broker, settings, redis_url, timeout=120.0):
    """Until every input offset is committed and no session or window is left in Redis."""
    import redis

    r = redis.Redis.from_url(redis_url)
    k = settings.kafka
    deadline = time.monotonic() + timeout
    stable = 0
    while time.monotonic() < deadline:
        ends = end_offsets(broker.url, k.input_topic)
        done = committed_offsets(broker.url, k.group_id, k.input_topic)
        idle = sum(r.zcard(key) for key in r.scan_iter(match=f"{settings.redis.namespace}:*:idle"))
        pending = sum(r.zcard(key) for key in r.scan_iter(match=f"{settings.redis.namespace}:*:pending"))
        ok = all((done.get(p) or 0) >= e for p, e in ends.items()) and idle == 0 and pending == 0
        stable = stable + 1 if ok else 0
        if stable >= 3:
            return
        time.sleep(0.5)
    raise AssertionError(f"not done after {timeout} s: ends {ends}, committed {done}, idle {idle}, pending {pending}")


def events_of(broker, settings) -> list[AnomalyEvent]:
    return [AnomalyEvent.model_validate_json(r.value) for r in read_all(broker.url, settings.kafka.output_topic,
                                                                        timeout_s=10)]


def by_session(events: list[AnomalyEvent]) -> dict[str, int]:
    """session -> number of distinct anomalous windows (distinct event ids)."""
    ids: dict[str, set[str]] = {}
    for ev in events:
        ids.setdefault(ev.session_id, set()).add(ev.event_id)
    return {sid: len(v) for sid, v in ids.items()}


def test_lines_in_events_out_match_offline(broker, redis_url, topic_name, lines, bundle, expected):
    s = settings_for(broker, redis_url, topic_name, "g1")
    ensure_topics(broker.url, {topic_name: 4, s.kafka.output_topic: 1, s.kafka.dlq: 1})
    produce_lines(broker.url, topic_name, lines)
    worker, thread = start_worker(s, bundle)
    try:
        wait_done(broker, s, redis_url)
    finally:
        worker.stop_event.set()
        thread.join(30)
    events = events_of(broker, s)
    assert by_session(events) == expected
    assert len(events) == len({e.event_id for e in events})  # an undisturbed run publishes each event once
    ev = events[0]
    assert ev.session_id.startswith("blk_") and ev.model_version == bundle.version
    assert ev.explanation.templates and ev.explanation.summary
    assert ev.window.line_count == len(ev.explanation.templates)
    assert all(p.expected for p in ev.explanation.templates if p.unexpected and p.seen_in_training)


def test_fluent_bit_json_and_poison_messages(broker, redis_url, topic_name, lines, bundle, expected):
    s = settings_for(broker, redis_url, topic_name, "g2")
    ensure_topics(broker.url, {topic_name: 4, s.kafka.output_topic: 1, s.kafka.dlq: 1})
    produce_lines(broker.url, topic_name, lines, json_field="log")
    poison = [b"", b"\xff\xfe", b'{"log": 5}', b'{"nolog": "x"}', "bidi \u202e".encode(), b"not an hdfs line",
              b"081109 203615 148 INFO dfs.DataNode: no block here"]
    produce_lines(broker.url, topic_name, poison)
    worker, thread = start_worker(s, bundle)
    try:
        wait_done(broker, s, redis_url)
    finally:
        worker.stop_event.set()
        thread.join(30)
    assert by_session(events_of(broker, s)) == expected
    dlq = read_all(broker.url, s.kafka.dlq, expected=len(poison), timeout_s=15)
    assert len(dlq) == len(poison)
    reasons = sorted(dict(r.headers)["logad.reason"].decode() for r in dlq)
    assert reasons == sorted(["empty", "invalid_utf8", "json_wrong_type", "json_missing_field",
                              "control_characters", "format_mismatch", "no_session_key"])
    for r in dlq:
        h = dict(r.headers)
        assert h["logad.source.topic"].decode() == topic_name and int(h["logad.source.offset"]) >= 0


def test_two_workers_flag_each_anomaly_once(broker, redis_url, topic_name, lines, bundle, expected):
    s = settings_for(broker, redis_url, topic_name, "g3")
    ensure_topics(broker.url, {topic_name: 4, s.kafka.output_topic: 1, s.kafka.dlq: 1})
    produce_lines(broker.url, topic_name, lines)  # round-robin: every session's lines spread over 4 partitions
    w1, t1 = start_worker(s, bundle)
    w2, t2 = start_worker(s, bundle)
    try:
        wait_done(broker, s, redis_url)
    finally:
        for w in (w1, w2):
            w.stop_event.set()
        t1.join(30)
        t2.join(30)
    events = events_of(broker, s)
    assert by_session(events) == expected
    assert len(events) == len({e.event_id for e in events})
    assert w1.stats["consumed"] > 0 and w2.stats["consumed"] > 0  # both took part


def _spawn(settings_env: dict[str, str], log_path: Path) -> subprocess.Popen:
    env = dict(os.environ, **settings_env)
    return subprocess.Popen([sys.executable, "-m", "streamer.cli", "-v", "run", "--config", str(CONFIG), "--model",
                             str(BUNDLE)], env=env, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, cwd=REPO)


def test_kill_9_and_restart_resume_without_loss_or_new_ids(broker, redis_url, topic_name, lines, bundle, expected,
                                                          tmp_path):
    s = settings_for(broker, redis_url, topic_name, "g4")
    ensure_topics(broker.url, {topic_name: 4, s.kafka.output_topic: 1, s.kafka.dlq: 1})
    env = {"LOGAD_KAFKA__BOOTSTRAP_SERVERS": broker.url, "LOGAD_KAFKA__INPUT_TOPIC": topic_name,
           "LOGAD_KAFKA__OUTPUT_TOPIC": s.kafka.output_topic, "LOGAD_KAFKA__GROUP_ID": "g4",
           "LOGAD_KAFKA__SESSION_TIMEOUT_MS": "6000", "LOGAD_KAFKA__MAX_POLL_RECORDS": "200",
           "LOGAD_REDIS__URL": redis_url, "LOGAD_REDIS__NAMESPACE": "g4", "LOGAD_SESSION__IDLE_TIMEOUT_S": "2",
           "LOGAD_HTTP__PORT": "0", "LOGAD_DETECTOR__PENDING_LEASE_S": "3"}
    half = len(lines) // 2
    produce_lines(broker.url, topic_name, lines[:half])
    first = _spawn(env, tmp_path / "w1.log")
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # kill once it has committed some, but not all, of the first half
        done = sum(v or 0 for v in committed_offsets(broker.url, "g4", topic_name).values())
        if done > 0:
            break
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    committed_at_kill = sum(v or 0 for v in committed_offsets(broker.url, "g4", topic_name).values())
    assert 0 < committed_at_kill <= half  # killed with sessions still open in Redis, the second half unread
    produce_lines(broker.url, topic_name, lines[half:])
    second = _spawn(env, tmp_path / "w2.log")
    try:
        wait_done(broker, s, redis_url, timeout=180)
    finally:
        second.send_signal(signal.SIGTERM)
        code = second.wait(60)
    assert code == 0, (tmp_path / "w2.log").read_text()[-2000:]
    events = events_of(broker, s)
    assert by_session(events) == expected
    # duplicates are allowed only as identical records
    seen: dict[str, str] = {}
    for ev in events:
        dump = ev.model_dump_json()
        assert seen.setdefault(ev.event_id, dump) == dump
