"""The Redis window store against a real redis-server: same windows as the pure model, replay-safe, claimed once."""

from __future__ import annotations

import random
import uuid

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logbert_core.windows import canonical_entries, member, member_digest, session_windows
from streamer.windows import Entry, WindowStore

pytestmark = pytest.mark.integration


def make_store(url: str, max_len: int = 8, stride: int = 4, lease_ms: int = 60_000, prefix: str = "t") -> WindowStore:
    return WindowStore(redis.Redis.from_url(url), prefix, max_len=max_len, stride=stride, ttl_s=3600,
                       lease_ms=lease_ms)


def lines_of(n: int, session: str = "blk_1") -> list[Entry]:
    """n entries in timestamp order (one per second), keys 4..9."""
    return [Entry(session, float(1000 + i), member(4 + i % 6, f"{i} {session} line")) for i in range(n)]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 60), max_len=st.integers(2, 16), data=st.data())
def test_store_cuts_the_same_windows_as_the_pure_model(redis_url, n, max_len, data):
    stride = data.draw(st.integers(1, max_len))
    chunks = data.draw(st.lists(st.integers(1, 20), min_size=1))
    prefix = f"p{uuid.uuid4().hex}"  # hypothesis seeds `random`; uuid4 is not
    store = make_store(redis_url, max_len, stride, prefix=prefix)
    entries = lines_of(n)
    cut, i, pos = [], 0, 0
    while pos < n:
        step = chunks[i % len(chunks)]
        cut += store.appends.append(entries[pos:pos + step], now_ms=1).windows
        pos += step
        i += 1
    cut += store.sweeps.sweep(now_ms=10_000, idle_ms=1).windows
    spans = session_windows(n, max_len, stride)
    members = [m for _, m in canonical_entries((e.timestamp, int(e.member[:6]), f"{k} blk_1 line")
                                               for k, e in enumerate(entries))]
    assert [(w.lo, w.hi) for w in cut] == [(s.lo, s.hi) for s in spans]
    assert [list(w.members) for w in cut] == [members[s.lo:s.hi] for s in spans]


def test_replaying_a_batch_changes_nothing(redis_url):
    store = make_store(redis_url)
    entries = lines_of(10)
    first = store.appends.append(entries, now_ms=1)
    assert first.new_entries == 10 and [(w.lo, w.hi) for w in first.windows] == [(0, 8)]
    client = redis.Redis.from_url(redis_url)
    snapshot = {k: client.dump(k) for k in client.keys("{t}:s:*") + client.keys("{t}:m:*")}
    again = store.appends.append(entries[::-1], now_ms=2)  # same records, any order
    assert again.new_entries == 0 and again.windows == []
    assert {k: client.dump(k) for k in snapshot} == snapshot


def test_arrival_order_does_not_change_the_window(redis_url):
    a, b = make_store(redis_url, prefix="a"), make_store(redis_url, prefix="b")
    entries = lines_of(7)
    shuffled = entries[:]
    random.Random(3).shuffle(shuffled)
    a.appends.append(entries, now_ms=1)
    for e in shuffled:
        b.appends.append([e], now_ms=1)
    wa = a.sweeps.sweep(now_ms=100, idle_ms=1).windows
    wb = b.sweeps.sweep(now_ms=100, idle_ms=1).windows
    assert [w.members for w in wa] == [w.members for w in wb] and wa[0].id == wb[0].id


def test_idle_session_is_closed_by_exactly_one_sweeper(redis_url):
    s1, s2 = make_store(redis_url), make_store(redis_url)
    s1.appends.append(lines_of(3, "blk_a") + lines_of(2, "blk_b"), now_ms=1_000)
    assert s2.sweeps.sweep(now_ms=1_500, idle_ms=1_000).windows == []  # not idle long enough
    got1 = s1.sweeps.sweep(now_ms=5_000, idle_ms=1_000)
    got2 = s2.sweeps.sweep(now_ms=5_000, idle_ms=1_000)
    assert got1.closed_sessions == 2 and got2.closed_sessions == 0
    assert sorted(w.session_id for w in got1.windows) == ["blk_a", "blk_b"] and got2.windows == []


