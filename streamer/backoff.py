"""Retrying infrastructure calls (Redis, the broker) with exponential back-off and jitter, within one outage budget
shared by every part of the worker and both of its threads."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis

from streamer import metrics as m
from streamer.errors import OutageError

log = logging.getLogger("streamer.worker")  # the worker's parts log under its name, as before the split
T = TypeVar("T")


class Backoff:
    """Retries an operation on infrastructure errors with exponential back-off and full jitter, within a budget.

    The budget runs from the first sign of trouble: the *start* of the first failed attempt (a call that hung until
    its socket timeout counts from when it was made), or earlier, from the start of a failed call to the same service
    (``note_failure``) that no successful call has followed since. No try starts that could hang past the budget
    (``try_s``: the longest one try of a service may take, its socket or request timeout): the last one starts one
    timeout before the end, and the call gives up at the end. Once one call has given up, every later call on any
    thread gives up at once. ``outage_s`` is how long the oldest trouble has lasted (``/health``).
    """

    def __init__(self, budget_s: float, stop: threading.Event, on_state: Callable[[bool], None],
                 base_s: float = 0.2, cap_s: float = 5.0, on_give_up: Callable[[], None] | None = None,
                 try_s: dict[str, float] | None = None) -> None:
        self.budget_s = budget_s
        self.try_s = try_s or {}
        self.stop = stop
        self.on_state = on_state
        self.base_s = base_s
        self.cap_s = cap_s
        self.on_give_up = on_give_up  # e.g. disconnect the Redis pool, so that calls hung on it fail now
        self.gave_up: str | None = None  # why the first call gave up
        self._lock = threading.Lock()
        self._trouble: dict[str, float] = {}  # service -> start of its first failed call since its last success
        self._calls: dict[int, float] = {}  # thread -> start of the trouble its call in back-off is counted from

    @staticmethod
    def service(errors: tuple[type[BaseException], ...]) -> str:
        """The service of an error class ("redis", "kafka"): its ``service``, else the package that defines it."""
        return getattr(errors[0], "service", None) or errors[0].__module__.split(".")[0]

    def note_failure(self, service: str, since: float) -> None:
        """A call made at ``since`` (monotonic) failed outside ``call``: the budget of the next calls counts from it."""
        with self._lock:
            self._trouble.setdefault(service, since)

    def redis_failed(self, since: float) -> None:
        """A Redis call made at ``since`` failed outside ``call``: count it, and start the outage clock."""
        m.REDIS_ERRORS.inc()
        self.note_failure("redis", since)

    def redis(self, what: str, fn: Callable[[], T]) -> T:
        """``call`` for a Redis operation."""
        return self.call(what, fn, (redis.RedisError,), m.REDIS_ERRORS)

    def outage_s(self) -> float:
        with self._lock:
            starts = [*self._trouble.values(), *self._calls.values()]
        return time.monotonic() - min(starts) if starts else 0.0

    def call(self, what: str, fn: Callable[[], T], errors: tuple[type[BaseException], ...], counter: Any,
             fatal: tuple[type[BaseException], ...] = ()) -> T:
        """Run ``fn``; on ``errors`` (but not ``fatal`` ones) back off and retry until the budget is spent."""
        service = self.service(errors)
        me = threading.get_ident()
        started: float | None = None
        attempt = 0
        try:
            while True:
                if self.gave_up is not None:
                    raise OutageError(f"{what} not tried: {self.gave_up}")
                t_try = time.monotonic()
                try:
                    result = fn()
                except errors as exc:
                    if isinstance(exc, fatal):
                        raise
                    counter.inc()
                    now = time.monotonic()
                    with self._lock:
                        since = self._trouble.setdefault(service, t_try)
                        if started is None:
                            started = self._calls[me] = min(t_try, since)
                    if self.stop.is_set():
                        raise OutageError(f"stopped while {what} was unavailable ({exc}); the batch in hand was not "
                                          "committed and will be replayed") from exc
                    deadline = started + self.budget_s
                    last_start = deadline - self.try_s.get(service, 0.0)  # a try started later could overrun
                    delay = random.uniform(0, min(self.cap_s, self.base_s * 2 ** attempt))
                    if now + delay > last_start:
                        if now < last_start:
                            delay = last_start - now  # one last try, over by the deadline
                        else:  # no try fits: wait out the budget, then give up
                            time.sleep(max(0.0, deadline - time.monotonic()))
                            spent = time.monotonic() - started
                            self.gave_up = (f"{what} unavailable for {spent:.1f} s, from the first failed or hung "
                                            f"call (budget detector.outage_budget_s = {self.budget_s:g} s): {exc}")
                            if self.on_give_up is not None:
                                self.on_give_up()
                            raise OutageError(self.gave_up) from exc
                    attempt += 1
                    if attempt == 1 or attempt % 10 == 0:
                        log.warning("%s failed (%s: %s); retrying with back-off, nothing committed meanwhile",
                                    what, type(exc).__name__, exc)
                    self.on_state(False)
                    time.sleep(delay)
                    continue
                with self._lock:
                    self._trouble.pop(service, None)
                if started is not None:
                    log.warning("%s is back after %.1f s", what, time.monotonic() - started)
                    self.on_state(True)
                return result
        finally:
            with self._lock:
                self._calls.pop(me, None)
