"""Small typed helpers over kafka-python: topics, consumers, producers, and reads/offset checks for demos and tests.

Standard Kafka APIs only, so everything here runs the same against Apache Kafka, Redpanda and tansu. Every helper
takes ``**client_kwargs`` (security settings, e.g. ``KafkaSection.client_kwargs()``) passed through to kafka-python.

Broker quirk handled here: tansu 0.6 answers ListOffsets(LATEST) with "base offset of the last record batch + 1",
which is below the real end of the log whenever the last batch holds more than one record. Fetch responses carry the
correct high watermark, so ``end_offsets`` confirms with a fetch, and ``read_all`` stops on the fetched high watermark.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError, TopicAlreadyExistsError

from streamer.broker import heartbeat_interval_ms
from streamer.errors import KafkaSettingsError, Unavailable

log = logging.getLogger(__name__)

__all__ = ["ConsumerRecord", "KafkaIOError", "KafkaSettingsError", "committed_offsets", "end_offsets",
           "ensure_topics", "heartbeat_interval_ms", "make_consumer", "make_producer", "produce_file", "produce_lines",
           "producer_config", "read_all"]

TIMESTAMP_KEY = "@timestamp"  # Fluent Bit's kafka output: default timestamp_key for format json


class KafkaIOError(Unavailable):
    """A helper could not do its job against the broker; wraps the kafka-python error where there is one."""


def _admin(bootstrap: str, timeout_s: float, client_kwargs: Mapping[str, Any]) -> KafkaAdminClient:
    try:
        return KafkaAdminClient(**{"bootstrap_servers": bootstrap, **client_kwargs,
                                   "request_timeout_ms": int(timeout_s * 1000)})
    except KafkaError as exc:
        raise KafkaIOError(f"cannot reach the Kafka broker at {bootstrap}: {exc}") from exc


def _plain_consumer(bootstrap: str, client_kwargs: Mapping[str, Any], **overrides: Any) -> KafkaConsumer:
    """A group-less consumer (manual assignment, commits nothing) that never auto-creates the topic it reads."""
    config: dict[str, Any] = dict(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                  allow_auto_create_topics=False, fetch_max_wait_ms=100)
    config.update(client_kwargs)
    config.update(overrides)
    return KafkaConsumer(**config)


def _partitions(consumer: KafkaConsumer, topic: str, timeout_s: float) -> list[TopicPartition]:
    """The topic's partitions, waiting up to ``timeout_s`` for metadata to show it; [] if it does not exist."""
    deadline = time.monotonic() + timeout_s
    while True:
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return [TopicPartition(topic, p) for p in sorted(parts)]
        if time.monotonic() > deadline:
            return []
        time.sleep(0.1)


# -- topics --------------------------------------------------------------------------------------------------------

def ensure_topics(bootstrap: str, topics: Mapping[str, int], timeout_s: float = 30, *, replication_factor: int = 1,
                  **client_kwargs: Any) -> list[str]:
    """Create each topic (name -> partition count) that does not exist yet; returns the names created.

    An existing topic is left as it is, even with another partition count (logged as a warning). Returns once the
    created topics show up in metadata with a leader for every partition.
    """
    admin = _admin(bootstrap, timeout_s, client_kwargs)
    created: list[str] = []
    try:
        existing = set(admin.list_topics())
        for name, partitions in topics.items():
            if name in existing:
                continue
            try:  # one request per topic: a batch that fails on one name leaves the others unknown
                admin.create_topics([NewTopic(name, partitions, replication_factor)],
                                    timeout_ms=int(timeout_s * 1000))
                created.append(name)
            except TopicAlreadyExistsError:  # created by someone else since list_topics()
                pass
        if created:
            admin.wait_for_topics(created, timeout_ms=int(timeout_s * 1000))
        for info in admin.describe_topics(list(topics)):
            name = info.get("name", info.get("topic"))  # kafka-python 3.x says "name", 2.x "topic"
            if name in topics and len(info["partitions"]) != topics[name]:
                log.warning("topic %s has %d partitions, not the %d asked for; left as it is",
                            name, len(info["partitions"]), topics[name])
    except KafkaError as exc:
        raise KafkaIOError(f"could not create topics {sorted(topics)} on {bootstrap}: {exc}") from exc
    finally:
        admin.close()
    return created


# -- clients -------------------------------------------------------------------------------------------------------

def make_consumer(bootstrap: str, topic: str, group_id: str, *, session_timeout_ms: int = 10_000,
                  max_poll_records: int = 500, listener: ConsumerRebalanceListener | None = None,
                  **kwargs: Any) -> KafkaConsumer:
    """A group consumer subscribed to ``topic``: manual commits, starts from the earliest offset, bytes values.

    ``kwargs`` go to ``KafkaConsumer`` and override the defaults here (e.g. ``heartbeat_interval_ms``).
    """
    config: dict[str, Any] = dict(
        bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False, auto_offset_reset="earliest",
        session_timeout_ms=session_timeout_ms, heartbeat_interval_ms=heartbeat_interval_ms(session_timeout_ms),
        max_poll_records=max_poll_records)
    config.update(kwargs)
    try:
        consumer = KafkaConsumer(**config)
    except KafkaError as exc:
        raise KafkaIOError(f"cannot create a consumer for {topic} on {bootstrap}: {exc}") from exc
    if listener is not None:
        consumer.subscribe([topic], listener=listener)
    else:
        consumer.subscribe([topic])
    return consumer


