"""Streaming semantics when Redis fails, against real processes: Redis paused (the worker turns not ready and
commits nothing), Redis killed and restarted from its append-only file, and an outage past the budget (exit 3,
nothing committed). (Broker faults and hostile input: ``test_faults_kafka.py``; what both share:
``fault_harness.py``.)

Every scenario ends with the same anomalies as the undisturbed (offline) run, each under one event id; a duplicate
on the output topic is allowed only as an identical record.
"""

from __future__ import annotations

import time

import pytest
from e2e_harness import (
    assert_same_anomalies,
    committed_total,
    env_for,
    events_of,
    http_status,
    make_topics,
    settings_for,
    spawn,
    wait_done,
)
from fault_harness import IDLE, Feeder, kafka_client, stop, wait_for  # noqa: F401 (kafka_client: autouse fixture)

from streamer.embedded import free_port, start_redis
from streamer.kafka_io import produce_lines

pytestmark = pytest.mark.integration


def test_redis_paused_10s_not_ready_no_commit_then_resumes(broker, redis_proc, redis_url, topic_name, lines,
                                                          expected, tmp_path):
    s = settings_for(broker.url, redis_url, topic_name, "f2", session=IDLE)
    make_topics(s)
    port = free_port()
    env = env_for(s, LOGAD_HTTP__PORT=str(port), LOGAD_KAFKA__MAX_POLL_RECORDS="100")
    w = spawn(env, tmp_path / "w.log")
    feeder = Feeder(broker.url, topic_name, lines, seconds=8)
    feeder.start()
    wait_for(lambda: committed_total(s) > 0 and http_status(port, "/ready") == 200, 60, "a committing, ready worker")
    redis_proc.pause()
    try:
        time.sleep(3)
        before = committed_total(s)
        statuses = {http_status(port, "/ready") for _ in range(3)}
        time.sleep(6)
        assert committed_total(s) == before  # nothing committed while Redis cannot store the batch's effects
    finally:
        redis_proc.resume()
    assert statuses == {503}
    feeder.join(60)
    assert feeder.error is None
    wait_done(s, timeout=120)
    assert http_status(port, "/ready") == 200
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