def test_unacked_window_is_reclaimed_after_its_lease(redis_url):
    worker_a = make_store(redis_url, lease_ms=1_000)
    worker_b = make_store(redis_url, lease_ms=1_000)
    worker_a.appends.append(lines_of(3), now_ms=0)
    (w,) = worker_a.sweeps.sweep(now_ms=10_000, idle_ms=1).windows  # worker A cuts the window, then "dies"
    assert worker_b.sweeps.sweep(now_ms=10_500, idle_ms=1).windows == []  # lease still held by A
    (again,) = worker_b.sweeps.sweep(now_ms=11_001, idle_ms=1).windows  # lease ran out: B claims it
    assert again == w
    worker_b.verdicts.ack([again.id])
    assert worker_b.verdicts.pending() == 0 and worker_a.sweeps.sweep(now_ms=20_000, idle_ms=1).windows == []


def test_replay_after_close_does_not_reopen_or_recut(redis_url):
    store = make_store(redis_url)
    entries = lines_of(3)
    store.appends.append(entries, now_ms=0)
    (w,) = store.sweeps.sweep(now_ms=10_000, idle_ms=1).windows
    store.verdicts.ack([w.id])
    assert store.appends.append(entries, now_ms=20_000).new_entries == 0
    assert store.sweeps.open_sessions() == 0
    late = Entry("blk_1", 2000.0, member(5, "late line"))
    assert store.appends.append([late], now_ms=30_000).new_entries == 1 and store.sweeps.open_sessions() == 1
    (w2,) = store.sweeps.sweep(now_ms=40_000, idle_ms=1).windows
    assert (w2.lo, w2.hi) == (0, 4) and w2.id != w.id


def test_unseen_text_is_kept_for_explanations(redis_url):
    store = make_store(redis_url)
    e = Entry("blk_9", 1.0, member(2, "weird line"), unseen_text="weird <NUM> line")
    store.appends.append([e], now_ms=0)
    (w,) = store.sweeps.sweep(now_ms=10_000, idle_ms=1).windows
    # the append script splits the member where member_digest does
    assert store.verdicts.unseen_texts([w]) == {"blk_9": {member_digest(e.member): "weird <NUM> line"}}


def test_new_templates_share_one_registry_across_workers(redis_url):
    a, b = make_store(redis_url, prefix="n"), make_store(redis_url, prefix="n")
    a.appends.novel_cap = b.appends.novel_cap = 2
    e1 = Entry("blk_1", 1.0, member(2, "odd 1"), unseen_text="odd <NUM>")
    e2 = Entry("blk_2", 1.0, member(2, "odd 2"), unseen_text="odd <NUM>")
    e3 = Entry("blk_3", 1.0, member(2, "strange 3"), unseen_text="strange <NUM>")
    e4 = Entry("blk_4", 1.0, member(2, "weird"), unseen_text="weird")
    assert a.appends.append([e1], now_ms=0).novel_templates == 1
    assert b.appends.append([e2, e1], now_ms=0).novel_templates == 0  # same template from another worker, plus a replay
    assert b.appends.append([e3], now_ms=0).novel_templates == 1
    capped = a.appends.append([e4], now_ms=0)
    assert (capped.novel_templates, capped.novel_capped) == (0, 1)
    reg = a.appends.novel_templates()
    assert reg == b.appends.novel_templates()
    assert sorted(reg.values()) == [("odd <NUM>", 2), ("strange <NUM>", 1)]


def test_sweep_says_when_it_stopped_at_its_limit(redis_url):
    store = make_store(redis_url, prefix=f"p{uuid.uuid4().hex}")
    store.appends.append([e for i in range(5) for e in lines_of(2, f"blk_{i}")], now_ms=1)
    first = store.sweeps.sweep(now_ms=10_000, idle_ms=1, limit=3)
    assert first.closed_sessions == 3 and first.more
    rest = store.sweeps.sweep(now_ms=10_000, idle_ms=1, limit=3)
    assert rest.closed_sessions == 2 and not rest.more
    assert len(first.windows) + len(rest.windows) == 5


