"""Per-session sliding windows in Redis, shared by every worker of the consumer group.

``WindowStore`` is put together from one part per concern, each in its own module:

* ``window_layout``: the key layout (every key of one bundle is in one slot, under one hash tag, for Redis Cluster),
  the prefix and tag rules, the records kept (``Entry``, ``CutWindow``) and the client;
* ``window_scripts``: the Lua scripts, with the invariants they keep (idempotent appends, the window cut rule,
  leases, exactly-one close, the open-session cap, stable window ids, held stops);
* ``window_append``: the append-and-cut path (``append``, ``append_start``/``append_finish``);
* ``window_sweep``: closing idle sessions, forgetting closed ones, claiming windows whose lease ran out;
* ``window_pending``: leases until ``ack``, and ``premature_end`` verdicts held until the quiet after them;
* ``window_rate``: the per-minute limit on anomaly events.

Callers import what they need from here.
"""

from __future__ import annotations

import redis

from streamer.window_append import Appending, AppendResult, PendingAppend
from streamer.window_layout import CutWindow, Entry, client_for, hash_tag, key_prefix, left_in
from streamer.window_pending import PendingVerdicts
from streamer.window_rate import EventRate
from streamer.window_scripts import ACK, APPEND, DROP, HOLD, RATE, SCRIPTS, SWEEP
from streamer.window_sweep import Sweeping, SweepResult

__all__ = ["SCRIPTS", "AppendResult", "CutWindow", "Entry", "PendingAppend", "SweepResult", "WindowStore",
           "client_for", "hash_tag", "key_prefix", "left_in"]


class WindowStore(Appending, Sweeping, PendingVerdicts, EventRate):
    """Session windows in Redis; every method is one round trip, but ``sweep`` (two, or three past
    ``max_closed``). ``client`` may be a ``RedisCluster`` (``client_for``).

    Its methods come from its parts (the module's docstring): the worker holds one store per bundle and calls all of
    them on it."""

    def __init__(self, client: redis.Redis, prefix: str, max_len: int, stride: int, ttl_s: int,
                 lease_ms: int, novel_cap: int = 10_000, *, max_open: int = 0, closed_ttl_s: int | None = None,
                 max_closed: int = 0, protect_ms: int = 0) -> None:
        """``prefix``: ``<namespace>:<bundle version>`` (its keys are under ``key_prefix(prefix)``, which is
        ``self.prefix``); ``max_open``: cap on open sessions (0: none); ``closed_ttl_s``: how long a closed
        session's keys are kept (None or more than ``ttl_s``: ``ttl_s``); ``max_closed``: cap on closed sessions
        kept (0: none), evicting the oldest closed more than ``protect_ms`` ago."""
        if not 0 < stride <= max_len:
            raise ValueError(f"stride must be in (0, max_len={max_len}], got {stride}")
        self.r = client
        self.prefix = key_prefix(prefix)
        self.max_len = max_len
        self.stride = stride
        self.ttl_s = ttl_s
        self.lease_ms = lease_ms
        self.novel_cap = novel_cap
        self.max_open = max_open
        self.closed_ttl_s = min(closed_ttl_s or ttl_s, ttl_s)
        self.max_closed = max_closed
        self.protect_ms = protect_ms
        self._append = client.register_script(APPEND)
        self._sweep = client.register_script(SWEEP)
        self._hold = client.register_script(HOLD)
        self._drop = client.register_script(DROP)
        self._ack = client.register_script(ACK)
        self._rate = client.register_script(RATE)

    def left(self) -> tuple[int, int, int]:
        """Open sessions, pending windows and held stops: what must still be done under this prefix."""
        return left_in(self.r, self.prefix)
