"""Helpers for the end-to-end tests: settings for a test's topics, detector processes, waiting, reading events."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import redis

from logbert_core.bundle import Bundle
from logbert_core.config import Settings, load_settings
from streamer.events import AnomalyEvent
from streamer.kafka_io import committed_offsets, end_offsets, ensure_topics, read_all
from streamer.worker import Worker

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "config" / "hdfs.toml"
BUNDLE = REPO / "models" / "hdfs"
HOLDOUT = REPO / "data" / "hdfs" / "holdout.log.gz"


def settings_for(broker_url: str, redis_url: str, topic: str, group: str, **extra) -> Settings:
    sections = {"kafka": {"bootstrap_servers": broker_url, "input_topic": topic, "output_topic": f"{topic}.out",
                          "group_id": group, "session_timeout_ms": 6000},
                "redis": {"url": redis_url, "namespace": group}, "session": {"idle_timeout_s": 2.0},
                "http": {"port": 0}, "detector": {"sweep_interval_s": 0.5}}
    for name, values in extra.items():
        sections[name] = {**sections.get(name, {}), **values}
    return load_settings(CONFIG, **sections)


def make_topics(settings: Settings, partitions: int = 4) -> None:
    k = settings.kafka
    ensure_topics(k.bootstrap_servers, {k.input_topic: partitions, k.output_topic: 1, k.dlq: 1})


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    """The same settings as environment variables, for a `logad run` subprocess."""
    k = settings.kafka
    env = {"LOGAD_KAFKA__BOOTSTRAP_SERVERS": k.bootstrap_servers, "LOGAD_KAFKA__INPUT_TOPIC": k.input_topic,
           "LOGAD_KAFKA__OUTPUT_TOPIC": k.output_topic, "LOGAD_KAFKA__GROUP_ID": k.group_id,
           "LOGAD_KAFKA__SESSION_TIMEOUT_MS": str(k.session_timeout_ms), "LOGAD_REDIS__URL": settings.redis.url,
           "LOGAD_REDIS__NAMESPACE": settings.redis.namespace,
           "LOGAD_SESSION__IDLE_TIMEOUT_S": str(settings.session.idle_timeout_s), "LOGAD_HTTP__PORT": "0",
           "LOGAD_DETECTOR__SWEEP_INTERVAL_S": "0.5"}
    env.update(extra)
    return env


def spawn(env: dict[str, str], log_path: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "streamer.cli", "-v", "run", "--config", str(CONFIG), "--model",
                             str(BUNDLE)], env=dict(os.environ, **env), stdout=open(log_path, "wb"),
                            stderr=subprocess.STDOUT, cwd=REPO)


def committed_total(settings: Settings) -> int:
    k = settings.kafka
    return sum(v or 0 for v in committed_offsets(k.bootstrap_servers, k.group_id, k.input_topic).values())


def wait_done(settings: Settings, timeout: float = 120.0) -> None:
    """Until every input offset is committed and no session or window is left in Redis."""
    r = redis.Redis.from_url(settings.redis.url)
    k = settings.kafka
    ns = settings.redis.namespace
    deadline = time.monotonic() + timeout
    stable = 0
    state: tuple = ()
    while time.monotonic() < deadline:
        try:
            ends = end_offsets(k.bootstrap_servers, k.input_topic)
            done = committed_offsets(k.bootstrap_servers, k.group_id, k.input_topic)
            idle = sum(r.zcard(key) for key in r.scan_iter(match=f"{ns}:*:idle"))
            pending = sum(r.zcard(key) for key in r.scan_iter(match=f"{ns}:*:pending"))
        except Exception:  # a fault test may have a server down right now
            stable = 0
            time.sleep(0.5)
            continue
        state = (ends, done, idle, pending)
        ok = all((done.get(p) or 0) >= e for p, e in ends.items()) and idle == 0 and pending == 0
        stable = stable + 1 if ok else 0
        if stable >= 3:
            return
        time.sleep(0.5)
    raise AssertionError(f"not done after {timeout} s: (ends, committed, idle, pending) = {state}")


def start_worker(settings: Settings, bundle: Bundle) -> tuple[Worker, threading.Thread]:
    """A worker running in a thread of this process (its counters stay readable)."""
    worker = Worker(settings, bundle)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    return worker, thread


def run_until_done(settings: Settings, bundle: Bundle) -> Worker:
    """A worker in a thread until every offset is committed and Redis is empty; then stopped."""
    worker, thread = start_worker(settings, bundle)
    try:
        wait_done(settings)
    finally:
        worker.stop_event.set()
        thread.join(30)
    return worker


def events_of(settings: Settings) -> list[AnomalyEvent]:
    return [AnomalyEvent.model_validate_json(r.value)
            for r in read_all(settings.kafka.bootstrap_servers, settings.kafka.output_topic, timeout_s=10)]


def by_session(events: list[AnomalyEvent]) -> dict[str, int]:
    """session -> number of distinct anomalous windows (distinct event ids)."""
    ids: dict[str, set[str]] = {}
    for ev in events:
        ids.setdefault(ev.session_id, set()).add(ev.event_id)
    return {sid: len(v) for sid, v in ids.items()}


def assert_same_anomalies(events: list[AnomalyEvent], expected: dict[str, int]) -> None:
    """Equal to the undisturbed (offline) run, and duplicates only as identical records."""
    assert by_session(events) == expected
    seen: dict[str, str] = {}
    for ev in events:
        dump = ev.model_dump_json()
        assert seen.setdefault(ev.event_id, dump) == dump, f"event {ev.event_id} published with different content"


def http_status(port: int, path: str) -> int:
    """The status a worker's HTTP endpoint answers on ``path`` (0 when nothing answers)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0