def producer_config(timeout_s: float = 60.0) -> dict[str, Any]:
    """Every kafka-python producer's settings (``streamer.rdkafka.rdkafka_producer_config`` gives librdkafka the
    same): ``acks="all"``, a short linger to form batches, and retried sends given up after ``timeout_s``.

    Retries are kafka-python's (unbounded, with idempotence on, which keeps retries from duplicating or reordering),
    capped in time by ``delivery_timeout_ms``; records up to its ``max_request_size`` (1 MiB)."""
    delivery_ms = max(1006, int(timeout_s * 1000))
    # kafka-python requires delivery_timeout_ms > linger_ms + request_timeout_ms (30 s by default)
    return {"acks": "all", "linger_ms": 5, "retry_backoff_ms": 200, "delivery_timeout_ms": delivery_ms,
            "request_timeout_ms": min(30_000, delivery_ms - 6)}


def make_producer(bootstrap: str, **kwargs: Any) -> KafkaProducer:
    """A producer for bytes keys and values (``producer_config``); ``kwargs`` override its defaults."""
    config: dict[str, Any] = {"bootstrap_servers": bootstrap, **producer_config(), **kwargs}
    try:
        return KafkaProducer(**config)
    except KafkaError as exc:
        raise KafkaIOError(f"cannot create a producer on {bootstrap}: {exc}") from exc


def _to_bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


def produce_lines(bootstrap: str, topic: str, lines: Iterable[str | bytes], *,
                  key_fn: Callable[[str | bytes], str | bytes | None] | None = None, json_field: str | None = None,
                  partition: int | None = None, timestamp_key: str = TIMESTAMP_KEY, timeout_s: float = 30,
                  **client_kwargs: Any) -> int:
    """Send each line to ``topic``, flush, and return how many were sent (for demos and tests).

    The value is the line's UTF-8 bytes, or with ``json_field`` a Fluent Bit-style record
    ``{json_field: line, timestamp_key: <float epoch seconds>}``. Keys come from ``key_fn(line)``; without ``key_fn``
    and ``partition`` the lines go unkeyed, round-robin over the partitions, so one session's lines spread across
    partitions as they do from a real shipper. Raises ``KafkaIOError`` if any send failed.
    """
    producer = make_producer(bootstrap, **client_kwargs)
    failures: list[BaseException] = []
    count = 0
    try:
        ring: list[int] = []
        if key_fn is None and partition is None:
            ring = sorted(_wait_partitions_for(producer, topic, timeout_s))
        for line in lines:
            if json_field is not None:
                text = line.decode("utf-8", errors="replace") if isinstance(line, bytes) else line
                value = json.dumps({json_field: text, timestamp_key: time.time()}).encode("utf-8")
            else:
                value = _to_bytes(line)
            key = key_fn(line) if key_fn is not None else None
            target = partition if partition is not None else ring[count % len(ring)] if ring else None
            future = producer.send(topic, value=value, key=None if key is None else _to_bytes(key), partition=target)
            future.add_errback(failures.append)
            count += 1
        producer.flush(timeout=timeout_s)
    except KafkaError as exc:
        raise KafkaIOError(f"producing to {topic} on {bootstrap} failed after {count} lines: {exc}") from exc
    finally:
        producer.close(timeout=5)
    if failures:
        raise KafkaIOError(f"{len(failures)} of {count} sends to {topic} failed; first: {failures[0]!r}")
    return count


def _wait_partitions_for(producer: KafkaProducer, topic: str, timeout_s: float) -> set[int]:
    try:
        return set(producer.partitions_for(topic))  # blocks up to max_block_ms for metadata
    except KafkaError as exc:
        raise KafkaIOError(f"no metadata for topic {topic}: {exc}") from exc


# -- reading and offsets -------------------------------------------------------------------------------------------

def read_all(bootstrap: str, topic: str, *, timeout_s: float = 10, expected: int | None = None,
             **client_kwargs: Any) -> list[ConsumerRecord]:
    """Every record of ``topic`` from the beginning, read without a consumer group (nothing is committed).

    Stops when ``expected`` records have arrived, or (without ``expected``) when every partition has been read up
    to the high watermark its last fetch reported, or at ``timeout_s``. Records come in per-partition offset order.
    """
    deadline = time.monotonic() + timeout_s
    consumer = _plain_consumer(bootstrap, client_kwargs, auto_offset_reset="earliest", max_poll_records=1000)
    records: list[ConsumerRecord] = []
    try:
        tps = _partitions(consumer, topic, timeout_s)
        if not tps:
            return records
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
            if expected is not None:
                if len(records) >= expected:
                    break
            elif _caught_up(consumer, tps):
                break
    finally:
        consumer.close()
    records.sort(key=lambda r: (r.partition, r.offset))
    return records


