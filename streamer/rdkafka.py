"""The detector's Kafka clients on librdkafka (confluent-kafka): ``streamer.broker``'s consumer and event producer.

kafka-python decodes every record in Python: about 10 us of CPU per record here, half of what a worker spends on a
line. librdkafka decodes in C on its own threads (about 1.6 us per record, measured on the same broker and lines;
docs/performance.md). Its producer sends and waits for the broker in C as well, with the GIL released, where
kafka-python's sender thread competes for the GIL with the consume loop while the scorer thread waits on it
(about 17 ms per flush measured under load). ``kafka.client = "confluent-kafka"`` selects both.

How librdkafka maps onto ``streamer.broker.BrokerConsumer``:

* ``poll``: transport errors come back as error events, not exceptions: they are counted and logged (once per kind
  until a record arrives again) and librdkafka reconnects on its own. A fatal error raises ``BrokerUnavailable``.
* ``commit``: synchronous. A commit refused because the group moved on (rebalance in progress, illegal generation,
  unknown member, assignment lost) raises ``CommitRejected``, any other failure ``BrokerUnavailable``.
* ``end_offsets`` (ListOffsets, on an admin client's own connections), ``highwater`` (the last fetch response's),
  ``position``.
* Rebalances call the listener inside ``poll``, on the consume thread, as kafka-python 3 does as far as the worker
  can tell.

This module needs confluent-kafka only; settings librdkafka refuses are a ``KafkaSettingsError``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import confluent_kafka
from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka import KafkaError as RdError
from confluent_kafka import TopicPartition as RdTopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from logbert_core.config import kafka_secret_key
from streamer.broker import Message, Outgoing, Partition, RebalanceListener, heartbeat_interval_ms
from streamer.errors import BrokerUnavailable, CommitRejected, KafkaSettingsError

__all__ = ["ConfluentConsumer", "ConfluentProducer", "rdkafka_config", "rdkafka_producer_config"]

log = logging.getLogger(__name__)

# what rdkafka_config adds for a group consumer alone; the consumer's admin client (ListOffsets) gets the rest: the
# connection, security and pass-through settings
_CONSUMER_ONLY = frozenset({"group.id", "enable.auto.commit", "enable.auto.offset.store", "auto.offset.reset",
                            "session.timeout.ms", "heartbeat.interval.ms", "queued.max.messages.kbytes",
                            "enable.partition.eof", "fetch.wait.max.ms"})
# what a broker answers a commit with once the group has moved on: the partitions are another member's now
_GROUP_MOVED_ON = frozenset({RdError.REBALANCE_IN_PROGRESS, RdError.ILLEGAL_GENERATION, RdError.UNKNOWN_MEMBER_ID,
                             RdError._ASSIGNMENT_LOST})


def rdkafka_config(bootstrap: str, group_id: str, *, session_timeout_ms: int, client_id: str,
                   settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """librdkafka settings equal to the worker's kafka-python consumer: manual commits, earliest; then ``settings``
    (librdkafka names: ``kafka_clients.client_settings``), whose pass-through keys may replace the tuning here."""
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap, "group.id": group_id, "client.id": client_id,
        "enable.auto.commit": False, "enable.auto.offset.store": False, "auto.offset.reset": "earliest",
        "session.timeout.ms": session_timeout_ms,
        "heartbeat.interval.ms": heartbeat_interval_ms(session_timeout_ms),
        # prefetch at most this much per worker (librdkafka's default is 64 MiB): memory stays flat and small
        "queued.max.messages.kbytes": 16_384,
        # an event when a fetch response shows the end of a partition: proof that its high watermark is fresh
        "enable.partition.eof": True,
        # how long an idle fetch may wait for data: a broker that holds it the whole time (tansu does; measured
        # 115-250 ms from produce to poll at librdkafka's 500 ms, 4 ms with kafka-python) delays every line by it
        "fetch.wait.max.ms": 100,
    }
    config.update(settings or {})
    return config


def rdkafka_producer_config(bootstrap: str, *, client_id: str, settings: Mapping[str, Any] | None = None,
                            timeout_s: float = 30.0) -> dict[str, Any]:
    """librdkafka settings equal to kafka-python's producers (``kafka_io.producer_config``): every replica
    acknowledges, a short linger, and a message given up after ``timeout_s`` (the caller sends the whole set
    again), so a long outage does not pile copies up in the client's queue; then ``settings``."""
    return {"bootstrap.servers": bootstrap, "client.id": client_id, "acks": "all", "linger.ms": 5,
            "retry.backoff.ms": 200, "message.timeout.ms": int(timeout_s * 1000),
            # kafka-python's max_request_size (librdkafka's default is 1,000,000): the same records go through
            "message.max.bytes": 1_048_576, **(settings or {})}


