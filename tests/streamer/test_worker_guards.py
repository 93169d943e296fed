"""A worker that cannot start, or is offered a bundle it cannot serve, lets go of what it opened and keeps what
runs: no leaked consumer or scorer thread after a failed start, no crash from a broken bundle at hot reload."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import redis
from e2e_harness import BUNDLE, settings_for
from kafka.errors import KafkaConnectionError

from logbert_core.bundle import load_bundle
from streamer import worker as worker_mod
from streamer.errors import OutageError
from streamer.worker import Worker


class FakeConsumer:
    closed = False

    def close(self, autocommit: bool = False) -> None:
        self.closed = True


def test_a_start_without_a_broker_closes_the_consumer_and_stops_the_scorer_thread(redis_url):
    s = settings_for("127.0.0.1:9", redis_url, "t", "g", detector={"outage_budget_s": 0.5})

    class NoBroker(Worker):
        @property
        def producer(self):  # type: ignore[override]
            raise KafkaConnectionError("nobody at 127.0.0.1:9")

    consumer = FakeConsumer()
    w = NoBroker(s, load_bundle(BUNDLE), consumer=consumer)  # type: ignore[arg-type]
    with pytest.raises(OutageError):
        w.run()
    assert consumer.closed
    assert w.scoring._thread is None or not w.scoring._thread.is_alive()


def test_a_bundle_the_engine_cannot_build_is_refused_at_reload(redis_url, tmp_path: Path, monkeypatch, caplog):
    s = settings_for("127.0.0.1:9", redis_url, "t", "g")
    other = tmp_path / "other"
    shutil.copytree(BUNDLE, other)
    meta = json.loads((other / "bundle.json").read_text())
    meta["version"] = "hdfs-other"
    (other / "bundle.json").write_text(json.dumps(meta))
    w = Worker(s, load_bundle(BUNDLE), consumer=FakeConsumer())  # type: ignore[arg-type]
    build = worker_mod.Engine.build

    def broken(settings, bundle, device, client):  # type: ignore[no-untyped-def]
        if bundle.version == "hdfs-other":
            raise KeyError("clusters")  # what no check foresaw
        return build(settings, bundle, device, client)

    monkeypatch.setattr(worker_mod.Engine, "build", staticmethod(broken))
    pointer = redis.Redis.from_url(redis_url)
    try:
        pointer.set(f"{s.redis.namespace}:model:current", str(other))
        assert w.maybe_reload() is False and w.bundle.version == load_bundle(BUNDLE).version
        assert any("refusing model bundle hdfs-other" in r.message and "KeyError" in r.message
                   for r in caplog.records)
        assert w.maybe_reload() is False  # refused once: not built again at every check
        pointer.set(f"{s.redis.namespace}:model:current", str(tmp_path))  # a directory without a bundle
        (tmp_path / "bundle.json").write_text("[1]")
        assert w.maybe_reload() is False
        assert any("holds a JSON list, not an object" in r.message for r in caplog.records)
    finally:
        w.scoring.close()
        w.close()
