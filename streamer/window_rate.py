"""The per-minute limit on anomaly events, shared by every worker of a prefix (``P:rate:<minute>`` and
``P:storm:<minute>``, script ``window_scripts.RATE``): past the limit, events are suppressed and one storm summary
stands for them."""

from __future__ import annotations

from collections.abc import Sequence

import redis
from redis.commands.core import Script

from streamer.window_layout import StoreKeys, as_text
from streamer.window_scripts import RATE


class EventRate(StoreKeys):
    """``WindowStore``'s event limit; every method is one round trip."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        super().__init__(client, prefix)
        self._rate: Script = client.register_script(RATE)

    def rate(self, events: Sequence[tuple[str, int, str]], limit: int, ttl_s: int) -> list[int]:
        """Admit anomaly events ``(event id, cut_ms, reasons)`` under ``limit`` per minute of ``cut_ms``, for every
        worker of the prefix: per event 1 (publish), 0 (suppressed) or 2 (suppressed, and it starts a storm)."""
        if not events:
            return []
        minutes: dict[int, int] = {}
        argv: list[str | int] = [limit, ttl_s, len(events)]
        for event_id, cut_ms, reasons in events:
            j = minutes.setdefault(cut_ms // 60_000, len(minutes) + 1)
            argv += (event_id, j, cut_ms, reasons)
        keys: list[str] = []
        for minute in minutes:
            keys += (self.key(f"rate:{minute}"), self.key(f"storm:{minute}"), self.key(f"storm:{minute - 1}"))
        return [int(x) for x in self._rate(keys=keys, args=argv)]

    def rate_minute(self, minute: int) -> tuple[str | None, list[tuple[int, str]]]:
        """The storm's first event id and the events published in ``minute``: ``(cut_ms, reasons)``."""
        pipe = self.r.pipeline(transaction=False)
        pipe.get(self.key(f"storm:{minute}"))
        pipe.hvals(self.key(f"rate:{minute}"))
        trip, vals = pipe.execute()
        out = []
        for v in vals:
            cut, _, reasons = as_text(v).partition("|")
            out.append((int(cut), reasons))
        return (as_text(trip) if trip else None), sorted(out)
