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

This module builds the app and runs the server. Its parts: ``serve_wire`` (the JSON of ``/detect``), ``serve_limits``
(refusals, a request's time budget, the fair turns at the model), ``serve_middleware`` (the ASGI middlewares) and
``serve_detector`` (``SessionDetector``: lines -> verdicts).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from logbert_core.config import ServeSection
from streamer import metrics as m
from streamer.errors import StartupError
from streamer.serve_detector import SessionDetector
from streamer.serve_limits import SERVE_READ_TIMEOUTS, Refused
from streamer.serve_middleware import Admission, BodyLimit, Gate, RequestCounter
from streamer.serve_wire import DetectRequest, DetectResponse

log = logging.getLogger(__name__)


def _error(code: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=code)


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