def test_pipelined_append_equals_the_plain_one_and_survives_a_script_flush(redis_url):
    plain = make_store(redis_url, prefix=f"p{uuid.uuid4().hex}")
    piped = make_store(redis_url, prefix=f"p{uuid.uuid4().hex}")
    entries = lines_of(20)
    want = [plain.appends.append(entries[i:i + 7], now_ms=1) for i in range(0, 20, 7)]
    got = []
    for i in range(0, 20, 7):
        if i == 7:
            piped.r.script_flush()  # Redis restarted without its scripts: the reply is NOSCRIPT, the finish reloads
        got.append(piped.appends.append_finish(piped.appends.append_start(entries[i:i + 7], now_ms=1)))
    strip = lambda rs: [(r.new_entries, [(w.lo, w.hi, w.members) for w in r.windows]) for r in rs]  # noqa: E731
    assert strip(got) == strip(want)
    pending = piped.appends.append_start(entries, now_ms=2)  # a replay adds nothing
    assert piped.appends.append_finish(pending).new_entries == 0
    # finishing again (a retry) appends again: still nothing
    assert piped.appends.append_finish(pending).new_entries == 0


# -- premature_end verdicts held until the quiet is seen ---------------------------------------------------------
def test_held_stop_is_due_once_the_log_passed_it_and_dropped_after_publishing(redis_url):
    store = make_store(redis_url)
    store.appends.append(lines_of(3, "blk_a") + lines_of(2, "blk_b"), now_ms=1_000)
    closing = {w.session_id: w for w in store.sweeps.sweep(now_ms=5_000, idle_ms=1_000).windows}
    assert store.verdicts.hold_ends([(closing["blk_a"], '{"id": "a"}'), (closing["blk_b"], '{"id": "b"}')]) == 2
    assert store.verdicts.held_ends() == 2
    # blk_a's last line is at 1002, blk_b's at 1001: only what the log has passed by the horizon is due
    assert store.verdicts.due_ends(before_ts=1001.5) == [("blk_b", '{"id": "b"}')]
    due = store.verdicts.due_ends(before_ts=2000.0)
    assert sorted(due) == [("blk_a", '{"id": "a"}'), ("blk_b", '{"id": "b"}')]
    assert store.verdicts.drop_ends(due) == 2 and store.verdicts.held_ends() == 0
    assert store.verdicts.due_ends(2000.0) == []
    assert store.verdicts.drop_ends(due) == 0  # dropping twice (a retried publish) is harmless


def test_a_session_that_comes_back_drops_its_held_stop(redis_url):
    store = make_store(redis_url)
    entries = lines_of(4, "blk_a")
    store.appends.append(entries[:3], now_ms=1_000)
    (w,) = store.sweeps.sweep(now_ms=5_000, idle_ms=1_000).windows
    assert store.verdicts.hold_ends([(w, "ev")]) == 1
    assert store.appends.append(entries[:3], now_ms=6_000).resumed == 0  # a replay of the same lines is no news
    assert store.verdicts.held_ends() == 1
    back = store.appends.append(entries[3:], now_ms=7_000)
    assert back.resumed == 1 and store.verdicts.held_ends() == 0 and store.verdicts.due_ends(1e12) == []
    # the next close cuts the next closing window, which is judged (and held) on its own
    (again,) = store.sweeps.sweep(now_ms=10_000, idle_ms=1_000).windows
    assert (again.lo, again.hi) == (0, 4)


def test_a_stop_is_not_held_for_a_session_that_came_back_before_its_verdict(redis_url):
    store = make_store(redis_url)
    entries = lines_of(4, "blk_a")
    store.appends.append(entries[:3], now_ms=1_000)
    (w,) = store.sweeps.sweep(now_ms=5_000, idle_ms=1_000).windows
    store.appends.append(entries[3:], now_ms=5_500)  # a line came while the window was being scored
    assert store.verdicts.hold_ends([(w, "ev")]) == 0 and store.verdicts.held_ends() == 0
    store.sweeps.sweep(now_ms=9_000, idle_ms=1_000)  # closed again, with 4 entries: the old window is not its last
    assert store.verdicts.hold_ends([(w, "ev")]) == 0


