"""The Redis key layout of the session-window store (``streamer.windows``), and the records it keeps there.

Layout under the key prefix ``P`` = ``<namespace>:{<bundle version>}`` (``key_prefix``; ``logad:{hdfs-1a2b3c4d5e6f}``):

    P:s:<session>   ZSET   entries; score = log timestamp, member = "<key:06d>:<line digest>" (logbert_core.windows)
    P:m:<session>   HASH   start, covered (the WindowCursor), closed flag
    P:u:<session>   HASH   line digest -> masked text, for entries whose template the model never saw
    P:o:<session>   HASH   member -> "<partition>:<offset>" of the input record that first added the entry (only when
                           the worker passes origins: ``event.input_offsets``); lives and dies with P:s:<session>
    P:novel         HASH   new-template id (sha1 of its masked text) -> text: one registry for every worker
    P:novel:n       HASH   new-template id -> number of distinct lines seen with it (replays do not count)
    P:idle          ZSET   open session -> wall-clock ms of its last new entry
    P:pending       ZSET   window id -> lease expiry (ms); the window's payload is the field of that id in P:w
    P:w             HASH   window id -> JSON payload of a window waiting to be scored and published
    P:ends          ZSET   closed session -> log timestamp of its last line: a ``premature_end`` verdict held until
                           the log has gone on past it for the rest horizon (``WindowStore.hold_ends``)
    P:ends:ev       HASH   closed session -> the held anomaly event (JSON), published once the quiet is seen
    P:closed        ZSET   closed session -> wall-clock ms of its close: the oldest are forgotten first past max_closed
    P:rate:<minute> HASH   anomaly event id -> "cut_ms|reasons": the events published for windows cut in that minute
                           (at most the per-minute limit; ``WindowStore.rate``)
    P:storm:<min.>  STRING id of the event that tripped the limit in that minute: a storm summary is published once

Redis Cluster (and the managed cluster modes: ElastiCache/MemoryDB cluster mode, Azure Cache clustering, Memorystore
Cluster). A script may only touch the keys passed to it in KEYS, and all keys of one call must hash to one slot.
Every key above carries the one hash tag ``{<bundle version>}``, and every script gets every key it touches in KEYS
(the client names them; no script builds a key name). So the whole store of one bundle lives in one slot, on one
shard: the layout is cluster-legal, but a cluster spreads no load of one bundle across its shards (it does spread
separate bundles and the worker's other keys, ``<namespace>:model:current`` and the like, which are single-key).
The alternative, a tag per session, would need the shared structures (P:idle, P:pending/P:w, P:closed, P:ends, the
novel registry, the rate counters) split per slot or per partition, with the open-session and closed-session caps
and the per-minute event limit then counted per part or summed across them, and every batch split by slot. That is
not done: one slot holds what one Redis node serves today, which is what the store was sized for.
Two namespaces that run the same bundle share its slot (not its keys). A namespace or version with ``{`` or ``}`` in
it is refused (``key_prefix``), as it would move the tag.

Because the keys are passed in, a sweep is two round trips: it reads the sessions due to close (and, past
``max_closed``, the oldest closed ones, a third) before the script, which checks each again atomically.

What the scripts guarantee, and their text: ``streamer.window_scripts``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, cast

import redis
from redis.cluster import RedisCluster


def hash_tag(key: str) -> str | None:
    """The part of ``key`` Redis Cluster hashes, if a tag: between the first ``{`` and the next ``}``, not empty."""
    lo = key.find("{")
    if lo < 0:
        return None
    hi = key.find("}", lo + 1)
    return key[lo + 1:hi] if hi > lo + 1 else None


def key_prefix(prefix: str) -> str:
    """The key prefix of a store for ``<namespace>:<bundle version>``: its last ``:``-part becomes the hash tag,
    ``logad:hdfs-1a2b`` -> ``logad:{hdfs-1a2b}``. A prefix already tagged (``key_prefix``'s own output) is kept."""
    if hash_tag(prefix) is not None and prefix.endswith("}") and prefix.count("{") == 1 == prefix.count("}"):
        return prefix
    head, sep, last = prefix.rpartition(":")
    if not last or "{" in prefix or "}" in prefix:
        raise ValueError(f"Redis key prefix {prefix!r}: redis.namespace and the bundle version must be non-empty and "
                         "hold no '{' or '}' (the hash tag that keeps a store's keys in one cluster slot)")
    return f"{head}{sep}{{{last}}}"


def client_for(url: str, cluster: bool = False, **kwargs: Any) -> redis.Redis:
    """A Redis client for ``redis.url``: with ``cluster`` (``redis.cluster``) a ``RedisCluster`` that finds the
    other nodes from this one. Typed as ``redis.Redis``: the cluster client serves the same commands, and each call
    logad makes names keys of one slot (this module's layout) or a single key."""
    if cluster:
        return cast(redis.Redis, RedisCluster.from_url(url, **kwargs))
    return redis.Redis.from_url(url, **kwargs)


def left_in(client: redis.Redis, prefix: str) -> tuple[int, int, int]:
    """``WindowStore.left`` for a prefix no store of this process serves (a bundle an earlier run was draining),
    in one round trip."""
    p = key_prefix(prefix)
    pipe = client.pipeline(transaction=False)
    for part in ("idle", "pending", "ends"):
        pipe.zcard(f"{p}:{part}")
    idle, pending, ends = pipe.execute()
    return int(idle), int(pending), int(ends)


@dataclass(frozen=True, slots=True)
class Entry:
    """One line's contribution to one session."""

    session_id: str
    timestamp: float
    member: str  # logbert_core.windows.member(key, line)
    unseen_text: str = ""  # masked text of a line whose template the model never saw
    origin: str = ""  # "<partition>:<offset>" of the input record, kept with the entry (P:o); "": none kept


@dataclass(frozen=True, slots=True)
class CutWindow:
    """A window cut from a session, waiting in ``P:pending`` to be scored."""

    id: str
    session_id: str
    lo: int
    hi: int
    members: tuple[str, ...]
    first_ts: float
    last_ts: float
    cut_ms: int
    cause: str  # "full" (the window reached max_len) or "idle" (the session closed)
    origins: tuple[str | None, ...] = ()  # per member, the input record that added it ("<partition>:<offset>")

    @classmethod
    def from_payload(cls, raw: bytes | str) -> CutWindow:
        d = json.loads(raw)
        members = d["members"]
        if isinstance(members, dict):  # cjson encodes an empty Lua table as {}
            members = []
        origins = d.get("origins")
        if not isinstance(origins, list):  # {} (empty), or absent in a payload cut before origins were kept
            origins = []
        return cls(id=d["id"], session_id=d["session"], lo=int(d["lo"]), hi=int(d["hi"]), members=tuple(members),
                   first_ts=float(d["first_ts"]), last_ts=float(d["last_ts"]), cut_ms=int(d["cut_ms"]),
                   cause=d["cause"], origins=tuple(o if isinstance(o, str) else None for o in origins))


class StoreKeys:
    """The client and the key names that every part of ``WindowStore`` shares."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.r = client
        self.prefix = prefix  # ``key_prefix(...)``: P in the layout above

    def key(self, part: str) -> str:
        """The name of one of the store's keys: ``key("idle")`` is ``P:idle``."""
        return f"{self.prefix}:{part}"

    def _session_keys(self, sid: str) -> tuple[str, str, str, str]:
        p = self.prefix
        return f"{p}:s:{sid}", f"{p}:m:{sid}", f"{p}:u:{sid}", f"{p}:o:{sid}"


def as_text(v: Any) -> str:
    """A reply as text, from clients with or without ``decode_responses``."""
    return v.decode() if isinstance(v, bytes) else str(v)
