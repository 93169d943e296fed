"""``logad serve``: on-demand detection over HTTP. ``POST /detect`` judges a batch of raw lines with the
detector's rules.

Each line goes through the stream's own steps: the value decoder (same rejections as the dead-letter topic), the
configured line format, the frozen template lookup, sessions by the configured key rule, canonical entry order,
``session_windows`` and the ``WindowJudge`` built as ``training.evaluate`` builds it. A session's windows are the
ones ``logad run`` cuts when these lines are all the session has and it then goes idle, so the verdicts equal the
offline evaluation of the same lines (a test holds the two equal).

The API is stateless: nothing is kept between requests, and a session split over two requests is judged twice, on
each part.

What one request may cost is bounded (``[serve]``, docs/operations.md "Limits of logad serve"): body size and line
count (413); sessions, counted while the lines are parsed, and windows, counted before any is scored (413, before
the work is done); the answer's size (413); the time from a received body to the answer (503). Scoring goes in
chunks of a few thousand window positions under a lock granted in arrival order, so concurrent requests take turns
chunk by chunk and a large request cannot hold the model for seconds while a small one waits. At most
``serve.max_in_flight`` requests are worked on at once (429 with ``Retry-After`` beyond). Only ``application/json``
bodies are read (415), an optional bearer token guards every route but health, readiness, metrics and the API docs
(401), and a connection whose request does not arrive within ``serve.header_timeout_s`` is closed.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import to_json
from starlette.concurrency import run_in_threadpool

from logbert_core.bundle import Bundle
from logbert_core.config import ServeSection, Settings
from logbert_core.judge import Verdict
from logbert_core.parsing import LineFormatError, key_of, line_digest
from logbert_core.runtime import DeviceError, SettingsMismatch, build_judge, check_settings, resolve_device
from logbert_core.windows import canonical_entries, session_windows, window_keys
from streamer import metrics as m
from streamer.decode import Rejected, ValueDecoder
from streamer.errors import LogadError, StartupError
from streamer.events import Explanation, WindowExtent, build_event

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Requests refused, by reason. Here rather than in streamer.metrics because only this module refuses them; they join
# the API's own registry, so /metrics of logad serve shows them. Every reason exists from the start, at 0.
REFUSALS = ("unauthorized", "unsupported_media_type", "busy", "body_too_large", "too_many_lines",
            "too_many_sessions", "too_many_windows", "response_too_large", "over_time_budget")
SERVE_REFUSED = Counter("logad_serve_requests_refused_total", "Requests refused instead of answered, by reason",
                        ["reason"], registry=m.SERVE_REGISTRY)
for _reason in REFUSALS:
    SERVE_REFUSED.labels(_reason)
SERVE_IN_FLIGHT = Gauge("logad_serve_detect_in_flight", "POST /detect requests admitted and not yet answered "
                        "(at most serve.max_in_flight)", registry=m.SERVE_REGISTRY)
SERVE_LOCK_WAIT = Counter("logad_serve_score_wait_seconds_total", "Time /detect requests waited for their turn at "
                          "the model, summed over chunks", registry=m.SERVE_REGISTRY)
SERVE_READ_TIMEOUTS = Counter("logad_serve_connections_timed_out_total", "Connections closed because a request's "
                              "head or body did not arrive within serve.header_timeout_s", registry=m.SERVE_REGISTRY)

# A chunk scored in one turn at the model holds at most this many window positions (64 full HDFS windows, about
# 0.1 s on two CPU cores) and at most detector.max_batch windows.
CHUNK_POSITIONS = 4096
# The requests that stay open when a token is set: probes, metrics and the API's description.
OPEN_ROUTES = frozenset({"/health", "/ready", "/metrics", "/docs", "/openapi.json"})
RETRY_AFTER_S = 1


# -- refusals ------------------------------------------------------------------------------------------------------

class Refused(LogadError):
    """A request answered with an error instead of a verdict; ``reason`` labels ``logad_serve_requests_refused_total``
    and the message names the limit and its setting."""

    def __init__(self, status: int, reason: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.reason, self.message, self.headers = status, reason, message, headers or {}

    def response(self) -> JSONResponse:
        SERVE_REFUSED.labels(self.reason).inc()
        return JSONResponse({"error": self.message, "reason": self.reason}, status_code=self.status,
                            headers=self.headers)


class Budget:
    """A request's time: ``check`` raises ``Refused`` (503) once the deadline (``time.monotonic``) has passed."""

    def __init__(self, deadline: float | None, timeout_s: float) -> None:
        self.deadline = math.inf if deadline is None else deadline
        self.timeout_s = timeout_s

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def check(self) -> None:
        if time.monotonic() > self.deadline:
            raise self.expired()

    def expired(self) -> Refused:
        return Refused(503, "over_time_budget", f"the request was not answered within {self.timeout_s:g} s "
                       "(serve.request_timeout_s): send fewer lines per request, or retry when the server is "
                       "less busy", {"Retry-After": str(RETRY_AFTER_S)})


