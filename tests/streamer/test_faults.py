"""Streaming semantics under failure, against real processes: a worker joining and leaving, Redis paused, Redis
killed and restarted, the broker paused, an outage past the budget, and hostile input among real lines.

Every scenario ends with the same anomalies as the undisturbed (offline) run, each under one event id; a duplicate
on the output topic is allowed only as an identical record. The idle timeout (20 s) is longer than the 10 s faults,
as in production (30 s by default): a session is closed after it stayed idle while the detector could read.
"""

from __future__ import annotations

import json
import random
import signal
import threading
import time
import urllib.error
import urllib.request
from collections import Counter

import pytest
from e2e_harness import (
    assert_same_anomalies,
    committed_total,
    env_for,
    events_of,
    make_topics,
    run_until_done,
    settings_for,
    spawn,
    wait_done,
)

from streamer.embedded import free_port, start_redis
from streamer.kafka_io import produce_lines, read_all

IDLE = {"idle_timeout_s": 20.0}

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True, params=["confluent-kafka", "kafka-python"])
def kafka_client(request, monkeypatch) -> str:
    """Every scenario with each consumer the detector can use (``kafka.client``); workers read it from the
    environment, in-process and spawned alike."""
    monkeypatch.setenv("LOGAD_KAFKA__CLIENT", request.param)
    return request.param


