"""Managed redis-server / tansu processes and the kafka_io helpers, against the real servers."""

from __future__ import annotations

import json
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

from streamer import embedded
from streamer.embedded import EmbeddedProcessError, ManagedProcess, free_port, start_redis
from streamer.kafka_io import (
    committed_offsets,
    end_offsets,
    ensure_topics,
    make_consumer,
    make_producer,
    produce_lines,
    read_all,
)

SESSION_MS = 6000  # tansu: a fresh group join takes about session_timeout_ms / 2


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)


def _poll_until(consumer: KafkaConsumer, want: int, timeout_s: float = 30) -> list[bytes]:
    """Values polled until ``want`` arrived (or the timeout); commits nothing."""
    got: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=200).values():
            got.extend(r.value for r in batch)
    return got


def _wait_for(condition: Callable[[], bool], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)


def _wait_assigned(consumer: KafkaConsumer, timeout_s: float = 20) -> set[int]:
    deadline = time.monotonic() + timeout_s
    while not consumer.assignment() and time.monotonic() < deadline:
        consumer.poll(timeout_ms=100)
    return {tp.partition for tp in consumer.assignment()}


# -- processes without a server ------------------------------------------------------------------------------------

def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_missing_redis_server_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded.shutil, "which", lambda name: None)
    with pytest.raises(EmbeddedProcessError, match="apt-get install -y redis-server"):
        start_redis()


def _python(name: str, code: str, tmp_path: Path, ready: Callable[[ManagedProcess], bool]) -> ManagedProcess:
    return ManagedProcess(name, [sys.executable, "-c", code], 0, "none", ready, work_dir=tmp_path, start_timeout_s=5)


def test_a_process_that_exits_while_starting_is_released_with_its_log(tmp_path: Path) -> None:
    proc = _python("quitter", "print('bye', flush=True); raise SystemExit(3)", tmp_path, lambda p: False)
    with pytest.raises(EmbeddedProcessError, match=r"(?s)quitter exited with code 3 .*quitter\.log:.*bye"):
        proc.start()
    assert not proc.running and proc.returncode == 3
    assert all(run.name != "quitter" for run in embedded._live)  # nothing left for the exit hook
    with pytest.raises(EmbeddedProcessError, match="cannot pause quitter: not running"):
        proc.pause()


def test_paused_stop_kill_and_restart_keep_one_log(tmp_path: Path) -> None:
    proc = _python("sleeper", "import time; time.sleep(60)", tmp_path, lambda p: True)
    with proc:
        proc.pause()
        assert proc.paused and proc.running
        proc.stop(timeout=5)  # resumed first: a stopped process would hold SIGTERM pending
    assert not proc.running and not proc.paused and proc.returncode == -signal.SIGTERM
    proc.restart()
    first = proc.pid
    proc.kill()
    assert proc.returncode == -signal.SIGKILL and proc.pid == first
    assert proc.log_path.read_text().count(" start: ") == 2  # appended, not replaced
    assert all(run.name != "sleeper" for run in embedded._live)


# -- redis ---------------------------------------------------------------------------------------------------------

@pytest.mark.integration
def test_redis_ping_pause_resume(redis_proc: ManagedProcess, redis_url: str) -> None:
    assert redis_url == f"redis://127.0.0.1:{redis_proc.port}/0" and redis_proc.port != 6379
    client = _client(redis_url)
    assert client.ping()
    client.set("k", "v")
    redis_proc.pause()
    try:
        assert redis_proc.paused
        with pytest.raises(redis.exceptions.TimeoutError):
            _client(redis_url).ping()
    finally:
        redis_proc.resume()
    assert _client(redis_url).get("k") == b"v"


@pytest.mark.integration
def test_redis_url_fixture_starts_empty(redis_url: str) -> None:
    assert _client(redis_url).dbsize() == 0


