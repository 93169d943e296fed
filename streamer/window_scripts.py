"""The Lua scripts of the session-window store (``streamer.windows``), each with its KEYS and ARGV in its header.

Every key a script touches comes in KEYS, named by the client (the layout and why: ``streamer.window_layout``); no
script builds a key name, which ``tests/streamer/test_redis_cluster_keys.py`` reads from the text of ``SCRIPTS``.

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

CUT = r"""
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

APPEND = CUT + r"""
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
      redis.call('HSET', k_u, string.sub(mem, string.find(mem, ':', 1, true) + 1), txt)  -- member_digest(mem)
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

HOLD = r"""
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

DROP = r"""
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

ACK = r"""
-- KEYS: P:pending, P:w
-- ARGV: window ids whose verdicts are published
local k_pending, k_w = KEYS[1], KEYS[2]
for i = 1, #ARGV do
  redis.call('ZREM', k_pending, ARGV[i])
  redis.call('HDEL', k_w, ARGV[i])
end
return #ARGV
"""

SWEEP = CUT + r"""
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

RATE = r"""
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
SCRIPTS = {"append": APPEND, "hold": HOLD, "drop": DROP, "ack": ACK, "sweep": SWEEP, "rate": RATE}
