"""A worker that cannot start, or is offered a bundle it cannot serve, lets go of what it opened and keeps what
runs: no leaked consumer or scorer thread after a failed start, no crash from a broken bundle at hot reload."""

from __future__ import annotations

import json
import math
import shutil
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis
from e2e_harness import BUNDLE, settings_for

from logbert_core.bundle import load_bundle
from streamer import kafka_clients, lifecycle
from streamer import worker as worker_mod
from streamer.broker import Partition
from streamer.engine import Engine
from streamer.errors import BrokerUnavailable, OutageError
from streamer.worker import Worker


class FakeConsumer:
    """Hands out the given batches of (topic, partition, offset, value) records, then nothing."""

    closed = False
    min_poll_ms = 1000

    def __init__(self, batches: list[list[SimpleNamespace]] | None = None) -> None:
        self.batches = list(batches or [])
        self.commits: list[dict[Partition, int]] = []

    def poll(self, timeout_ms: int = 0, max_records: int = 500) -> dict[Partition, list[SimpleNamespace]]:
        if not self.batches:
            time.sleep(timeout_ms / 1000)
            return {}
        out: dict[Partition, list[SimpleNamespace]] = {}
        for r in self.batches.pop(0):
            out.setdefault(Partition(r.topic, r.partition), []).append(r)
        return out

    def commit(self, offsets) -> None:  # type: ignore[no-untyped-def]
        self.commits.append(dict(offsets))

    def end_offsets(self, tps, timeout_ms: int = 2000):  # type: ignore[no-untyped-def]
        return {tp: 0 for tp in tps}

    def position(self, tp: Partition) -> int:
        return 0

    def highwater(self, tp: Partition) -> int:
        return 0

    def close(self) -> None:
        self.closed = True


def bundle_copy(where: Path, version: str) -> Path:
    """The shipped bundle under another version id (the same model, as a retrain would give)."""
    shutil.copytree(BUNDLE, where)
    meta = json.loads((where / "bundle.json").read_text())
    meta["version"] = version
    (where / "bundle.json").write_text(json.dumps(meta))
    return where


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[object] = []

    def deliver(self, messages, timeout_s: float = 30) -> None:  # type: ignore[no-untyped-def]
        self.sent += list(messages)

    def close(self, timeout_s: float = 10) -> None:
        pass


def test_a_start_without_a_broker_closes_the_consumer_and_stops_the_scorer_thread(redis_url, monkeypatch):
    s = settings_for("127.0.0.1:9", redis_url, "t", "g", detector={"outage_budget_s": 0.5})

    def no_broker(*_: object) -> None:
        raise BrokerUnavailable("nobody at 127.0.0.1:9")

    monkeypatch.setattr(kafka_clients.BrokerClients, "producer", no_broker)
    consumer = FakeConsumer()
    w = Worker(s, load_bundle(BUNDLE), consumer=consumer)  # type: ignore[arg-type]
    with pytest.raises(OutageError):
        w.run()
    assert consumer.closed
    assert w.scoring._thread is None or not w.scoring._thread.is_alive()


def test_a_bundle_the_engine_cannot_build_is_refused_at_reload(redis_url, tmp_path: Path, monkeypatch, caplog):
    s = settings_for("127.0.0.1:9", redis_url, "t", "g")
    other = bundle_copy(tmp_path / "other", "hdfs-other")
    w = Worker(s, load_bundle(BUNDLE), consumer=FakeConsumer())  # type: ignore[arg-type]
    build = Engine.build

    def broken(settings, bundle, device, client):  # type: ignore[no-untyped-def]
        if bundle.version == "hdfs-other":
            raise KeyError("clusters")  # what no check foresaw
        return build(settings, bundle, device, client)

    monkeypatch.setattr(Engine, "build", staticmethod(broken))
    pointer = redis.Redis.from_url(redis_url)
    try:
        pointer.set(f"{s.redis.namespace}:model:current", str(other))
        assert w.models.maybe_reload() is False and w.bundle.version == load_bundle(BUNDLE).version
        assert any("refusing model bundle hdfs-other" in r.message and "KeyError" in r.message
                   for r in caplog.records)
        assert w.models.maybe_reload() is False  # refused once: not built again at every check
        pointer.set(f"{s.redis.namespace}:model:current", str(tmp_path))  # a directory without a bundle
        (tmp_path / "bundle.json").write_text("[1]")
        assert w.models.maybe_reload() is False
        assert any("holds a JSON list, not an object" in r.message for r in caplog.records)
    finally:
        w.scoring.close()
        w.close()


