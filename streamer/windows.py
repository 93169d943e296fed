"""Per-session sliding windows in Redis, shared by every worker of the consumer group.

Layout under the prefix ``<namespace>:<bundle version>`` (``P``):

    P:s:<session>   ZSET   entries; score = log timestamp, member = "<key:06d>:<line digest>" (logbert_core.windows)
    P:m:<session>   HASH   start, covered (the WindowCursor), closed flag
    P:u:<session>   HASH   line digest -> masked text, for entries whose template the model never saw
    P:o:<session>   HASH   member -> "<partition>:<offset>" of the input record that first added the entry (only when
                           the worker passes origins: ``event.input_offsets``); lives and dies with P:s:<session>
    P:novel         HASH   new-template id (sha1 of its masked text) -> text: one registry for every worker
    P:novel:n       HASH   new-template id -> number of distinct lines seen with it (replays do not count)
    P:idle          ZSET   open session -> wall-clock ms of its last new entry
    P:pending       ZSET   window id -> lease expiry (ms); the window's payload is at P:w:<window id>
    P:w:<id>        STRING JSON payload of a window waiting to be scored and published
    P:ends          ZSET   closed session -> log timestamp of its last line: a ``premature_end`` verdict held until
                           the log has gone on past it for the rest horizon (``WindowStore.hold_ends``)
    P:ends:ev       HASH   closed session -> the held anomaly event (JSON), published once the quiet is seen
    P:closed        ZSET   closed session -> wall-clock ms of its close: the oldest are forgotten first past max_closed
    P:rate:<minute> HASH   anomaly event id -> "cut_ms|reasons": the events published for windows cut in that minute
                           (at most the per-minute limit; ``WindowStore.rate``)
    P:storm:<min.>  STRING id of the event that tripped the limit in that minute: a storm summary is published once

Invariants the Lua scripts keep (each script runs atomically, one round trip per batch):

* Appending is idempotent: ``ZADD NX`` of an existing member changes nothing, and a batch that adds nothing emits
  nothing, so replaying records after a crash leaves the state as it was.
* Windows are cut by ``WindowCursor``'s rule: full windows when the session reaches ``max_len`` entries past
  ``start`` (then ``start`` slides by ``stride``); a final window when an idle session closes.
* A cut window is first written to ``P:pending`` under a lease held by the worker that cut it. It leaves
  ``P:pending`` only when that worker has published its verdict (``ack``). If the worker dies, the lease runs out and
  the next ``sweep`` of any worker claims it, so no window is lost and none is scored by two workers at once.
* Closing a session is claimed atomically (``ZREM`` from ``P:idle`` inside the script): exactly one worker closes it.
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
from typing import Any

import redis
from redis.exceptions import NoScriptError

_CUT = r"""
-- Cut the window [lo, hi) of session sid into P:pending, leased to the caller until now + lease; returns its payload.
-- The id derives from the session, the position and the members, so a re-cut of the same window has the same id.
local function cut(p, sid, lo, hi, now, lease, ttl, cause)
  local mem = redis.call('ZRANGE', p .. ':s:' .. sid, lo, hi - 1, 'WITHSCORES')
  local members, stamps = {}, {}
  for j = 1, #mem, 2 do
    members[#members + 1] = mem[j]
    stamps[#stamps + 1] = mem[j + 1]
  end
  local id = redis.sha1hex(sid .. '|' .. lo .. '|' .. hi .. '|' .. table.concat(members, ','))
  -- input records of the members (false where not stored): not part of the id, fixed once the entry is stored
  local origins = {}
  if #members > 0 then origins = redis.call('HMGET', p .. ':o:' .. sid, unpack(members)) end
  local payload = cjson.encode({id = id, session = sid, lo = lo, hi = hi, members = members,
    first_ts = stamps[1], last_ts = stamps[#stamps], cut_ms = now, cause = cause, origins = origins})
  redis.call('SET', p .. ':w:' .. id, payload, 'EX', ttl)
  redis.call('ZADD', p .. ':pending', now + lease, id)
  return payload
end
"""

_APPEND = _CUT + r"""
-- KEYS: none (all keys derive from the prefix; the store is used with one Redis node or hash tags in P)
-- ARGV: prefix, now_ms, max_len, stride, ttl_s, lease_ms, novel_cap, max_open, n, then n x (session, ts, member,
-- unseen text, origin: "<partition>:<offset>" of the input record, or '' to store none)
local p = ARGV[1]
local now = tonumber(ARGV[2])
local max_len = tonumber(ARGV[3])
local stride = tonumber(ARGV[4])
local ttl = tonumber(ARGV[5])
local lease = tonumber(ARGV[6])
local novel_cap = tonumber(ARGV[7])
local max_open = tonumber(ARGV[8])
local n = tonumber(ARGV[9])
local added = {}
local order = {}
local novel_new, novel_capped, resumed = 0, 0, 0
-- admission (max_open > 0): 'open' = in P:idle before this batch; 'new' = admitted now; 'full' = refused
local admit = {}
local open_now = 0
if max_open > 0 then open_now = redis.call('ZCARD', p .. ':idle') end
local refused = {}
for i = 0, n - 1 do
  local sid = ARGV[10 + 5 * i]
  local ts = ARGV[11 + 5 * i]
  local mem = ARGV[12 + 5 * i]
  local txt = ARGV[13 + 5 * i]
  local org = ARGV[14 + 5 * i]
  local r = 0
  if max_open > 0 and admit[sid] == nil then
    if redis.call('ZSCORE', p .. ':idle', sid) then
      admit[sid] = 'open'
    else
      admit[sid] = 'maybe'  -- opens with its first new entry, if there is room then
    end
  end
  if admit[sid] == 'full' or (admit[sid] == 'maybe' and open_now >= max_open) then
    admit[sid] = 'full'
    if not redis.call('ZSCORE', p .. ':s:' .. sid, mem) then
      refused[#refused + 1] = i  -- a replayed entry (already stored) is a no-op, not a refusal
    end
  else
    r = redis.call('ZADD', p .. ':s:' .. sid, 'NX', ts, mem)
    if r == 1 and admit[sid] == 'maybe' then
      admit[sid] = 'new'
      open_now = open_now + 1
    end
  end
  if added[sid] == nil then
    added[sid] = 0
    order[#order + 1] = sid
  end
  if r == 1 then
    added[sid] = added[sid] + 1
    if org ~= '' then redis.call('HSET', p .. ':o:' .. sid, mem, org) end
    if txt ~= '' then
      redis.call('HSET', p .. ':u:' .. sid, string.sub(mem, 8), txt)
      local tid = string.sub(redis.sha1hex(txt), 1, 16)
      if redis.call('HEXISTS', p .. ':novel', tid) == 1 then
        redis.call('HINCRBY', p .. ':novel:n', tid, 1)
      elseif redis.call('HLEN', p .. ':novel') < novel_cap then
        redis.call('HSET', p .. ':novel', tid, txt)
        redis.call('HINCRBY', p .. ':novel:n', tid, 1)
        novel_new = novel_new + 1
      else
        novel_capped = novel_capped + 1
      end
    end
  end
end
local out = {}
local new_entries = 0
for _, sid in ipairs(order) do
  if added[sid] > 0 then
    new_entries = new_entries + added[sid]
    local sk, mk, uk = p .. ':s:' .. sid, p .. ':m:' .. sid, p .. ':u:' .. sid
    local st = redis.call('HMGET', mk, 'start', 'covered', 'closed')
    local start = tonumber(st[1]) or 0
    local covered = tonumber(st[2]) or 0
    if st[3] ~= '0' then  -- closed, or its keys are gone (forgotten or expired): it opens again
      redis.call('ZREM', p .. ':closed', sid)
      if redis.call('ZREM', p .. ':ends', sid) == 1 then
        redis.call('HDEL', p .. ':ends:ev', sid)  -- it came back: the stop held for it did not happen
        resumed = resumed + 1
      end
    end
    local cnt = redis.call('ZCARD', sk)
    while cnt - start >= max_len do
      out[#out + 1] = cut(p, sid, start, start + max_len, now, lease, ttl, 'full')
      covered = start + max_len
      start = start + stride
    end
    redis.call('HSET', mk, 'start', start, 'covered', covered, 'closed', 0)
    redis.call('ZADD', p .. ':idle', now, sid)
    redis.call('EXPIRE', sk, ttl)
    redis.call('EXPIRE', mk, ttl)
    if redis.call('EXISTS', uk) == 1 then redis.call('EXPIRE', uk, ttl) end
    redis.call('EXPIRE', p .. ':o:' .. sid, ttl)
  end
end
return {new_entries, out, novel_new, novel_capped, resumed, refused}
"""

_HOLD = r"""
-- ARGV: prefix, n, then n x (session, hi, last_ts, event): hold each event while its session is still closed and
-- the judged window ends at the session's last entry (a line that came meanwhile reopened it: nothing to hold)
local p = ARGV[1]
local n = tonumber(ARGV[2])
local held = 0
for i = 0, n - 1 do
  local sid = ARGV[3 + 4 * i]
  if redis.call('HGET', p .. ':m:' .. sid, 'closed') == '1'
      and redis.call('ZCARD', p .. ':s:' .. sid) == tonumber(ARGV[4 + 4 * i]) then
    redis.call('ZADD', p .. ':ends', ARGV[5 + 4 * i], sid)
    redis.call('HSET', p .. ':ends:ev', sid, ARGV[6 + 4 * i])
    held = held + 1
  end
end
return held
"""

_DROP = r"""
-- ARGV: prefix, then pairs (session, event): remove held events that were published, unless replaced meanwhile
local p = ARGV[1]
local dropped = 0
for i = 2, #ARGV, 2 do
  if redis.call('HGET', p .. ':ends:ev', ARGV[i]) == ARGV[i + 1] then
    redis.call('ZREM', p .. ':ends', ARGV[i])
    redis.call('HDEL', p .. ':ends:ev', ARGV[i])
    dropped = dropped + 1
  end
end
return dropped
"""

_SWEEP = _CUT + r"""
-- ARGV: prefix, now_ms, idle_before_ms, lease_ms, limit, ttl_s, closed_ttl_s, max_closed, protect_ms
local p = ARGV[1]
local now = tonumber(ARGV[2])
local idle_before = tonumber(ARGV[3])
local lease = tonumber(ARGV[4])
local limit = tonumber(ARGV[5])
local ttl = tonumber(ARGV[6])
local closed_ttl = tonumber(ARGV[7])
local max_closed = tonumber(ARGV[8])
local protect = tonumber(ARGV[9])
local out = {}
local closed = 0
local expired = 0
local due = redis.call('ZRANGEBYSCORE', p .. ':idle', '-inf', idle_before, 'LIMIT', 0, limit)
for _, sid in ipairs(due) do
  if redis.call('ZREM', p .. ':idle', sid) == 1 then
    closed = closed + 1
    local sk, mk = p .. ':s:' .. sid, p .. ':m:' .. sid
    local cnt = redis.call('ZCARD', sk)
    if cnt == 0 then
      -- its entries expired (ttl_s) before any sweep reached it: nothing is left to cut; say so, and do not
      -- recreate its metadata as a key without a TTL
      expired = expired + 1
      redis.call('DEL', mk)
    else
      local st = redis.call('HMGET', mk, 'start', 'covered')
      local start = tonumber(st[1]) or 0
      local covered = tonumber(st[2]) or 0
      if cnt > covered and cnt > start then
        out[#out + 1] = cut(p, sid, start, cnt, now, lease, ttl, 'idle')
        covered = cnt
      end
      redis.call('HSET', mk, 'covered', covered, 'closed', 1)
      -- kept for replays and for a return, closed_ttl_s from now (the keys of an open session live ttl_s)
      redis.call('ZADD', p .. ':closed', now, sid)
      redis.call('EXPIRE', sk, closed_ttl)
      redis.call('EXPIRE', mk, closed_ttl)
      redis.call('EXPIRE', p .. ':u:' .. sid, closed_ttl)
      redis.call('EXPIRE', p .. ':o:' .. sid, closed_ttl)
    end
  end
end
local more = #due >= limit
-- closed sessions: forget the ones whose keys expired; past max_closed, the oldest closed (not within protect_ms)
redis.call('ZREMRANGEBYSCORE', p .. ':closed', '-inf', '(' .. (now - closed_ttl * 1000))
local evicted = 0
if max_closed > 0 then
  local excess = redis.call('ZCARD', p .. ':closed') - max_closed
  if excess > 0 then
    local old = redis.call('ZRANGEBYSCORE', p .. ':closed', '-inf', now - protect, 'LIMIT', 0, math.min(excess, limit))
    for _, sid in ipairs(old) do
      redis.call('DEL', p .. ':s:' .. sid, p .. ':m:' .. sid, p .. ':u:' .. sid, p .. ':o:' .. sid)
      redis.call('ZREM', p .. ':closed', sid)
      evicted = evicted + 1
    end
    if #old >= limit then more = true end
  end
end
-- windows whose lease ran out (their worker died or stalled): claim them for this worker
local stale = redis.call('ZRANGEBYSCORE', p .. ':pending', '-inf', now, 'LIMIT', 0, limit)
for _, id in ipairs(stale) do
  local payload = redis.call('GET', p .. ':w:' .. id)
  if payload then
    redis.call('ZADD', p .. ':pending', now + lease, id)
    out[#out + 1] = payload
  else
    redis.call('ZREM', p .. ':pending', id)
  end
end
if #stale >= limit then more = true end
return {closed, out, more and 1 or 0, expired, evicted}
"""

_RATE = r"""
-- ARGV: prefix, limit, ttl_s, n, then n x (event id, minute, cut_ms, reasons). Per event: 1 = publish; 0 = over the
-- minute's limit; 2 = over it, and the first such event of a storm: its place takes the storm summary. A replay gets
-- the same answers while the minute's keys live: the published set is fixed once full.
local p = ARGV[1]
local limit = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local out = {}
for i = 0, n - 1 do
  local id, minute = ARGV[5 + 4 * i], tonumber(ARGV[6 + 4 * i])
  local rk = p .. ':rate:' .. minute
  if redis.call('HEXISTS', rk, id) == 1 then
    out[#out + 1] = 1
  elseif redis.call('HLEN', rk) < limit then
    redis.call('HSET', rk, id, ARGV[7 + 4 * i] .. '|' .. ARGV[8 + 4 * i])
    redis.call('EXPIRE', rk, ttl)
    out[#out + 1] = 1
  else
    local sk = p .. ':storm:' .. minute
    redis.call('SET', sk, id, 'NX', 'EX', ttl)
    -- a storm that went on from the minute before was summarised then
    if redis.call('GET', sk) == id and redis.call('EXISTS', p .. ':storm:' .. (minute - 1)) == 0 then
      out[#out + 1] = 2
    else
      out[#out + 1] = 0
    end
  end
end
return out
"""


def left_in(client: redis.Redis, prefix: str) -> tuple[int, int, int]:
    """``WindowStore.left`` for a prefix no store of this process serves (a bundle an earlier run was draining),
    in one round trip."""
    pipe = client.pipeline(transaction=False)
    for part in ("idle", "pending", "ends"):
        pipe.zcard(f"{prefix}:{part}")
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

    __slots__ = ("entries", "now_ms", "conn")

    def __init__(self, entries: Sequence[Entry], now_ms: int, conn: Any) -> None:
        self.entries = entries
        self.now_ms = now_ms
        self.conn = conn  # the connection holding the reply; None once read (or never sent)


class WindowStore:
    """Session windows in Redis; every method is one round trip."""

    def __init__(self, client: redis.Redis, prefix: str, max_len: int, stride: int, ttl_s: int,
                 lease_ms: int, novel_cap: int = 10_000, *, max_open: int = 0, closed_ttl_s: int | None = None,
                 max_closed: int = 0, protect_ms: int = 0) -> None:
        """``max_open``: cap on open sessions (0: none); ``closed_ttl_s``: how long a closed session's keys are kept
        (None or more than ``ttl_s``: ``ttl_s``); ``max_closed``: cap on closed sessions kept (0: none), evicting
        the oldest closed more than ``protect_ms`` ago."""
        if not 0 < stride <= max_len:
            raise ValueError(f"stride must be in (0, max_len={max_len}], got {stride}")
        self.r = client
        self.prefix = prefix
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
        self._rate = client.register_script(_RATE)

    def append(self, entries: Sequence[Entry], now_ms: int) -> AppendResult:
        """Add entries (idempotent) and cut the windows that became full; they are leased to the caller."""
        if not entries:
            return AppendResult(0, [])
        return self._result(self._append(keys=[], args=self._argv(entries, now_ms)))

    def append_start(self, entries: Sequence[Entry], now_ms: int) -> PendingAppend:
        """Send an append and return without waiting: Redis runs the script while the caller parses the next batch.
        ``append_finish`` reads the reply. If the send fails, the finish appends again the usual way (appends are
        idempotent), so a caller only has to retry ``append_finish``."""
        if not entries:
            return PendingAppend(entries, now_ms, None)
        pool = self.r.connection_pool
        try:
            conn = pool.get_connection()
        except (redis.ConnectionError, redis.TimeoutError):
            return PendingAppend(entries, now_ms, None)
        try:
            conn.send_command("EVALSHA", self._append.sha, 0, *self._argv(entries, now_ms))
        except (redis.ConnectionError, redis.TimeoutError):
            conn.disconnect()
            pool.release(conn)
            return PendingAppend(entries, now_ms, None)
        except BaseException:  # e.g. an argument the encoder refuses: never keep the connection checked out
            conn.disconnect()
            pool.release(conn)
            raise
        return PendingAppend(entries, now_ms, conn)

    def append_finish(self, pending: PendingAppend) -> AppendResult:
        """The reply of ``append_start``; raises ``redis.RedisError`` if Redis failed (call again to retry)."""
        conn, pending.conn = pending.conn, None
        if conn is not None:
            pool = self.r.connection_pool
            try:
                reply = conn.read_response()
            except NoScriptError:  # Redis lost its scripts (a restart): the plain call loads it again
                pool.release(conn)
            except BaseException:
                conn.disconnect()
                pool.release(conn)
                raise
            else:
                pool.release(conn)
                return self._result(reply)
        return self.append(pending.entries, pending.now_ms)

    def _argv(self, entries: Sequence[Entry], now_ms: int) -> list[str | int | float]:
        argv: list[str | int | float] = [self.prefix, now_ms, self.max_len, self.stride, self.ttl_s, self.lease_ms,
                                         self.novel_cap, self.max_open, len(entries)]
        for e in entries:
            argv += (e.session_id, repr(e.timestamp), e.member, e.unseen_text, e.origin)
        return argv

    @staticmethod
    def _result(reply: Any) -> AppendResult:
        new, payloads, novel, capped, resumed, refused = reply
        return AppendResult(int(new), [CutWindow.from_payload(p) for p in payloads], int(novel), int(capped),
                            int(resumed), tuple(int(i) for i in refused))

    def novel_templates(self) -> dict[str, tuple[str, int]]:
        """The shared registry of templates the model never saw: id -> (masked text, distinct lines)."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(f"{self.prefix}:novel")
        pipe.hgetall(f"{self.prefix}:novel:n")
        texts, counts = pipe.execute()
        return {k.decode(): (v.decode(), int(counts.get(k, 0))) for k, v in texts.items()}

    def sweep(self, now_ms: int, idle_ms: int, limit: int = 1000) -> SweepResult:
        """Close sessions idle for ``idle_ms`` (cutting their last window) and claim windows whose lease ran out."""
        closed, payloads, more, expired, evicted = self._sweep(
            keys=[], args=[self.prefix, now_ms, now_ms - idle_ms, self.lease_ms, limit, self.ttl_s, self.closed_ttl_s,
                           self.max_closed, self.protect_ms])
        return SweepResult(int(closed), [CutWindow.from_payload(p) for p in payloads], bool(more), int(expired),
                           int(evicted))

    def ack(self, window_ids: Sequence[str]) -> None:
        """The windows' verdicts are published: drop them from ``P:pending``."""
        if not window_ids:
            return
        pipe = self.r.pipeline(transaction=True)
        pipe.zrem(f"{self.prefix}:pending", *window_ids)
        pipe.delete(*(f"{self.prefix}:w:{i}" for i in window_ids))
        pipe.execute()

    def unseen_texts(self, windows: Sequence[CutWindow]) -> dict[str, dict[str, str]]:
        """Masked text of the unseen-template entries of each window's session (one pipelined round trip)."""
        sessions = sorted({w.session_id for w in windows})
        if not sessions:
            return {}
        pipe = self.r.pipeline(transaction=False)
        for sid in sessions:
            pipe.hgetall(f"{self.prefix}:u:{sid}")
        out = {}
        for sid, found in zip(sessions, pipe.execute()):
            out[sid] = {k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
                        for k, v in found.items()}
        return out

    def hold_ends(self, held: Sequence[tuple[CutWindow, str]]) -> int:
        """Hold ``premature_end`` events of closing windows until the quiet after them is seen (``due_ends``);
        returns how many were held (a session that came back since its window was cut is skipped)."""
        if not held:
            return 0
        argv: list[str | int] = [self.prefix, len(held)]
        for w, event in held:
            argv += (w.session_id, w.hi, repr(w.last_ts), event)
        return int(self._hold(keys=[], args=argv))

    def due_ends(self, before_ts: float, limit: int = 1000) -> list[tuple[str, str]]:
        """Held events whose session's last line is at or before ``before_ts`` (log time): ``(session, event)``."""
        sids = [s.decode() for s in self.r.zrangebyscore(f"{self.prefix}:ends", "-inf", before_ts, 0, limit)]
        if not sids:
            return []
        events = self.r.hmget(f"{self.prefix}:ends:ev", sids)
        return [(sid, ev.decode()) for sid, ev in zip(sids, events) if ev is not None]

    def drop_ends(self, published: Sequence[tuple[str, str]]) -> int:
        """Forget held events that were published (``due_ends``' pairs); returns how many were still held."""
        if not published:
            return 0
        return int(self._drop(keys=[], args=[self.prefix, *(x for pair in published for x in pair)]))

    def known_sessions(self, session_ids: Sequence[str]) -> set[str]:
        """Which of these sessions have entries under this prefix (one pipelined round trip)."""
        pipe = self.r.pipeline(transaction=False)
        for sid in session_ids:
            pipe.exists(f"{self.prefix}:s:{sid}")
        return {sid for sid, n in zip(session_ids, pipe.execute()) if n}

    def rate(self, events: Sequence[tuple[str, int, str]], limit: int, ttl_s: int) -> list[int]:
        """Admit anomaly events ``(event id, cut_ms, reasons)`` under ``limit`` per minute of ``cut_ms``, for every
        worker of the prefix: per event 1 (publish), 0 (suppressed) or 2 (suppressed, and it starts a storm)."""
        if not events:
            return []
        argv: list[str | int] = [self.prefix, limit, ttl_s, len(events)]
        for event_id, cut_ms, reasons in events:
            argv += (event_id, cut_ms // 60_000, cut_ms, reasons)
        return [int(x) for x in self._rate(keys=[], args=argv)]

    def rate_minute(self, minute: int) -> tuple[str | None, list[tuple[int, str]]]:
        """The storm's first event id and the events published in ``minute``: ``(cut_ms, reasons)``."""
        pipe = self.r.pipeline(transaction=False)
        pipe.get(f"{self.prefix}:storm:{minute}")
        pipe.hvals(f"{self.prefix}:rate:{minute}")
        trip, vals = pipe.execute()
        text = lambda v: v.decode() if isinstance(v, bytes) else str(v)  # noqa: E731 (clients with or without decode)
        out = []
        for v in vals:
            cut, _, reasons = text(v).partition("|")
            out.append((int(cut), reasons))
        return (text(trip) if trip else None), sorted(out)

    def held_ends(self) -> int:
        return int(self.r.zcard(f"{self.prefix}:ends"))

    def left(self) -> tuple[int, int, int]:
        """Open sessions, pending windows and held stops: what must still be done under this prefix."""
        return left_in(self.r, self.prefix)

    def open_sessions(self) -> int:
        return int(self.r.zcard(f"{self.prefix}:idle"))

    def pending(self) -> int:
        return int(self.r.zcard(f"{self.prefix}:pending"))
