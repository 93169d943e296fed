"""What one input may cost ``logad run`` (issue 18), against a real broker and a real redis-server: a key flood is
refused past ``session.max_open`` and its events become one storm summary; a stopped Redis makes the worker exit 3
within the outage budget plus a socket timeout, counted from the first hung call.

The flood size is ``LOGAD_TEST_FLOOD`` (default 100,000 one-line sessions); ``benchmarks/flood.py`` prints the
same figures for any size.
"""

from __future__ import annotations

import os
import re
import signal
import time
import urllib.error
import urllib.request
from collections import Counter

import pytest
import redis
from e2e_harness import env_for, events_of, http_status, make_topics, settings_for, spawn, wait_done

from streamer.embedded import free_port, start_redis
from streamer.events import STORM_REASON, STORM_SESSION
from streamer.kafka_io import produce_lines, read_all

pytestmark = pytest.mark.integration

FLOOD = int(os.environ.get("LOGAD_TEST_FLOOD", "100000"))
MAX_OPEN = 20_000
PER_MINUTE = 100
# Stated bounds (docs/operations.md, "Limits of logad run"). Measured on this machine, 100k one-line sessions of
# which 20k admitted: Redis peak 15.6-15.7 MiB, worker peak RSS 366-380 MiB; the bounds leave room for other
# allocators and machines.
REDIS_PEAK_BOUND = 32 * 2**20
WORKER_RSS_BOUND = 600 * 2**20


def flood_line(i: int) -> str:
    """One line of a new block, 100 blocks a second of log time: the log goes on past each block for longer than
    the rest horizon (300 s), so each one-line block is judged as one that stopped."""
    t = 20 * 3600 + i // 100
    return (f"081109 {t // 3600:02d}{t // 60 % 60:02d}{t % 60:02d} 148 INFO dfs.DataNode$DataXceiver: Receiving block "
            f"blk_{9_000_000 + i} src: /10.250.19.102:54106 dest: /10.250.19.102:50010")


def wait_held_stops_settled(s, timeout: float = 300) -> None:
    """Until the held stops no longer change for 5 s: those the log went on past are published (or suppressed);
    the last blocks of the flood stay held, as the log did not go on past them for the rest horizon."""
    r = redis.Redis.from_url(s.redis.url)
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        held = sum(r.zcard(k) for k in r.scan_iter(match=f"{s.redis.namespace}:*:ends"))
        if held != last:
            last, since = held, time.monotonic()
        elif time.monotonic() - since > 5:
            return
        time.sleep(0.5)
    raise AssertionError(f"held stops still changing after {timeout} s")


def metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
            if ln and not ln.startswith("#")}


def peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(ln.split()[1]) * 1024 for ln in fh if ln.startswith("VmHWM:"))