def test_a_line_stamped_decades_ahead_does_not_move_the_watermark(redis_url):
    """premature_end judges silence by the watermark: one line from a host whose clock says 2068 must not make
    every session look quiet for decades, on this worker or, through the group's key, on any other."""
    s = settings_for("127.0.0.1:9", redis_url, "t", "g")
    key = f"{s.redis.namespace}:watermark"
    redis.Redis.from_url(redis_url).set(key, repr(3.1e9))  # what an unchecked version could have left: 2068
    lines = ["081109 203615 148 INFO dfs.DataNode$PacketResponder: PacketResponder 1 for block blk_1 terminating",
             "681231 235959 148 INFO dfs.DataNode$PacketResponder: PacketResponder 1 for block blk_2 terminating"]
    consumer = FakeConsumer([[SimpleNamespace(topic="t", partition=0, offset=i, key=None, value=v.encode())
                              for i, v in enumerate(lines)]])
    w = Worker(s, load_bundle(BUNDLE), consumer=consumer, producer=FakeProducer())  # type: ignore[arg-type]
    w.progress.assigned = {Partition("t", 0)}
    w.run(max_idle_s=1.0)
    assert w.watermark == 1226262975.0  # 2008-11-09 20:36:15, the first line
    assert w.progress.safe == 1226262975.0
    assert float(redis.Redis.from_url(redis_url).get(key)) == 1226262975.0  # the stale value was replaced
    assert consumer.commits and consumer.commits[-1] == {Partition("t", 0): 2}  # both lines were taken


def test_after_a_switch_the_old_bundle_does_not_call_a_running_session_stopped(redis_url, tmp_path: Path):
    """A block that began under bundle A goes on under bundle B after a reload. A, draining, closes its part once
    idle; the log has moved on past the rest horizon, yet the block did not stop: no premature_end from A. A block
    that did stop under A is still reported, by A."""
    import gzip

    from e2e_harness import HOLDOUT

    s = settings_for("127.0.0.1:9", redis_url, "t", "g")
    other = bundle_copy(tmp_path / "b", "hdfs-b")
    with gzip.open(HOLDOUT, "rt") as fh:
        lines = [next(fh).rstrip("\n") for _ in range(3000)]
    blk = "blk_-2815656842321674713"
    mine = [line for line in lines if blk + " " in line + " "]
    producer = FakeProducer()
    w = Worker(s, load_bundle(BUNDLE), consumer=FakeConsumer(), producer=producer)  # type: ignore[arg-type]
    w.progress.assigned = {Partition("t", 0)}
    offset = 0

    def feed(batch: list[str]) -> None:
        nonlocal offset
        w.process([SimpleNamespace(topic="t", partition=0, offset=offset + i, key=None, value=v.encode())
                   for i, v in enumerate(batch)])
        offset += len(batch)
        w.finish_append()

    try:
        stopped = [line.replace(blk, "blk_777") for line in mine[:2]]  # the same start, and nothing after it
        feed(mine[:2] + stopped)  # allocated, one receive: a state normal blocks never rest in
        redis.Redis.from_url(redis_url).set(f"{s.redis.namespace}:model:current", str(other))
        assert w.models.maybe_reload() and w.bundle.version == "hdfs-b"
        last = max(w.engine.pipeline.reader.fmt.parse(line).timestamp for line in mine)
        later = time.strftime("%y%m%d %H%M%S", time.gmtime(last + 400))
        filler = f"{later} 148 INFO dfs.DataNode$PacketResponder: PacketResponder 1 for block blk_999 terminating"
        feed(mine[2:] + [filler])  # the block goes on under B; the log moves on 400 s
        w.progress.caught_up()
        time.sleep(s.session.idle_timeout_s + 0.5)
        w.closing.sweep(time.monotonic())
        w.settle(wait=True)
        w.closing.sweep(time.monotonic())  # held verdicts of the draining bundle are confirmed or dropped here
        w.settle(wait=True)
        stops = [json.loads(v) for _, _, v, _ in producer.sent
                 if "premature_end" in json.loads(v)["explanation"]["reasons"]]
        assert [(e["session_id"], e["model_version"]) for e in stops] == [("blk_777", load_bundle(BUNDLE).version)]
    finally:
        w.scoring.close()
        w.close()