@pytest.mark.integration
def test_redis_restart_same_port_keeps_data_only_when_persistent(tmp_path: Path) -> None:
    with start_redis(persistent_dir=tmp_path / "aof") as durable, start_redis() as volatile:
        for proc in (durable, volatile):
            _client(proc.url).set("session:1", "kept")
        ports = (durable.port, volatile.port)
        durable.kill()  # a crash: only the fsynced append-only file survives
        volatile.kill()
        assert not durable.running
        durable.restart()
        volatile.restart()
        assert (durable.port, volatile.port) == ports
        assert _client(durable.url).get("session:1") == b"kept"
        assert _client(volatile.url).get("session:1") is None
    assert not durable.running and not volatile.running
    assert any((tmp_path / "aof").iterdir())


@pytest.mark.integration
def test_start_failure_names_the_log_file() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(EmbeddedProcessError, match=r"exited with code .* log .*redis\.log"):
            start_redis(port=port)


# -- broker --------------------------------------------------------------------------------------------------------

@pytest.mark.integration
def test_produce_consume_commit_resume(broker: ManagedProcess, topic_name: str) -> None:
    bootstrap, group = broker.url, f"g.{topic_name}"
    assert ensure_topics(bootstrap, {topic_name: 4}) == [topic_name]
    assert ensure_topics(bootstrap, {topic_name: 4}) == []  # idempotent

    raw = [f"081109 203615 148 INFO dfs.DataNode: line {i} blk_{i % 7}" for i in range(100)]
    assert produce_lines(bootstrap, topic_name, raw) == 100
    assert produce_lines(bootstrap, topic_name, raw, json_field="log") == 100

    consumer = make_consumer(bootstrap, topic_name, group, session_timeout_ms=SESSION_MS)
    values = _poll_until(consumer, 200)
    assert len(values) == 200
    as_json = [json.loads(v) for v in values if v.startswith(b"{")]
    assert sorted(v.decode() for v in values if not v.startswith(b"{")) == sorted(raw)
    assert sorted(d["log"] for d in as_json) == sorted(raw)
    assert all(isinstance(d["@timestamp"], float) for d in as_json)

    # explicit offsets, all three OffsetAndMetadata fields (kafka-python >= 2.1: offset, metadata, leader_epoch)
    consumer.commit({tp: OffsetAndMetadata(consumer.position(tp), "", -1) for tp in consumer.assignment()})
    consumer.close()

    committed, ends = committed_offsets(bootstrap, group, topic_name), end_offsets(bootstrap, topic_name)
    assert sum(c or 0 for c in committed.values()) == 200
    assert committed == ends and len(ends) == 4
    assert all(n > 0 for n in ends.values())  # round-robin: every partition got lines
    assert committed_offsets(bootstrap, "g.never-committed", topic_name) == {p: None for p in range(4)}

    everything = read_all(bootstrap, topic_name)
    assert sorted(r.value for r in everything) == sorted(values)
    assert len(read_all(bootstrap, topic_name, expected=200)) >= 200

    # a new member of the same group resumes after the committed offsets: only the new lines arrive
    new = [f"new line {i}" for i in range(20)]
    produce_lines(bootstrap, topic_name, new)
    second = make_consumer(bootstrap, topic_name, group, session_timeout_ms=SESSION_MS)
    got = _poll_until(second, 20)
    got += _poll_until(second, 1, timeout_s=1)  # nothing else may follow
    assert sorted(v.decode() for v in got) == sorted(new)
    second.commit()
    second.close()
    assert sum(c or 0 for c in committed_offsets(bootstrap, group, topic_name).values()) == 220


