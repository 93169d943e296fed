"""Windowing invariants: arrival order and chunking do not change the windows of a session."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from logbert_core.windows import (
    WindowCursor,
    WindowSpan,
    canonical_entries,
    live_windows,
    member,
    member_key,
    session_windows,
)


@given(n=st.integers(1, 300), max_len=st.integers(2, 40), data=st.data())
def test_streamed_appends_equal_batch_windows(n, max_len, data):
    stride = data.draw(st.integers(1, max_len))
    chunks = data.draw(st.lists(st.integers(1, 50), min_size=1))
    cursor, seen, out = WindowCursor(), 0, []
    i = 0
    while seen < n:
        seen = min(n, seen + chunks[i % len(chunks)])
        i += 1
        out += cursor.on_append(seen, max_len, stride)
    out += cursor.on_close(seen)
    assert out == session_windows(n, max_len, stride)


@given(n=st.integers(1, 300), max_len=st.integers(2, 40), data=st.data())
def test_windows_cover_every_entry_within_max_len(n, max_len, data):
    stride = data.draw(st.integers(1, max_len))
    spans = session_windows(n, max_len, stride)
    covered = set()
    for s in spans:
        assert 0 < s.hi - s.lo <= max_len
        covered.update(range(s.lo, s.hi))
    assert covered == set(range(n))
    assert spans[-1].hi == n


def test_short_session_is_one_window():
    assert session_windows(5, 64, 32) == [WindowSpan(0, 5)]
    assert session_windows(64, 64, 32) == [WindowSpan(0, 64)]
    assert session_windows(65, 64, 32) == [WindowSpan(0, 64), WindowSpan(32, 65)]


# a line's timestamp is part of the line, so equal lines have equal timestamps
entries_st = st.lists(st.tuples(st.integers(0, 20), st.integers(4, 12), st.sampled_from("abcdef")).map(
    lambda t: (float(t[0]), t[1], f"{t[0]} {t[2]}")), max_size=40)


@given(entries_st, st.randoms())
def test_canonical_order_ignores_arrival_order_and_duplicates(entries, rnd):
    shuffled = list(entries) + list(entries[: len(entries) // 2])  # replayed duplicates
    rnd.shuffle(shuffled)
    assert canonical_entries(shuffled) == canonical_entries(entries)


def test_member_round_trip():
    m = member(17, "some line")
    assert member_key(m) == 17 and len(m) == 6 + 1 + 16


def test_live_windows_add_a_closing_window_wherever_the_log_went_quiet():
    stamps = [0.0, 0.0, 1.0, 100.0, 101.0, 500.0]  # quiet (>= 30 s) after entries 3 and 5
    spans = live_windows(stamps, max_len=64, stride=32, quiet_s=30)
    # each close cuts from the cursor's start, as the Redis sweep does when a closed session reopens
    assert [(s.lo, s.hi) for s in spans] == [(0, 3), (0, 5), (0, 6)]
    assert live_windows(stamps, 64, 32, quiet_s=1000) == session_windows(6, 64, 32)  # never quiet: a replay
    # with sliding full windows, a close covers only what no window covered
    stamps = [float(i) for i in range(6)] + [100.0 + i for i in range(5)]
    spans = live_windows(stamps, max_len=4, stride=2, quiet_s=30)
    assert [(s.lo, s.hi) for s in spans] == [(0, 4), (2, 6), (4, 8), (6, 10), (8, 11)]
    spans = live_windows(stamps[:7], max_len=4, stride=2, quiet_s=30)
    assert [(s.lo, s.hi) for s in spans] == [(0, 4), (2, 6), (4, 7)]
