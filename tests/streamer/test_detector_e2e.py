"""The detector end to end against a real tansu broker and a real redis-server, on real held-out HDFS lines.

Each test compares what arrives on the output topic with the offline (batch) decision of the same bundle on the same
lines: streaming must neither lose nor invent anomalies, whatever the worker count, restarts or message format.
"""

from __future__ import annotations

import signal
import time

import pytest
from e2e_harness import (
    assert_same_anomalies,
    by_session,
    committed_total,
    env_for,
    events_of,
    make_topics,
    run_until_done,
    settings_for,
    spawn,
    start_worker,
    wait_done,
)
from prometheus_client import REGISTRY

from streamer.kafka_io import produce_lines, read_all

pytestmark = pytest.mark.integration


def test_lines_in_events_out_match_offline(broker, redis_url, topic_name, lines, bundle, expected):
    s = settings_for(broker.url, redis_url, topic_name, "g1")
    make_topics(s)
    produce_lines(broker.url, topic_name, lines)
    run_until_done(s, bundle)
    events = events_of(s)
    assert by_session(events) == expected
    assert len(events) == len({e.event_id for e in events})  # an undisturbed run publishes each event once
    ev = events[0]
    assert ev.session_id.startswith("blk_") and ev.model_version == bundle.version
    assert ev.explanation.templates and ev.explanation.summary
    assert ev.window.line_count == len(ev.explanation.templates)
    assert all(p.expected for p in ev.explanation.templates if p.unexpected and p.seen_in_training)


def test_fluent_bit_json_and_poison_messages(broker, redis_url, topic_name, lines, bundle, expected):
    s = settings_for(broker.url, redis_url, topic_name, "g2")
    make_topics(s)
    produce_lines(broker.url, topic_name, lines, json_field="log")
    poison = [b"", b"\xff\xfe", b'{"log": 5}', b'{"nolog": "x"}', "bidi \u202e".encode(), b"not an hdfs line",
              b"081109 203615 148 INFO dfs.DataNode: no block here"]
    produce_lines(broker.url, topic_name, poison)
    run_until_done(s, bundle)
    assert by_session(events_of(s)) == expected
    dlq = read_all(broker.url, s.kafka.dlq, expected=len(poison), timeout_s=15)
    assert len(dlq) == len(poison)
    reasons = sorted(dict(r.headers)["logad.reason"].decode() for r in dlq)
    assert reasons == sorted(["empty", "invalid_utf8", "json_wrong_type", "json_missing_field",
                              "control_characters", "format_mismatch", "no_session_key"])
    for r in dlq:
        h = dict(r.headers)
        assert h["logad.source.topic"].decode() == topic_name and int(h["logad.source.offset"]) >= 0


def test_two_workers_flag_each_anomaly_once(broker, redis_url, topic_name, lines, bundle, expected):
    s = settings_for(broker.url, redis_url, topic_name, "g3")
    make_topics(s)
    produce_lines(broker.url, topic_name, lines)  # round-robin: every session's lines spread over 4 partitions
    w1, t1 = start_worker(s, bundle)
    w2, t2 = start_worker(s, bundle)
    try:
        wait_done(s)
    finally:
        for w in (w1, w2):
            w.stop_event.set()
        t1.join(30)
        t2.join(30)
    events = events_of(s)
    assert by_session(events) == expected
    assert len(events) == len({e.event_id for e in events})
    assert w1.stats["consumed"] > 0 and w2.stats["consumed"] > 0  # both took part


def test_kill_9_and_restart_resume_without_loss_or_new_ids(broker, redis_url, topic_name, lines, expected,
                                                          tmp_path):
    s = settings_for(broker.url, redis_url, topic_name, "g4")
    make_topics(s)
    env = env_for(s, LOGAD_KAFKA__MAX_POLL_RECORDS="200", LOGAD_DETECTOR__PENDING_LEASE_S="3")
    half = len(lines) // 2
    produce_lines(broker.url, topic_name, lines[:half])
    first = spawn(env, tmp_path / "w1.log")
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and committed_total(s) == 0:
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    assert 0 < committed_total(s) <= half  # killed with sessions still open in Redis, the second half unread
    produce_lines(broker.url, topic_name, lines[half:])
    second = spawn(env, tmp_path / "w2.log")
    try:
        wait_done(s, timeout=180)
    finally:
        second.send_signal(signal.SIGTERM)
        code = second.wait(60)
    assert code == 0, (tmp_path / "w2.log").read_text()[-2000:]
    assert_same_anomalies(events_of(s), expected)