def test_a_replaced_held_stop_is_not_dropped_by_the_old_publish(redis_url):
    store = make_store(redis_url)
    store.appends.append(lines_of(2, "blk_a"), now_ms=1_000)
    (w,) = store.sweeps.sweep(now_ms=5_000, idle_ms=1_000).windows
    store.verdicts.hold_ends([(w, "old")])
    due = store.verdicts.due_ends(1e12)
    store.verdicts.hold_ends([(w, "new")])  # re-judged meanwhile (a re-claimed window after a crash)
    assert store.verdicts.drop_ends(due) == 0 and store.verdicts.due_ends(1e12) == [("blk_a", "new")]
    assert store.verdicts.known_sessions(["blk_a", "blk_zz"]) == {"blk_a"}


def test_a_session_that_expired_before_its_sweep_is_counted_and_leaves_no_key(redis_url):
    """Sweeps wait while a worker is behind; past session.ttl_s the entries are gone. The loss is reported, and the
    sweep does not recreate the session's metadata as a key that never expires."""
    prefix = f"p{uuid.uuid4().hex}"
    store = make_store(redis_url, prefix=prefix)
    store.appends.append(lines_of(3, "blk_gone") + lines_of(2, "blk_kept"), now_ms=1_000)
    r = redis.Redis.from_url(redis_url)
    for key in r.scan_iter(f"{store.prefix}:*blk_gone*"):  # what expiry does to a session's keys
        r.delete(key)
    res = store.sweeps.sweep(now_ms=10_000, idle_ms=1_000)
    assert res.closed_sessions == 2 and res.expired == 1
    assert [w.session_id for w in res.windows] == ["blk_kept"]
    assert list(r.scan_iter(f"{store.prefix}:*blk_gone*")) == []
    assert all(r.ttl(k) > 0 for k in r.scan_iter(f"{store.prefix}:*blk_kept*"))


# -- key floods: open sessions capped, closed sessions kept for replays and returns, events per minute -------------
def capped_store(url: str, **kw) -> WindowStore:
    return WindowStore(redis.Redis.from_url(url), f"p{uuid.uuid4().hex}", max_len=8, stride=4, ttl_s=3600,
                       lease_ms=60_000, **kw)


def test_past_max_open_new_sessions_are_refused_and_open_ones_go_on(redis_url):
    store = capped_store(redis_url, max_open=2)
    first = store.appends.append(lines_of(2, "blk_a") + lines_of(1, "blk_b"), now_ms=1_000)
    assert first.refused == () and store.sweeps.open_sessions() == 2
    flood = [Entry(f"blk_f{i}", 1.0, member(4, f"flood {i}")) for i in range(3)]
    batch = lines_of(3, "blk_a")[2:] + flood + lines_of(2, "blk_b")[1:]  # open ones go on amid the flood
    got = store.appends.append(batch, now_ms=2_000)
    assert got.refused == (1, 2, 3) and got.new_entries == 2 and store.sweeps.open_sessions() == 2
    assert store.verdicts.known_sessions([e.session_id for e in flood]) == set()
    # a replay of stored lines is never refused, even at the cap
    assert store.appends.append(lines_of(2, "blk_a"), now_ms=3_000).refused == ()
    # once a session closes there is room again: the refused line, read again from the dead-letter topic, goes in
    store.sweeps.sweep(now_ms=10_000, idle_ms=1_000)
    assert store.sweeps.open_sessions() == 0
    assert store.appends.append(flood[:2], now_ms=11_000).refused == () and store.sweeps.open_sessions() == 2
    # a closed one reopening counts too
    again = store.appends.append(flood[2:] + lines_of(4, "blk_b")[3:], now_ms=11_000)
    assert again.refused == (0, 1) and store.sweeps.open_sessions() == 2


def test_a_closed_session_is_kept_for_closed_ttl_and_the_oldest_past_max_closed_are_forgotten(redis_url):
    store = capped_store(redis_url, closed_ttl_s=600, max_closed=2, protect_ms=5_000)
    r = store.r
    for i, t in enumerate((1_000, 2_000, 3_000, 4_000)):
        store.appends.append(lines_of(2, f"blk_{i}"), now_ms=t)
    assert all(r.ttl(k) > 600 for k in r.scan_iter(f"{store.prefix}:s:*"))  # open: ttl_s (3600)
    res = store.sweeps.sweep(now_ms=10_000, idle_ms=1_000)  # all four close; none closed 5 s ago yet: none forgotten
    assert res.closed_sessions == 4 and res.evicted == 0
    assert all(0 < r.ttl(k) <= 600 for k in r.scan_iter(f"{store.prefix}:[sm]:*"))
    assert store.appends.append(lines_of(2, "blk_0"), now_ms=11_000).new_entries == 0  # a replay is still a no-op
    later = store.sweeps.sweep(now_ms=16_000, idle_ms=1_000)
    assert later.evicted == 2 and r.zcard(f"{store.prefix}:closed") == 2
    assert len(store.verdicts.known_sessions([f"blk_{i}" for i in range(4)])) == 2
    # a session that comes back leaves the closed set, and is never forgotten while open
    store.appends.append(lines_of(3, "blk_3")[2:], now_ms=17_000)
    assert r.zcard(f"{store.prefix}:closed") == 1 and store.sweeps.open_sessions() == 1


