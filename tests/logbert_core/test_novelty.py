"""Routine novelty: the forward test on a training history, and how its keys travel."""

from __future__ import annotations

import pytest

from logbert_core.calibration import Routine, binomial_lower
from logbert_core.novelty import forward_novelty, routine_of
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
