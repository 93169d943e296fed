"""``logad serve`` over real sockets: a subprocess on a free port, judged on held-out HDFS blocks the model never saw.

The reference is the offline evaluation of the same lines by the same bundle; the labels pick which sessions to
look at (blocks whose offline verdict agrees with their label), never which verdict to expect.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from logbert_core.bundle import load_bundle
from logbert_core.config import load_settings
from training.data import load_labels
from training.evaluate import evaluate_bundle

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "config" / "hdfs.toml"
BUNDLE = REPO / "models" / "hdfs"
HOLDOUT = REPO / "data" / "hdfs" / "holdout.log.gz"
LABELS = REPO / "data" / "hdfs" / "holdout.labels.csv"
N_LINES = 3000
MAX_LINES = 4000
MAX_BODY = 1_000_000
PROMTOOL = shutil.which("promtool")


def call(url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET",
                                 headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            raw, code, ctype = resp.read(), resp.status, resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        raw, code, ctype = exc.read(), exc.code, exc.headers.get("Content-Type", "")
    return code, json.loads(raw) if ctype.startswith("application/json") else raw.decode()


def detect(base: str, lines: list[str]) -> tuple[int, Any]:
    return call(f"{base}/detect", json.dumps({"lines": lines}).encode(), {"Content-Type": "application/json"})


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> str:
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    env = dict(os.environ, LOGAD_SERVE__PORT="0", LOGAD_SERVE__MAX_LINES=str(MAX_LINES),
               LOGAD_SERVE__MAX_BODY_BYTES=str(MAX_BODY))
    env.pop("LOGAD_SERVE__HOST", None)
    proc = subprocess.Popen([sys.executable, "-m", "streamer.cli", "serve", "--config", str(CONFIG), "--model",
                             str(BUNDLE)], env=env, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        found = None
        while found is None and time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text()
            found = re.search(r"listening on http://([\d.]+):(\d+)", log_path.read_text())
            time.sleep(0.1)
        assert found, log_path.read_text()
        assert found.group(1) == "127.0.0.1"  # loopback unless configured
        yield f"http://127.0.0.1:{found.group(2)}"
    finally:
        proc.terminate()
        # uvicorn shuts down gracefully, then re-raises SIGTERM: the exit status says the signal, not a crash
        assert proc.wait(30) in (0, -15) and "Traceback" not in log_path.read_text(), log_path.read_text()


@pytest.fixture(scope="module")
def holdout(tmp_path_factory) -> tuple[list[str], dict[str, bool]]:
    """The first lines of the held-out file and the offline verdict (any window flagged) of every session in them."""
    with gzip.open(HOLDOUT, "rt") as fh:
        lines = [next(fh).rstrip("\n") for _ in range(N_LINES)]
    path = tmp_path_factory.mktemp("holdout") / "slice.log"
    path.write_text("\n".join(lines) + "\n")
    # /detect takes each session as finished, so the reference does too (no session is cut off by the slice's end)
    verdicts, _ = evaluate_bundle(load_bundle(BUNDLE), load_settings(CONFIG), [path], None, finished=True)
    return lines, {sid: any(v.anomalous for v in vs) for sid, vs in verdicts.items()}


def test_detect_equals_the_offline_evaluation(server, holdout):
    lines, offline = holdout
    code, body = detect(server, lines[::-1])  # arrival order does not matter: sessions are ordered canonically
    assert code == 200, body
    got = {s["session_id"]: s["anomalous"] for s in body["sessions"]}
    assert got == offline
    assert body["rejected"] == [] and body["model_version"] == load_bundle(BUNDLE).version


def test_detect_flags_anomalous_blocks_and_passes_normal_ones(server, holdout):
    lines, offline = holdout
    labels = load_labels(LABELS)
    # blocks whose offline verdict agrees with their label (the model is not perfect; the API must match the model)
    anomalous = sorted(s for s, flagged in offline.items() if flagged and labels.get(s) is True)[:3]
    normal = sorted(s for s, flagged in offline.items() if not flagged and labels.get(s) is False)[:3]
    assert len(anomalous) >= 2 and len(normal) >= 2
    wanted = set(anomalous + normal)
    mine = [ln for ln in lines if set(re.findall(r"blk_-?\d+", ln)) & wanted]
    code, body = detect(server, mine)
    assert code == 200, body
    by_id = {s["session_id"]: s for s in body["sessions"]}
    for sid in anomalous:
        s = by_id[sid]
        assert s["anomalous"] is True and s["flagged_windows"] >= 1 and s["reasons"]
        assert s["explanation"]["summary"] and s["explanation"]["templates"] and s["window"]["line_count"] >= 1
        assert s["threshold"] == pytest.approx(load_bundle(BUNDLE).thresholds.miss_ratio)
    for sid in normal:
        s = by_id[sid]
        assert s["anomalous"] is False and s["flagged_windows"] == 0 and s["window"] is None
        assert "none flagged" in s["explanation"]["summary"] and s["score"] <= s["threshold"]


def test_bad_lines_are_reported_not_fatal(server, holdout):
    lines = holdout[0][:50]
    code, body = detect(server, ["", "not an hdfs line", "081109 203615 148 INFO dfs.DataNode: no block", *lines])
    assert code == 200
    assert [(r["index"], r["reason"]) for r in body["rejected"]] == [(0, "empty"), (1, "format_mismatch"),
                                                                     (2, "no_session_key")]
    assert body["sessions"]


@pytest.mark.parametrize("body,code,needle", [
    (b'{"lines": ["a", ', 400, "not valid JSON"),
    (b"lines=a", 400, "not valid JSON"),
    (b'{"lines": "one line"}', 422, "lines"),
    (b'{"lines": [1, 2]}', 422, "lines"),
    (b'{"line": ["a"]}', 422, "lines"),
    (b"[]", 422, "lines"),
])
def test_malformed_bodies_get_400_or_422_with_a_message(server, body, code, needle):
    got, answer = call(f"{server}/detect", body, {"Content-Type": "application/json"})
    assert got == code and needle in json.dumps(answer) and answer["error"]


def test_limits_give_413(server):
    code, body = detect(server, ["x"] * (MAX_LINES + 1))
    assert code == 413 and "serve.max_lines" in body["error"]
    code, body = detect(server, ["x" * 1000] * (MAX_BODY // 1000 + 1))
    assert code == 413 and "serve.max_body_bytes" in body["error"]
    # a chunked body without Content-Length is counted as it arrives
    chunks = iter([b'{"lines": ["', b"y" * MAX_BODY, b'"]}'])
    req = urllib.request.Request(f"{server}/detect", data=chunks, method="POST",
                                 headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert err.value.code == 413


def test_health_ready_docs_and_metrics(server, holdout):
    assert detect(server, holdout[0][:20])[0] == 200  # a request of its own to count, whatever ran before
    assert call(f"{server}/health")[0] == 200 and call(f"{server}/ready")[1]["ready"] is True
    code, spec = call(f"{server}/openapi.json")
    assert code == 200
    post = spec["paths"]["/detect"]["post"]
    assert "lines" in post["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert {"200", "400", "413", "422"} <= set(post["responses"])
    assert call(f"{server}/docs")[0] == 200
    code, text = call(f"{server}/metrics")
    assert code == 200 and 'logad_serve_requests_total{code="200",route="/detect"}' in text
    assert "logad_serve_sessions_total" in text and "logad_lines_consumed_total" not in text
    if PROMTOOL is not None:  # scripts/setup.sh installs it; test_operations skips with the reason when absent
        res = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
        assert res.returncode == 0 and not (res.stdout + res.stderr).strip(), res.stdout + res.stderr
