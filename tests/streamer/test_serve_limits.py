"""What one caller may cost ``logad serve``: caps per request, turns at the model, admission, the time budget, socket
deadlines, the JSON content type and the bearer token (issue 18, item 1).

The unit tests build the pieces in process. The others start ``logad serve`` on a free port with the bundled model and
talk to it over real sockets, several clients at once from threads.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from logbert_core.bundle import load_bundle
from logbert_core.config import ConfigError, load_settings
from streamer import serve_detector
from streamer.errors import StartupError
from streamer.serve_detector import SessionDetector
from streamer.serve_limits import Budget, FairLock, Refused
from streamer.serve_middleware import Admission
from streamer.service import is_loopback, load_token

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "config" / "hdfs.toml"
BUNDLE = REPO / "models" / "hdfs"
HOLDOUT = REPO / "data" / "hdfs" / "holdout.log.gz"
TOKEN = "serve-Tok-3c9f1a"


@pytest.fixture(scope="module")
def lines() -> list[str]:
    with gzip.open(HOLDOUT, "rt") as fh:
        return [next(fh).rstrip("\n") for _ in range(3000)]


def flood(base_line: str, n_lines: int = 10_000, ids_per_line: int = 10) -> list[str]:
    """The issue's request: every line names ``ids_per_line`` block ids never named before (100k sessions)."""
    out = []
    for i in range(n_lines):
        ids = " ".join(f"blk_{i * ids_per_line + j}" for j in range(ids_per_line))
        out.append(re.sub(r"blk_-?\d+", ids, base_line))
    return out


def long_sessions(lines: list[str], n_sessions: int = 4) -> list[str]:
    """Every line in the same ``n_sessions`` blocks: few sessions, many full windows (about 3 s to score here)."""
    ids = " ".join(f"blk_{j}" for j in range(n_sessions))
    return [re.sub(r"blk_-?\d+", ids, ln) for ln in lines]


# -- in process ----------------------------------------------------------------------------------------------------

def detector(**serve: Any) -> SessionDetector:
    return SessionDetector(load_settings(CONFIG, serve=serve), load_bundle(BUNDLE))


def refusal(det: SessionDetector, lines: list[str], deadline: float | None = None) -> Refused:
    with pytest.raises(Refused) as err:
        det.detect(lines, deadline)
    return err.value


def test_each_cap_refuses_and_names_its_setting(lines):
    many = flood(lines[0], n_lines=100)  # 1,000 sessions of one line
    err = refusal(detector(max_sessions=50), many)
    assert (err.status, err.reason) == (413, "too_many_sessions") and "serve.max_sessions" in err.message
    assert "50 sessions" in err.message
    err = refusal(detector(max_windows=20), lines)
    assert (err.status, err.reason) == (413, "too_many_windows") and "serve.max_windows" in err.message
    err = refusal(detector(max_response_bytes=50_000), lines)
    assert (err.status, err.reason) == (413, "response_too_large") and "serve.max_response_bytes" in err.message
    # within the default caps, lines naming many sessions multiply the answer: each session's explanation repeats
    # the unseen templates of its window (events clip each to 1,000 characters). 20 lines of 1.2 kB words naming the
    # same 1,000 blocks (a 0.2 MB body) would answer 30 MB; the answer's cap stops it
    ids = " ".join(f"blk_{j}" for j in range(1000))
    wide = [re.sub(r"blk_-?\d+", ids, lines[0]) + f" weird{i}" * 200 for i in range(20)]
    assert refusal(detector(), wide).reason == "response_too_large"
    err = refusal(detector(), lines, deadline=time.monotonic() - 1)
    assert (err.status, err.reason) == (503, "over_time_budget") and "serve.request_timeout_s" in err.message
    assert err.headers["Retry-After"].isdigit()
    # under every cap, the same lines are judged
    body = json.loads(detector(max_sessions=1000, max_windows=1000).detect(lines))
    assert body["sessions"] and body["rejected"] == []


def test_sessions_and_entries_are_counted_while_parsing():
    """A line past a cap is never parsed: the refusal comes from the line that names session cap + 1, or that adds
    more entries than the window cap can hold."""
    det = detector(max_sessions=10)
    seen: list[str] = []
    parse = det.reader.fmt.parse

    class Counting:
        def parse(self, line: str) -> Any:
            seen.append(line)
            return parse(line)

    det.reader.fmt = Counting()  # type: ignore[assignment]
    base = "081109 203615 148 INFO dfs.DataNode$PacketResponder: PacketResponder 1 for block blk_1 terminating"
    err = refusal(det, flood(base, n_lines=10_000, ids_per_line=10))
    assert err.reason == "too_many_sessions" and "line 1 names session 11" in err.message
    assert len(seen) == 2
    # entries too: 3 sessions, 5 at most, and 10 windows of stride 32 hold at most 10 * 32 + 5 * 64 = 640 entries;
    # the line that adds the 641st is the last one parsed
    det, seen[:] = detector(max_sessions=5, max_windows=10), []
    det.reader.fmt = Counting()  # type: ignore[assignment]
    err = refusal(det, [re.sub(r"blk_-?\d+", "blk_1 blk_2 blk_3", base)] * 1000)
    assert err.reason == "too_many_windows" and "serve.max_windows" in err.message and "642 entries" in err.message
    assert len(seen) == 214