def test_a_stop_is_called_only_once_the_log_went_on_without_the_session(broker, redis_url, topic_name, bundle):
    """premature_end calls a session stopped only where the log went on without it for the rest horizon the
    bundle learned (300 s for HDFS). Block A stops after its allocation and one receive, ten minutes before the
    input ends: flagged at once. Blocks B and C stop in the same state within seconds of the end: nobody can tell
    yet whether they stopped or the input did, so their verdicts are held. Then the log goes on: B comes back (its
    held verdict is dropped), C does not, and once the log is 5 minutes past C's last line, C is flagged."""
    assert bundle.rest is not None and bundle.rest.quiet_s == 300

    def start(blk: str, hhmmss: str) -> list[str]:
        return [f"081110 {hhmmss} 31 INFO dfs.FSNamesystem: BLOCK* NameSystem.allocateBlock: "
                f"/user/root/rand3/_temporary/_task_200811101024_0005_m_001918_0/part-01918. {blk}",
                f"081110 {hhmmss} 15663 INFO dfs.DataNode$DataXceiver: Receiving block {blk} "
                "src: /10.251.38.197:40316 dest: /10.251.38.197:50010"]

    def sample(name: str) -> float:
        return REGISTRY.get_sample_value(f"logad_premature_end_{name}_total") or 0.0

    a, b, c, d = ("blk_-2815656842321674713", "blk_1100000000000000001", "blk_1100000000000000002",
                  "blk_1100000000000000003")
    s = settings_for(broker.url, redis_url, topic_name, "g-quiet")
    make_topics(s)
    produce_lines(broker.url, topic_name, start(a, "215504") + start(b, "220454") + start(c, "220504"))
    before = {k: sample(k) for k in ("held", "dropped", "confirmed")}
    worker, thread = start_worker(s, bundle)
    try:
        wait_done(s)
        reasons = {e.session_id: set(e.explanation.reasons) for e in events_of(s)}
        assert "premature_end" in reasons.get(a, set())
        assert b not in reasons and c not in reasons
        assert sample("held") - before["held"] == 2  # B and C
        deadline = time.monotonic() + 10  # the gauge is set by the next sweep
        while REGISTRY.get_sample_value("logad_premature_end_waiting") != 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert REGISTRY.get_sample_value("logad_premature_end_waiting") == 2
        assert REGISTRY.get_sample_value("logad_watermark_timestamp_seconds") == worker.watermark
        assert worker.watermark == s.line_format().parse(start(c, "220504")[0]).timestamp  # the input's last line

        # B writes again at 22:07 (its held stop was wrong); an unrelated block moves the log on to 22:11
        back = (f"081110 220700 15663 INFO dfs.DataNode$DataXceiver: Receiving block {b} "
                "src: /10.251.38.197:40317 dest: /10.251.38.197:50010")
        produce_lines(broker.url, topic_name, [back] + start(d, "221100")[:1])
        deadline = time.monotonic() + 60
        while c not in reasons and time.monotonic() < deadline:
            time.sleep(0.5)
            reasons = {e.session_id: set(e.explanation.reasons) for e in events_of(s)}
        assert reasons.get(c) == {"premature_end"}
        assert b not in reasons  # its new closing window is 4 minutes old at the log's end: held again
        assert sample("dropped") - before["dropped"] == 1 and sample("confirmed") - before["confirmed"] == 1
        (event,) = [e for e in events_of(s) if e.session_id == c]
        assert "normal training sessions reached this point" in event.explanation.summary
    finally:
        worker.stop_event.set()
        thread.join(30)


def test_a_worker_that_takes_over_with_nothing_to_read_judges_by_the_groups_watermark(broker, redis_url, topic_name,
                                                                                      bundle):
    """Worker 1 reads every line and leaves before any session is idle; worker 2 takes the partitions over with
    nothing left to read, so its own watermark knows nothing. It closes the sessions and judges their stops by how
    far the group's log went (worker 1's report): block A, quiet for ten minutes before the log's end, is flagged."""
    a = "blk_-2815656842321674713"
    lines = [f"081110 215504 31 INFO dfs.FSNamesystem: BLOCK* NameSystem.allocateBlock: /user/root/x/part-01918. {a}",
             f"081110 215504 15663 INFO dfs.DataNode$DataXceiver: Receiving block {a} src: /10.251.38.197:40316 "
             "dest: /10.251.38.197:50010",
             "081110 220504 31 INFO dfs.FSNamesystem: BLOCK* NameSystem.allocateBlock: /user/root/x/part-01919. "
             "blk_1100000000000000009"]
    first = settings_for(broker.url, redis_url, topic_name, "g-handover", session={"idle_timeout_s": 600.0})
    make_topics(first)
    produce_lines(broker.url, topic_name, lines)
    worker, thread = start_worker(first, bundle)
    try:
        deadline = time.monotonic() + 60
        while committed_total(first) < len(lines) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert committed_total(first) == len(lines)
        time.sleep(1.0)  # a catch-up check after the last batch reports the watermark
    finally:
        worker.stop_event.set()
        thread.join(30)
    assert not events_of(first)  # nothing closed yet (idle timeout 600 s)
    second = settings_for(broker.url, redis_url, topic_name, "g-handover")  # idle timeout 2 s
    run_until_done(second, bundle)
    reasons = {e.session_id: set(e.explanation.reasons) for e in events_of(second)}
    assert "premature_end" in reasons.get(a, set())