def _caught_up(consumer: KafkaConsumer, tps: list[TopicPartition]) -> bool:
    for tp in tps:
        high = consumer.highwater(tp)  # None until a fetch for tp has come back
        if high is None or consumer.position(tp) < high:
            return False
    return True


def end_offsets(bootstrap: str, topic: str, *, timeout_s: float = 10, **client_kwargs: Any) -> dict[int, int]:
    """Partition -> log end offset (the offset the next record will get); {} if the topic does not exist.

    Asks ListOffsets, then confirms with one fetch from the last batch of each non-empty partition and takes the
    larger of the listed offset and the fetched high watermark (see the module note on tansu).
    """
    deadline = time.monotonic() + timeout_s
    consumer = _plain_consumer(bootstrap, client_kwargs, max_poll_records=1, fetch_max_bytes=1 << 20)
    try:
        tps = _partitions(consumer, topic, timeout_s)
        if not tps:
            return {}
        listed: dict[TopicPartition, int] = consumer.end_offsets(tps)
        ends = {tp.partition: off for tp, off in listed.items()}
        check = [tp for tp in tps if listed[tp] > 0]
        if check:
            consumer.assign(check)
            for tp in check:
                consumer.seek(tp, listed[tp] - 1)  # at or inside the last batch: one small fetch per partition
            pending = set(check)
            while pending and time.monotonic() < deadline:
                consumer.poll(timeout_ms=100)
                for tp in list(pending):
                    high = consumer.highwater(tp)
                    if high is not None:
                        ends[tp.partition] = max(ends[tp.partition], high)
                        pending.discard(tp)
            if pending:
                log.warning("no fetch answer for %s within %.0fs; their end offsets are as listed",
                            sorted(tp.partition for tp in pending), timeout_s)
    except KafkaError as exc:
        raise KafkaIOError(f"could not read end offsets of {topic} on {bootstrap}: {exc}") from exc
    finally:
        consumer.close()
    return ends


def committed_offsets(bootstrap: str, group_id: str, topic: str, *, timeout_s: float = 10,
                      **client_kwargs: Any) -> dict[int, int | None]:
    """Partition -> offset committed by ``group_id`` (the next offset it will read), None where it never committed.

    Read with a group-less OffsetFetch: it neither joins the group nor disturbs its members.
    """
    consumer = _plain_consumer(bootstrap, client_kwargs)
    try:
        tps = _partitions(consumer, topic, timeout_s)
    finally:
        consumer.close()
    if not tps:
        return {}
    admin = _admin(bootstrap, timeout_s, client_kwargs)
    try:
        if hasattr(admin, "list_group_offsets"):  # kafka-python 3.x
            found = admin.list_group_offsets({group_id: tps}).get(group_id, {})
        else:  # kafka-python 2.x
            found = admin.list_consumer_group_offsets(group_id, partitions=tps)
    except KafkaError as exc:
        raise KafkaIOError(f"could not read offsets of group {group_id} on {bootstrap}: {exc}") from exc
    finally:
        admin.close()
    out: dict[int, int | None] = {tp.partition: None for tp in tps}
    for tp, meta in found.items():
        if tp.topic == topic and meta is not None and meta.offset is not None and meta.offset >= 0:
            out[tp.partition] = meta.offset
    return out


def produce_file(bootstrap: str, topic: str, path: str, *, json_field: str | None = None, rate: float = 0.0,
                 progress: bool = False, timestamp_key: str = TIMESTAMP_KEY, **client_kwargs: Any) -> int:
    """Stream a log file (``.gz`` too) into ``topic`` at ``rate`` lines/s (0: as fast as the broker takes them).

    Lines are read and sent one at a time, so a file of any size runs in constant memory; returns the count sent.
    """
    import gzip

    from tqdm import tqdm

    producer = make_producer(bootstrap, **client_kwargs)
    failures: list[BaseException] = []
    count = 0
    opener = gzip.open if path.endswith(".gz") else open
    start = time.monotonic()
    try:
        with opener(path, "rt", encoding="utf-8", errors="surrogateescape") as fh, \
                tqdm(unit=" lines", disable=not progress, mininterval=0.5) as bar:
            for raw in fh:
                line = raw.rstrip("\r\n")
                if json_field is not None:
                    value = json.dumps({json_field: line, timestamp_key: time.time()}).encode("utf-8")
                else:
                    value = line.encode("utf-8", errors="surrogateescape")
                producer.send(topic, value=value).add_errback(failures.append)
                count += 1
                bar.update(1)
                if rate > 0:
                    ahead = count / rate - (time.monotonic() - start)
                    if ahead > 0:
                        time.sleep(ahead)
        producer.flush(timeout=60)
    except KafkaError as exc:
        raise KafkaIOError(f"producing {path} to {topic} on {bootstrap} failed after {count} lines: {exc}") from exc
    finally:
        producer.close(timeout=5)
    if failures:
        raise KafkaIOError(f"{len(failures)} of {count} sends to {topic} failed; first: {failures[0]!r}")
    return count
