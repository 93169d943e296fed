"""The operator's surface against real processes: ``logad run``'s HTTP endpoints, ``replay``, ``tail``, ``doctor``,
the event schema and the alert forwarder.

One detector process (``logad run`` as a subprocess, as an operator starts it) consumes held-out HDFS lines that
``logad replay`` produced; the tests then look at its HTTP endpoints and at the events it published.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import jsonschema
import pytest

from logbert_core.bundle import load_bundle
from logbert_core.config import load_settings
from streamer.embedded import free_port
from streamer.events import AnomalyEvent
from streamer.kafka_io import ensure_topics, read_all
from streamer.schema import event_schema, producer_schema
from training.evaluate import evaluate_bundle

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "config" / "hdfs.toml"
BUNDLE = REPO / "models" / "hdfs"
HOLDOUT = REPO / "data" / "hdfs" / "holdout.log.gz"
SCHEMA = REPO / "schemas" / "anomaly-event.schema.json"
N_LINES = 1200  # the first prefix of the hold-out with two offline anomalies (one with a new template)
PROMTOOL = shutil.which("promtool")


def logad(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamer.cli", *args], env=dict(os.environ, **(env or {})),
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


def http_get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


class Detector:
    """What the module's detector run left behind."""

    def __init__(self, env: dict[str, str], base: str, topic: str, out_topic: str, proc: subprocess.Popen[bytes],
                 log_path: Path, events: list[bytes], ready_codes: list[int]) -> None:
        self.env, self.base, self.topic, self.out_topic = env, base, topic, out_topic
        self.proc, self.log_path, self.events, self.ready_codes = proc, log_path, events, ready_codes


@pytest.fixture(scope="module")
def detector(broker, redis_proc, tmp_path_factory) -> Detector:
    tmp = tmp_path_factory.mktemp("ops")
    with gzip.open(HOLDOUT, "rt") as fh:
        lines = [next(fh) for _ in range(N_LINES)]
    src = tmp / "holdout-slice.log"
    src.write_text("".join(lines))
    verdicts, _ = evaluate_bundle(load_bundle(BUNDLE), load_settings(CONFIG), [src], None)
    expected = sum(v.anomalous for vs in verdicts.values() for v in vs)
    assert expected > 0

    topic = f"t.ops.{os.getpid()}"
    out_topic = f"{topic}.out"
    ensure_topics(broker.url, {topic: 2, out_topic: 1, f"{topic}.dlq": 1})
    produced = logad("replay", str(src), "--config", str(CONFIG), "--bootstrap-servers", broker.url, "--topic", topic)
    assert produced.returncode == 0, produced.stderr
    assert f"produced {N_LINES} lines to {topic}" in produced.stdout
    assert "lines/s" in produced.stderr  # the progress bar

    port = free_port()
    env = {"LOGAD_KAFKA__BOOTSTRAP_SERVERS": broker.url, "LOGAD_KAFKA__INPUT_TOPIC": topic,
           "LOGAD_KAFKA__OUTPUT_TOPIC": out_topic, "LOGAD_KAFKA__GROUP_ID": f"ops-{os.getpid()}",
           "LOGAD_KAFKA__SESSION_TIMEOUT_MS": "6000", "LOGAD_REDIS__URL": redis_proc.url,
           "LOGAD_REDIS__NAMESPACE": f"ops{os.getpid()}", "LOGAD_SESSION__IDLE_TIMEOUT_S": "1.5",
           "LOGAD_DETECTOR__SWEEP_INTERVAL_S": "0.5", "LOGAD_HTTP__PORT": str(port)}
    log_path = tmp / "run.log"
    proc = subprocess.Popen([sys.executable, "-m", "streamer.cli", "-v", "run", "--config", str(CONFIG), "--model",
                             str(BUNDLE)], env=dict(os.environ, **env), stdout=open(log_path, "wb"),
                            stderr=subprocess.STDOUT, cwd=REPO)
    base = f"http://127.0.0.1:{port}"
    ready_codes: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            try:
                code = http_get(f"{base}/ready")[0]
            except OSError:  # not listening yet
                time.sleep(0.2)
                continue
            ready_codes.append(code)
            if code == 200:
                break
            time.sleep(0.2)
        events: list = []
        while time.monotonic() < deadline:
            events = read_all(broker.url, out_topic, expected=expected, timeout_s=5)
            if len(events) >= expected:
                break
        assert len(events) == expected, log_path.read_text()[-3000:]
        yield Detector(env, base, topic, out_topic, proc, log_path, [r.value for r in events], ready_codes)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def test_run_serves_health_ready_and_metrics(detector):
    code, ctype, body = http_get(f"{detector.base}/health")
    assert (code, ctype, json.loads(body)) == (200, "application/json", {"status": "alive"})
    assert detector.ready_codes[-1] == 200 and set(detector.ready_codes) <= {200, 503}
    code, _, body = http_get(f"{detector.base}/ready")
    ready = json.loads(body)
    assert code == 200 and ready["ready"] is True and ready["partitions"] == 2 and ready["redis"] is True
    assert http_get(f"{detector.base}/nope")[0] == 404

    code, ctype, text = http_get(f"{detector.base}/metrics")
    assert code == 200 and ctype.startswith("text/plain; version=")  # the Prometheus text format
    samples = {ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
               if ln and not ln.startswith("#")}
    assert samples["logad_lines_consumed_total"] == N_LINES
    assert samples["logad_anomalies_published_total"] == len(detector.events)
    assert samples["logad_ready"] == 1
    assert samples['logad_lines_rejected_total{reason="format_mismatch"}'] == 0  # bounded labels exist at 0
    assert samples['logad_windows_scored_total{cause="idle"}'] > 0
    assert samples["logad_score_cache_warmed_total"] == len(load_bundle(BUNDLE).warm_windows) > 0  # at start-up
    assert samples["logad_sweep_seconds_count"] > 0 and samples["logad_score_queue_wait_seconds_count"] > 0
    assert samples["logad_publish_flush_seconds_count"] > 0
    assert any(k.startswith("logad_model_info{") for k in samples)
    assert all(not k.startswith("logad_serve_") for k in samples)  # the API's series live in its own registry


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not on PATH (scripts/setup.sh installs the Debian package "
                                             "prometheus, which ships it)")
