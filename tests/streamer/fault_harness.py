"""What the fault scenarios share (``test_faults_kafka.py``, ``test_faults_redis.py``): every scenario runs with each
consumer the detector can use, a feeder that keeps lines coming while a fault lands, and the waits.

The idle timeout (20 s) is longer than the 10 s faults, as in production (30 s by default): a session is closed
after it stayed idle while the detector could read.
"""

from __future__ import annotations

import signal
import threading
import time

import pytest

from streamer.kafka_io import produce_lines

IDLE = {"idle_timeout_s": 20.0}


@pytest.fixture(autouse=True, params=["confluent-kafka", "kafka-python"])
def kafka_client(request, monkeypatch) -> str:
    """Every scenario with each consumer the detector can use (``kafka.client``); workers read it from the
    environment, in-process and spawned alike."""
    monkeypatch.setenv("LOGAD_KAFKA__CLIENT", request.param)
    return request.param


class Feeder(threading.Thread):
    """Produces the lines in chunks at a steady pace, so a fault lands mid-stream."""

    def __init__(self, bootstrap: str, topic: str, lines: list, seconds: float, chunks: int = 20) -> None:
        super().__init__(daemon=True)
        self.args = (bootstrap, topic, lines, seconds, chunks)
        self.error: BaseException | None = None

    def run(self) -> None:
        bootstrap, topic, lines, seconds, chunks = self.args
        size = -(-len(lines) // chunks)
        try:
            for i in range(0, len(lines), size):
                produce_lines(bootstrap, topic, lines[i:i + size], timeout_s=60)
                time.sleep(seconds / chunks)
        except BaseException as exc:  # reported by the test
            self.error = exc


def wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def stop(proc, log_path) -> None:
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(60)
    assert code == 0, log_path.read_text()[-3000:]
