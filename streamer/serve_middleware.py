"""The ASGI middlewares of ``logad serve`` (``streamer.service``), pure ASGI so that each may answer before the body
is read: the bearer token and content type (``Gate``), the body limit (``BodyLimit``), the number of requests worked
on at once (``Admission``), and the count of every answer (``RequestCounter``)."""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from streamer import metrics as m
from streamer.serve_limits import RETRY_AFTER_S, SERVE_IN_FLIGHT, Refused

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# The requests that stay open when a token is set: probes, metrics and the API's description.
OPEN_ROUTES = frozenset({"/health", "/ready", "/metrics", "/docs", "/openapi.json"})


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