def test_run_metrics_pass_promtool(detector):
    text = http_get(f"{detector.base}/metrics")[2]
    res = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0 and not res.stdout.strip() and not res.stderr.strip(), res.stdout + res.stderr


def test_committed_schema_is_the_generated_one_and_real_events_validate(detector):
    committed = json.loads(SCHEMA.read_text())
    assert committed == event_schema(), "regenerate: logad schema > schemas/anomaly-event.schema.json"
    assert logad("schema").stdout == SCHEMA.read_text()
    validator = jsonschema.Draft202012Validator(committed)
    strict = jsonschema.Draft202012Validator(producer_schema())  # what this detector may emit, nothing more
    for raw in detector.events:
        validator.validate(json.loads(raw))
        strict.validate(json.loads(raw))
    ev = json.loads(detector.events[0])
    assert ev["log_family"] == "hdfs" and ev["severity"] in ("critical", "warning") and ev["host"]
    assert ev["input"]["topic"] == detector.topic and ev["input"]["ranges"]
    added = dict(ev, unexpected=1)  # a field a later version adds: consumers of this schema accept it
    validator.validate(added)
    with pytest.raises(jsonschema.ValidationError):
        strict.validate(added)
    del added["unexpected"], added["session_id"]
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(added)


def test_tail_prints_events_readably_and_as_json(broker, detector):
    n = len(detector.events)
    base = ["tail", "--config", str(CONFIG), "--bootstrap-servers", broker.url, "--topic", detector.out_topic,
            "--from-beginning", "--max-events", str(n)]
    res = logad(*base)
    assert res.returncode == 0, res.stderr
    heads = [ln for ln in res.stdout.splitlines() if ln.startswith("ANOMALY ")]
    sessions = sorted(AnomalyEvent.model_validate_json(raw).session_id for raw in detector.events)
    assert sorted(h.split()[1] for h in heads) == sessions
    assert res.stdout.count("  why: ") == n

    res = logad(*base, "--format", "json")
    assert res.returncode == 0, res.stderr
    assert [json.loads(ln) for ln in res.stdout.splitlines()] == [json.loads(raw) for raw in detector.events]

    # without --max-events: everything there is, then it exits once nothing new arrived for a second
    idle = logad(*base[:-2], "--format", "json", "--idle-exit", "1")
    assert idle.returncode == 0 and len(idle.stdout.splitlines()) == n


def test_replay_json_format_and_rate(broker, topic_name, tmp_path):
    src = tmp_path / "few.log"
    src.write_text("".join(f"081109 2036{i:02d} 1 INFO dfs.DataNode: line {i} blk_{i}\n" for i in range(20)))
    ensure_topics(broker.url, {topic_name: 1})
    res = logad("replay", str(src), "--bootstrap-servers", broker.url, "--topic", topic_name, "--format", "json",
                "--rate", "200")
    assert res.returncode == 0, res.stderr
    values = [json.loads(r.value) for r in read_all(broker.url, topic_name, expected=20, timeout_s=10)]
    assert [v["log"] for v in values] == src.read_text().splitlines()
    assert all(isinstance(v["@timestamp"], float) for v in values)


def test_doctor_passes_on_a_working_setup_and_names_each_problem(broker, redis_proc, detector):
    res = logad("doctor", "--config", str(CONFIG), "--model", str(BUNDLE), env=detector.env)
    assert res.returncode == 0, res.stdout + res.stderr
    for needle in (f"ok    kafka  input topic {detector.topic} exists, 2 partition(s)",
                   f"ok    kafka  output topic {detector.out_topic} exists", f"dead-letter topic {detector.topic}.dlq",
                   "ok    redis", "answers PING, Redis ", "ok    model  the config agrees with the bundle"):
        assert needle in res.stdout, res.stdout
    assert "group ops-" in res.stdout and "0 record(s) behind" in res.stdout

    env = dict(detector.env, LOGAD_KAFKA__OUTPUT_TOPIC="t.ops.missing", LOGAD_REDIS__URL=f"redis://127.0.0.1:"
               f"{free_port()}/0", LOGAD_PARSER__SIM_TH="0.5")
    res = logad("doctor", "--config", str(CONFIG), "--model", str(BUNDLE), "--timeout", "2", env=env)
    assert res.returncode == 1
    out = res.stdout
    assert "FAIL  kafka  output topic t.ops.missing does not exist" in out and "--create-topics" in out
    assert "FAIL  redis" in out and "not reachable" in out and "fix: check redis.url" in out
    assert "FAIL  model" in out and "parser.sim_th: config has 0.5, bundle was trained with 0.4" in out
    assert "3 problem(s)" in out and "Traceback" not in res.stderr

    env = dict(detector.env, LOGAD_KAFKA__BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}")
    res = logad("doctor", "--config", str(CONFIG), "--timeout", "1", env=env)
    assert res.returncode == 1 and "FAIL  kafka  broker" in res.stdout and "not reachable" in res.stdout
    assert res.stderr == ""  # kafka-python's retry noise is kept out of the report


