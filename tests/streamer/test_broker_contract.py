"""The contract of ``streamer.broker``, the same scenarios against both implementations (``kafka.client``) on the
embedded broker: typed records as produced, commits a new member resumes after, closing without a commit, end
offsets and high watermarks, a delivered batch, and an unreachable broker as ``BrokerUnavailable``.

What is checked at the broker is read back with kafka-python's helpers (``streamer.kafka_io``), independently of the
client under test."""

from __future__ import annotations

import time

import pytest

from logbert_core.config import Settings, load_settings
from streamer.broker import BrokerConsumer, Message, Partition
from streamer.embedded import free_port
from streamer.errors import BrokerUnavailable
from streamer.kafka_clients import BrokerClients, broker_clients
from streamer.kafka_io import committed_offsets, end_offsets, ensure_topics, produce_lines, read_all

CLIENTS = ["confluent-kafka", "kafka-python"]


class Listener:
    """Records what the group hands this member and takes back."""

    def __init__(self) -> None:
        self.assigned: list[set[Partition]] = []
        self.revoked: list[set[Partition]] = []

    def on_partitions_assigned(self, assigned: set[Partition]) -> None:
        self.assigned.append(set(assigned))

    def on_partitions_revoked(self, revoked: set[Partition]) -> None:
        self.revoked.append(set(revoked))


def settings(bootstrap: str, client: str, topic: str = "t", group: str = "g") -> Settings:
    return load_settings(None, kafka={"bootstrap_servers": bootstrap, "input_topic": topic, "group_id": group,
                                      "client": client, "session_timeout_ms": 6000, "max_poll_records": 100},
                         detector={"outage_budget_s": 60})


def consume(consumer: BrokerConsumer, n: int, timeout_s: float = 60) -> list[Message]:
    """Poll until ``n`` records came (the first poll waits for the group's first assignment)."""
    got: list[Message] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < n and time.monotonic() < deadline:
        for partition, records in consumer.poll(max(consumer.min_poll_ms, 200), 100).items():
            assert all(isinstance(r, Message) and (r.topic, r.partition) == partition for r in records)
            got += records
    return got


@pytest.fixture
def stream(broker, topic_name: str) -> tuple[str, list[str]]:
    """A two-partition topic holding 40 keyed lines: ``k<i % 4>`` -> ``line <i>``."""
    ensure_topics(broker.url, {topic_name: 2})
    lines = [f"line {i}" for i in range(40)]
    produce_lines(broker.url, topic_name, lines, key_fn=lambda line: f"k{int(str(line).split()[1]) % 4}")
    return topic_name, lines


@pytest.mark.integration
@pytest.mark.parametrize("client", CLIENTS)
def test_poll_returns_typed_records_as_produced(broker, stream, client: str) -> None:
    topic, lines = stream
    listener = Listener()
    consumer = broker_clients(settings(broker.url, client, topic, f"g-poll-{client}")).consumer(listener)
    try:
        got = consume(consumer, len(lines))
    finally:
        consumer.close()
    assert listener.assigned and listener.assigned[0] == {Partition(topic, 0), Partition(topic, 1)}
    assert all(isinstance(p, Partition) for p in listener.assigned[0])
    assert sorted((r.key, r.value) for r in got) == sorted(
        (f"k{i % 4}".encode(), f"line {i}".encode()) for i in range(len(lines)))
    for partition in (0, 1):  # each partition's records in offset order from 0, one per offset
        offsets = [r.offset for r in got if r.partition == partition]
        assert offsets == list(range(len(offsets)))
    assert all(r.timestamp > 1_600_000_000_000 for r in got)  # milliseconds since the epoch
    with pytest.raises(AttributeError):
        got[0].value = b"changed"  # type: ignore[misc]