def test_a_key_flood_is_refused_past_the_cap_and_its_events_become_one_storm(broker, topic_name, tmp_path):
    rds = start_redis()  # its own, so that its memory peak is the flood's
    try:
        s = settings_for(broker.url, rds.url, topic_name, "flood", session={"max_open": MAX_OPEN},
                         detector={"max_events_per_minute": PER_MINUTE})
        make_topics(s)
        assert produce_lines(broker.url, topic_name, [flood_line(i) for i in range(FLOOD)], timeout_s=300) == FLOOD
        port = free_port()
        # the whole flood waits on the topic: the worker reads it all before it closes any session (sweeps wait
        # until it has caught up), so exactly MAX_OPEN sessions are admitted
        env = env_for(s, LOGAD_HTTP__PORT=str(port), LOGAD_SESSION__MAX_OPEN=str(MAX_OPEN),
                      LOGAD_DETECTOR__MAX_EVENTS_PER_MINUTE=str(PER_MINUTE), LOGAD_REDIS__MEMORY_POLL_S="1")
        w = spawn(env, tmp_path / "w.log")
        try:
            wait_done(s, timeout=600)
            wait_held_stops_settled(s)
            wait_done(s, timeout=60)
            time.sleep(2)  # the last publish job's metrics
            got = metrics(port)
            rss = peak_rss(w.pid)
        finally:
            w.send_signal(signal.SIGTERM)
            code = w.wait(60)
        log = (tmp_path / "w.log").read_text()
        assert code == 0, log[-3000:]
        info = redis.Redis.from_url(rds.url).info("memory")
    finally:
        rds.stop()

    refused = FLOOD - MAX_OPEN
    dlq = read_all(broker.url, s.kafka.dlq, expected=refused, timeout_s=120)
    assert Counter(dict(r.headers)["logad.reason"].decode() for r in dlq) == {"session_cap": refused}
    assert got["logad_sessions_refused_total"] == refused
    assert got['logad_lines_rejected_total{reason="session_cap"}'] == refused
    assert 0 < got["logad_redis_used_memory_bytes"] < REDIS_PEAK_BOUND

    events = events_of(s)
    storms = {e.event_id: e for e in events if e.session_id == STORM_SESSION}
    windows = {e.event_id for e in events if e.session_id != STORM_SESSION}
    per_minute = Counter(e.detected_at.replace(second=0, microsecond=0) for e in events
                         if e.session_id != STORM_SESSION and e.event_id in windows)
    assert len(storms) == 1, [e.explanation.summary for e in storms.values()]
    (storm,) = storms.values()
    assert storm.explanation.reasons == [STORM_REASON] and storm.storm is not None
    assert storm.storm.published == PER_MINUTE == storm.window.line_count and storm.storm.top_reasons
    assert max(per_minute.values()) <= PER_MINUTE
    suppressed = got["logad_anomalies_suppressed_total"]
    assert suppressed > 0 and got["logad_anomalies_published_total"] == len(windows)
    assert len(windows) + suppressed <= MAX_OPEN  # one window per admitted session at most
    assert got["logad_anomaly_storms_total"] == 1
    assert info["used_memory_peak"] < REDIS_PEAK_BOUND, info["used_memory_peak_human"]
    assert rss < WORKER_RSS_BOUND, rss
    print(f"\nflood {FLOOD}: refused {refused}, events {len(windows)} + 1 storm summary, suppressed {suppressed:.0f}; "
          f"redis peak {info['used_memory_peak'] / 2**20:.1f} MiB, worker peak RSS {rss / 2**20:.0f} MiB; "
          f"storm: {storm.explanation.summary}")


def test_a_stopped_redis_exits_3_within_the_budget_plus_two_seconds(broker, topic_name, lines, tmp_path):
    rds = start_redis()
    try:
        s = settings_for(broker.url, rds.url, topic_name, "budget8")
        make_topics(s)
        port = free_port()
        w = spawn(env_for(s, LOGAD_DETECTOR__OUTAGE_BUDGET_S="8", LOGAD_HTTP__PORT=str(port)), tmp_path / "w.log")
        produce_lines(broker.url, topic_name, lines[:1000])
        deadline = time.monotonic() + 60
        while http_status(port, "/ready") != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert http_status(port, "/health") == 200
        time.sleep(1)
        rds.pause()  # SIGSTOP: every call hangs until its socket timeout, as a stuck or unreachable Redis does
        stopped = time.monotonic()
        produce_lines(broker.url, topic_name, lines[1000:1200])
        health: list[tuple[float, int]] = []
        while w.poll() is None and time.monotonic() - stopped < 30:
            health.append((time.monotonic() - stopped, http_status(port, "/health")))
            time.sleep(0.25)
        code = w.wait(30)
        took = time.monotonic() - stopped
    finally:
        rds.resume() if rds.paused else None
        rds.stop()
    log = (tmp_path / "w.log").read_text()
    assert code == 3, log[-3000:]
    assert took <= 8 + 2, (took, log[-3000:])
    reported = float(re.search(r"unavailable for ([\d.]+) s, from the first failed or hung call", log).group(1))
    assert 8 <= reported <= took, (reported, took)
    assert "Traceback" not in log
    # /health answered 200 early in the outage and 503 past half the budget, until the worker exited
    assert all(code == 200 for t, code in health if t < 3), health
    assert any(code == 503 for t, code in health if 4.5 < t), health
    print(f"\nexit 3 after {took:.1f} s of a stopped Redis (reported {reported:.1f} s; budget 8 s)")