class Feeder(threading.Thread):
    """Produces the lines in chunks at a steady pace, so a fault lands mid-stream."""

    def __init__(self, bootstrap: str, topic: str, lines: list, seconds: float, chunks: int = 20) -> None:
        super().__init__(daemon=True)
        self.args = (bootstrap, topic, lines, seconds, chunks)
        self.error: BaseException | None = None

    def run(self) -> None:
        bootstrap, topic, lines, seconds, chunks = self.args
        size = -(-len(lines) // chunks)
        try:
            for i in range(0, len(lines), size):
                produce_lines(bootstrap, topic, lines[i:i + size], timeout_s=60)
                time.sleep(seconds / chunks)
        except BaseException as exc:  # reported by the test
            self.error = exc


def ready_status(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def stop(proc, log_path) -> None:
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(60)
    assert code == 0, log_path.read_text()[-3000:]


def test_worker_joins_then_another_leaves_mid_stream(broker, redis_url, topic_name, lines, expected, tmp_path):
    s = settings_for(broker.url, redis_url, topic_name, "f1", session=IDLE)
    make_topics(s)
    env = env_for(s, LOGAD_KAFKA__MAX_POLL_RECORDS="100", LOGAD_DETECTOR__PENDING_LEASE_S="3")
    feeder = Feeder(broker.url, topic_name, lines, seconds=8)
    w1 = spawn(env, tmp_path / "w1.log")
    feeder.start()
    wait_for(lambda: committed_total(s) > 0, 60, "the first worker to commit")
    w2 = spawn(env, tmp_path / "w2.log")  # joins mid-stream: the group rebalances
    time.sleep(8)
    stop(w1, tmp_path / "w1.log")  # leaves mid-stream: its partitions move to w2
    feeder.join(60)
    assert feeder.error is None
    try:
        wait_done(s, timeout=120)
    finally:
        stop(w2, tmp_path / "w2.log")
    assert_same_anomalies(events_of(s), expected)


def test_redis_paused_10s_not_ready_no_commit_then_resumes(broker, redis_proc, redis_url, topic_name, lines,
                                                          expected, tmp_path):
    s = settings_for(broker.url, redis_url, topic_name, "f2", session=IDLE)
    make_topics(s)
    port = free_port()
    env = env_for(s, LOGAD_HTTP__PORT=str(port), LOGAD_KAFKA__MAX_POLL_RECORDS="100")
    w = spawn(env, tmp_path / "w.log")
    feeder = Feeder(broker.url, topic_name, lines, seconds=8)
    feeder.start()
    wait_for(lambda: committed_total(s) > 0 and ready_status(port) == 200, 60, "a committing, ready worker")
    redis_proc.pause()
    try:
        time.sleep(3)
        before = committed_total(s)
        statuses = {ready_status(port) for _ in range(3)}
        time.sleep(6)
        assert committed_total(s) == before  # nothing committed while Redis cannot store the batch's effects
    finally:
        redis_proc.resume()
    assert statuses == {503}
    feeder.join(60)
    assert feeder.error is None
    wait_done(s, timeout=120)
    assert ready_status(port) == 200
    stop(w, tmp_path / "w.log")
    assert "retrying with back-off" in (tmp_path / "w.log").read_text()
    assert_same_anomalies(events_of(s), expected)


def test_redis_killed_and_restarted_with_its_aof(broker, topic_name, lines, expected, tmp_path):
    rds = start_redis(persistent_dir=tmp_path / "redis")
    try:
        s = settings_for(broker.url, rds.url, topic_name, "f3", session=IDLE)
        make_topics(s)
        w = spawn(env_for(s, LOGAD_KAFKA__MAX_POLL_RECORDS="100"), tmp_path / "w.log")
        feeder = Feeder(broker.url, topic_name, lines, seconds=8)
        feeder.start()
        wait_for(lambda: committed_total(s) > 0, 60, "the worker to commit")
        rds.kill()
        time.sleep(10)
        rds.restart()
        feeder.join(60)
        assert feeder.error is None
        wait_done(s, timeout=120)
        stop(w, tmp_path / "w.log")
        assert_same_anomalies(events_of(s), expected)
    finally:
        rds.stop()


def test_broker_paused_10s(broker, redis_url, topic_name, lines, expected, tmp_path):
    s = settings_for(broker.url, redis_url, topic_name, "f4", session=IDLE)
    make_topics(s)
    w = spawn(env_for(s, LOGAD_KAFKA__MAX_POLL_RECORDS="100"), tmp_path / "w.log")
    feeder = Feeder(broker.url, topic_name, lines, seconds=8)
    feeder.start()
    wait_for(lambda: committed_total(s) > 0, 60, "the worker to commit")
    broker.pause()
    time.sleep(10)
    broker.resume()
    feeder.join(90)
    assert feeder.error is None
    wait_done(s, timeout=120)
    stop(w, tmp_path / "w.log")
    assert_same_anomalies(events_of(s), expected)


def test_outage_past_budget_exits_3_without_committing(broker, topic_name, lines, tmp_path):
    rds = start_redis()
    s = settings_for(broker.url, rds.url, topic_name, "f5", session=IDLE)
    make_topics(s)
    w = spawn(env_for(s, LOGAD_DETECTOR__OUTAGE_BUDGET_S="3"), tmp_path / "w.log")
    produce_lines(broker.url, topic_name, lines[:1000])
    wait_for(lambda: committed_total(s) == 1000, 60, "the first 1000 lines to be committed")
    rds.kill()
    produce_lines(broker.url, topic_name, lines[1000:2000])
    code = w.wait(60)
    log = (tmp_path / "w.log").read_text()
    assert code == 3, log[-2000:]
    assert "unavailable" in log and "outage_budget_s" in log and "Traceback" not in log
    assert committed_total(s) == 1000  # the batch that could not be stored was not committed
    rds.stop()


def test_no_broker_at_start_up_exits_3_past_the_budget(redis_url, tmp_path):
    s = settings_for(f"127.0.0.1:{free_port()}", redis_url, "t.nobroker", "f7")
    w = spawn(env_for(s, LOGAD_DETECTOR__OUTAGE_BUDGET_S="4"), tmp_path / "w.log")
    code = w.wait(90)
    log = (tmp_path / "w.log").read_text()
    assert code == 3, log[-2000:]
    assert "broker connect" in log and "outage_budget_s" in log and "Traceback" not in log


HOSTILE_KINDS = {
    "empty": lambda r: b"",
    "invalid_utf8": lambda r: b"081109 203615 148 INFO x: blk_1 \xff\xfe",
    "too_large": lambda r: b"081109 203615 148 INFO x: blk_1 " + b"a" * 150_000,  # limit set to 100 kB below
    "invalid_json": lambda r: b'{"log": "unterminated',
    "json_missing_field": lambda r: json.dumps({"msg": "x"}).encode(),
    "json_wrong_type": lambda r: json.dumps({"log": [1, 2]}).encode(),
    "control_characters": lambda r: "081109 203615 148 INFO x: blk_1 \u202e\u0007".encode(),
    "format_mismatch": lambda r: b"random garbage %d" % r.randrange(10**6),
    "no_session_key": lambda r: b"081109 203615 148 INFO dfs.DataNode: no block id",
}


def test_200_hostile_messages_among_real_lines(broker, redis_url, topic_name, lines, bundle, expected):
    s = settings_for(broker.url, redis_url, topic_name, "f6", log={"max_line_bytes": 100_000}, session=IDLE)
    make_topics(s)
    rnd = random.Random(7)
    kinds = [rnd.choice(sorted(HOSTILE_KINDS)) for _ in range(200)]
    values: list = [ln.encode() for ln in lines]
    for kind in kinds:
        values.insert(rnd.randrange(len(values) + 1), HOSTILE_KINDS[kind](rnd))
    produce_lines(broker.url, topic_name, values, timeout_s=60)
    worker = run_until_done(s, bundle)  # in-process: its counters are readable afterwards
    assert worker.stats["rejected"] == 200 and worker.stats["consumed"] == len(values)
    dlq = read_all(broker.url, s.kafka.dlq, expected=200, timeout_s=20)
    got = Counter(dict(r.headers)["logad.reason"].decode() for r in dlq)
    assert got == Counter(kinds)
    assert_same_anomalies(events_of(s), expected)