def test_the_answer_does_not_depend_on_chunking(lines, monkeypatch):
    """Scoring in chunks (turns at the model) gives the verdicts of one batch."""
    det = detector()
    turns: list[int] = []
    real_turn = det._lock.turn

    def turn(budget: Budget) -> Any:
        turns.append(1)
        return real_turn(budget)

    monkeypatch.setattr(det._lock, "turn", turn)
    whole = det.detect(lines)
    in_one = len(turns)
    monkeypatch.setattr(serve_detector, "CHUNK_POSITIONS", 64)  # one full window per turn
    chunked = det.detect(lines)
    assert len(turns) - in_one > in_one  # the patch took: more turns than unpatched
    strip = re.compile(rb'"cut_ms":\d+|"detected_at":"[^"]*"')
    assert strip.sub(b"", whole) == strip.sub(b"", chunked)


def test_fair_lock_serves_in_arrival_order():
    lock, order = FairLock(), []
    budget = Budget(None, 1.0)
    assert lock.acquire(1.0)

    def waiter(name: str) -> None:
        with lock.turn(budget):
            order.append(name)

    threads = []
    for name in ("b", "c"):
        threads.append(threading.Thread(target=waiter, args=(name,)))
        threads[-1].start()
        time.sleep(0.05)
    lock.release()
    # the releasing thread asks again at once: it goes behind the two that waited
    with lock.turn(budget):
        order.append("a")
    for t in threads:
        t.join(5)
    assert order == ["b", "c", "a"]
    # a wait past the budget is a 503, not a hang
    assert lock.acquire(1.0)
    with pytest.raises(Refused) as err:
        with lock.turn(Budget(time.monotonic() + 0.1, 0.1)):
            pass
    lock.release()
    assert err.value.reason == "over_time_budget"


