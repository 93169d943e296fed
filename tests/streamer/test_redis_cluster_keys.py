"""Redis Cluster-safe keys: every script gets every key it touches in KEYS, and all keys of one call share a slot.

Two checks that need no cluster: a static read of the Lua text (no script builds a key name), and a run of every
store operation against the test redis-server that records each script call on the wire (its KEYS hash to one slot)
and then finds no key in Redis that no call declared. ``test_redis_cluster.py`` runs the same against a real cluster.
"""

from __future__ import annotations

import re
import uuid

import pytest
import redis
from redis.crc import key_slot

from logbert_core.windows import member
from streamer.windows import SCRIPTS, Entry, WindowStore, hash_tag, key_prefix

KEY = re.compile(r"KEYS\[[^\]'\".]+\]|k_\w+")
MULTI_KEY = {"DEL", "EXISTS", "UNLINK", "TOUCH"}  # every argument is a key; the other commands used: the first one


def _split(text: str, start: int) -> tuple[list[str], int]:
    """The top-level comma-separated arguments of the call whose '(' is at ``start``, and the index past its ')'."""
    args, depth, cur, i, quote = [], 0, [], start + 1, ""
    while i < len(text):
        c = text[i]
        if quote:
            if c == quote:
                quote = ""
        elif c in "'\"":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            if depth == 0:
                args.append("".join(cur).strip())
                return args, i + 1
            depth -= 1
        elif c == "," and depth == 0:
            args.append("".join(cur).strip())
            cur = []
            i += 1
            continue
        cur.append(c)
        i += 1
    raise AssertionError(f"unbalanced call at {start}")


def key_problems(lua: str) -> list[str]:
    """Where a script may touch a key it was not given: a redis.call whose key argument is not ``KEYS[...]`` or a
    ``k_`` name, a ``k_`` name bound to anything but ``KEYS[...]``, or a ``k_`` parameter passed anything else."""
    problems = []
    for m in re.finditer(r"redis\.call\(", lua):
        args, _ = _split(lua, m.end() - 1)
        cmd = args[0].strip("'\"").upper()
        for arg in args[1:] if cmd in MULTI_KEY else args[1:2]:
            if not KEY.fullmatch(arg):
                problems.append(f"redis.call({', '.join(args)}): key argument {arg!r}")
    for m in re.finditer(r"^\s*(?:local\s+)?((?:k_\w+\s*,\s*)*k_\w+)\s*=\s*(.+)$", lua, re.M):
        for rhs in m.group(2).split(","):
            if not re.fullmatch(r"KEYS\[[^\]'\".]+\]", rhs.strip()):
                problems.append(f"{m.group(0).strip()}: {rhs.strip()!r} is not a KEYS entry")
    for f in re.finditer(r"local function (\w+)\(([^)]*)\)", lua):
        params = [p.strip() for p in f.group(2).split(",")]
        keyed = [i for i, p in enumerate(params) if p.startswith("k_")]
        for call in re.finditer(rf"(?<![\w.]){f.group(1)}\(", lua):
            if call.start() == f.start() + len("local function "):
                continue
            args, _ = _split(lua, call.end() - 1)
            problems += [f"{f.group(1)}(... {args[i]!r} ...)" for i in keyed if not KEY.fullmatch(args[i])]
    return problems


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_no_script_builds_a_key_name(name):
    assert key_problems(SCRIPTS[name]) == []


def test_the_static_check_catches_a_built_key():
    assert key_problems("redis.call('ZADD', p .. ':idle', 1, sid)")
    assert key_problems("local k_s = p .. ':s:' .. sid\nredis.call('ZCARD', k_s)")
    assert key_problems("redis.call('DEL', KEYS[1], 'x:' .. sid)")
    assert key_problems("local function f(k_a, n)\n redis.call('GET', k_a)\nend\nf(ARGV[1], 2)")
    assert key_problems("redis.call('HSET', KEYS[1], 'f', '(' .. x)\nlocal k_a, k_b = KEYS[1], KEYS[2 * i]") == []


def test_key_slot_follows_the_hash_tag_rule():
    # CRC16/XMODEM of "123456789" is 0x31C3; slot = crc % 16384 (the cluster spec's reference values)
    assert key_slot(b"123456789") == 0x31C3 % 16384
    assert key_slot(b"logad:{hdfs-1}:s:blk_1") == key_slot(b"hdfs-1") == key_slot(b"x{hdfs-1}y{z}")
    assert key_slot(b"a{}b") != key_slot(b"")  # an empty tag is no tag: the whole key is hashed
    assert hash_tag("a{}b") is None and hash_tag("logad:{v}:idle") == "v"


