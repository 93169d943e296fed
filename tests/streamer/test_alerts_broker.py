"""``logad alerts forward`` as an operator runs it: a process reading a real (tansu) broker, posting to a fake
Alertmanager and to the real one (the ``alertmanager`` binary of the Debian package prometheus-alertmanager, when
installed) with the repository's deploy/alertmanager.yml.

Asserted at the broker: nothing committed while Alertmanager is down, everything committed once it took the alerts.
Asserted at Alertmanager: one active alert per session, a late backlog arrives firing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from test_alerts import FakeAlertmanager, event

from streamer.embedded import free_port
from streamer.kafka_io import committed_offsets, end_offsets, ensure_topics, produce_lines

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


def forward(broker_url: str, topic: str, group: str, am_url: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "streamer.cli", "alerts", "forward", "--brokers", broker_url, "--topic", topic,
         "--group", group, "--alertmanager", am_url, "--metrics-port", "0", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env=dict(os.environ, LOGAD_KAFKA__SESSION_TIMEOUT_MS="6000"))


def produce(broker_url: str, topic: str) -> None:
    ensure_topics(broker_url, {topic: 2})
    values = [event("blk_1", 0), b"garbage", event("blk_1", 1, severity="critical"), event("blk_2", 0)]
    produce_lines(broker_url, topic, values)


def test_forwarder_commits_only_what_alertmanager_took(broker, topic_name):
    produce(broker.url, topic_name)
    group = f"alerts-{topic_name}"
    down = FakeAlertmanager(codes=[503] * 10_000)
    try:
        proc = forward(broker.url, topic_name, group, down.url)
        deadline = time.monotonic() + 60
        while len(down.requests) < 3 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        down.close()
    assert len(down.requests) >= 3, err
    assert proc.returncode == 0, err
    assert "not delivered" in err and "records stay uncommitted" in err
    assert all(v is None for v in committed_offsets(broker.url, group, topic_name).values())

    up = FakeAlertmanager()
    try:
        proc = forward(broker.url, topic_name, group, up.url, "--max-events", "3")
        _, err = proc.communicate(timeout=90)
    finally:
        up.close()
    assert proc.returncode == 0, err
    alerts = up.delivered()
    # two sessions: blk_1's two windows are one alert (or the same alert twice, if they came in two batches)
    assert {a["labels"]["session_id"] for a in alerts} == {"blk_1", "blk_2"}
    assert len(alerts) <= 3 and all("event_id" not in a["labels"] for a in alerts)
    assert f"skipping record {topic_name}[" in err and "not json" in err  # logged with its origin, not blocking
    assert committed_offsets(broker.url, group, topic_name) == end_offsets(broker.url, topic_name)
    assert json.loads(err.strip().splitlines()[-1])["invalid"] == 1


@pytest.mark.skipif(ALERTMANAGER is None, reason="no alertmanager binary (scripts/setup.sh installs the Debian "
                                                 "package prometheus-alertmanager)")
def test_real_alertmanager_holds_one_firing_alert_per_session(broker, topic_name):
    produce(broker.url, topic_name)
    port = free_port()
    with tempfile.TemporaryDirectory() as data:
        am = subprocess.Popen([ALERTMANAGER, f"--config.file={REPO / 'deploy' / 'alertmanager.yml'}",
                               f"--storage.path={data}", f"--web.listen-address=127.0.0.1:{port}",
                               "--cluster.listen-address="],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    urllib.request.urlopen(f"{base}/-/ready", timeout=2).read()
                    break
                except OSError:
                    if time.monotonic() > deadline or am.poll() is not None:
                        raise AssertionError("alertmanager did not start: " + (am.stderr.read() if am.stderr
                                                                                 else "")) from None
                    time.sleep(0.2)
            proc = forward(broker.url, topic_name, f"am-{topic_name}", base, "--max-events", "3")
            _, err = proc.communicate(timeout=90)
            assert proc.returncode == 0, err
            with urllib.request.urlopen(f"{base}/api/v2/alerts?filter=alertname%3D%22LogAnomaly%22",
                                        timeout=5) as resp:
                held = json.loads(resp.read())
        finally:
            am.terminate()
            am.wait(timeout=30)
    by_session = {a["labels"]["session_id"]: a for a in held}
    assert sorted(by_session) == ["blk_1", "blk_2"] and len(held) == 2, held
    # events detected in 2020, posted now: firing (endsAt from the time of posting), not already resolved
    assert all(a["status"]["state"] in ("active", "suppressed") for a in held), held
    assert by_session["blk_1"]["labels"]["severity"] == "critical"
    assert by_session["blk_2"]["labels"]["severity"] == "warning"
    assert {r["name"] for r in by_session["blk_1"]["receivers"]} == {"pager", "anomalies"}
