"""The decision rule on hand-made scores: each rule fires on its own evidence, calibration reads normals only."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from logbert_core.bundle import Thresholds
from logbert_core.judge import (
    DISTANCE,
    KEY_MISSES,
    PREMATURE_END,
    RARE_TEMPLATE,
    UNSEEN_SET,
    UNSEEN_TEMPLATE,
    KeyCounts,
    RestStats,
    WindowJudge,
    end_state,
    wilson_upper,
)
from logbert_core.scoring import WindowScore
from logbert_core.vocab import UNK


class FixedScorer:
    """Stands in for WindowScorer: a fixed score per window (the judge's rules are what is tested here)."""

    def __init__(self, by_window: dict[tuple[int, ...], WindowScore], max_len: int = 64) -> None:
        self.by_window = by_window
        self.model = SimpleNamespace(config=SimpleNamespace(max_len=max_len))

    def score(self, windows):
        return [self.by_window[tuple(w)] for w in windows]


def ws(miss: float = 0.0, dist: float = 0.0, n: int = 3) -> WindowScore:
    return WindowScore(n, round(miss * n), miss, dist, ())


def test_each_rule_fires_on_its_own_evidence():
    counts = KeyCounts({4: 100, 5: 100, 6: 100, 7: 1})
    windows = {(4, 5, 6): ws(), (4, 5, UNK): ws(), (4, 6): ws(), (5, 6, 4): ws(), (4, 5, 7): ws(),
               (6, 5): ws(miss=0.5), (5, 4): ws(dist=9.0)}
    known = frozenset({frozenset({4, 5, 6}), frozenset({4, 5, 7}), frozenset({5, 6}), frozenset({4, 5})})
    th = Thresholds(miss_ratio=0.2, distance=5.0, method="test", rare=counts.rarity([4]) + 0.1)
    judge = WindowJudge(FixedScorer(windows), th, known, key_counts=counts)
    got = {w: v.reasons for w, v in zip(windows, judge.judge([list(w) for w in windows]))}
    assert got[(4, 5, 6)] == () and got[(5, 6, 4)] == ()  # the set of a normal window, in any order
    assert got[(4, 6)] == (UNSEEN_SET,)  # part of a normal set, and the session stopped there: never seen
    assert got[(4, 5, UNK)] == (UNSEEN_TEMPLATE, UNSEEN_SET, RARE_TEMPLATE)
    assert got[(4, 5, 7)] == (RARE_TEMPLATE,)  # known combination, but template 7 is rare
    assert got[(6, 5)] == (KEY_MISSES,) and got[(5, 4)] == (DISTANCE,)
    assert judge.judge([[4, 5, 7]])[0].rarest == (7, 1)


def test_rare_rule_is_off_without_a_rarity_threshold():
    counts = KeyCounts({4: 100, 7: 1})
    th = Thresholds(0.5, 5.0, "old bundle")  # rare defaults to inf
    judge = WindowJudge(FixedScorer({(4, 7): ws()}), th, frozenset({frozenset({4, 7})}), key_counts=counts)
    assert judge.judge([[4, 7]])[0].reasons == ()


def test_a_part_of_a_normal_set_waits_for_the_quiet():
    """A closing window whose set is part of a normal one (a block written, not yet deleted; or one that stopped
    half-way) is judged once the session is seen to stop; a full window or a never-covered set is judged at once."""
    windows = {(4, 6): ws(), (4, 9): ws(), (4, 5, 6, 4): ws()}
    known = frozenset({frozenset({4, 5, 6})})
    judge = WindowJudge(FixedScorer(windows, max_len=4), Thresholds(0.5, 5.0, "test"), known)
    part, novel, full = judge.judge([[4, 6], [4, 9], [4, 5, 6, 4]], [False, False, False])
    assert part.reasons == () and part.end_pending  # still running, or stopped: not known yet
    assert part.pending_reasons == (UNSEEN_SET,)  # what a live detector publishes once the quiet is seen
    assert novel.reasons == (UNSEEN_SET,) and not novel.end_pending  # 9 never came with 4: no wait needed
    assert full.reasons == ()  # a full window's set is {4, 5, 6}: known
    assert judge.judge([[4, 6]], [True])[0].reasons == (UNSEEN_SET,)
    off = WindowJudge(FixedScorer(windows), Thresholds(0.5, 5.0, "test", unseen_set=float("inf")), known)
    assert off.judge([[4, 9]])[0].reasons == ()  # the calibration turned the rule off


# -- premature end: where normal sessions go quiet ----------------------------------------------------------------
def lifecycle(t0: float, done: bool = True) -> list[tuple[float, int]]:
    """A normal session: allocate (5), three receives (4) a second later, three stores (8) a few seconds later, then
    (if ``done``) a delete (10) an hour later. Timestamps tie within a step, as HDFS's 1-second stamps do."""
    out = [(t0, 5), (t0 + 1, 4), (t0 + 1, 4), (t0 + 1, 4), (t0 + 3, 8), (t0 + 3, 8), (t0 + 3, 8)]
    return out + [(t0 + 3600, 10)] if done else out


def test_rest_stats_count_visits_and_quiet_per_state():
    rest = RestStats.of([lifecycle(i * 10_000.0) for i in range(60)], quiet_s=30, max_len=64, stride=32)
    written = end_state([4, 4, 4, 5, 8, 8, 8])
    assert rest.seen[written] == (60, 60)  # every block rested an hour after its write
    assert rest.seen[end_state([5, 4])] == (60, 0)  # one receive: the others follow in the same second
    assert rest.seen[end_state([4, 4, 4, 5, 8, 8, 8, 10])] == (60, 60)  # the end of a session is rest
    assert rest.surprise([4, 4, 4, 5, 8, 8, 8]) == 0.0
    assert rest.surprise([4, 5]) > 3.0  # 0 of 60: strong evidence
    assert rest.surprise([4, 9]) == 0.0  # a state never reached: no evidence either way
    assert RestStats.from_json(rest.to_json()) == rest


def test_rest_states_follow_the_window_cursor():
    """After the window slides, the state is the multiset of the window that would close there."""
    session = [(float(i), 4 + i) for i in range(10)]
    rest = RestStats.of([session], quiet_s=30, max_len=4, stride=2)
    # closing after 5 entries would emit window [2, 5): keys 6, 7, 8
    assert rest.seen[end_state([6, 7, 8])] == (1, 0)
    assert rest.seen[end_state([10, 11, 12])] == (1, 0)  # after 9 entries: window [6, 9)
    # after 4, 6, 8 and 10 entries every entry is in a full window already: no closing window, no state
    assert sum(n for n, _ in rest.seen.values()) == 6
    assert not rest.closing([4, 5, 6, 7]) and rest.closing([4, 5, 6])


def test_premature_end_flags_only_closing_windows_with_strong_evidence():
    rest = RestStats.of([lifecycle(i * 10_000.0) for i in range(60)], quiet_s=30, max_len=8, stride=4)
    broken, unfinished, rare_stop = [4, 5], [4, 4, 4, 5, 8, 8, 8], [4, 4, 4, 5, 8, 8, 8, 10]
    windows = {tuple(w): ws() for w in (broken, unfinished, rare_stop)}
    known = frozenset({frozenset({4, 5, 8, 10})})
    th = Thresholds(0.5, 5.0, "test", premature=3.0, unseen_set=float("inf"))  # the timing rule alone
    judge = WindowJudge(FixedScorer(windows, max_len=8), th, known, rest=rest)
    got = judge.judge([broken, unfinished, rare_stop])
    assert got[0].reasons == (PREMATURE_END,) and got[0].quiet == (60, 0)  # pipeline broke after the allocation
    assert got[1].reasons == ()  # written, not deleted yet: normal blocks rest here
    assert got[2].reasons == () and got[2].quiet is None  # a full window (max_len 8) is not a closing window
    off = WindowJudge(FixedScorer(windows, max_len=8), Thresholds(0.5, 5.0, "old bundle", unseen_set=float("inf")),
                      known, rest=rest)
    assert off.judge([broken])[0].reasons == ()  # no premature threshold in the bundle: the rule is off


def test_premature_end_waits_where_the_quiet_was_not_seen():
    """A session whose quiet was not seen yet (the log has not gone on for the rest horizon: too early, or a replay
    ran out, or a shipper outage) is not called stopped; the verdict says it would be, so a live detector can hold
    it until the quiet is seen. Its other rules are judged as usual."""
    rest = RestStats.of([lifecycle(i * 10_000.0) for i in range(60)], quiet_s=30, max_len=8, stride=4)
    broken, novel, resting = [4, 5], [4, 5, 11], [4, 4, 4, 5, 8, 8, 8]
    windows = {tuple(w): ws() for w in (broken, novel, resting)}
    judge = WindowJudge(FixedScorer(windows, max_len=8), Thresholds(0.5, 5.0, "test", premature=3.0),
                        frozenset({frozenset({4, 5, 8, 10}), frozenset({4, 5, 8})}), rest=rest)
    seen, unseen = judge.judge([broken, broken], [True, False])
    assert seen.reasons == (UNSEEN_SET, PREMATURE_END) and seen.quiet == (60, 0) and not seen.end_pending
    assert not unseen.anomalous and unseen.reasons == () and unseen.end_pending and unseen.quiet == (60, 0)
    assert unseen.pending_reasons == (UNSEEN_SET, PREMATURE_END)  # both wait for the quiet, as the seen one fired
    (other,) = judge.judge([novel], [False])
    assert other.reasons == (UNSEEN_SET,)  # the exact rules do not depend on the quiet
    assert not other.end_pending  # a state no normal session reached is no evidence of a stop
    rests = judge.judge([resting], [False])[0]  # written, not deleted yet: normal blocks rest here
    assert not rests.anomalous and not rests.end_pending and rests.quiet is None
    with pytest.raises(ValueError, match="2 flags for 1 windows"):
        judge.judge([broken], [True, True])


def test_wilson_upper_bound():
    assert wilson_upper(0, 0) == 1.0
    assert wilson_upper(0, 765) == pytest.approx(0.0035, abs=1e-4)
    assert wilson_upper(10, 10) == 1.0
    assert 0.5 < wilson_upper(5, 10) < 0.8


def test_an_unseen_template_at_a_routine_level_is_no_novelty_evidence():
    routine = 9  # the key of "an unseen template at level INFO"
    counts = KeyCounts({4: 100, 5: 100, routine: 500})
    windows = {(4, 5, routine): ws(), (routine,): ws(), (4, 5, UNK): ws()}
    known = frozenset({frozenset({4, 5})})
    th = Thresholds(0.5, 5.0, "test", rare=counts.rarity([4]) + 0.5)
    judge = WindowJudge(FixedScorer(windows), th, known, key_counts=counts, routine_keys=frozenset({routine}))
    got = {w: v.reasons for w, v in zip(windows, judge.judge([list(w) for w in windows]))}
    assert got[(4, 5, routine)] == () and got[(routine,)] == ()  # no set, no unseen, not rare by its count
    assert got[(4, 5, UNK)] == (UNSEEN_TEMPLATE, UNSEEN_SET, RARE_TEMPLATE)
    plain = WindowJudge(FixedScorer(windows), th, known, key_counts=counts)
    assert plain.judge([[4, 5, routine]])[0].reasons == (UNSEEN_SET,)  # without the routine key set
