"""Hot reload during a stream: switch between batches, lose nothing, score nothing twice, refuse a bad bundle,
roll back by pointing back."""

from __future__ import annotations

import gc
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis
from e2e_harness import BUNDLE, CONFIG, REPO, events_of, make_topics, settings_for, wait_done

from logbert_core.bundle import load_bundle
from logbert_core.config import load_settings
from streamer.kafka_io import produce_lines
from streamer.worker import Worker
from training.evaluate import offline_windows

pytestmark = pytest.mark.integration


def flag_everything(src: Path, dst: Path, version: str) -> Path:
    """A valid bundle that flags every window (so every window becomes an event we can count)."""
    shutil.copytree(src, dst)
    meta = json.loads((dst / "bundle.json").read_text())
    meta["version"] = version
    meta["thresholds"]["miss_ratio"] = -1.0
    # one key-miss threshold for every window length: a bundle's per-length table would leave the lengths its
    # calibration never saw unjudged by the model (Thresholds.model), and those windows unflagged
    meta["thresholds"].pop("by_length", None)
    (dst / "bundle.json").write_text(json.dumps(meta))
    return dst


def use(bundle_dir: Path, s) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamer.cli", "model", "use", str(bundle_dir), "--config",
                           str(CONFIG)], capture_output=True, text=True, cwd=REPO, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "LOGAD_REDIS__URL": s.redis.url,
                               "LOGAD_REDIS__NAMESPACE": s.redis.namespace})


def test_reload_and_rollback_mid_stream_lose_nothing_and_a_bad_bundle_is_refused(broker, redis_url, topic_name, lines,
                                                                                  tmp_path):
    a = flag_everything(BUNDLE, tmp_path / "a", "hdfs-all-a")
    b = flag_everything(BUNDLE, tmp_path / "b", "hdfs-all-b")
    bad = tmp_path / "bad"
    shutil.copytree(BUNDLE, bad)
    (bad / "model.safetensors").write_bytes(b"corrupt")
    meta = json.loads((bad / "bundle.json").read_text())
    meta["version"] = "hdfs-bad"
    (bad / "bundle.json").write_text(json.dumps(meta))

    s = settings_for(broker.url, redis_url, topic_name, "r1", session={"idle_timeout_s": 30.0},
                     detector={"reload_interval_s": 0.5})
    make_topics(s)
    worker = Worker(s, load_bundle(a), bundle_dir=a)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        produce_lines(broker.url, topic_name, lines[:2000])
        deadline = time.monotonic() + 60
        while worker.stats["consumed"] < 2000 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert gc.get_freeze_count() > 0  # what lives as long as the process is kept out of full collections
        res = use(bad, s)
        assert res.returncode == 2 and "refused" in res.stderr  # the CLI checks before pointing
        redis.Redis.from_url(redis_url).set(f"{s.redis.namespace}:model:current", str(bad))  # forced anyway
        time.sleep(2)
        assert worker.bundle.version == "hdfs-all-a"  # refused at run time too, old one keeps running
        assert use(b, s).returncode == 0
        deadline = time.monotonic() + 30
        while worker.bundle.version != "hdfs-all-b" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert worker.bundle.version == "hdfs-all-b"
        produce_lines(broker.url, topic_name, lines[2000:3000])
        deadline = time.monotonic() + 60
        while worker.stats["consumed"] < 3000 and time.monotonic() < deadline:
            time.sleep(0.2)
        # roll back while the first bundle still drains its open sessions: it becomes the active one again
        assert [e.bundle.version for e in worker.draining] == ["hdfs-all-a"]
        assert use(a, s).returncode == 0
        deadline = time.monotonic() + 30
        while worker.bundle.version != "hdfs-all-a" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert worker.bundle.version == "hdfs-all-a"
        assert [e.bundle.version for e in worker.draining] == ["hdfs-all-b"]
        produce_lines(broker.url, topic_name, lines[3000:])
        wait_done(s, timeout=120)  # every session of both bundles closed and scored, nothing pending
    finally:
        worker.stop_event.set()
        thread.join(30)
    assert worker.stats["reloads"] == 2 and not worker.draining
    assert gc.get_freeze_count() == 0  # unfrozen when the run ends: the process collects as usual again
    # the bundle switched back to was warmed with its most frequent training windows, as at start-up
    warm = load_bundle(a).warm_windows
    assert len(warm) > 100 and all(w in worker.engine.judge.scorer._cache for w in warm)

    events = events_of(s)
    assert {e.model_version for e in events} == {"hdfs-all-a", "hdfs-all-b"}
    by_id: dict[str, str] = {}
    for e in events:
        assert by_id.setdefault(e.event_id, e.model_dump_json()) == e.model_dump_json()
    # every entry of every session was scored exactly once, by one bundle or the other
    path = tmp_path / "lines.log"
    path.write_text("\n".join(lines) + "\n")
    entries = {sid: sw.n_lines for sid, sw in offline_windows(load_bundle(a), load_settings(CONFIG), [path]).items()}
    scored: dict[str, int] = {}
    for e in {e.event_id: e for e in events}.values():
        scored[e.session_id] = scored.get(e.session_id, 0) + e.window.line_count
    short = {sid for sid, n in entries.items() if n <= 32}  # no overlapping sliding windows in these sessions
    assert short and all(scored.get(sid) == entries[sid] for sid in short)
    assert set(scored) == set(entries)