def test_a_held_stop_is_dropped_when_its_forgotten_session_comes_back(redis_url):
    store = capped_store(redis_url, max_closed=1)
    store.appends.append(lines_of(2, "blk_a"), now_ms=1_000)
    (w,) = store.sweeps.sweep(now_ms=5_000, idle_ms=1_000).windows
    assert store.verdicts.hold_ends([(w, "ev")]) == 1
    store.r.delete(f"{store.prefix}:s:blk_a", f"{store.prefix}:m:blk_a")  # forgotten (or expired)
    back = store.appends.append(lines_of(3, "blk_a")[2:], now_ms=6_000)
    assert back.resumed == 1 and store.verdicts.held_ends() == 0


def test_events_past_the_limit_of_their_minute_are_suppressed_and_one_starts_a_storm(redis_url):
    store = capped_store(redis_url)
    minute = 29_000_000 * 60_000  # cut times, in ms
    events = [(f"e{i}", minute + i, "unseen_template") for i in range(5)]
    assert store.events.rate(events, limit=3, ttl_s=600) == [1, 1, 1, 2, 0]
    assert store.events.rate(events[::-1], limit=3, ttl_s=600) == [0, 2, 1, 1, 1]  # a replay: the same answers
    trip, published = store.events.rate_minute(minute // 60_000)
    assert trip == "e3" and published == [(minute + i, "unseen_template") for i in range(3)]
    nxt = [(f"n{i}", minute + 60_000 + i, "x") for i in range(5)]
    assert store.events.rate(nxt, limit=3, ttl_s=600) == [1, 1, 1, 0, 0]  # the storm goes on: no second summary
    later = [(f"l{i}", minute + 180_000 + i, "x") for i in range(5)]
    assert store.events.rate(later, limit=3, ttl_s=600) == [1, 1, 1, 2, 0]  # a quiet minute between: a new storm


def test_a_window_names_the_input_records_that_first_added_its_entries(redis_url):
    store = make_store(redis_url, prefix=f"o{uuid.uuid4().hex}")
    entries = [Entry(e.session_id, e.timestamp, e.member, origin=f"{i % 2}:{100 + i}")
               for i, e in enumerate(lines_of(10))]
    (w,) = store.appends.append(entries, now_ms=1).windows
    assert w.origins == tuple(f"{i % 2}:{100 + i}" for i in range(8))
    # the same lines delivered again at other offsets (a replay, a duplicate) change nothing: the first record stays
    again = [Entry(e.session_id, e.timestamp, e.member, origin=f"5:{900 + i}") for i, e in enumerate(entries)]
    assert store.appends.append(again, now_ms=2).windows == []
    (last,) = store.sweeps.sweep(now_ms=10_000, idle_ms=1).windows
    assert last.origins == tuple(f"{i % 2}:{100 + i}" for i in range(4, 10))
    # entries stored without an origin (event.input_offsets = false) have none
    bare = make_store(redis_url, prefix=f"o{uuid.uuid4().hex}")
    (w,) = bare.appends.append(lines_of(8, "blk_2"), now_ms=1).windows
    assert w.origins == (None,) * 8
    # the origins are not part of the window id
    other = make_store(redis_url, prefix=f"o{uuid.uuid4().hex}")
    (w2,) = other.appends.append([Entry(e.session_id, e.timestamp, e.member, origin="0:1")
                                  for e in lines_of(8, "blk_2")], now_ms=1).windows
    assert w2.id == w.id and w2.origins == ("0:1",) * 8
