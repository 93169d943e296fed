"""Routine novelty: the forward test on a training history, and how its keys travel."""

from __future__ import annotations

import pytest

from logbert_core.calibration import Promise, Routine, binomial_lower
from logbert_core.novelty import forward_novelty, forward_unseen, forward_warning, routine_of
from logbert_core.vocab import FIRST_KEY, UNK, Vocabulary

ROUTINE = ("INFO", "DEBUG")


def history(n: int, new_info_every: int, new_fatal_every: int) -> list[list[tuple[str | None, int]]]:
    """``n`` sessions on templates 1-3; in the later half, every ``new_info_every``-th session brings an INFO
    template no session had before it (and every ``new_fatal_every``-th a FATAL one)."""
    out: list[list[tuple[str | None, int]]] = []
    fresh = 1000
    for i in range(n):
        s: list[tuple[str | None, int]] = [("INFO", 1), ("INFO", 2), ("FATAL", 3)]
        if i >= n // 2 and new_info_every and i % new_info_every == 0:
            fresh += 1
            s.append(("info", fresh))  # compared without case
        if i >= n // 2 and new_fatal_every and i % new_fatal_every == 0:
            fresh += 1
            s.append(("FATAL", fresh))
        out.append(s)
    return out


def test_a_low_level_whose_novelty_breaks_the_budget_is_routine_and_a_severe_one_never_is():
    got = {n.level: n for n in forward_novelty(history(2000, 5, 5), ROUTINE, target_fpr=0.005)}
    assert got["info"].routine and got["info"].sessions == 200 and got["info"].of == 1000
    assert got["info"].lower == pytest.approx(binomial_lower(200, 1000))
    assert not got["FATAL"].routine and got["FATAL"].sessions == 200  # as common, but not a candidate level


def test_rare_novelty_or_a_short_history_keeps_counting():
    # 3 of 1000 later sessions: the lower bound of the rate sits below the target
    assert not any(n.routine for n in forward_novelty(history(2000, 333, 0), ROUTINE, target_fpr=0.005))
    # 50 sessions, half of the later 25 with a new INFO template: 95 % lower bound 0.33 > 0.005
    assert [n.level for n in forward_novelty(history(50, 2, 0), ROUTINE, 0.005) if n.routine] == ["info"]
    # nothing new in the later half (templates the earlier half already had): no level at all
    assert forward_novelty([[("INFO", 1)]] * 10, ROUTINE, 0.005) == []
    # lines without a level are never routine
    assert forward_novelty([[(None, i)] for i in range(100)], ROUTINE, 0.005) == []


def test_vocabulary_routine_keys_follow_the_templates_and_round_trip():
    v = Vocabulary.build({7: "a <*>", 9: "b"}).with_routine_levels(["INFO", "DEBUG", "INFO"])
    assert v.routine_levels == ("DEBUG", "INFO") and v.n_templates == 2 and v.size == FIRST_KEY + 4
    assert v.key(9) == FIRST_KEY + 1 and v.key(9, "INFO") == FIRST_KEY + 1  # a known template keeps its key
    assert v.key(None, "INFO") == FIRST_KEY + 3 and v.key(42, "DEBUG") == FIRST_KEY + 2
    assert v.key(42, "FATAL") == UNK and v.key(42) == UNK  # other levels, or no level: UNK
    assert v.routine_keys == {FIRST_KEY + 2, FIRST_KEY + 3}
    assert [v.unseen(k) for k in (UNK, FIRST_KEY, FIRST_KEY + 1, FIRST_KEY + 2, FIRST_KEY + 3)] == [
        True, False, False, True, True]
    assert "INFO" in v.text(FIRST_KEY + 3)
    assert Vocabulary.from_json(v.to_json()) == v
    plain = Vocabulary.build({7: "a <*>"})
    assert "routine_levels" not in plain.to_json()  # bundles without it keep their bytes (and version ids)
    assert Vocabulary.from_json(plain.to_json()) == plain and plain.key(None, "INFO") == UNK


def test_routine_of_maps_templates_of_a_routine_level_to_its_key():
    novelty = forward_novelty(history(50, 2, 0), ROUTINE, 0.005)  # "info" routine, as above
    v = Vocabulary.build({7: "a <*>", 9: "b", 11: "c"}).with_routine_levels(n.level for n in novelty if n.routine)
    lines = [[("info", 7), ("info", 7), ("FATAL", 9)], [("info", 11), ("FATAL", 11), ("FATAL", 11), (None, 7)]]
    got = routine_of(lines, v, novelty)
    routine = v.key(None, "info")
    assert got.counts == {routine: 12}  # windows 26, 28, ..., 48 of the later half
    assert got.of_key == {v.key(7): routine}  # 11 is mostly FATAL; 9 is FATAL; lines without a level do not count
    assert routine_of(lines, Vocabulary.build({7: "a <*>"}), []) == Routine()  # no routine level: nothing


def test_the_forward_test_of_unseen_template_counts_sessions_at_levels_that_count():
    # later half of 2000: a new INFO template every 5th session, a new FATAL one every 7th
    h = history(2000, 5, 7)
    both = sum(1 for i in range(1000, 2000) if i % 5 == 0 or i % 7 == 0)
    assert forward_unseen(h, ()) == (both, 1000)  # no routine level: every new template counts
    assert forward_unseen(h, ("INFO",)) == (sum(1 for i in range(1000, 2000) if i % 7 == 0), 1000)
    # a burst: one new template in 100 later sessions is 100 sessions, where leave-one-out sees none at all
    burst = [[("FATAL", 1)]] * 100 + [[("FATAL", 1), ("FATAL", 2)]] * 100
    assert forward_unseen(burst, ()) == (100, 100)
    assert forward_unseen([[(None, 1)], [(None, 2)]], ("INFO",)) == (1, 1)  # a line without a level counts
    assert forward_unseen([], ()) == (0, 0)


def test_the_forward_warning_fires_only_when_it_contradicts_the_promise():
    promise = Promise(0.005, 0.004, 2000, 400, 9, 0.0045, 0.0076, ("unseen_template", "rare_template"), ())
    assert forward_warning(promise, (10, 1000)) is None  # 0.010: lower bound 0.0055 < bound 0.0076
    w = forward_warning(promise, (40, 1000))
    assert w is not None and "40 of 1000 later normal sessions" in w and "above the promised bound 0.0076" in w
    assert "expect unseen_template to flag more normal sessions than promised" in w
    assert w.endswith("a bundle retrained on unreviewed logs learns the incidents as normal")
    assert f"95 % lower bound {binomial_lower(40, 1000):.4f}" in w
    off = Promise(0.005, 0.004, 2000, 400, 9, 0.0045, 0.0076, ("rare_template",), ())
    assert forward_warning(off, (400, 1000)) is None  # unseen_template cannot fire
    assert forward_warning(promise, (0, 0)) is None
