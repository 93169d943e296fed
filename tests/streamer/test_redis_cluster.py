"""The window store against a real 3-node Redis Cluster (redis-server --cluster-enabled yes), through RedisCluster."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot
from test_redis_cluster_keys import workload

from logbert_core.windows import member
from streamer.embedded import HOST, free_port
from streamer.windows import Entry, WindowStore, client_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster_url() -> Iterator[str]:
    """Three masters, no replicas, each on a free port in a temp dir of its own; the URL of the first. The bus port
    is a free port too (the default, port + 10000, may be taken or past 65535)."""
    binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    assert binary and cli, "redis-server and redis-cli are needed (apt-get install -y redis-server)"
    work = Path(tempfile.mkdtemp(prefix="logad-cluster-"))
    ports = [free_port() for _ in range(3)]
    procs = []
    try:
        for p in ports:
            d = work / str(p)
            d.mkdir()
            procs.append(subprocess.Popen(
                [binary, "--port", str(p), "--bind", HOST, "--cluster-enabled", "yes", "--cluster-port",
                 str(free_port()), "--cluster-config-file", str(d / "nodes.conf"), "--dir", str(d), "--save", "",
                 "--appendonly", "no", "--logfile", str(d / "redis.log")],
                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        for p in ports:
            _wait(lambda p=p: redis.Redis(host=HOST, port=p).ping())
        subprocess.run([cli, "--cluster", "create", *(f"{HOST}:{p}" for p in ports), "--cluster-replicas", "0",
                        "--cluster-yes"], check=True, capture_output=True, timeout=60)
        _wait(lambda: all(redis.Redis(host=HOST, port=p).cluster("info")["cluster_state"] == "ok" for p in ports))
        yield f"redis://{HOST}:{ports[0]}/0"
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


def _wait(ok, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if ok():
                return
        except (redis.RedisError, KeyError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError("the cluster did not come up")
        time.sleep(0.2)


def test_the_store_runs_on_a_cluster(cluster_url):
    client = client_for(cluster_url, cluster=True)
    assert isinstance(client, redis.RedisCluster) and len(client.get_primaries()) == 3
    store = WindowStore(client, "logad:hdfs-0123456789ab", max_len=8, stride=4, ttl_s=3600, lease_ms=60_000,
                        max_open=2, closed_ttl_s=600, max_closed=2)
    assert client.cluster_keyslot(store.key("idle")) == key_slot(store.key("idle").encode())
    workload(store)  # append (plain and pipelined), cut, close, evict, sweep, lease re-claim, ack, holds, rate


def test_a_restarted_script_cache_and_the_lease_across_two_workers(cluster_url):
    """Two workers (clients) on one bundle: a window leased by one is claimed by the other once its lease ran out;
    a node that lost its scripts (SCRIPT FLUSH) gets them again on the next call."""
    a, b = (WindowStore(client_for(cluster_url, cluster=True), "logad:hdfs-lease", max_len=8, stride=4, ttl_s=3600,
                        lease_ms=1_000) for _ in range(2))
    lines = [Entry("blk_1", 1000.0 + i, member(4 + i % 6, f"{i} blk_1")) for i in range(3)]
    for node in a.r.get_primaries():
        a.r.get_redis_connection(node).script_flush()
    a.appends.append_finish(a.appends.append_start(lines, now_ms=0))
    (w,) = a.sweeps.sweep(now_ms=10_000, idle_ms=1).windows
    assert b.sweeps.sweep(now_ms=10_500, idle_ms=1).windows == []
    (again,) = b.sweeps.sweep(now_ms=11_001, idle_ms=1).windows
    assert again == w
    b.verdicts.ack([again.id])
    assert a.left() == (0, 0, 0)


def test_bundles_spread_over_the_shards(cluster_url):
    """One bundle is one slot; different bundles land on different nodes (what a cluster does spread)."""
    client = client_for(cluster_url, cluster=True)
    nodes = {client.get_node_from_key(WindowStore(client, f"logad:hdfs-{i}", 8, 4, 60, 1_000).key("idle")).name
             for i in range(30)}
    assert len(nodes) == 3
