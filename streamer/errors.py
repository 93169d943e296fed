"""Exceptions of the live detector, under ``logbert_core.errors.LogadError`` (the hierarchy is described there).
Third-party errors are wrapped at the boundary with ``raise ... from exc``."""

from __future__ import annotations

from logbert_core.errors import LogadError, Unavailable

__all__ = ["BrokerUnavailable", "CommitRejected", "KafkaSettingsError", "LogadError", "OutageError", "StartupError",
           "Unavailable"]


class StartupError(LogadError):
    """The detector cannot start: bad settings, a bundle that does not fit them, an unreachable service.

    The message says what is wrong and how to fix it; the CLI prints it and exits with code 2.
    """


class KafkaSettingsError(StartupError):
    """Kafka settings a client cannot honour (``streamer.kafka_clients``), or that librdkafka refused when a client
    was created. The message names the setting, never a secret's value; the commands exit 2."""


class OutageError(LogadError):
    """Redis or the broker stayed unreachable past the configured outage budget; the process exits non-zero
    without committing offsets for work not done."""


class BrokerUnavailable(Unavailable):
    """The broker did not answer, timed out, or refused a request for a reason a retry may cure (the detector's Kafka
    clients wrap their library's errors in it): the worker backs off and commits nothing meanwhile."""

    service = "kafka"  # the outage clock and the per-try timeout of ``backoff.Backoff`` are kept per service


class CommitRejected(LogadError):
    """An offset commit the group refused because it has moved on (a rebalance gave the partitions to another
    member, or this member was fenced). Not retried: the new owner replays those records, which adds nothing."""