def test_a_worker_started_after_a_switch_drains_what_the_old_bundle_left(redis_url, tmp_path: Path):
    """Worker 1 switches from A to B with a block open under A, then dies. Worker 2 starts with --model B: it finds
    A in the group's record of bundles and drains it, so A's open block is still scored and reported."""
    s = settings_for("127.0.0.1:9", redis_url, "t", "g")
    a, b = bundle_copy(tmp_path / "a", "hdfs-a"), bundle_copy(tmp_path / "b", "hdfs-b")
    line = "081109 203615 148 INFO dfs.DataNode: a template no normal block ever had, for blk_{}"
    rec = SimpleNamespace(topic="t", partition=0, offset=0, key=None, value=line.format(1).encode())
    w1 = Worker(s, load_bundle(a), consumer=FakeConsumer([[rec]]), producer=FakeProducer(), bundle_dir=a)  # type: ignore[arg-type]
    w1.models.record_active()
    w1.process([rec])
    w1.finish_append()
    redis.Redis.from_url(redis_url).set(f"{s.redis.namespace}:model:current", str(b))
    assert w1.models.maybe_reload() and [e.bundle.version for e in w1.draining] == ["hdfs-a"]
    w1.scoring.close()
    w1.close()  # dies before A's block closes

    producer = FakeProducer()
    w2 = Worker(s, load_bundle(b), consumer=FakeConsumer(), producer=producer, bundle_dir=b)  # type: ignore[arg-type]
    w2.progress.assigned = {Partition("t", 0)}
    w2.run(max_idle_s=s.session.idle_timeout_s + 1)
    events = [json.loads(v) for _, _, v, _ in producer.sent]
    assert [(e["session_id"], e["model_version"]) for e in events] == [("blk_1", "hdfs-a")]
    assert not w2.draining
    assert redis.Redis.from_url(redis_url).hkeys(f"{s.redis.namespace}:bundles") == [b"hdfs-b"]  # A is done


def test_a_stale_future_group_watermark_is_not_handed_to_a_worker_with_nothing_read(redis_url):
    """A worker that has just taken partitions over reports -inf and adopts the group's watermark: a value from
    2068 left in Redis must not reach it."""
    s = settings_for("127.0.0.1:9", redis_url, "t", "g")
    key = f"{s.redis.namespace}:watermark"
    r = redis.Redis.from_url(redis_url)
    r.set(key, repr(3.1e9))
    w = Worker(s, load_bundle(BUNDLE), consumer=FakeConsumer(), producer=FakeProducer())  # type: ignore[arg-type]
    try:
        assert w.progress.share(-math.inf) == -math.inf and r.get(key) is None
        assert w.progress.share(1226262975.0) == 1226262975.0
    finally:
        w.scoring.close()
        w.close()


