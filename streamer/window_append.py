"""The append-and-cut path of the session-window store (``streamer.windows``): a batch of entries goes to Redis in
one script call (``window_scripts.APPEND``), which stores them idempotently and cuts the windows that became full.
``append_start``/``append_finish`` split that call so that Redis runs it while the worker parses its next batch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.exceptions import NoScriptError

from streamer.window_layout import CutWindow, Entry, StoreKeys
from streamer.window_scripts import APPEND


@dataclass(frozen=True, slots=True)
class AppendResult:
    new_entries: int
    windows: list[CutWindow]
    novel_templates: int = 0  # new templates this batch registered first (any worker sees the same ids)
    novel_capped: int = 0  # lines whose new template was not registered because the registry is full
    resumed: int = 0  # closed sessions that came back while a premature_end verdict was held for them (dropped)
    refused: tuple[int, ...] = ()  # indices of the entries refused because max_open sessions were open



class PendingAppend:
    """An append sent to Redis whose reply has not been read yet (``WindowStore.append_start``)."""

    __slots__ = ("entries", "now_ms", "conn", "pool")

    def __init__(self, entries: Sequence[Entry], now_ms: int, conn: Any, pool: Any = None) -> None:
        self.entries = entries
        self.now_ms = now_ms
        self.conn = conn  # the connection holding the reply; None once read (or never sent)
        self.pool = pool  # the pool it came from (a cluster client has one per node)



class Appending(StoreKeys):
    """``WindowStore``'s appends; every method is one round trip."""

    def __init__(self, client: redis.Redis, prefix: str, *, max_len: int, stride: int, ttl_s: int, lease_ms: int,
                 novel_cap: int, max_open: int) -> None:
        super().__init__(client, prefix)
        self.max_len = max_len
        self.stride = stride
        self.ttl_s = ttl_s
        self.lease_ms = lease_ms
        self.novel_cap = novel_cap
        self.max_open = max_open
        self._append: Script = client.register_script(APPEND)

    def append(self, entries: Sequence[Entry], now_ms: int) -> AppendResult:
        """Add entries (idempotent) and cut the windows that became full; they are leased to the caller."""
        if not entries:
            return AppendResult(0, [])
        keys, argv = self._call(entries, now_ms)
        return self._result(self._append(keys=keys, args=argv))

    def _pool(self) -> Any:
        """The connection pool of the node that serves the store's slot."""
        if isinstance(self.r, RedisCluster):
            return self.r.get_redis_connection(self.r.get_node_from_key(self.key("idle"))).connection_pool
        return self.r.connection_pool

    def append_start(self, entries: Sequence[Entry], now_ms: int) -> PendingAppend:
        """Send an append and return without waiting: Redis runs the script while the caller parses the next batch.
        ``append_finish`` reads the reply. If the send fails, the finish appends again the usual way (appends are
        idempotent), so a caller only has to retry ``append_finish``."""
        if not entries:
            return PendingAppend(entries, now_ms, None)
        try:
            pool = self._pool()
            conn = pool.get_connection()
        except (redis.ConnectionError, redis.TimeoutError):
            return PendingAppend(entries, now_ms, None)
        try:
            keys, argv = self._call(entries, now_ms)
            conn.send_command("EVALSHA", self._append.sha, len(keys), *keys, *argv)
        except (redis.ConnectionError, redis.TimeoutError):
            conn.disconnect()
            pool.release(conn)
            return PendingAppend(entries, now_ms, None)
        except BaseException:  # e.g. an argument the encoder refuses: never keep the connection checked out
            conn.disconnect()
            pool.release(conn)
            raise
        return PendingAppend(entries, now_ms, conn, pool)

    def append_finish(self, pending: PendingAppend) -> AppendResult:
        """The reply of ``append_start``; raises ``redis.RedisError`` if Redis failed (call again to retry)."""
        conn, pending.conn = pending.conn, None
        if conn is not None:
            pool = pending.pool
            try:
                reply = conn.read_response()
            except NoScriptError:  # Redis lost its scripts (a restart, a new cluster node): the plain call loads it
                pool.release(conn)
            except BaseException:  # a cluster that moved the slot (MOVED) too: the retry goes the plain way
                conn.disconnect()
                pool.release(conn)
                raise
            else:
                pool.release(conn)
                return self._result(reply)
        return self.append(pending.entries, pending.now_ms)

    def _call(self, entries: Sequence[Entry], now_ms: int) -> tuple[list[str], list[str | int | float]]:
        """KEYS and ARGV of ``APPEND`` (its header)."""
        index: dict[str, int] = {}
        for e in entries:
            index.setdefault(e.session_id, len(index) + 1)
        keys = [self.key(part) for part in ("idle", "closed", "ends", "ends:ev", "novel", "novel:n", "pending", "w")]
        for sid in index:
            keys += self._session_keys(sid)
        argv: list[str | int | float] = [now_ms, self.max_len, self.stride, self.ttl_s, self.lease_ms,
                                         self.novel_cap, self.max_open, len(index), *index, len(entries)]
        for e in entries:
            argv += (index[e.session_id], repr(e.timestamp), e.member, e.unseen_text, e.origin)
        return keys, argv

    @staticmethod
    def _result(reply: Any) -> AppendResult:
        new, payloads, novel, capped, resumed, refused = reply
        return AppendResult(int(new), [CutWindow.from_payload(p) for p in payloads], int(novel), int(capped),
                            int(resumed), tuple(int(i) for i in refused))

    def novel_templates(self) -> dict[str, tuple[str, int]]:
        """The shared registry of templates the model never saw: id -> (masked text, distinct lines)."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(self.key("novel"))
        pipe.hgetall(self.key("novel:n"))
        texts, counts = pipe.execute()
        return {k.decode(): (v.decode(), int(counts.get(k, 0))) for k, v in texts.items()}
