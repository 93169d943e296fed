"""Streaming semantics when the broker side fails, against real processes: a worker joining and leaving mid-stream,
the broker paused, no broker at start-up, and hostile input among real lines. (Redis faults: ``test_faults_redis.py``;
what both share: ``fault_harness.py``.)

Every scenario ends with the same anomalies as the undisturbed (offline) run, each under one event id; a duplicate
on the output topic is allowed only as an identical record.
"""

from __future__ import annotations

import json
import os
import random
import time
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
from fault_harness import IDLE, Feeder, kafka_client, stop, wait_for  # noqa: F401 (kafka_client: autouse fixture)

from streamer.embedded import free_port
from streamer.kafka_io import produce_lines, read_all

pytestmark = pytest.mark.integration


def test_worker_joins_then_another_leaves_mid_stream(broker, redis_url, topic_name, lines, expected, tmp_path):
    # A group of its own per client (the autouse kafka_client fixture sets it): the tests share one broker, and a
    # group the broker left stuck must not carry over to the next client's run
    s = settings_for(broker.url, redis_url, topic_name, f"f1-{os.environ['LOGAD_KAFKA__CLIENT']}", session=IDLE)
    make_topics(s)
    env = env_for(s, LOGAD_KAFKA__MAX_POLL_RECORDS="100", LOGAD_DETECTOR__PENDING_LEASE_S="3")
    feeder = Feeder(broker.url, topic_name, lines, seconds=8)
    w1 = spawn(env, tmp_path / "w1.log")
    feeder.start()
    wait_for(lambda: committed_total(s) > 0, 60, "the first worker to commit")
    w2 = spawn(env, tmp_path / "w2.log")  # joins mid-stream: the group rebalances
    # w1 leaves once the join has completed. Leaving while the rebalance is still under way is legal, but the
    # embedded broker (tansu) then never completes a later SyncGroup: the remaining worker rejoins forever and
    # gets no partitions. That happened whenever w2 took most of a fixed 8 s to start (a slow, loaded CPU).
    wait_for(lambda: "partitions assigned" in (tmp_path / "w2.log").read_text(errors="replace"), 60,
             "the second worker's first assignment")
    time.sleep(2)
    stop(w1, tmp_path / "w1.log")  # leaves mid-stream: its partitions move to w2
    feeder.join(60)
    assert feeder.error is None
    try:
        wait_done(s, timeout=120)
    finally:
        stop(w2, tmp_path / "w2.log")
    assert_same_anomalies(events_of(s), expected)


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
    # no fault here, so the suite's short idle timeout (2 s) will do
    s = settings_for(broker.url, redis_url, topic_name, "f6", log={"max_line_bytes": 100_000})
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
