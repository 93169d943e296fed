"""Sweeping and closing in the session-window store (``streamer.windows``): sessions idle past the timeout are
closed and their last window cut, closed sessions past their TTL or past ``max_closed`` are forgotten, and windows
whose lease ran out are claimed again, all in one script call (``window_scripts.SWEEP``) after the reads that name
its keys."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from redis.commands.core import Script

from streamer.window_layout import CutWindow, StoreKeys, as_text
from streamer.window_scripts import SWEEP


@dataclass(frozen=True, slots=True)
class SweepResult:
    closed_sessions: int
    windows: list[CutWindow]
    more: bool = False  # the sweep stopped at its limit: more sessions may be due now
    expired: int = 0  # closed sessions whose entries had expired (session.ttl_s) before the sweep: nothing to cut
    evicted: int = 0  # closed sessions forgotten because more than max_closed were kept



class Sweeping(StoreKeys):
    """``WindowStore``'s sweep (two round trips, three past ``max_closed``) and its count of open sessions."""

    def __init__(self, client: redis.Redis, prefix: str, *, ttl_s: int, lease_ms: int, closed_ttl_s: int,
                 max_closed: int, protect_ms: int) -> None:
        super().__init__(client, prefix)
        self.ttl_s = ttl_s
        self.lease_ms = lease_ms
        self.closed_ttl_s = closed_ttl_s
        self.max_closed = max_closed
        self.protect_ms = protect_ms
        self._sweep: Script = client.register_script(SWEEP)

    def sweep(self, now_ms: int, idle_ms: int, limit: int = 1000) -> SweepResult:
        """Close sessions idle for ``idle_ms`` (cutting their last window) and claim windows whose lease ran out.
        Reads the sessions due (and, past ``max_closed``, the oldest closed) first: the script must be given their
        keys."""
        idle_before = now_ms - idle_ms
        kept_since = now_ms - self.closed_ttl_s * 1000  # closed before this: forgotten by the script anyway
        pipe = self.r.pipeline(transaction=False)
        pipe.zrangebyscore(self.key("idle"), "-inf", idle_before, 0, limit)
        if self.max_closed > 0:
            pipe.zcount(self.key("closed"), kept_since, "+inf")
        got = pipe.execute()
        due = [as_text(s) for s in got[0]]
        old: list[str] = []
        if self.max_closed > 0:
            excess = int(got[1]) + len(due) - self.max_closed
            if excess > 0:
                old = [as_text(s) for s in self.r.zrangebyscore(self.key("closed"), kept_since,
                                                              now_ms - self.protect_ms, 0, min(excess, limit))]
        keys = [self.key(part) for part in ("idle", "closed", "pending", "w")]
        for sid in (*due, *old):
            keys += self._session_keys(sid)
        closed, payloads, more, expired, evicted = self._sweep(
            keys=keys, args=[now_ms, idle_before, self.lease_ms, limit, self.ttl_s, self.closed_ttl_s,
                             self.max_closed, self.protect_ms, len(due), *due, len(old), *old])
        return SweepResult(int(closed), [CutWindow.from_payload(p) for p in payloads], bool(more), int(expired),
                           int(evicted))

    def open_sessions(self) -> int:
        """Sessions open (in ``P:idle``), each closed by the sweep that finds it idle."""
        return int(self.r.zcard(self.key("idle")))