def test_the_prefix_carries_the_bundle_version_as_its_tag():
    assert key_prefix("logad:hdfs-1a2b") == "logad:{hdfs-1a2b}" == key_prefix("logad:{hdfs-1a2b}")
    assert key_prefix("prod:logad:hdfs-1") == "prod:logad:{hdfs-1}" and key_prefix("t") == "{t}"
    for bad in ("logad:", "lo{g}ad:v", "logad:v}", ""):
        with pytest.raises(ValueError, match="hash tag"):
            key_prefix(bad)


@pytest.fixture
def wire(monkeypatch):
    """Every EVAL/EVALSHA any client sends: its KEYS."""
    calls: list[list[str]] = []
    real = redis.connection.AbstractConnection.send_command

    def send(self, *args, **kw):
        if str(args[0]).upper() in ("EVAL", "EVALSHA"):
            n = int(args[2])
            calls.append([a.decode() if isinstance(a, bytes) else str(a) for a in args[3:3 + n]])
        return real(self, *args, **kw)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_command", send)
    return calls


def workload(store: WindowStore) -> None:
    """Every store operation, each path of its script at least once: appends (plain and pipelined, unseen
    templates, refusals past max_open), full and idle cuts, sweeps that close, expire, evict and re-claim, held stops,
    acks and the per-minute event limit across a storm."""
    def lines(n: int, sid: str, t0: float = 1000.0) -> list[Entry]:
        return [Entry(sid, t0 + i, member(4 + i % 6, f"{i} {sid}"), "odd <NUM>" if i == 1 else "", f"0:{i}")
                for i in range(n)]

    r1 = store.appends.append(lines(9, "blk_a") + lines(3, "blk_b") + lines(2, "blk_c"), now_ms=1_000)
    assert len(r1.windows) == 1 and r1.refused  # blk_a's first full window; blk_c past max_open=2
    assert store.verdicts.unseen_texts(r1.windows)["blk_a"]
    assert store.verdicts.known_sessions(["blk_a", "blk_c"]) == {"blk_a"}
    store.appends.append_finish(store.appends.append_start(lines(10, "blk_a") + lines(4, "blk_b"), now_ms=2_000))
    store.r.delete(store.key("s:blk_b"))  # expired before its sweep
    swept = store.sweeps.sweep(now_ms=10_000, idle_ms=1_000)
    assert swept.closed_sessions == 2 and swept.expired == 1
    (last,) = [w for w in swept.windows if w.cause == "idle"]
    assert store.verdicts.hold_ends([(last, "ev-a")]) == 1
    assert store.verdicts.drop_ends(store.verdicts.due_ends(1e12)) == 1
    evicted = 0
    for i, t in enumerate((11_000, 12_000, 13_000)):
        store.appends.append(lines(2, f"blk_x{i}"), now_ms=t)
        evicted += store.sweeps.sweep(now_ms=t + 5_000, idle_ms=1_000).evicted
    assert evicted == 2  # max_closed=2: four closed, the two oldest forgotten
    reclaimed = store.sweeps.sweep(now_ms=500_000, idle_ms=1_000).windows  # every lease ran out: claimed again
    assert reclaimed
    store.verdicts.ack([w.id for w in reclaimed])
    assert store.verdicts.pending() == 0 and store.left() == (0, 0, 0)
    minute = 29_000_000 * 60_000
    events = [(f"e{i}", minute + i * 20_000, "x") for i in range(9)]  # three minutes, the limit passed in each
    assert store.events.rate(events, limit=1, ttl_s=600).count(2) == 1
    assert store.events.rate_minute(minute // 60_000)[0] is not None
    assert store.appends.novel_templates()


def test_every_script_call_names_its_keys_in_one_slot_and_touches_no_other(redis_url, wire):
    store = WindowStore(redis.Redis.from_url(redis_url), f"logad:hdfs-{uuid.uuid4().hex[:12]}", max_len=8,
                        stride=4, ttl_s=3600, lease_ms=60_000, max_open=2, closed_ttl_s=600, max_closed=2)
    workload(store)
    assert len(wire) >= 15 and all(wire)
    slot = key_slot(store.prefix.encode())
    for keys in wire:
        assert all(k.startswith(store.prefix + ":") for k in keys), keys
        assert {key_slot(k.encode()) for k in keys} == {slot}, keys
    declared = {k for keys in wire for k in keys}
    left = {k.decode() for k in redis.Redis.from_url(redis_url).scan_iter("*")}
    assert left and left <= declared  # no script wrote a key it was not given