def _refused(exc: KafkaException, config: Mapping[str, Any]) -> BrokerUnavailable | KafkaSettingsError:
    """A failure to create a client: settings librdkafka refused are a start-up error (no retry will help; the text
    is librdkafka's, which names the property, with any secret value of the settings masked), anything else
    ``BrokerUnavailable``."""
    err = exc.args[0] if exc.args else None
    if err is None or not hasattr(err, "code") or err.code() != RdError._INVALID_ARG:
        return _unavailable(exc)
    text = err.str()
    for key, value in config.items():
        if kafka_secret_key(key) and isinstance(value, str) and value:
            text = text.replace(value, "***")
    return KafkaSettingsError(f"librdkafka refused the Kafka settings: {text} (kafka.client_config, "
                              "env LOGAD_KAFKA__CLIENT_CONFIG, or the typed kafka settings)")


class ConfluentConsumer:
    """``streamer.broker.BrokerConsumer`` on librdkafka: a group member subscribed to one topic (see the module
    docstring for how the calls map)."""

    min_poll_ms = 10  # librdkafka keeps the group going on its own threads: any wait will do

    def __init__(self, config: Mapping[str, Any], topic: str, listener: RebalanceListener | None = None,
                 connect_timeout_s: float = 5.0) -> None:
        """Raises ``BrokerUnavailable`` when no broker answers within ``connect_timeout_s`` (as kafka-python's
        consumer does at creation), so the worker's start-up back-off and outage budget apply to both clients."""
        self._listener = listener
        self._errors_logged: set[str] = set()
        self._start: dict[Partition, int] = {}  # where reading began, per assigned partition (position())
        # partitions with a fetch response since they were assigned (a record or an end-of-partition event): only
        # their cached high watermark is this assignment's (highwater())
        self._fetched: set[Partition] = set()
        # an admin client (own connections) for ListOffsets, started on first use, with the consumer's settings
        self._admin_config = {k: v for k, v in config.items() if k not in _CONSUMER_ONLY}
        self._admin: Any = None
        log.info("consumer: confluent-kafka %s, librdkafka %s", confluent_kafka.version()[0],
                 confluent_kafka.libversion()[0])
        try:
            # librdkafka's own log lines go through Python logging (served inside poll), not straight to stderr
            self._c = Consumer({**config, "error_cb": self._log_error, "logger": logging.getLogger("librdkafka")})
        except KafkaException as exc:
            raise _refused(exc, config) from exc
        try:
            self._c.list_topics(topic, timeout=connect_timeout_s)  # a metadata answer: some broker is there
            self._c.subscribe([topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                              on_lost=self._on_revoke)
        except KafkaException as exc:
            self._c.close()
            raise _unavailable(exc) from exc

    # -- callbacks (run inside poll, on the calling thread) ------------------------------------------------------
    def _log_error(self, err: Any) -> None:
        _log_client_error("consumer", err, self._errors_logged)  # once per kind until a record arrives again

    def _on_assign(self, _consumer: Any, partitions: list[Any]) -> None:
        self._start.clear()
        self._fetched.clear()
        if self._listener is not None:
            self._listener.on_partitions_assigned({Partition(p.topic, p.partition) for p in partitions})

    def _on_revoke(self, _consumer: Any, partitions: list[Any]) -> None:
        self._start.clear()
        self._fetched.clear()
        if self._listener is not None:
            self._listener.on_partitions_revoked({Partition(p.topic, p.partition) for p in partitions})

    # -- BrokerConsumer ------------------------------------------------------------------------------------------
    def poll(self, timeout_ms: int = 0, max_records: int = 500) -> dict[Partition, list[Message]]:
        """What has arrived, up to ``max_records``; waits up to ``timeout_ms`` only while nothing has. (librdkafka's
        batch consume waits until the batch is full or the timeout passes: on a slow stream every batch would
        wait the whole timeout.)"""
        consume = self._c.consume
        try:
            messages = consume(num_messages=max_records, timeout=0)
            if not messages and timeout_ms > 0:
                messages = consume(num_messages=1, timeout=timeout_ms / 1000)
                if messages and max_records > 1:
                    messages += consume(num_messages=max_records - 1, timeout=0)
        except KafkaException as exc:
            raise _unavailable(exc) from exc
        out: dict[Partition, list[Message]] = {}
        tps: dict[tuple[str, int], Partition] = {}
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.code() == RdError._PARTITION_EOF:
                    eof_topic, eof_partition = msg.topic(), msg.partition()
                    if eof_topic is not None and eof_partition is not None:
                        self._fetched.add(Partition(eof_topic, eof_partition))
                    continue
                self._log_error(err)
                if err.fatal():
                    raise BrokerUnavailable(f"librdkafka: fatal consumer error: {err.str()}")
                continue
            topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
            if topic is None or partition is None or offset is None:  # librdkafka sets all three on a record
                continue
            tp = tps.get((topic, partition))
            if tp is None:
                tp = tps[topic, partition] = Partition(topic, partition)
                out[tp] = []
            out[tp].append(Message(topic, partition, offset, msg.key(), msg.value(), msg.timestamp()[1]))
        if out:
            self._errors_logged.clear()
            self._fetched.update(out)
        return out

    def commit(self, offsets: Mapping[Partition, int]) -> None:
        parts = [RdTopicPartition(tp.topic, tp.partition, offset) for tp, offset in offsets.items()]
        try:
            result = self._c.commit(offsets=parts, asynchronous=False)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if err is not None and err.code() in _GROUP_MOVED_ON:
                raise CommitRejected(f"commit refused: {err.str()}") from exc
            raise _unavailable(exc) from exc
        failed = [p.error for p in result or [] if p.error is not None]
        if failed:
            # per partition as for the whole request: the group moved on (not retried) or the broker failed (back-off)
            moved_on = [e for e in failed if e.code() in _GROUP_MOVED_ON]
            if moved_on:
                raise CommitRejected(f"commit refused for {len(moved_on)} partition(s): {moved_on[0].str()}")
            raise BrokerUnavailable(f"librdkafka: commit failed for {len(failed)} partition(s): {failed[0].str()}")

    def end_offsets(self, partitions: Iterable[Partition], timeout_ms: int = 2000) -> dict[Partition, int]:
        """ListOffsets(latest) in one request per broker, on an admin client's own connection: on the consumer's
        connection the request would queue behind the long-polling fetch (about 0.5 s per partition, measured)."""
        tps = list(partitions)
        if not tps:
            return {}
        if self._admin is None:
            self._admin = AdminClient(self._admin_config)
        timeout_s = timeout_ms / 1000
        try:
            futures = self._admin.list_offsets({RdTopicPartition(tp.topic, tp.partition): OffsetSpec.latest()
                                                for tp in tps}, request_timeout=timeout_s)
            by_key = {(k.topic, k.partition): f for k, f in futures.items()}
            return {tp: by_key[tp.topic, tp.partition].result(timeout=timeout_s + 1).offset for tp in tps}
        except KafkaException as exc:
            raise _unavailable(exc) from exc
        except FutureTimeout as exc:
            raise BrokerUnavailable(f"librdkafka: ListOffsets did not answer within {timeout_s} s") from exc

    def highwater(self, partition: Partition) -> int | None:
        """The high watermark of the latest fetch response, or None before this assignment's first one (the value
        librdkafka keeps from an earlier assignment of the partition may be stale)."""
        if partition not in self._fetched:
            return None
        try:
            _low, high = self._c.get_watermark_offsets(RdTopicPartition(*partition), cached=True)
        except KafkaException:
            return None
        return high if high >= 0 else None

    def position(self, partition: Partition) -> int:
        """The next offset this consumer reads: the fetch position once a record came from the partition, else
        where reading began (the committed offset, else the start of the log; asked once per assignment)."""
        rtp = RdTopicPartition(*partition)
        try:
            (pos,) = self._c.position([rtp])
            if pos.offset >= 0:
                return pos.offset
            start = self._start.get(partition)
            if start is None:
                (committed,) = self._c.committed([rtp], timeout=2)
                start = committed.offset
                if start < 0:
                    start, _high = self._c.get_watermark_offsets(rtp, timeout=2, cached=False)
                self._start[partition] = start
        except KafkaException as exc:
            raise _unavailable(exc) from exc
        return start

    def close(self) -> None:
        """Leave the group; nothing is committed (the consumer never commits on its own)."""
        self._admin = None  # an AdminClient has no close(); dropping it stops its threads
        try:
            self._c.close()
        except (KafkaException, RuntimeError) as exc:
            raise _unavailable(exc) from exc


class ConfluentProducer:
    """``streamer.broker.BrokerProducer`` on librdkafka: sends a set of messages and waits until the broker has every
    one (``deliver``), as the worker's event path needs: offsets are committed only after their events are on the
    broker."""

    def __init__(self, config: Mapping[str, Any], connect_timeout_s: float = 5.0) -> None:
        """Raises ``BrokerUnavailable`` when no broker answers within ``connect_timeout_s``, as kafka-python's
        producer does at creation."""
        self._errors_logged: set[str] = set()
        try:
            self._p = Producer({**config, "error_cb": self._log_error, "logger": logging.getLogger("librdkafka")})
        except KafkaException as exc:
            raise _refused(exc, config) from exc
        try:
            self._p.list_topics(timeout=connect_timeout_s)  # a metadata answer: some broker is there
        except KafkaException as exc:
            raise _unavailable(exc) from exc

    def _log_error(self, err: Any) -> None:
        _log_client_error("producer", err, self._errors_logged)  # once per kind until a delivery succeeds again

    def deliver(self, messages: Iterable[Outgoing], timeout_s: float = 30.0) -> None:
        """Send ``(topic, key, value, headers)`` messages and wait until each is acknowledged. Raises
        ``BrokerUnavailable`` if one failed or did not arrive within ``timeout_s``; the caller sends the whole set
        again (consumers see at least once, a duplicate being an identical record)."""
        deadline = time.monotonic() + timeout_s
        failed: list[Any] = []
        waiting = [0]

        def delivered(err: Any, _msg: Any) -> None:  # served inside poll/flush, on this thread
            waiting[0] -= 1
            if err is not None:
                failed.append(err)

        produce: Callable[..., None] = self._p.produce  # takes our headers: a sequence of (name, bytes)
        poll = self._p.poll
        for topic, key, value, headers in messages:
            while True:
                try:
                    produce(topic, value=value, key=key, headers=headers, on_delivery=delivered)
                    break
                except BufferError:  # the client's queue is full: let deliveries drain it
                    if time.monotonic() > deadline:
                        raise BrokerUnavailable("librdkafka: producer queue full") from None
                    poll(0.05)
                except KafkaException as exc:
                    raise _unavailable(exc) from exc
            waiting[0] += 1
        while waiting[0] > 0 and (left := deadline - time.monotonic()) > 0:
            self._p.flush(left)  # serves the delivery callbacks; releases the GIL while it waits
        if failed:
            raise _unavailable(KafkaException(failed[0]))
        if waiting[0] > 0:
            raise BrokerUnavailable(f"librdkafka: {waiting[0]} message(s) not acknowledged within {timeout_s:.0f} s")
        self._errors_logged.clear()

    def close(self, timeout_s: float = 10.0) -> None:
        self._p.flush(timeout_s)


def _log_client_error(client: str, err: Any, logged: set[str]) -> None:
    """Log a librdkafka error event: a fatal one always, any other once per kind (``logged``; the caller clears it
    when the client works again)."""
    if err.fatal():
        log.error("kafka %s fatal error: %s", client, err.str())
    elif err.name() not in logged:
        logged.add(err.name())
        log.warning("kafka %s: %s (librdkafka retries)", client, err.str())


def _unavailable(exc: BaseException) -> BrokerUnavailable:
    """A librdkafka failure as the error the worker's back-off retries (a fatal one says so in its text)."""
    err = exc.args[0] if exc.args else None
    text = err.str() if err is not None and hasattr(err, "str") else str(exc)
    fatal = err is not None and hasattr(err, "fatal") and err.fatal()
    return BrokerUnavailable(f"librdkafka: {'fatal: ' if fatal else ''}{text}")
