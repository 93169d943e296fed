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

``WindowStore`` holds one of each (``store.appends``, ``store.sweeps``, ``store.verdicts``, ``store.events``), so a
caller names the concern it works on. Callers import what they need from here.
"""

from __future__ import annotations

import redis

from streamer.window_append import Appending, AppendResult, PendingAppend
from streamer.window_layout import CutWindow, Entry, StoreKeys, client_for, hash_tag, key_prefix, left_in
from streamer.window_pending import PendingVerdicts
from streamer.window_rate import EventRate
from streamer.window_scripts import SCRIPTS
from streamer.window_sweep import Sweeping, SweepResult

__all__ = ["SCRIPTS", "AppendResult", "CutWindow", "Entry", "PendingAppend", "SweepResult", "WindowStore",
           "client_for", "hash_tag", "key_prefix", "left_in"]


class WindowStore(StoreKeys):
    """Session windows of one bundle in Redis, as four parts that share one client and key prefix: ``appends``
    (``Appending``), ``sweeps`` (``Sweeping``), ``verdicts`` (``PendingVerdicts``: leases and held stops) and
    ``events`` (``EventRate``). Every method of a part is one round trip, but ``sweeps.sweep`` (two, or three past
    ``max_closed``). ``client`` may be a ``RedisCluster`` (``client_for``)."""

    def __init__(self, client: redis.Redis, prefix: str, max_len: int, stride: int, ttl_s: int,
                 lease_ms: int, novel_cap: int = 10_000, *, max_open: int = 0, closed_ttl_s: int | None = None,
                 max_closed: int = 0, protect_ms: int = 0) -> None:
        """``prefix``: ``<namespace>:<bundle version>`` (its keys are under ``key_prefix(prefix)``, which is
        ``self.prefix``); ``max_open``: cap on open sessions (0: none); ``closed_ttl_s``: how long a closed
        session's keys are kept (None or more than ``ttl_s``: ``ttl_s``); ``max_closed``: cap on closed sessions
        kept (0: none), evicting the oldest closed more than ``protect_ms`` ago."""
        if not 0 < stride <= max_len:
            raise ValueError(f"stride must be in (0, max_len={max_len}], got {stride}")
        super().__init__(client, key_prefix(prefix))
        p = self.prefix
        self.appends = Appending(client, p, max_len=max_len, stride=stride, ttl_s=ttl_s, lease_ms=lease_ms,
                                 novel_cap=novel_cap, max_open=max_open)
        kept_s = min(closed_ttl_s or ttl_s, ttl_s)
        self.sweeps = Sweeping(client, p, ttl_s=ttl_s, lease_ms=lease_ms, closed_ttl_s=kept_s, max_closed=max_closed,
                               protect_ms=protect_ms)
        self.verdicts = PendingVerdicts(client, p)
        self.events = EventRate(client, p)

    def left(self) -> tuple[int, int, int]:
        """Open sessions, pending windows and held stops: what must still be done under this prefix."""
        return left_in(self.r, self.prefix)