@pytest.mark.integration
@pytest.mark.parametrize("client", CLIENTS)
def test_a_new_member_resumes_after_the_committed_offsets(broker, stream, client: str) -> None:
    topic, lines = stream
    clients = broker_clients(settings(broker.url, client, topic, f"g-resume-{client}"))
    first = clients.consumer(Listener())
    try:
        got = consume(first, len(lines))
        upto = {Partition(topic, p): 1 + max(r.offset for r in got if r.partition == p) - 5 for p in (0, 1)}
        first.commit(upto)  # all but the last 5 records of each partition
    finally:
        first.close()
    assert committed_offsets(broker.url, f"g-resume-{client}", topic) == {p.partition: o for p, o in upto.items()}
    second = clients.consumer(Listener())
    try:
        again = consume(second, 10)
        assert second.position(Partition(topic, 0)) == upto[Partition(topic, 0)] + 5
    finally:
        second.close()
    assert sorted((r.partition, r.offset) for r in again) == sorted(
        (p.partition, o + i) for p, o in upto.items() for i in range(5))


@pytest.mark.integration
@pytest.mark.parametrize("client", CLIENTS)
def test_closing_without_a_commit_leaves_the_offsets_where_they_were(broker, stream, client: str) -> None:
    topic, lines = stream
    group = f"g-close-{client}"
    consumer = broker_clients(settings(broker.url, client, topic, group)).consumer(Listener())
    try:
        consume(consumer, len(lines))
        consumer.commit({Partition(topic, 0): 3})
    finally:
        consumer.close()
    assert committed_offsets(broker.url, group, topic) == {0: 3, 1: None}
    again = broker_clients(settings(broker.url, client, topic, group)).consumer(Listener())
    try:
        consume(again, len(lines) - 3)  # read everything, commit nothing
    finally:
        again.close()
    assert committed_offsets(broker.url, group, topic) == {0: 3, 1: None}


@pytest.mark.integration
@pytest.mark.parametrize("client", CLIENTS)
def test_end_offsets_highwater_and_position(broker, stream, client: str) -> None:
    topic, lines = stream
    consumer = broker_clients(settings(broker.url, client, topic, f"g-ends-{client}")).consumer(Listener())
    partitions = [Partition(topic, 0), Partition(topic, 1)]
    try:
        got = consume(consumer, len(lines))
        ends = {p.partition: o for p, o in consumer.end_offsets(partitions, timeout_ms=5000).items()}
        read = {p: sum(r.partition == p for r in got) for p in (0, 1)}
        assert sum(read.values()) == len(lines)
        truth = end_offsets(broker.url, topic)  # fetch-confirmed (tansu's ListOffsets may trail the end)
        assert truth == read
        assert all(ends[p] <= truth[p] for p in (0, 1))  # listed ends never run past the log
        for p in partitions:
            assert consumer.highwater(p) == truth[p.partition]  # every partition had a fetch response
            assert consumer.position(p) == truth[p.partition]  # read to the end
    finally:
        consumer.close()


@pytest.mark.integration
@pytest.mark.parametrize("client", CLIENTS)
def test_the_producer_delivers_a_batch_with_keys_and_headers(broker, topic_name: str, client: str) -> None:
    ensure_topics(broker.url, {topic_name: 2})
    producer = broker_clients(settings(broker.url, client)).producer()
    sent = [(topic_name, f"s{i}".encode(), f"event {i}".encode(), [("logad.reason", b"r")] if i % 2 else None)
            for i in range(50)]
    try:
        producer.deliver(sent, timeout_s=20)  # returns once the broker acknowledged every one
        got = read_all(broker.url, topic_name, expected=50, timeout_s=20)  # so all are there at once
    finally:
        producer.close()
    assert sorted((r.key, r.value) for r in got) == sorted((k, v) for _, k, v, _ in sent)
    assert sum(1 for r in got if list(r.headers) == [("logad.reason", b"r")]) == 25


@pytest.mark.parametrize("client", CLIENTS)
def test_an_unreachable_broker_is_unavailable(client: str) -> None:
    """Nobody listens at the address: creating either client fails with ``BrokerUnavailable``, the one error the
    worker's back-off retries, within the 5 s both clients give their first connection."""
    clients: BrokerClients = broker_clients(settings(f"127.0.0.1:{free_port()}", client))
    t0 = time.monotonic()
    with pytest.raises(BrokerUnavailable):
        clients.consumer(Listener())
    assert time.monotonic() - t0 < 15
    t0 = time.monotonic()
    with pytest.raises(BrokerUnavailable):
        clients.producer()
    assert time.monotonic() - t0 < 15
