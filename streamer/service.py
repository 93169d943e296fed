"""``logad serve``: on-demand detection over HTTP. ``POST /detect`` judges a batch of raw lines with the detector's rules.

Each line goes through the stream's own steps: the value decoder (same rejections as the dead-letter topic), the
configured line format, the frozen template lookup, sessions by the configured key rule, canonical entry order,
``session_windows`` and the ``WindowJudge`` built as ``training.evaluate`` builds it. A session's windows are the
ones ``logad run`` cuts when these lines are all the session has and it then goes idle, so the verdicts equal the
offline evaluation of the same lines (a test holds the two equal).

The API is stateless: nothing is kept between requests, and a session split over two requests is judged twice, on
each part. Requests are limited in body size and line count (``[serve]``; 413 beyond); scoring is serialised by a
lock, so concurrent requests queue instead of oversubscribing the CPU.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from logbert_core.bundle import Bundle
from logbert_core.config import Settings
from logbert_core.judge import Verdict
from logbert_core.parsing import LineFormatError, key_of, line_digest
from logbert_core.vocab import UNK
from logbert_core.windows import canonical_entries, session_windows, window_keys
from streamer import metrics as m
from streamer.decode import Rejected, ValueDecoder
from streamer.events import Explanation, WindowExtent, build_event
from streamer.worker import check_bundle_settings, resolve_device
from training.evaluate import bundle_judge

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


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
    """Lines -> per-session verdicts with the bundle's judge. Thread-safe (one request scores at a time)."""

    def __init__(self, settings: Settings, bundle: Bundle, device: str | None = None) -> None:
        check_bundle_settings(settings, bundle)
        self.settings = settings
        self.bundle = bundle
        self.device = str(resolve_device(device or settings.detector.device))
        self.judge = bundle_judge(bundle, settings, self.device)
        self.fmt = settings.line_format()
        self.decoder = ValueDecoder(settings.log.json_fields, settings.log.max_line_bytes)
        self.index = bundle.template_index()
        self.nearest = settings.parser.unknown == "nearest"
        self._lock = threading.Lock()

    def detect(self, lines: Sequence[str]) -> DetectResponse:
        with self._lock:
            return self._detect(lines)

    def _detect(self, lines: Sequence[str]) -> DetectResponse:
        vocab, max_len, stride = self.bundle.vocab, self.bundle.model_config.max_len, self.settings.model.stride
        rejected: list[RejectedLine] = []
        entries: dict[str, list[tuple[float, int, str]]] = {}
        unseen: dict[str, str] = {}  # line digest -> masked text, for lines whose template the model never saw
        order: dict[str, tuple[float, int]] = {}
        for i, raw in enumerate(lines):
            line = self.decoder.decode(raw.encode("utf-8", "surrogatepass"))
            if isinstance(line, Rejected):
                rejected.append(RejectedLine(index=i, reason=line.reason, detail=line.detail))
                continue
            try:
                rec = self.fmt.parse(line)
            except LineFormatError as exc:
                rejected.append(RejectedLine(index=i, reason=exc.reason, detail=str(exc)[:200]))
                continue
            key, found = key_of(self.index, vocab, rec.content, self.nearest)
            for sid in rec.session_ids:
                entries.setdefault(sid, []).append((rec.timestamp, key, line))
                order.setdefault(sid, (rec.timestamp, len(order)))
            if key == UNK:
                unseen[line_digest(line)] = found.template
        for r in rejected:
            m.SERVE_LINES_REJECTED.labels(r.reason).inc()

        # sessions in order of their first timestamp (ties: first appearance), as the offline evaluation orders them
        sessions = sorted(entries, key=order.__getitem__)
        flat: list[tuple[str, int, int]] = []
        keys_of: list[list[int]] = []
        canon_of: dict[str, list[tuple[float, str]]] = {}
        for sid in sessions:
            canon = canon_of[sid] = canonical_entries(entries[sid])
            ks = window_keys([mem for _, mem in canon])
            for span in session_windows(len(ks), max_len, stride):
                flat.append((sid, span.lo, span.hi))
                keys_of.append(ks[span.lo:span.hi])
        verdicts: list[Verdict] = []
        step = self.settings.detector.max_batch
        for i in range(0, len(keys_of), step):
            verdicts += self.judge.judge(keys_of[i:i + step])
        m.SERVE_WINDOWS.inc(len(verdicts))

        per: dict[str, list[tuple[int, int, Verdict]]] = {sid: [] for sid in sessions}
        for (sid, lo, hi), v in zip(flat, verdicts):
            per[sid].append((lo, hi, v))
        th = self.bundle.thresholds
        now_ms = int(time.time() * 1000)
        out = []
        for sid in sessions:
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
            else:
                explanation = Explanation(
                    summary=f"{len(ws)} window(s), none flagged (highest score {best_score:.3f} vs threshold "
                            f"{th.miss_ratio:.3f}; largest distance {best_dist:.2f} vs {th.distance:.2f})",
                    reasons=[], unexpected_positions=[], templates=[])
            m.SERVE_SESSIONS.labels("anomalous" if flagged else "normal").inc()
            out.append(SessionResult(
                session_id=sid, anomalous=bool(flagged), score=round(best_score, 6), threshold=th.miss_ratio,
                distance=round(best_dist, 6), distance_threshold=th.distance, line_count=len(canon), windows=len(ws),
                flagged_windows=len(flagged), reasons=reasons, explanation=explanation, window=window))
        return DetectResponse(model_version=self.bundle.version, sessions=out, rejected=rejected)


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
        await _error(413, f"request body over {self.max_bytes} bytes (serve.max_body_bytes)")(scope, receive, send)