def test_the_heap_trimmer_runs_while_the_worker_runs_and_stops_with_it(redis_url, monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr(lifecycle, "_malloc_trim", lambda: calls.append)
    s = settings_for("127.0.0.1:9", redis_url, "t", "g", detector={"malloc_trim_interval_s": 0.05})
    w = Worker(s, load_bundle(BUNDLE), consumer=FakeConsumer(), producer=FakeProducer())  # type: ignore[arg-type]
    w.progress.assigned = {Partition("t", 0)}
    w.run(max_idle_s=0.5)
    assert len(calls) >= 3 and set(calls) == {0}
    time.sleep(0.2)
    assert "logad-malloc-trim" not in {t.name for t in threading.enumerate()}
    assert lifecycle._malloc_trim() is not None  # glibc, here


def test_a_block_that_stopped_part_way_is_held_then_published_for_its_unfinished_set(redis_url):
    """A block whose first lines form a set that is part of a normal lifecycle, but never a whole window of one,
    and a state where normal blocks do rest now and then (premature_end does not fire): it may still be running, so
    its unseen_template_set verdict is held; once the log has gone on for the rest horizon without it, the event is
    published with that reason (not premature_end's)."""
    import gzip

    from e2e_harness import HOLDOUT

    s = settings_for("127.0.0.1:9", redis_url, "t", "g-part")
    bundle = load_bundle(BUNDLE)
    fmt = s.line_format()
    with gzip.open(HOLDOUT, "rt") as fh:
        lines = [next(fh).rstrip("\n") for _ in range(3000)]
    blk = "blk_-2831794248157108436"
    mine = sorted((line for line in lines if blk + " " in line + " "), key=lambda x: fmt.parse(x).timestamp)
    part = [line.replace(blk, "blk_778") for line in mine[:9]]  # allocated, received, not finished
    producer = FakeProducer()
    w = Worker(s, bundle, consumer=FakeConsumer(), producer=producer)  # type: ignore[arg-type]
    w.progress.assigned = {Partition("t", 0)}
    try:
        last = max(fmt.parse(line).timestamp for line in part)
        later = time.strftime("%y%m%d %H%M%S", time.gmtime(last + 400))
        filler = f"{later} 148 INFO dfs.DataNode$PacketResponder: PacketResponder 1 for block blk_999 terminating"
        w.process([SimpleNamespace(topic="t", partition=0, offset=i, key=None, value=v.encode())
                   for i, v in enumerate(part)])
        w.finish_append()
        w.progress.caught_up()
        time.sleep(s.session.idle_timeout_s + 0.5)
        w.closing.sweep(time.monotonic())  # the block closes; the log has not gone on past it: held
        w.settle(wait=True)
        assert not [v for _, _, v, _ in producer.sent if json.loads(v)["session_id"] == "blk_778"]
        w.process([SimpleNamespace(topic="t", partition=0, offset=len(part), key=None, value=filler.encode())])
        w.finish_append()
        w.progress.caught_up()
        w.closing.sweep(time.monotonic())
        w.settle(wait=True)
        w.closing.sweep(time.monotonic())  # the held verdict is confirmed here
        w.settle(wait=True)
        (event,) = [json.loads(v) for _, _, v, _ in producer.sent if json.loads(v)["session_id"] == "blk_778"]
        assert event["explanation"]["reasons"] == ["unseen_template_set"]
        assert event["model_version"] == bundle.version
    finally:
        w.scoring.close()
        w.close()


class _Quiet:
    """The two calls a revoke makes of its worker, doing nothing: only the gauge is under test."""

    def finish_append(self) -> None:
        return None

    def settle(self, **_: object) -> None:
        return None


def test_a_revoked_partition_stops_reporting_its_lag():
    """After a rebalance the new owner reports the partition's lag; the old one must not keep a frozen value."""
    from prometheus_client import REGISTRY

    from streamer import metrics as m

    m.CONSUMER_LAG.labels("7").set(42)
    m.CONSUMER_LAG.labels("8").set(5)
    worker_mod._Rebalance(_Quiet()).on_partitions_revoked([Partition("logs.raw", 7)])  # type: ignore[arg-type]
    assert REGISTRY.get_sample_value("logad_consumer_lag", {"partition": "7"}) is None
    assert REGISTRY.get_sample_value("logad_consumer_lag", {"partition": "8"}) == 5
    worker_mod._Rebalance(_Quiet()).on_partitions_revoked([Partition("logs.raw", 7)])  # type: ignore[arg-type]
