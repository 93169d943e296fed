"""What waits in the session-window store (``streamer.windows``) once a window is cut: the window under its lease in
``P:pending`` until its verdict is published (``ack``), the masked texts that explain it, and ``premature_end``
verdicts held in ``P:ends`` until the log has gone on past their session for the rest horizon."""

from __future__ import annotations

from collections.abc import Sequence

import redis
from redis.commands.core import Script

from streamer.window_layout import CutWindow, StoreKeys, as_text
from streamer.window_scripts import ACK, DROP, HOLD


class PendingVerdicts(StoreKeys):
    """``WindowStore``'s leases and held stops; every method is one round trip."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        super().__init__(client, prefix)
        self._ack: Script = client.register_script(ACK)
        self._hold: Script = client.register_script(HOLD)
        self._drop: Script = client.register_script(DROP)

    def ack(self, window_ids: Sequence[str]) -> None:
        """The windows' verdicts are published: drop them from ``P:pending`` and ``P:w``."""
        if not window_ids:
            return
        self._ack(keys=[self.key("pending"), self.key("w")], args=list(window_ids))

    def pending(self) -> int:
        """Windows cut and not yet acknowledged (leased, or waiting for a sweep to claim them)."""
        return int(self.r.zcard(self.key("pending")))

    def unseen_texts(self, windows: Sequence[CutWindow]) -> dict[str, dict[str, str]]:
        """Masked text of the unseen-template entries of each window's session (one pipelined round trip)."""
        sessions = sorted({w.session_id for w in windows})
        if not sessions:
            return {}
        pipe = self.r.pipeline(transaction=False)
        for sid in sessions:
            pipe.hgetall(self.key(f"u:{sid}"))
        out = {}
        for sid, found in zip(sessions, pipe.execute()):
            out[sid] = {as_text(k): as_text(v) for k, v in found.items()}
        return out

    def hold_ends(self, held: Sequence[tuple[CutWindow, str]]) -> int:
        """Hold ``premature_end`` events of closing windows until the quiet after them is seen (``due_ends``);
        returns how many were held (a session that came back since its window was cut is skipped)."""
        if not held:
            return 0
        keys = [self.key("ends"), self.key("ends:ev")]
        argv: list[str | int] = [len(held)]
        for w, event in held:
            keys += (self.key(f"m:{w.session_id}"), self.key(f"s:{w.session_id}"))
            argv += (w.session_id, w.hi, repr(w.last_ts), event)
        return int(self._hold(keys=keys, args=argv))

    def due_ends(self, before_ts: float, limit: int = 1000) -> list[tuple[str, str]]:
        """Held events whose session's last line is at or before ``before_ts`` (log time): ``(session, event)``."""
        sids = [as_text(s) for s in self.r.zrangebyscore(self.key("ends"), "-inf", before_ts, 0, limit)]
        if not sids:
            return []
        events = self.r.hmget(self.key("ends:ev"), sids)
        return [(sid, as_text(ev)) for sid, ev in zip(sids, events) if ev is not None]

    def drop_ends(self, published: Sequence[tuple[str, str]]) -> int:
        """Forget held events that were published (``due_ends``' pairs); returns how many were still held."""
        if not published:
            return 0
        return int(self._drop(keys=[self.key("ends"), self.key("ends:ev")],
                              args=[x for pair in published for x in pair]))

    def held_ends(self) -> int:
        """``premature_end`` verdicts held, waiting for the quiet after their session."""
        return int(self.r.zcard(self.key("ends")))

    def known_sessions(self, session_ids: Sequence[str]) -> set[str]:
        """Which of these sessions have entries under this prefix (one pipelined round trip)."""
        pipe = self.r.pipeline(transaction=False)
        for sid in session_ids:
            pipe.exists(self.key(f"s:{sid}"))
        return {sid for sid, n in zip(session_ids, pipe.execute()) if n}