class FairLock:
    """A lock granted in arrival order.

    ``threading.Lock`` is not fair: a thread that releases it and asks again at once usually gets it back, so a
    request scoring chunk after chunk would keep out one that arrived meanwhile. Here each request waits behind
    every request already waiting, so concurrent requests take turns chunk by chunk."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: deque[object] = deque()
        self._held = False

    def acquire(self, timeout: float) -> bool:
        """Waits at most ``timeout`` seconds (``math.inf``: for ever) for this caller's turn."""
        me = object()
        wait = None if math.isinf(timeout) else max(timeout, 0.0)
        with self._cond:
            self._queue.append(me)
            granted = self._cond.wait_for(lambda: not self._held and self._queue[0] is me, wait)
            self._queue.remove(me)
            if granted:
                self._held = True
            else:  # the one behind may be first now
                self._cond.notify_all()
            return granted

    def release(self) -> None:
        with self._cond:
            self._held = False
            self._cond.notify_all()

    @contextmanager
    def turn(self, budget: Budget) -> Iterator[None]:
        t0 = time.monotonic()
        if not self.acquire(budget.remaining()):
            raise budget.expired()
        SERVE_LOCK_WAIT.inc(time.monotonic() - t0)
        try:
            yield
        finally:
            self.release()


# -- the wire ------------------------------------------------------------------------------------------------------

class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DetectRequest(_Wire):
    lines: list[str] = Field(description="raw log lines (or Fluent Bit-style JSON records), any order",
                             examples=[["081109 203615 148 INFO dfs.DataNode$PacketResponder: PacketResponder 1 for "
                                        "block blk_38865049064139660 terminating"]])


class RejectedLine(_Wire):
    index: int = Field(description="0-based position in the request's lines")
    reason: str = Field(description="the dead-letter reason the stream would give (empty, format_mismatch, ...)")
    detail: str


class SessionResult(_Wire):
    session_id: str
    anomalous: bool = Field(description="any window of the session is flagged")
    score: float = Field(description="highest share of unexpected keys over the session's windows")
    threshold: float = Field(description="the bundle's calibrated threshold for the score")
    distance: float = Field(description="largest hypersphere distance over the session's windows")
    distance_threshold: float
    line_count: int = Field(description="distinct entries of the session (an identical line counts once)")
    windows: int
    flagged_windows: int
    reasons: list[str] = Field(description="rules that fired, over all flagged windows")
    explanation: Explanation = Field(description="the highest-scoring flagged window, explained as in anomaly "
                                                 "events; for a normal session a one-line summary")
    window: WindowExtent | None = Field(default=None, description="the explained window (anomalous sessions)")


class DetectResponse(_Wire):
    model_version: str
    sessions: list[SessionResult] = Field(description="in order of each session's first timestamp")
    rejected: list[RejectedLine] = Field(default_factory=list)


# -- detection -----------------------------------------------------------------------------------------------------