@pytest.mark.integration
def test_end_offsets_count_every_record_of_a_batch(broker: ManagedProcess, topic_name: str) -> None:
    # tansu's ListOffsets(LATEST) says 1 here (last batch base + 1); end_offsets confirms with a fetch
    ensure_topics(broker.url, {topic_name: 2})
    assert end_offsets(broker.url, topic_name) == {0: 0, 1: 0}
    assert produce_lines(broker.url, topic_name, [f"l{i}" for i in range(10)], partition=0) == 10
    assert end_offsets(broker.url, topic_name) == {0: 10, 1: 0}
    assert [r.offset for r in read_all(broker.url, topic_name)] == list(range(10))
    assert read_all(broker.url, "t.does-not-exist", timeout_s=1) == []


class _Member(threading.Thread):
    """Polls one group member in its own thread, the way a real process would, and records its assignment.

    Members polled in turn from one thread would sit outside poll() half the time, and kafka-python 3.0.12 drops a
    JoinGroup/SyncGroup result that completes while its consumer is outside poll() (then joins again).
    """

    def __init__(self, consumer: KafkaConsumer) -> None:
        super().__init__(daemon=True)
        self.consumer, self.partitions, self.stop = consumer, frozenset[int](), threading.Event()

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.consumer.poll(timeout_ms=500)
                self.partitions = frozenset(tp.partition for tp in self.consumer.assignment())
        finally:
            self.consumer.close()


@pytest.mark.integration
def test_two_members_split_the_partitions(broker: ManagedProcess, topic_name: str) -> None:
    ensure_topics(broker.url, {topic_name: 4})
    group = f"g.{topic_name}"
    members = [_Member(make_consumer(broker.url, topic_name, group, session_timeout_ms=SESSION_MS))]
    try:
        members[0].start()
        _wait_for(lambda: members[0].partitions == {0, 1, 2, 3})
        members.append(_Member(make_consumer(broker.url, topic_name, group, session_timeout_ms=SESSION_MS)))
        members[1].start()
        _wait_for(lambda: bool(members[1].partitions) and len(members[0].partitions | members[1].partitions) == 4
                  and not members[0].partitions & members[1].partitions)
        a, b = members[0].partitions, members[1].partitions
        assert a and b and not a & b and a | b == {0, 1, 2, 3}
    finally:
        for m in members:
            m.stop.set()
        for m in members:
            m.join(timeout=10)


class _Recorder(ConsumerRebalanceListener):
    def __init__(self) -> None:
        self.assigned: list[set[int]] = []

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        pass

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.assigned.append({tp.partition for tp in assigned})


@pytest.mark.integration
def test_clients_survive_a_paused_broker(broker: ManagedProcess, topic_name: str) -> None:
    ensure_topics(broker.url, {topic_name: 2})
    group, listener = f"g.{topic_name}", _Recorder()
    consumer = make_consumer(broker.url, topic_name, group, session_timeout_ms=SESSION_MS, listener=listener)
    producer = make_producer(broker.url)
    try:
        assert _wait_assigned(consumer) == {0, 1}
        assert listener.assigned == [{0, 1}]  # make_consumer passed the listener on
        for i in range(10):
            producer.send(topic_name, f"before {i}".encode())
        producer.flush()
        assert len(_poll_until(consumer, 10)) == 10

        # longer than the session timeout. tansu keeps the member (no rebalance, the commit below succeeds); a real
        # Kafka cluster would likely expire it, so this pins the dev broker's behaviour, not a Kafka guarantee.
        broker.pause()
        try:
            futures = [producer.send(topic_name, f"during {i}".encode()) for i in range(10)]
            paused_until = time.monotonic() + SESSION_MS / 1000 + 1
            while time.monotonic() < paused_until:
                assert consumer.poll(timeout_ms=200) == {}
        finally:
            broker.resume()

        for f in futures:
            f.get(timeout=30)
        assert sorted(_poll_until(consumer, 10)) == sorted(f"during {i}".encode() for i in range(10))
        consumer.commit()
    finally:
        producer.close(timeout=5)
        consumer.close()
    assert sum(c or 0 for c in committed_offsets(broker.url, group, topic_name).values()) == 20
