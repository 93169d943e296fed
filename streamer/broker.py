"""The detector's one interface to the broker: its records and partitions, and the two clients its hot path uses.

``logad run`` consumes the input topic and publishes events and dead letters through ``BrokerConsumer`` and
``BrokerProducer`` only. ``kafka.client`` chooses the library behind them, and
``streamer.kafka_clients.broker_clients(settings)`` makes the pair:

* ``confluent-kafka`` (the default; ``streamer.rdkafka``): librdkafka decodes records and waits for
  acknowledgements in C, without the GIL, at a fraction of kafka-python's CPU per record (docs/performance.md);
* ``kafka-python`` (``streamer.kafka_python``): pure Python, for a platform without librdkafka wheels, or to rule the
  client out when chasing a problem.

Both pass the same contract tests (``tests/streamer/test_broker_contract.py``) and fault tests. The helpers off the
hot path keep using kafka-python directly: ``streamer.kafka_io`` (topics, ``produce_lines``, ``read_all``, offset
checks, for demos and tests), ``logad replay``, ``tail``, ``doctor`` and ``alerts forward``.

Errors are mapped where they leave an adapter, so no caller sees a library's exception class:

* ``streamer.errors.BrokerUnavailable`` (an ``Unavailable``): the broker is down, slow or refused something a retry
  may cure; the worker backs off within its outage budget and commits nothing meanwhile;
* ``streamer.errors.CommitRejected``: a commit refused because the group moved on; not retried (the new owner
  replays those records);
* ``streamer.kafka_io.KafkaSettingsError`` (a ``StartupError``): settings the library refused when the client was
  made; no retry helps, the command exits 2.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple, Protocol

__all__ = ["BrokerConsumer", "BrokerProducer", "Headers", "Message", "Outgoing", "Partition", "RebalanceListener",
           "heartbeat_interval_ms"]


class Partition(NamedTuple):
    """One partition of a topic. A tuple, so it equals and hashes as the ``(topic, partition)`` it holds."""

    topic: str
    partition: int


class Message(NamedTuple):
    """A consumed record. Immutable and slotted; a ``NamedTuple`` rather than a frozen dataclass because one is made
    per record on the hot path, and a frozen dataclass takes about 1 us to build against 0.35 us for this."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int  # milliseconds since the epoch, as the producer or the broker set it


Headers = Sequence[tuple[str, bytes]]
Outgoing = tuple[str, bytes | None, bytes, Headers | None]  # (topic, key, value, headers) of a record to publish


class RebalanceListener(Protocol):
    """Told when the group assigns partitions to this member or takes them back. Called on the thread that polls,
    inside ``poll``; nothing may be committed from a revoke (the worker's parts finish, the new owner replays)."""

    def on_partitions_assigned(self, assigned: set[Partition]) -> None: ...

    def on_partitions_revoked(self, revoked: set[Partition]) -> None: ...


class BrokerConsumer(Protocol):
    """A member of the detector's consumer group, subscribed to the input topic, committing by hand. Made connected
    (``BrokerUnavailable`` if no broker answers), reading from the committed offset, else from the earliest."""

    # the shortest wait of an empty poll the client tolerates (kafka-python drops a group join that completes while
    # the caller is outside poll, so it needs 1 s)
    min_poll_ms: int

    def poll(self, timeout_ms: int, max_records: int) -> dict[Partition, list[Message]]:
        """What has arrived, up to ``max_records``, in offset order per partition; waits up to ``timeout_ms`` only
        while nothing has. Rebalance callbacks run in here."""
        ...

    def commit(self, offsets: Mapping[Partition, int]) -> None:
        """Commit synchronously, per partition, the next offset to read. ``CommitRejected`` if the group moved on,
        ``BrokerUnavailable`` on any other failure."""
        ...

    def end_offsets(self, partitions: Iterable[Partition], timeout_ms: int = 2000) -> dict[Partition, int]:
        """The log end offsets the broker lists now (ListOffsets; tansu's may trail the end, see ``highwater``)."""
        ...

    def highwater(self, partition: Partition) -> int | None:
        """The high watermark of the latest fetch response of this assignment, or None before one came."""
        ...

    def position(self, partition: Partition) -> int:
        """The offset of the next record this member reads from ``partition`` (an assigned one)."""
        ...

    def close(self) -> None:
        """Leave the group without committing anything."""
        ...


class BrokerProducer(Protocol):
    """The event producer: publishes a set of records and waits until the broker has every one."""

    def deliver(self, messages: Iterable[Outgoing], timeout_s: float = 30.0) -> None:
        """Send the records and return once each is acknowledged by every in-sync replica; ``BrokerUnavailable``
        if one failed or was not acknowledged within ``timeout_s``. The caller then sends the whole set again
        (consumers see at least once, a duplicate being an identical record)."""
        ...

    def close(self, timeout_s: float = 10.0) -> None:
        """Wait up to ``timeout_s`` for what is still in flight, then let go of the connections."""
        ...


def heartbeat_interval_ms(session_timeout_ms: int) -> int:
    """A group member's heartbeat for this session timeout: a third of it, within 0.1-3 s (any client)."""
    return max(100, min(3000, session_timeout_ms // 3))