class SessionDetector:
    """Lines -> per-session verdicts with the bundle's judge, within the limits of ``settings.serve``. Thread-safe:
    requests parse and build their answers concurrently (the template lookup changes no Drain state; its caches are
    plain dicts) and take turns at the model (``FairLock``)."""

    def __init__(self, settings: Settings, bundle: Bundle, device: str | None = None) -> None:
        try:
            check_settings(settings, bundle)
            dev = resolve_device(device or settings.detector.device)
        except (SettingsMismatch, DeviceError) as exc:
            raise StartupError(str(exc)) from exc
        self.settings = settings
        self.bundle = bundle
        self.device = str(dev)
        self.judge = build_judge(bundle, settings, dev, threads=settings.train.scoring_threads)
        self.fmt = settings.line_format()
        self.decoder = ValueDecoder(settings.log.json_fields, settings.log.max_line_bytes)
        self.index = bundle.template_index()
        self.nearest = settings.parser.unknown == "nearest"
        self._lock = FairLock()

    def detect(self, lines: Sequence[str], deadline: float | None = None) -> bytes:
        """The JSON of a ``DetectResponse`` for these lines; raises ``Refused`` past a limit of ``serve`` or past
        ``deadline`` (``time.monotonic``; None: no time limit)."""
        s = self.settings.serve
        budget = Budget(deadline, s.request_timeout_s)
        vocab, max_len, stride = self.bundle.vocab, self.bundle.model_config.max_len, self.settings.model.stride
        rejected: list[RejectedLine] = []
        entries: dict[str, list[tuple[float, int, str]]] = {}
        unseen: dict[str, str] = {}  # line digest -> masked text, for lines whose template the model never saw
        order: dict[str, tuple[float, int]] = {}
        max_sessions = s.max_sessions
        # Past this many entries the windows are over serve.max_windows whatever the sessions: a session of n entries
        # makes at least (n - max_len) / stride windows. Counting entries while parsing bounds a request's memory
        # (a line may name hundreds of sessions) before its windows are cut. A repeated line counts each time here,
        # once in its session.
        max_entries = s.max_windows * stride + max_sessions * max_len
        n_entries = 0
        for i, raw in enumerate(lines):
            if not i & 255:
                budget.check()
            line = self.decoder.decode(raw.encode("utf-8", "surrogatepass"))
            if isinstance(line, Rejected):
                rejected.append(RejectedLine(index=i, reason=line.reason, detail=line.detail))
                continue
            try:
                rec = self.fmt.parse(line)
            except LineFormatError as exc:
                rejected.append(RejectedLine(index=i, reason=exc.reason, detail=str(exc)[:200]))
                continue
            key, found = key_of(self.index, vocab, rec.content, self.nearest, rec.level)
            n_entries += len(rec.session_ids)
            if n_entries > max_entries:
                raise Refused(413, "too_many_windows", f"lines 0 to {i} add {n_entries} entries to their sessions, "
                              f"more than {s.max_windows} windows (serve.max_windows) can hold with at most "
                              f"{max_sessions} sessions: split the lines over several requests")
            for sid in rec.session_ids:
                got = entries.get(sid)
                if got is None:
                    if len(entries) >= max_sessions:  # refused before the next session costs anything
                        raise Refused(413, "too_many_sessions", f"line {i} names session {len(entries) + 1}, over "
                                      f"the limit of {max_sessions} sessions per request (serve.max_sessions): "
                                      "split the lines over several requests")
                    got = entries[sid] = []
                    order[sid] = (rec.timestamp, len(order))
                got.append((rec.timestamp, key, line))
            if vocab.unseen(key):
                unseen[line_digest(line)] = found.template
        for r in rejected:
            m.SERVE_LINES_REJECTED.labels(r.reason).inc()

        # sessions in order of their first timestamp (ties: first appearance), as the offline evaluation orders them
        sessions = sorted(entries, key=order.__getitem__)
        flat: list[tuple[str, int, int]] = []
        keys_of: list[list[int]] = []
        canon_of: dict[str, list[tuple[float, str]]] = {}
        for n, sid in enumerate(sessions):
            if not n & 255:
                budget.check()
            canon = canon_of[sid] = canonical_entries(entries[sid])
            ks = window_keys([mem for _, mem in canon])
            for span in session_windows(len(ks), max_len, stride):
                flat.append((sid, span.lo, span.hi))
                keys_of.append(ks[span.lo:span.hi])
            if len(flat) > s.max_windows:
                raise Refused(413, "too_many_windows", f"the sessions of the request make more than {s.max_windows} "
                              f"windows to score (serve.max_windows; a session of n entries makes about "
                              f"n/{stride} windows): split the lines over several requests")
        verdicts = self._score(keys_of, budget)
        return self._answer(sessions, flat, verdicts, canon_of, unseen, rejected, budget)

    def _score(self, keys_of: list[list[int]], budget: Budget) -> list[Verdict]:
        """Verdicts in chunks, one turn at the model per chunk, so concurrent requests interleave."""
        verdicts: list[Verdict] = []
        step = self.settings.detector.max_batch
        i, n = 0, len(keys_of)
        while i < n:
            j, positions = i, 0
            while j < n and j - i < step and (j == i or positions + len(keys_of[j]) <= CHUNK_POSITIONS):
                positions += len(keys_of[j])
                j += 1
            with self._lock.turn(budget):
                budget.check()
                verdicts += self.judge.judge(keys_of[i:j])
            m.SERVE_WINDOWS.inc(j - i)
            i = j
        return verdicts

    def _answer(self, sessions: list[str], flat: list[tuple[str, int, int]], verdicts: list[Verdict],
                canon_of: dict[str, list[tuple[float, str]]], unseen: dict[str, str], rejected: list[RejectedLine],
                budget: Budget) -> bytes:
        vocab, max_len = self.bundle.vocab, self.bundle.model_config.max_len
        limit = self.settings.serve.max_response_bytes
        per: dict[str, list[tuple[int, int, Verdict]]] = {sid: [] for sid in sessions}
        for (sid, lo, hi), v in zip(flat, verdicts):
            per[sid].append((lo, hi, v))
        th = self.bundle.thresholds
        now_ms = int(time.time() * 1000)
        head = b'{"model_version":' + to_json(self.bundle.version) + b',"sessions":['
        tail = b'],"rejected":' + to_json(rejected) + b"}"
        parts: list[bytes] = []
        size = len(head) + len(tail)
        anomalous = 0
        for n, sid in enumerate(sessions):
            if not n & 63:
                budget.check()
            ws = per[sid]
            canon = canon_of[sid]
            flagged = [(lo, hi, v) for lo, hi, v in ws if v.anomalous]
            reasons = sorted({r for _, _, v in flagged for r in v.reasons})
            best_score = max(v.score.miss_ratio for _, _, v in ws)
            best_dist = max(v.score.distance for _, _, v in ws)
            window = None
            if flagged:
                lo, hi, v = max(flagged, key=lambda f: (f[2].score.miss_ratio, f[2].score.distance, -f[0]))
                span = canon[lo:hi]
                event = build_event(
                    event_id=f"{sid}:{lo}", session_id=sid, members=tuple(mem for _, mem in span), lo=lo,
                    cause="full" if hi - lo == max_len else "idle", first_ts=span[0][0], last_ts=span[-1][0],
                    cut_ms=now_ms, verdict=v, vocab=vocab, unseen_text=unseen, miss_threshold=th.miss_ratio,
                    distance_threshold=th.distance, model_version=self.bundle.version)
                explanation, window = event.explanation, event.window
                anomalous += 1
            else:
                explanation = Explanation(
                    summary=f"{len(ws)} window(s), none flagged (highest score {best_score:.3f} vs threshold "
                            f"{th.miss_ratio:.3f}; largest distance {best_dist:.2f} vs {th.distance:.2f})",
                    reasons=[], unexpected_positions=[], templates=[])
            part = to_json(SessionResult(
                session_id=sid, anomalous=bool(flagged), score=round(best_score, 6), threshold=th.miss_ratio,
                distance=round(best_dist, 6), distance_threshold=th.distance, line_count=len(canon), windows=len(ws),
                flagged_windows=len(flagged), reasons=reasons, explanation=explanation, window=window))
            size += len(part) + 1
            if size > limit:  # explanations repeat the text of their lines: a line naming many sessions multiplies
                raise Refused(413, "response_too_large", f"the answer would be over {limit} bytes "
                              f"(serve.max_response_bytes) after {n} of {len(sessions)} sessions: split the lines "
                              "over several requests")
            parts.append(part)
        m.SERVE_SESSIONS.labels("anomalous").inc(anomalous)
        m.SERVE_SESSIONS.labels("normal").inc(len(sessions) - anomalous)
        return head + b",".join(parts) + tail