_ROUTES = ("/detect", "/health", "/ready", "/metrics", "/docs", "/openapi.json")


def create_app(detector: SessionDetector) -> FastAPI:
    """The FastAPI app of ``logad serve`` around a loaded detector."""
    s = detector.settings.serve
    app = FastAPI(title="logad", version=detector.bundle.version,
                  description="On-demand log anomaly detection with the streaming detector's model and rules. "
                              "POST raw lines to /detect; they are grouped into sessions and judged.")
    m.SERVE_MODEL.info({"version": detector.bundle.version, "device": detector.device})
    app.add_middleware(BodyLimit, max_bytes=s.max_body_bytes)  # inside the counter below: 413s are counted

    @app.middleware("http")
    async def count(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        route = request.url.path if request.url.path in _ROUTES else "other"
        t0 = time.perf_counter()
        response = await call_next(request)
        m.SERVE_REQUEST_SECONDS.labels(route).observe(time.perf_counter() - t0)
        m.SERVE_REQUESTS.labels(route, str(response.status_code)).inc()
        return response

    # The body is parsed here rather than by a typed parameter: any Content-Type is read as JSON (curl -d sends a
    # form type), and malformed JSON is told apart (400) from JSON of the wrong shape (422).
    @app.post("/detect", response_model=DetectResponse,
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": DetectRequest.model_json_schema()}}}},
              responses={400: {"description": "the body is not JSON"},
                         413: {"description": "body size or line count over the configured limit"},
                         422: {"description": "JSON, but not {\"lines\": [string, ...]}"}})
    async def detect(request: Request) -> Response:
        """Group the lines into sessions with the detector's rules and judge each session."""
        try:
            body = DetectRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            errors = [{"loc": list(e.get("loc", ())), "type": e.get("type"), "msg": e.get("msg")}
                      for e in exc.errors(include_url=False)]
            if any(e["type"] == "json_invalid" for e in errors):
                return _error(400, "the request body is not valid JSON", detail=errors)
            return _error(422, 'expected a JSON object {"lines": ["raw log line", ...]}', detail=errors)
        if len(body.lines) > s.max_lines:
            return _error(413, f"{len(body.lines)} lines over the limit of {s.max_lines} (serve.max_lines)")
        m.SERVE_LINES.inc(len(body.lines))
        result = await run_in_threadpool(detector.detect, body.lines)  # CPU-bound: keep the event loop free
        return Response(result.model_dump_json(), media_type="application/json")

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

    return app


def serve_forever(detector: SessionDetector, host: str | None = None, port: int | None = None,
                  on_bound: Callable[[str, int], None] | None = None) -> None:
    """Serve ``create_app(detector)`` with uvicorn until SIGINT/SIGTERM (uvicorn handles both)."""
    import uvicorn

    s = detector.settings.serve
    config = uvicorn.Config(create_app(detector), host=host or s.host, port=s.port if port is None else port,
                            log_level="warning", access_log=False, server_header=False, lifespan="off")
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
