"""``/health``, ``/ready`` and ``/metrics`` for ``logad run`` on a small threaded HTTP server (loopback by default)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

Probe = Callable[[], tuple[bool, dict[str, object]]]


class StatusServer:
    """Serves liveness, readiness and metrics; ``ready`` and ``alive`` are callables returning (ok, details).

    ``/health`` is 200 ``{"status": "alive"}`` while ``alive`` says so, else 503 with its details (``logad run``: an
    outage or a stall past ``detector.health_fraction`` of the outage budget). Without ``alive``, the object behind a
    bound ``ready`` is asked for its ``liveness`` method, if it has one.
    """

    def __init__(self, host: str, port: int, ready: Probe, alive: Probe | None = None) -> None:
        outer = self
        if alive is None:
            alive = getattr(getattr(ready, "__self__", None), "liveness", None)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                path = self.path.split("?", 1)[0]
                if path == "/health":
                    ok, details = outer.alive() if outer.alive is not None else (True, {})
                    if ok:
                        self._send(200, "application/json", b'{"status": "alive"}')
                    else:
                        self._send(503, "application/json", json.dumps({"status": "stuck", **details}).encode())
                elif path == "/ready":
                    ok, details = outer.ready()
                    body = json.dumps({"ready": ok, **details}).encode()
                    self._send(200 if ok else 503, "application/json", body)
                elif path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY))
                else:
                    self._send(404, "application/json", b'{"error": "not found"}')

            def _send(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # no per-request logging
                return

        self.ready = ready
        self.alive = alive
        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="logad-http", daemon=True)

    def start(self) -> StatusServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