# -- HTTP ----------------------------------------------------------------------------------------------------------

def _error(code: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=code)


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` is answered 413 before the app sees it.

    Checks ``Content-Length`` first, then counts the bytes actually received (chunked bodies have no length). The
    rest of a moderately oversized body (up to ``4 * max_bytes``) is read and dropped before answering, so a client
    still sending gets the 413 rather than a reset connection; nothing past ``max_bytes`` is kept in memory."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.drain_bytes = 4 * max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            if int(length) <= self.drain_bytes:
                await self._drain(receive, 0)
            await self._too_big(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            more = message.get("more_body", False)
            if size > self.max_bytes:
                if more:
                    await self._drain(receive, size)
                await self._too_big(scope, receive, send)
                return
            chunks.append(chunk)
            if not more:
                break
        body = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _drain(self, receive: Receive, seen: int) -> None:
        while seen <= self.drain_bytes:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            seen += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    async def _too_big(self, scope: Scope, receive: Receive, send: Send) -> None:
        refused = Refused(413, "body_too_large", f"request body over {self.max_bytes} bytes (serve.max_body_bytes)")
        await refused.response()(scope, receive, send)


class Gate:
    """ASGI middleware in front of the body limit, so that neither check waits for a body: the bearer token on every
    route but ``OPEN_ROUTES`` (401), and a JSON content type on ``POST /detect`` (415)."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = None if token is None else token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        refused = None
        if self.token is not None and scope["path"] not in OPEN_ROUTES:
            refused = self._unauthorized(headers.get(b"authorization"))
        if refused is None and scope["path"] == "/detect" and scope["method"] == "POST":
            ctype = headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
            if ctype != b"application/json":
                refused = Refused(415, "unsupported_media_type", "POST /detect takes Content-Type: "
                                  f"application/json, not {ctype.decode('latin-1')[:100] or 'none'}")
        if refused is not None:
            await refused.response()(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _unauthorized(self, header: bytes | None) -> Refused | None:
        assert self.token is not None
        scheme, _, given = (header or b"").strip().partition(b" ")
        if header and scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token):
            return None
        challenge = 'Bearer realm="logad"' + (', error="invalid_token"' if header else "")
        return Refused(401, "unauthorized", "a bearer token is required (Authorization: Bearer <serve.token>)"
                       if not header else "the bearer token is not the configured one (serve.token)",
                       {"WWW-Authenticate": challenge})


class Admission:
    """ASGI middleware behind the body limit: at most ``max_in_flight`` ``POST /detect`` requests are worked on at
    once; one more is answered 429 with ``Retry-After``. A request takes its place once its whole body is in (a slow
    upload holds a connection, not a place) and keeps it until it is answered."""

    def __init__(self, app: ASGIApp, max_in_flight: int) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.in_flight = 0  # only the event loop's thread touches it

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/detect" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_in_flight:
            refused = Refused(429, "busy", f"{self.in_flight} requests are being judged, the limit "
                              "(serve.max_in_flight): retry later", {"Retry-After": str(RETRY_AFTER_S)})
            await refused.response()(scope, receive, send)
            return
        self.in_flight += 1
        SERVE_IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            SERVE_IN_FLIGHT.dec()


_ROUTES = ("/detect", "/health", "/ready", "/metrics", "/docs", "/openapi.json")


class RequestCounter:
    """ASGI middleware: every answer counted by route and status code, and timed. A request whose client went away
    before it was answered (a body cut off, a read deadline) has no answer and is not counted; an exception counts
    as the 500 it becomes."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = scope["path"] if scope["path"] in _ROUTES else "other"
        t0 = time.perf_counter()
        status: int | None = None

        async def counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counted)
        except Exception:
            status = status or 500
            raise
        finally:
            if status is not None:
                m.SERVE_REQUEST_SECONDS.labels(route).observe(time.perf_counter() - t0)
                m.SERVE_REQUESTS.labels(route, str(status)).inc()


def create_app(detector: SessionDetector, token: str | None = None) -> FastAPI:
    """The FastAPI app of ``logad serve`` around a loaded detector; ``token``: the bearer token (``load_token``)."""
    s = detector.settings.serve
    app = FastAPI(title="logad", version=detector.bundle.version,
                  description="On-demand log anomaly detection with the streaming detector's model and rules. "
                              "POST raw lines to /detect; they are grouped into sessions and judged.")
    m.SERVE_MODEL.info({"version": detector.bundle.version, "device": detector.device})
    # the last added is outermost: the counter sees every answer, the gate answers before the body is read, and a
    # request is admitted once its body is in (a pure ASGI counter: BaseHTTPMiddleware raises when a client leaves
    # before it is answered)
    app.add_middleware(Admission, max_in_flight=s.max_in_flight)
    app.add_middleware(BodyLimit, max_bytes=s.max_body_bytes)
    app.add_middleware(Gate, token=token)
    app.add_middleware(RequestCounter)

    # The body is parsed here rather than by a typed parameter, so that malformed JSON is told apart (400) from
    # JSON of the wrong shape (422). Content-Type: application/json is required (415, in Gate): a browser page may
    # post text/plain or a form to a loopback port without asking first, never JSON.
    @app.post("/detect", response_model=DetectResponse,
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": DetectRequest.model_json_schema()}}}},
              responses={400: {"description": "the body is not JSON"},
                         401: {"description": "serve.token is set and the request does not carry it"},
                         413: {"description": "over a limit of the request: body size, lines, sessions, windows, "
                                              "or the answer's size; the error names the setting"},
                         415: {"description": "the Content-Type is not application/json"},
                         422: {"description": "JSON, but not {\"lines\": [string, ...]}"},
                         429: {"description": "serve.max_in_flight requests are in progress; see Retry-After"},
                         503: {"description": "not answered within serve.request_timeout_s; see Retry-After"}})
    async def detect(request: Request) -> Response:
        """Group the lines into sessions with the detector's rules and judge each session."""
        raw = await request.body()
        deadline = time.monotonic() + s.request_timeout_s
        try:  # validating megabytes of JSON takes a while: off the event loop, as the scoring below
            body = await run_in_threadpool(DetectRequest.model_validate_json, raw)
        except ValidationError as exc:
            errors = [{"loc": list(e.get("loc", ())), "type": e.get("type"), "msg": e.get("msg")}
                      for e in exc.errors(include_url=False)]
            if any(e["type"] == "json_invalid" for e in errors):
                return _error(400, "the request body is not valid JSON", detail=errors)
            return _error(422, 'expected a JSON object {"lines": ["raw log line", ...]}', detail=errors)
        if len(body.lines) > s.max_lines:
            return Refused(413, "too_many_lines", f"{len(body.lines)} lines over the limit of {s.max_lines} "
                           "(serve.max_lines)").response()
        m.SERVE_LINES.inc(len(body.lines))
        try:
            payload = await run_in_threadpool(detector.detect, body.lines, deadline)  # CPU-bound: off the loop
        except Refused as exc:
            return exc.response()
        return Response(payload, media_type="application/json")

    @app.get("/health")
    def health() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "alive", "model_version": detector.bundle.version}

    @app.get("/ready")
    def ready() -> dict[str, object]:
        """Readiness: the model is loaded before the server binds, so a server that answers is ready."""
        return {"ready": True, "model_version": detector.bundle.version, "device": detector.device}

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(m.SERVE_REGISTRY), media_type=CONTENT_TYPE_LATEST)

    if token is not None:  # the API docs say so, and their "Authorize" button sends it
        described = app.openapi

        def openapi() -> dict[str, Any]:
            spec = described()
            spec.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
                "type": "http", "scheme": "bearer", "description": "serve.token"}
            spec["paths"]["/detect"]["post"]["security"] = [{"bearer": []}]
            return spec

        app.openapi = openapi  # type: ignore[method-assign]
    return app


def load_token(s: ServeSection) -> str | None:
    """The bearer token: ``serve.token``, or the first line of ``serve.token_file``; None when neither is set."""
    if s.token_file is None:
        return s.token
    try:
        text = Path(s.token_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StartupError(f"serve.token_file {s.token_file}: cannot read it ({exc.__class__.__name__})") from exc
    token = text.strip()
    if not token or "\n" in token:
        raise StartupError(f"serve.token_file {s.token_file}: must hold the token on one line, and nothing else")
    return token


def is_loopback(host: str) -> bool:
    """Whether ``host`` binds the loopback interface only (``localhost`` or a 127.0.0.0/8 or ::1 address)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


def read_deadline_protocol(timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol with a read deadline: a request's head and body must arrive within ``timeout_s`` of
    the connection opening or, between keep-alive requests, of the next request's first byte; else the connection
    is closed. uvicorn has no such timeout (only ``timeout_keep_alive`` between requests), so a client that connects
    and sends nothing, or drips a header a byte at a time, would hold its socket for ever.

    Leans on H11Protocol's ``loop``, ``transport`` and ``cycle`` (``more_body``, ``response_complete``), which
    uvicorn has kept for years; ``tests/streamer/test_serve_limits.py`` fails if they change."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class ReadDeadlineProtocol(H11Protocol):
        _read_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._read_timer is None and self._between_requests():
                self._arm()  # the first byte of the next request on a kept-alive connection
            super().data_received(data)
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete and not cycle.more_body:
                self._disarm()  # the whole request is in; the app's own budget applies from here

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _between_requests(self) -> bool:
            return self.cycle is None or bool(self.cycle.response_complete)

        def _arm(self) -> None:
            self._read_timer = self.loop.call_later(timeout_s, self._expired)

        def _disarm(self) -> None:
            if self._read_timer is not None:
                self._read_timer.cancel()
                self._read_timer = None

        def _expired(self) -> None:
            self._read_timer = None
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete and not cycle.more_body:
                return
            if not self.transport.is_closing():
                SERVE_READ_TIMEOUTS.inc()
                self.transport.close()

    return ReadDeadlineProtocol


def serve_forever(detector: SessionDetector, host: str | None = None, port: int | None = None,
                  on_bound: Callable[[str, int], None] | None = None, *, token: str | None) -> None:
    """Serve ``create_app(detector, token)`` with uvicorn until SIGINT/SIGTERM (uvicorn handles both); ``token``:
    what ``load_token`` read from the settings (None: no authentication).

    Socket limits: ``serve.header_timeout_s``
    (``read_deadline_protocol``), ``serve.keep_alive_s`` (uvicorn's ``timeout_keep_alive``), ``serve.max_connections``
    (uvicorn's ``limit_concurrency``: 503 beyond), and h11's 16 KiB limit on a request head (400 beyond)."""
    import uvicorn

    s = detector.settings.serve
    config = uvicorn.Config(create_app(detector, token), host=host or s.host, port=s.port if port is None else port,
                            log_level="warning", access_log=False, server_header=False, lifespan="off",
                            http=read_deadline_protocol(s.header_timeout_s), timeout_keep_alive=s.keep_alive_s,
                            limit_concurrency=s.max_connections)
    server = uvicorn.Server(config)
    if on_bound is not None:
        _notify_when_bound(server, on_bound)
    server.run()


def _notify_when_bound(server: Any, on_bound: Callable[[str, int], None]) -> None:
    def wait() -> None:
        while not server.started:
            if server.should_exit:
                return
            time.sleep(0.05)
        for srv in server.servers:
            for sock in srv.sockets:
                host, port = sock.getsockname()[:2]
                on_bound(host, port)
                return

    threading.Thread(target=wait, name="logad-serve-bound", daemon=True).start()
