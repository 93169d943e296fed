"""The detector's Kafka clients on kafka-python: ``streamer.broker``'s consumer and event producer.

``kafka.client = "kafka-python"`` selects them: pure Python, no librdkafka needed, at several times its CPU per record
(``streamer.rdkafka`` says why that one is the default). kafka-python's own types stay in here: records become
``Message``, partitions ``Partition``, offsets plain ints, and its errors are mapped where they leave:
``CommitFailedError`` -> ``CommitRejected``, a configuration it refuses -> ``KafkaSettingsError``, any other
``KafkaError`` -> ``BrokerUnavailable``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import CommitFailedError, KafkaConfigurationError, KafkaError, KafkaTimeoutError
from kafka.structs import OffsetAndMetadata

from streamer.broker import Message, Outgoing, Partition, RebalanceListener
from streamer.errors import BrokerUnavailable, CommitRejected, KafkaSettingsError

__all__ = ["KafkaPythonConsumer", "KafkaPythonProducer"]


def _unavailable(exc: KafkaError) -> BrokerUnavailable:
    return BrokerUnavailable(f"kafka-python: {type(exc).__name__}: {exc}")


def _create(client: Any, config: Mapping[str, Any]) -> Any:
    """A kafka-python client made with ``config``: settings it refuses are a start-up error, a broker that does not
    answer within its ``bootstrap_timeout_ms`` is ``BrokerUnavailable``."""
    try:
        return client(**config)
    except KafkaConfigurationError as exc:
        raise KafkaSettingsError(f"kafka-python refused the Kafka settings: {exc} (kafka.client_config, "
                                 "env LOGAD_KAFKA__CLIENT_CONFIG, or the typed kafka settings)") from exc
    except KafkaError as exc:
        raise _unavailable(exc) from exc


class _Listener(ConsumerRebalanceListener):
    """kafka-python's listener, handing ``Partition`` sets to ours."""

    def __init__(self, listener: RebalanceListener) -> None:
        self.listener = listener

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.listener.on_partitions_revoked({Partition(tp.topic, tp.partition) for tp in revoked})

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.listener.on_partitions_assigned({Partition(tp.topic, tp.partition) for tp in assigned})


class KafkaPythonConsumer:
    """``streamer.broker.BrokerConsumer`` on kafka-python's ``KafkaConsumer``."""

    # kafka-python 3.0 drops a group join that completes while the caller is outside poll(): an empty poll waits 1 s
    min_poll_ms = 1000

    def __init__(self, config: Mapping[str, Any], topic: str, listener: RebalanceListener | None = None) -> None:
        """``config``: ``KafkaConsumer``'s keywords. Raises ``BrokerUnavailable`` when no broker answers within its
        ``bootstrap_timeout_ms``."""
        self._c: KafkaConsumer = _create(KafkaConsumer, config)
        if listener is not None:
            self._c.subscribe([topic], listener=_Listener(listener))
        else:
            self._c.subscribe([topic])

    def poll(self, timeout_ms: int = 0, max_records: int = 500) -> dict[Partition, list[Message]]:
        try:
            batch = self._c.poll(timeout_ms=timeout_ms, max_records=max_records)
        except KafkaError as exc:
            raise _unavailable(exc) from exc
        return {Partition(tp.topic, tp.partition):
                [Message(r.topic, r.partition, r.offset, r.key, r.value, r.timestamp) for r in records]
                for tp, records in batch.items()}

    def commit(self, offsets: Mapping[Partition, int]) -> None:
        try:
            self._c.commit({TopicPartition(tp.topic, tp.partition): OffsetAndMetadata(offset, "", -1)
                            for tp, offset in offsets.items()})
        except CommitFailedError as exc:
            raise CommitRejected(f"commit refused: {exc}") from exc
        except KafkaError as exc:
            raise _unavailable(exc) from exc

    def end_offsets(self, partitions: Iterable[Partition], timeout_ms: int = 2000) -> dict[Partition, int]:
        try:
            listed = self._c.end_offsets([TopicPartition(tp.topic, tp.partition) for tp in partitions],
                                         timeout_ms=timeout_ms)
        except KafkaError as exc:
            raise _unavailable(exc) from exc
        return {Partition(tp.topic, tp.partition): offset for tp, offset in listed.items()}

    def highwater(self, partition: Partition) -> int | None:
        hw: int | None = self._c.highwater(TopicPartition(partition.topic, partition.partition))
        return hw

    def position(self, partition: Partition) -> int:
        try:
            pos: int = self._c.position(TopicPartition(partition.topic, partition.partition))
        except KafkaError as exc:
            raise _unavailable(exc) from exc
        return pos

    def close(self) -> None:
        try:
            self._c.close(autocommit=False)
        except KafkaError as exc:
            raise _unavailable(exc) from exc


class KafkaPythonProducer:
    """``streamer.broker.BrokerProducer`` on kafka-python's ``KafkaProducer``."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        """``config``: ``KafkaProducer``'s keywords (``kafka_io.producer_config`` and the connection)."""
        self._p: KafkaProducer = _create(KafkaProducer, config)

    def deliver(self, messages: Iterable[Outgoing], timeout_s: float = 30.0) -> None:
        try:
            futures = [self._p.send(topic, key=key, value=value, headers=headers)
                       for topic, key, value, headers in messages]
            self._p.flush(timeout=timeout_s)
        except KafkaError as exc:
            raise _unavailable(exc) from exc
        for future in futures:
            if not future.is_done:
                raise _unavailable(KafkaTimeoutError(f"not acknowledged within {timeout_s:.0f} s"))
            if future.failed():
                err = future.exception
                raise _unavailable(err) from err

    def close(self, timeout_s: float = 10.0) -> None:
        try:
            self._p.flush(timeout=timeout_s)
            self._p.close(timeout=timeout_s)
        except KafkaError as exc:
            raise _unavailable(exc) from exc