def test_admission_answers_429_with_retry_after_past_max_in_flight():
    release = asyncio.Event()

    async def slow_app(scope: Any, receive: Any, send: Any) -> None:
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def run() -> list[int]:
        gate = Admission(slow_app, max_in_flight=2)
        codes: list[int] = []

        async def call(path: str = "/detect") -> None:
            async def receive() -> dict[str, Any]:
                return {"type": "http.request", "body": b"", "more_body": False}

            async def send(message: MutableMapping[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    codes.append(message["status"])
                    if message["status"] == 429:
                        assert (b"retry-after", b"1") in message["headers"]

            await gate({"type": "http", "path": path, "method": "POST", "headers": []}, receive, send)

        first = [asyncio.create_task(call()) for _ in range(2)]
        await asyncio.sleep(0.01)
        await call()  # a third while two are in flight
        health = asyncio.create_task(call("/health"))  # other routes are not counted
        await asyncio.sleep(0.01)
        release.set()
        await asyncio.gather(*first, health)
        await call()  # places are given back
        return codes

    assert asyncio.run(run()) == [429, 200, 200, 200, 200]


def test_token_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("LOGAD_SERVE__TOKEN", TOKEN)
    s = load_settings(CONFIG)
    assert load_token(s.serve) == TOKEN and TOKEN not in repr(s) and TOKEN not in str(s.serve)
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    with pytest.raises(ConfigError) as err:
        load_settings(CONFIG, serve={"token_file": str(path)})
    assert "serve.token and serve.token_file" in str(err.value) and TOKEN not in str(err.value)
    monkeypatch.delenv("LOGAD_SERVE__TOKEN")
    assert load_token(load_settings(CONFIG, serve={"token_file": str(path)}).serve) == TOKEN
    for bad in (tmp_path / "missing", tmp_path / "empty"):
        if bad.name == "empty":
            bad.write_text("\n")
        with pytest.raises(StartupError, match="serve.token_file"):
            load_token(load_settings(CONFIG, serve={"token_file": str(bad)}).serve)
    with pytest.raises(ConfigError, match="serve.token"):
        load_settings(CONFIG, serve={"token": " "})
    assert load_token(load_settings(CONFIG).serve) is None


def test_is_loopback():
    assert all(map(is_loopback, ("127.0.0.1", "127.3.2.1", "::1", "[::1]", "localhost")))
    assert not any(map(is_loopback, ("0.0.0.0", "::", "10.0.0.1", "example.internal")))


# -- over sockets --------------------------------------------------------------------------------------------------

def call(url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 60) -> tuple[int, Any, Any]:
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw, code, hdrs = resp.read(), resp.status, resp.headers
    except urllib.error.HTTPError as exc:
        raw, code, hdrs = exc.read(), exc.code, exc.headers
    ctype = hdrs.get("Content-Type", "")
    return code, json.loads(raw) if ctype.startswith("application/json") else raw.decode(), hdrs


def detect(base: str, lines: list[str], token: str | None = None, timeout: float = 60) -> tuple[int, Any, Any]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return call(f"{base}/detect", json.dumps({"lines": lines}).encode(), headers, timeout)


@contextmanager
def serve(tmp_path: Path, **env: str) -> Iterator[str]:
    """``logad serve`` in a subprocess on a free port with ``LOGAD_SERVE__<KEY>`` settings; yields its base URL."""
    log_path = tmp_path / "serve.log"
    full = dict(os.environ, LOGAD_SERVE__PORT="0", **{f"LOGAD_SERVE__{k.upper()}": v for k, v in env.items()})
    for key in ("LOGAD_SERVE__HOST", "LOGAD_SERVE__TOKEN"):
        if key.removeprefix("LOGAD_SERVE__").lower() not in env:
            full.pop(key, None)
    proc = subprocess.Popen([sys.executable, "-m", "streamer.cli", "serve", "--config", str(CONFIG), "--model",
                             str(BUNDLE)], env=full, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        found = None
        while found is None and time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text()
            found = re.search(r"listening on http://([\d.]+):(\d+)", log_path.read_text())
            time.sleep(0.1)
        assert found, log_path.read_text()
        yield f"http://127.0.0.1:{found.group(2)}"
    finally:
        proc.terminate()
        assert proc.wait(30) in (0, -15) and "Traceback" not in log_path.read_text(), log_path.read_text()


def metric(base: str, name: str) -> float:
    text = call(f"{base}/metrics")[1]
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def alongside(big: Any, small: Any, delay: float) -> tuple[tuple[Any, float], tuple[Any, float]]:
    """Runs ``big()`` in a thread and ``delay`` seconds later ``small()``; returns each result with its seconds."""
    out: dict[str, tuple[Any, float]] = {}

    def timed(name: str, fn: Any) -> None:
        t0 = time.monotonic()
        result = fn()
        out[name] = (result, time.monotonic() - t0)

    t = threading.Thread(target=timed, args=("big", big))
    t.start()
    time.sleep(delay)
    timed("small", small)
    t.join(60)
    return out["big"], out["small"]


@pytest.fixture(scope="module")
def default_server(tmp_path_factory) -> Iterator[str]:
    """The default limits, with short socket deadlines so that the tests wait little."""
    with serve(tmp_path_factory.mktemp("default"), header_timeout_s="1", keep_alive_s="1") as base:
        yield base


def test_a_100k_session_request_is_refused_fast_while_a_small_one_answers(default_server, lines):
    big = flood(lines[0])
    assert len(big) == 10_000 and len(json.dumps({"lines": big})) > 1_000_000
    (big_res, big_s), (small_res, small_s) = alongside(lambda: detect(default_server, big),
                                                       lambda: detect(default_server, lines[:50]), delay=0.0)
    print(f"100k-session request: {big_res[0]} in {big_s:.2f} s; 50-line request alongside: {small_res[0]} in "
          f"{small_s:.2f} s")
    assert big_res[0] == 413 and "serve.max_sessions" in big_res[1]["error"]
    assert big_res[1]["reason"] == "too_many_sessions" and big_s < 5
    assert small_res[0] == 200 and small_res[1]["sessions"] and small_s < 2
    assert metric(default_server, 'logad_serve_requests_refused_total{reason="too_many_sessions"}') >= 1


def test_text_plain_and_forms_get_415(default_server, lines):
    body = json.dumps({"lines": lines[:5]}).encode()
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        code, answer, _ = call(f"{default_server}/detect", body, {"Content-Type": ctype} if ctype else {})
        assert code == 415 and "application/json" in answer["error"], (ctype, code, answer)
    code, _, _ = call(f"{default_server}/detect", body, {"Content-Type": "application/json; charset=utf-8"})
    assert code == 200
    assert metric(default_server, 'logad_serve_requests_refused_total{reason="unsupported_media_type"}') >= 4


def closed_within(sock: socket.socket, seconds: float, drip: bytes = b"") -> float:
    """Seconds until the server closes ``sock`` (sending ``drip`` a byte every 0.2 s meanwhile); fails past it."""
    t0 = time.monotonic()
    sock.settimeout(0.2)
    sent = 0
    while time.monotonic() - t0 < seconds:
        try:
            if sock.recv(65536) == b"":
                return time.monotonic() - t0
        except TimeoutError:
            pass
        except ConnectionResetError:
            return time.monotonic() - t0
        if sent < len(drip):
            try:
                sock.sendall(drip[sent:sent + 1])
            except (BrokenPipeError, ConnectionResetError):
                return time.monotonic() - t0
            sent += 1
    raise AssertionError(f"the connection stayed open for {seconds} s")


def test_idle_and_dripping_sockets_are_closed(default_server):
    port = int(default_server.rsplit(":", 1)[1])
    head = b"POST /detect HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 4000\r\n\r\n"
    cases = {"silent": b"", "dripping head": head, "dripping body": head + b'{"lines": [' + b" " * 3000}
    for name, drip in cases.items():
        with socket.create_connection(("127.0.0.1", port)) as sock:
            if name == "dripping body":
                sock.sendall(head)
                drip = drip[len(head):]
            took = closed_within(sock, 5, drip)
            assert 0.8 < took < 3, (name, took)
    # an idle keep-alive connection is closed after serve.keep_alive_s
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"200 OK" in sock.recv(65536)
        assert closed_within(sock, 5) < 3
    assert metric(default_server, "logad_serve_connections_timed_out_total") >= 3


def test_a_request_scored_past_the_header_timeout_is_answered(tmp_path, lines):
    """The read deadline is for receiving a request, not for judging it: a deadline of 0.2 s, and a request that
    takes about 1 s to judge on a fast machine (3 s on a loaded one) is answered."""
    with serve(tmp_path, header_timeout_s="0.2", keep_alive_s="1") as base:
        t0 = time.monotonic()
        code, body, _ = detect(base, long_sessions(lines))
        took = time.monotonic() - t0
    assert code == 200 and len(body["sessions"]) == 4 and took > 0.2, took


def test_a_request_over_the_time_budget_gets_503_and_does_not_starve_others(tmp_path, lines):
    """With the caps raised, the 100k-session request runs into serve.request_timeout_s; a 50-line request sent
    alongside takes its turns at the model between the big one's chunks."""
    with serve(tmp_path, max_sessions="1000000", max_windows="1000000", max_response_bytes=str(1 << 30),
               request_timeout_s="3") as base:
        (big_res, big_s), (small_res, small_s) = alongside(lambda: detect(base, flood(lines[0])),
                                                           lambda: detect(base, lines[:50]),
                                                           delay=0.3)  # the big one is at work by then
        print(f"100k-session request, caps raised: {big_res[0]} in {big_s:.2f} s; 50-line request alongside: "
              f"{small_res[0]} in {small_s:.2f} s")
        assert big_res[0] == 503 and "serve.request_timeout_s" in big_res[1]["error"] and big_s < 5
        assert big_res[2]["Retry-After"] == "1"
        assert small_res[0] == 200 and small_s < 2
        assert metric(base, 'logad_serve_requests_refused_total{reason="over_time_budget"}') == 1


def test_bearer_token(tmp_path, lines):
    (tmp_path / "token").write_text(TOKEN + "\n")
    with serve(tmp_path, token_file=str(tmp_path / "token")) as base:
        code, body, hdrs = detect(base, lines[:20])
        assert code == 401 and hdrs["WWW-Authenticate"] == 'Bearer realm="logad"' and "serve.token" in body["error"]
        code, body, hdrs = detect(base, lines[:20], token="wrong")
        assert code == 401 and 'error="invalid_token"' in hdrs["WWW-Authenticate"]
        code, body, _ = detect(base, lines[:20], token=TOKEN)
        assert code == 200 and body["sessions"]
        # the token is checked before the content type, and before any body is read
        code, _, _ = call(f"{base}/detect", b"x" * 100, {"Content-Type": "text/plain"})
        assert code == 401
        # probes, metrics and the API docs stay open
        for path in ("/health", "/ready", "/metrics", "/openapi.json", "/docs"):
            assert call(f"{base}{path}")[0] == 200, path
        spec = call(f"{base}/openapi.json")[1]
        assert spec["paths"]["/detect"]["post"]["security"] == [{"bearer": []}]
        assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
        assert metric(base, 'logad_serve_requests_refused_total{reason="unauthorized"}') == 3
    assert TOKEN not in (tmp_path / "serve.log").read_text()
