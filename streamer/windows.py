"""Per-session sliding windows in Redis, shared by every worker of the consumer group.

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

Invariants the Lua scripts keep (each script runs atomically; an append is one round trip per batch):

* Appending is idempotent: ``ZADD NX`` of an existing member changes nothing, and a batch that adds nothing emits
  nothing, so replaying records after a crash leaves the state as it was.
* Windows are cut by ``WindowCursor``'s rule: full windows when the session reaches ``max_len`` entries past
  ``start`` (then ``start`` slides by ``stride``); a final window when an idle session closes.
* A cut window is first written to ``P:pending`` under a lease held by the worker that cut it. It leaves
  ``P:pending`` only when that worker has published its verdict (``ack``). If the worker dies, the lease runs out and
  the next ``sweep`` of any worker claims it, so no window is lost and none is scored by two workers at once. A
  window still unpublished ``ttl_s`` after its cut is dropped by the sweep that finds its lease run out.
* Closing a session is claimed atomically (``ZREM`` from ``P:idle`` inside the script, after checking it is still
  idle): exactly one worker closes it.
  A closed session keeps its entries for ``closed_ttl_s`` after its close (or until it is among the oldest past
  ``max_closed``, never within ``protect_ms`` of its close), so a replay of its lines is still a no-op, and a session
  that comes back continues its window.
* At most ``max_open`` sessions are open (in ``P:idle``) under the prefix. An entry that would open one more is not
  stored and its index is returned (refused); an entry already stored (a replay) is never refused. Sessions that
  are open are never refused.
* The window id is derived from the session, the window's position and its members: a re-cut after a crash gives
  the same id, which is the anomaly event's id.
* A held ``premature_end`` verdict is dropped by the append that brings its session back (the session did not
  stop), and is only written while the session is still closed with the judged window as its last.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis
from redis.cluster import RedisCluster
from redis.exceptions import NoScriptError

_CUT = r"""
-- Cut the window [lo, hi) of session sid (entries in k_s, their origins in k_o) into k_pending, leased to the caller
-- until now + lease, its payload in k_w; returns the payload. The id derives from the session, the position and the
-- members, so a re-cut of the same window has the same id.
local function cut(k_s, k_o, k_pending, k_w, sid, lo, hi, now, lease, cause)
  local mem = redis.call('ZRANGE', k_s, lo, hi - 1, 'WITHSCORES')
  local members, stamps = {}, {}
  for j = 1, #mem, 2 do
    members[#members + 1] = mem[j]
    stamps[#stamps + 1] = mem[j + 1]
  end
  local id = redis.sha1hex(sid .. '|' .. lo .. '|' .. hi .. '|' .. table.concat(members, ','))
  -- input records of the members (false where not stored): not part of the id, fixed once the entry is stored
  local origins = {}
  if #members > 0 then origins = redis.call('HMGET', k_o, unpack(members)) end
  local payload = cjson.encode({id = id, session = sid, lo = lo, hi = hi, members = members,
    first_ts = stamps[1], last_ts = stamps[#stamps], cut_ms = now, cause = cause, origins = origins})
  redis.call('HSET', k_w, id, payload)
  redis.call('ZADD', k_pending, now + lease, id)
  return payload
end
"""

_APPEND = _CUT + r"""
-- KEYS: P:idle, P:closed, P:ends, P:ends:ev, P:novel, P:novel:n, P:pending, P:w, then for session j of the batch
-- (1-based) P:s:<j>, P:m:<j>, P:u:<j>, P:o:<j> at KEYS[4j + 5 .. 4j + 8]
-- ARGV: now_ms, max_len, stride, ttl_s, lease_ms, novel_cap, max_open, n_sessions, the sessions, n, then
-- n x (session index j, ts, member, unseen text, origin: "<partition>:<offset>" of the input record, or '' for none)
local k_idle, k_closed, k_ends, k_ends_ev = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local k_novel, k_novel_n, k_pending, k_w = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local now = tonumber(ARGV[1])
local max_len = tonumber(ARGV[2])
local stride = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local lease = tonumber(ARGV[5])
local novel_cap = tonumber(ARGV[6])
local max_open = tonumber(ARGV[7])
local ns = tonumber(ARGV[8])
local n = tonumber(ARGV[9 + ns])
local e0 = 9 + ns  -- entry i (0-based) is at ARGV[e0 + 1 + 5i ..]
local added = {}
local order = {}
local novel_new, novel_capped, resumed = 0, 0, 0
-- admission (max_open > 0): 'open' = in P:idle before this batch; 'new' = admitted now; 'full' = refused
local admit = {}
local open_now = 0
if max_open > 0 then open_now = redis.call('ZCARD', k_idle) end
local refused = {}
for i = 0, n - 1 do
  local j = tonumber(ARGV[e0 + 1 + 5 * i])
  local sid = ARGV[8 + j]
  local k_s, k_u, k_o = KEYS[4 * j + 5], KEYS[4 * j + 7], KEYS[4 * j + 8]
  local ts = ARGV[e0 + 2 + 5 * i]
  local mem = ARGV[e0 + 3 + 5 * i]
  local txt = ARGV[e0 + 4 + 5 * i]
  local org = ARGV[e0 + 5 + 5 * i]
  local r = 0
  if max_open > 0 and admit[j] == nil then
    if redis.call('ZSCORE', k_idle, sid) then
      admit[j] = 'open'
    else
      admit[j] = 'maybe'  -- opens with its first new entry, if there is room then
    end
  end
  if admit[j] == 'full' or (admit[j] == 'maybe' and open_now >= max_open) then
    admit[j] = 'full'
    if not redis.call('ZSCORE', k_s, mem) then
      refused[#refused + 1] = i  -- a replayed entry (already stored) is a no-op, not a refusal
    end
  else
    r = redis.call('ZADD', k_s, 'NX', ts, mem)
    if r == 1 and admit[j] == 'maybe' then
      admit[j] = 'new'
      open_now = open_now + 1
    end
  end
  if added[j] == nil then
    added[j] = 0
    order[#order + 1] = j
  end
  if r == 1 then
    added[j] = added[j] + 1
    if org ~= '' then redis.call('HSET', k_o, mem, org) end
    if txt ~= '' then
      redis.call('HSET', k_u, string.sub(mem, 8), txt)
      local tid = string.sub(redis.sha1hex(txt), 1, 16)
      if redis.call('HEXISTS', k_novel, tid) == 1 then
        redis.call('HINCRBY', k_novel_n, tid, 1)
      elseif redis.call('HLEN', k_novel) < novel_cap then
        redis.call('HSET', k_novel, tid, txt)
        redis.call('HINCRBY', k_novel_n, tid, 1)
        novel_new = novel_new + 1
      else
        novel_capped = novel_capped + 1
      end
    end
  end
end
local out = {}
local new_entries = 0
for _, j in ipairs(order) do
  if added[j] > 0 then
    new_entries = new_entries + added[j]
    local sid = ARGV[8 + j]
    local k_s, k_m, k_u, k_o = KEYS[4 * j + 5], KEYS[4 * j + 6], KEYS[4 * j + 7], KEYS[4 * j + 8]
    local st = redis.call('HMGET', k_m, 'start', 'covered', 'closed')
    local start = tonumber(st[1]) or 0
    local covered = tonumber(st[2]) or 0
    if st[3] ~= '0' then  -- closed, or its keys are gone (forgotten or expired): it opens again
      redis.call('ZREM', k_closed, sid)
      if redis.call('ZREM', k_ends, sid) == 1 then
        redis.call('HDEL', k_ends_ev, sid)  -- it came back: the stop held for it did not happen
        resumed = resumed + 1
      end
    end
    local cnt = redis.call('ZCARD', k_s)
    while cnt - start >= max_len do
      out[#out + 1] = cut(k_s, k_o, k_pending, k_w, sid, start, start + max_len, now, lease, 'full')
      covered = start + max_len
      start = start + stride
    end
    redis.call('HSET', k_m, 'start', start, 'covered', covered, 'closed', 0)
    redis.call('ZADD', k_idle, now, sid)
    redis.call('EXPIRE', k_s, ttl)
    redis.call('EXPIRE', k_m, ttl)
    if redis.call('EXISTS', k_u) == 1 then redis.call('EXPIRE', k_u, ttl) end
    redis.call('EXPIRE', k_o, ttl)
  end
end
return {new_entries, out, novel_new, novel_capped, resumed, refused}
"""

_HOLD = r"""
-- KEYS: P:ends, P:ends:ev, then for held event i (1-based) P:m:<its session>, P:s:<its session> at KEYS[2i + 1],
-- KEYS[2i + 2]
-- ARGV: n, then n x (session, hi, last_ts, event): hold each event while its session is still closed and the judged
-- window ends at the session's last entry (a line that came meanwhile reopened it: nothing to hold)
local k_ends, k_ends_ev = KEYS[1], KEYS[2]
local n = tonumber(ARGV[1])
local held = 0
for i = 1, n do
  local sid = ARGV[4 * i - 2]
  local k_m, k_s = KEYS[2 * i + 1], KEYS[2 * i + 2]
  if redis.call('HGET', k_m, 'closed') == '1' and redis.call('ZCARD', k_s) == tonumber(ARGV[4 * i - 1]) then
    redis.call('ZADD', k_ends, ARGV[4 * i], sid)
    redis.call('HSET', k_ends_ev, sid, ARGV[4 * i + 1])
    held = held + 1
  end
end
return held
"""

_DROP = r"""
-- KEYS: P:ends, P:ends:ev
-- ARGV: pairs (session, event): remove held events that were published, unless replaced meanwhile
local k_ends, k_ends_ev = KEYS[1], KEYS[2]
local dropped = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', k_ends_ev, ARGV[i]) == ARGV[i + 1] then
    redis.call('ZREM', k_ends, ARGV[i])
    redis.call('HDEL', k_ends_ev, ARGV[i])
    dropped = dropped + 1
  end
end
return dropped
"""

_ACK = r"""
-- KEYS: P:pending, P:w
-- ARGV: window ids whose verdicts are published
local k_pending, k_w = KEYS[1], KEYS[2]
for i = 1, #ARGV do
  redis.call('ZREM', k_pending, ARGV[i])
  redis.call('HDEL', k_w, ARGV[i])
end
return #ARGV
"""

_SWEEP = _CUT + r"""
-- KEYS: P:idle, P:closed, P:pending, P:w, then for due session j (1-based) P:s, P:m, P:u, P:o at
-- KEYS[4j + 1 .. 4j + 4], then for eviction candidate c (1-based) the same four at KEYS[c0 + 4c - 3 .. c0 + 4c],
-- c0 = 4 + 4 n_due
-- ARGV: now_ms, idle_before_ms, lease_ms, limit, ttl_s, closed_ttl_s, max_closed, protect_ms, n_due, the due
-- sessions, n_old, the eviction candidates (oldest closed first). The client read both lists just before: each is
-- checked again here, as another worker may have closed, reopened or forgotten a session meanwhile.
local k_idle, k_closed, k_pending, k_w = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now = tonumber(ARGV[1])
local idle_before = tonumber(ARGV[2])
local lease = tonumber(ARGV[3])
local limit = tonumber(ARGV[4])
local ttl = tonumber(ARGV[5])
local closed_ttl = tonumber(ARGV[6])
local max_closed = tonumber(ARGV[7])
local protect = tonumber(ARGV[8])
local n_due = tonumber(ARGV[9])
local n_old = tonumber(ARGV[10 + n_due])
local c0 = 4 + 4 * n_due
local out = {}
local closed = 0
local expired = 0
for j = 1, n_due do
  local sid = ARGV[9 + j]
  local seen = redis.call('ZSCORE', k_idle, sid)
  if seen and tonumber(seen) <= idle_before and redis.call('ZREM', k_idle, sid) == 1 then
    closed = closed + 1
    local k_s, k_m, k_u, k_o = KEYS[4 * j + 1], KEYS[4 * j + 2], KEYS[4 * j + 3], KEYS[4 * j + 4]
    local cnt = redis.call('ZCARD', k_s)
    if cnt == 0 then
      -- its entries expired (ttl_s) before any sweep reached it: nothing is left to cut; say so, and do not
      -- recreate its metadata as a key without a TTL
      expired = expired + 1
      redis.call('DEL', k_m)
    else
      local st = redis.call('HMGET', k_m, 'start', 'covered')
      local start = tonumber(st[1]) or 0
      local covered = tonumber(st[2]) or 0
      if cnt > covered and cnt > start then
        out[#out + 1] = cut(k_s, k_o, k_pending, k_w, sid, start, cnt, now, lease, 'idle')
        covered = cnt
      end
      redis.call('HSET', k_m, 'covered', covered, 'closed', 1)
      -- kept for replays and for a return, closed_ttl_s from now (the keys of an open session live ttl_s)
      redis.call('ZADD', k_closed, now, sid)
      redis.call('EXPIRE', k_s, closed_ttl)
      redis.call('EXPIRE', k_m, closed_ttl)
      redis.call('EXPIRE', k_u, closed_ttl)
      redis.call('EXPIRE', k_o, closed_ttl)
    end
  end
end
local more = n_due >= limit
-- closed sessions: forget the ones whose keys expired; past max_closed, the oldest closed (not within protect_ms)
redis.call('ZREMRANGEBYSCORE', k_closed, '-inf', '(' .. (now - closed_ttl * 1000))
local evicted = 0
if max_closed > 0 then
  local quota = math.min(redis.call('ZCARD', k_closed) - max_closed, limit)
  for c = 1, n_old do
    if evicted >= quota then break end
    local sid = ARGV[10 + n_due + c]
    local at = redis.call('ZSCORE', k_closed, sid)
    if at and tonumber(at) <= now - protect then
      for x = c0 + 4 * c - 3, c0 + 4 * c do redis.call('DEL', KEYS[x]) end
      redis.call('ZREM', k_closed, sid)
      evicted = evicted + 1
    end
  end
  if evicted >= limit then more = true end
end
-- windows whose lease ran out (their worker died or stalled): claim them for this worker; one cut ttl_s ago or
-- earlier is dropped
local stale = redis.call('ZRANGEBYSCORE', k_pending, '-inf', now, 'LIMIT', 0, limit)
for _, id in ipairs(stale) do
  local payload = redis.call('HGET', k_w, id)
  if payload and now - tonumber(cjson.decode(payload).cut_ms) < ttl * 1000 then
    redis.call('ZADD', k_pending, now + lease, id)
    out[#out + 1] = payload
  else
    redis.call('ZREM', k_pending, id)
    redis.call('HDEL', k_w, id)
  end
end
if #stale >= limit then more = true end
return {closed, out, more and 1 or 0, expired, evicted}
"""

_RATE = r"""
-- KEYS: for minute j of the batch (1-based) P:rate:<m>, P:storm:<m>, P:storm:<m - 1> at KEYS[3j - 2 .. 3j]
-- ARGV: limit, ttl_s, n, then n x (event id, minute index j, cut_ms, reasons). Per event: 1 = publish; 0 = over the
-- minute's limit; 2 = over it, and the first such event of a storm: its place takes the storm summary. A replay gets
-- the same answers while the minute's keys live: the published set is fixed once full.
local limit = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local out = {}
for i = 0, n - 1 do
  local id, j = ARGV[4 + 4 * i], tonumber(ARGV[5 + 4 * i])
  local k_rate, k_storm, k_storm_before = KEYS[3 * j - 2], KEYS[3 * j - 1], KEYS[3 * j]
  if redis.call('HEXISTS', k_rate, id) == 1 then
    out[#out + 1] = 1
  elseif redis.call('HLEN', k_rate) < limit then
    redis.call('HSET', k_rate, id, ARGV[6 + 4 * i] .. '|' .. ARGV[7 + 4 * i])
    redis.call('EXPIRE', k_rate, ttl)
    out[#out + 1] = 1
  else
    redis.call('SET', k_storm, id, 'NX', 'EX', ttl)
    -- a storm that went on from the minute before was summarised then
    if redis.call('GET', k_storm) == id and redis.call('EXISTS', k_storm_before) == 0 then
      out[#out + 1] = 2
    else
      out[#out + 1] = 0
    end
  end
end
return out
"""

# every script of the store, by name (tests check that no script builds a key name)
SCRIPTS = {"append": _APPEND, "hold": _HOLD, "drop": _DROP, "ack": _ACK, "sweep": _SWEEP, "rate": _RATE}


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


@dataclass(frozen=True, slots=True)
class AppendResult:
    new_entries: int
    windows: list[CutWindow]
    novel_templates: int = 0  # new templates this batch registered first (any worker sees the same ids)
    novel_capped: int = 0  # lines whose new template was not registered because the registry is full
    resumed: int = 0  # closed sessions that came back while a premature_end verdict was held for them (dropped)
    refused: tuple[int, ...] = ()  # indices of the entries refused because max_open sessions were open


@dataclass(frozen=True, slots=True)
class SweepResult:
    closed_sessions: int
    windows: list[CutWindow]
    more: bool = False  # the sweep stopped at its limit: more sessions may be due now
    expired: int = 0  # closed sessions whose entries had expired (session.ttl_s) before the sweep: nothing to cut
    evicted: int = 0  # closed sessions forgotten because more than max_closed were kept


class PendingAppend:
    """An append sent to Redis whose reply has not been read yet (``WindowStore.append_start``)."""

    __slots__ = ("entries", "now_ms", "conn", "pool")

    def __init__(self, entries: Sequence[Entry], now_ms: int, conn: Any, pool: Any = None) -> None:
        self.entries = entries
        self.now_ms = now_ms
        self.conn = conn  # the connection holding the reply; None once read (or never sent)
        self.pool = pool  # the pool it came from (a cluster client has one per node)


class WindowStore:
    """Session windows in Redis; every method is one round trip, but ``sweep`` (two, or three past
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
        self._append = client.register_script(_APPEND)
        self._sweep = client.register_script(_SWEEP)
        self._hold = client.register_script(_HOLD)
        self._drop = client.register_script(_DROP)
        self._ack = client.register_script(_ACK)
        self._rate = client.register_script(_RATE)

    def key(self, part: str) -> str:
        """The name of one of the store's keys: ``key("idle")`` is ``P:idle``."""
        return f"{self.prefix}:{part}"

    def _session_keys(self, sid: str) -> tuple[str, str, str, str]:
        p = self.prefix
        return f"{p}:s:{sid}", f"{p}:m:{sid}", f"{p}:u:{sid}", f"{p}:o:{sid}"

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
        """KEYS and ARGV of ``_APPEND`` (its header)."""
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
        due = [_text(s) for s in got[0]]
        old: list[str] = []
        if self.max_closed > 0:
            excess = int(got[1]) + len(due) - self.max_closed
            if excess > 0:
                old = [_text(s) for s in self.r.zrangebyscore(self.key("closed"), kept_since,
                                                              now_ms - self.protect_ms, 0, min(excess, limit))]
        keys = [self.key(part) for part in ("idle", "closed", "pending", "w")]
        for sid in (*due, *old):
            keys += self._session_keys(sid)
        closed, payloads, more, expired, evicted = self._sweep(
            keys=keys, args=[now_ms, idle_before, self.lease_ms, limit, self.ttl_s, self.closed_ttl_s,
                             self.max_closed, self.protect_ms, len(due), *due, len(old), *old])
        return SweepResult(int(closed), [CutWindow.from_payload(p) for p in payloads], bool(more), int(expired),
                           int(evicted))

    def ack(self, window_ids: Sequence[str]) -> None:
        """The windows' verdicts are published: drop them from ``P:pending`` and ``P:w``."""
        if not window_ids:
            return
        self._ack(keys=[self.key("pending"), self.key("w")], args=list(window_ids))

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
            out[sid] = {_text(k): _text(v) for k, v in found.items()}
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
        sids = [_text(s) for s in self.r.zrangebyscore(self.key("ends"), "-inf", before_ts, 0, limit)]
        if not sids:
            return []
        events = self.r.hmget(self.key("ends:ev"), sids)
        return [(sid, _text(ev)) for sid, ev in zip(sids, events) if ev is not None]

    def drop_ends(self, published: Sequence[tuple[str, str]]) -> int:
        """Forget held events that were published (``due_ends``' pairs); returns how many were still held."""
        if not published:
            return 0
        return int(self._drop(keys=[self.key("ends"), self.key("ends:ev")],
                              args=[x for pair in published for x in pair]))

    def known_sessions(self, session_ids: Sequence[str]) -> set[str]:
        """Which of these sessions have entries under this prefix (one pipelined round trip)."""
        pipe = self.r.pipeline(transaction=False)
        for sid in session_ids:
            pipe.exists(self.key(f"s:{sid}"))
        return {sid for sid, n in zip(session_ids, pipe.execute()) if n}

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
            cut, _, reasons = _text(v).partition("|")
            out.append((int(cut), reasons))
        return (_text(trip) if trip else None), sorted(out)

    def held_ends(self) -> int:
        return int(self.r.zcard(self.key("ends")))

    def left(self) -> tuple[int, int, int]:
        """Open sessions, pending windows and held stops: what must still be done under this prefix."""
        return left_in(self.r, self.prefix)

    def open_sessions(self) -> int:
        return int(self.r.zcard(self.key("idle")))

    def pending(self) -> int:
        return int(self.r.zcard(self.key("pending")))


def _text(v: Any) -> str:
    """A reply as text, from clients with or without ``decode_responses``."""
    return v.decode() if isinstance(v, bytes) else str(v)
