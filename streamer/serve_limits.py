"""What one ``POST /detect`` may cost in ``logad serve`` (``streamer.service``): a refusal names the limit and its
setting (``Refused``), a request's time runs against its deadline (``Budget``), and requests take turns at the model,
chunk by chunk, in arrival order (``FairLock``). The collectors count what the limits refuse."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi.responses import JSONResponse
from prometheus_client import Counter, Gauge

from streamer import metrics as m
from streamer.errors import LogadError

# Requests refused, by reason. Here rather than in streamer.metrics because only logad serve refuses them; they join
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

RETRY_AFTER_S = 1


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
