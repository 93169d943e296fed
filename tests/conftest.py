"""Shared fixtures. Add new ones below the live-process block."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest

from streamer.embedded import ManagedProcess, start_broker, start_redis

# -- live processes: one redis-server and one tansu broker per test session, each on a free port -------------------
# They are started on first use only, so unit-only runs start nothing. A process that cannot start fails the test
# with the server's log tail; nothing is skipped. Tests share both: use `redis_url` (flushed per test) and a fresh
# `topic_name`; tests that kill or restart a server start their own with start_redis()/start_broker().


@pytest.fixture(scope="session")
def redis_proc() -> Iterator[ManagedProcess]:
    """Our own redis-server (no persistence), never the system one on 6379."""
    proc = start_redis()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def broker() -> Iterator[ManagedProcess]:
    """A tansu broker with memory storage; ``broker.url`` is the bootstrap address ``127.0.0.1:PORT``."""
    proc = start_broker()
    yield proc
    proc.stop()


@pytest.fixture
def redis_url(redis_proc: ManagedProcess) -> str:
    """``redis://127.0.0.1:PORT/0`` of the session redis, emptied (FLUSHALL) before the test."""
    import redis

    if redis_proc.paused:  # a failed fault test may have left it stopped
        redis_proc.resume()
    if not redis_proc.running:
        redis_proc.restart()
    client = redis.Redis.from_url(redis_proc.url)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_proc.url


@pytest.fixture
def topic_name(request: pytest.FixtureRequest) -> str:
    """A topic name no other test uses (tests share one broker): ``t.<test name>.<8 hex>``."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name)[:80]
    return f"t.{stem}.{uuid.uuid4().hex[:8]}"
