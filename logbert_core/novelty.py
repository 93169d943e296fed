"""Routine novelty: levels at which new templates are part of normal operation.

A template never seen in training is the strongest exact evidence there is, as long as the future looks like the
training history. Leave-one-out calibration assumes it does, and it cannot see drift: in BGL, half of the normal
sessions of a later period hold an INFO template the earlier one never had, while every alert is a FATAL line.
Operators know the rule of thumb ("a new INFO message is news, a new FATAL one is an incident"); this module makes it
a measurement on the training history itself, so that a family where new INFO templates do mean trouble (HDFS:
``PacketResponder ... Exception`` is INFO) keeps them as evidence.

The forward test: order the normal training sessions by time and cut them in half. For every level, count the later
sessions holding a line at that level whose template no earlier session had. A level is *routine* when it is one of
the candidate levels (config ``scoring.routine_levels``: the low-severity names) and the one-sided 95 %
Clopper-Pearson lower bound of that rate exceeds the false-positive target: the history shows that such novelty,
counted as evidence, alone breaks the budget. The vocabulary then maps an unseen template at a routine level to
that level's key (``Vocabulary.routine_levels``) and no novelty rule counts it; the model still sees a key it never
learned. Levels that are not candidates (WARN, ERROR, FATAL, any unknown name) always count.

Measured on the training histories of the benchmark (docs/evaluation.md), later half against earlier half:

    BGL_dev.log, all normal windows          INFO 7763 of 18026 (routine), FATAL 382, ERROR 56, SEVERE 10
    HDFS_2pct_dev.log, all normal blocks     INFO 10 of 3334 (lower bound 0.0016: not routine at target 0.005)
    data/hdfs/train.log.gz, first 75 %       none

The same test says what leave-one-out cannot see about ``unseen_template`` (``forward_unseen``): leave-one-out
calls a template new only where a single session has it, but new templates come in bursts (a job failing on a
thousand nodes prints the same new line on each), and every session of a burst is a false positive. The share of
later sessions holding a template the earlier half never had, at a level that counts, is the rule's rate under
the drift the history itself shows. The trainer states it beside the promise (the bundle's metrics,
``calibration.forward_unseen``), and warns when it contradicts the promise's bound (``forward_warning``). It
indicates drift; it does not predict a rate. Judged by half of the history it leans high, and the drift of the
logs to come may be larger or smaller than the history's own. On the benchmark (docs/evaluation.md) it gave 0.017
where other days of the BGL period measured 0.009, and 0.0056 where BGL's later months measured 0.059.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from logbert_core.calibration import CONFIDENCE, UNSEEN_TEMPLATE, Promise, Routine, binomial_lower
from logbert_core.vocab import UNK, Vocabulary


@dataclass(frozen=True, slots=True)
class LevelNovelty:
    """What the forward test saw at one level."""

    level: str
    sessions: int  # later normal sessions holding a template of this level that no earlier one had
    of: int  # later normal sessions
    lower: float  # one-sided lower confidence bound of sessions / of
    routine: bool

    def to_json(self) -> dict[str, object]:
        return {"level": self.level, "sessions": self.sessions, "of": self.of, "lower_95": round(self.lower, 5),
                "routine": self.routine}


def _new_levels(sessions: Sequence[Iterable[tuple[str | None, int | None]]]) -> list[set[str | None]]:
    """The forward test's halves: for each later session, the levels (``None``: a line without one) of its lines
    whose template no earlier session had."""
    cut = len(sessions) // 2
    seen = {t for s in sessions[:cut] for _, t in s}
    return [{lv for lv, t in s if t not in seen} for s in sessions[cut:]]


def forward_novelty(sessions: Sequence[Iterable[tuple[str | None, int | None]]], candidates: Iterable[str],
                    target_fpr: float, confidence: float = CONFIDENCE) -> list[LevelNovelty]:
    """The forward test of the module docstring. ``sessions``: the normal training sessions in time order, each as
    its lines' ``(level, template id)``. ``candidates``: the level names that may be routine (compared without
    case). Levels in order of how many later sessions they made new; lines without a level are never routine."""
    later = _new_levels(sessions)
    counts: dict[str, int] = {}
    for levels in later:
        for level in levels:
            if level is not None:
                counts[level] = counts.get(level, 0) + 1
    allowed = {c.casefold() for c in candidates}
    out = []
    for level, k in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        lower = binomial_lower(k, len(later), confidence)
        out.append(LevelNovelty(level, k, len(later), lower, level.casefold() in allowed and lower > target_fpr))
    return out


def forward_unseen(sessions: Sequence[Iterable[tuple[str | None, int | None]]], routine_levels: Iterable[str]
                   ) -> tuple[int, int]:
    """(later sessions holding a template that no earlier session had, at a level that is not routine; later
    sessions), with ``forward_novelty``'s halves. A line without a level always counts, as it does for the
    detector."""
    quiet = {lv.casefold() for lv in routine_levels}
    later = _new_levels(sessions)
    hits = sum(any(lv is None or lv.casefold() not in quiet for lv in levels) for levels in later)
    return hits, len(later)


def forward_warning(promise: Promise, forward: tuple[int, int], confidence: float = CONFIDENCE) -> str | None:
    """A warning when the forward test of ``unseen_template`` (``forward_unseen``) contradicts ``promise``: the
    lower confidence bound of its rate exceeds the promise's upper bound. None where the rule cannot fire."""
    k, n = forward
    if UNSEEN_TEMPLATE not in promise.rules or not n:
        return None
    lower = binomial_lower(k, n, confidence)
    if lower <= promise.fpr_upper:
        return None
    return (f"new templates come in bursts that leave-one-out does not count: judged by the earlier half of the "
            f"normal history, {k} of {n} later normal sessions held a template it never had, at a level that counts "
            f"(rate {k / n:.4f}, 95 % lower bound {lower:.4f}), above the promised bound {promise.fpr_upper:.4f}. "
            "The history drifts: on logs from other times than it, expect unseen_template to flag more normal "
            "sessions than promised; retrain on recent logs with the confirmed incidents left out "
            "(--labels); a bundle retrained on unreviewed logs learns the incidents as normal")


def routine_of(sessions: Iterable[Iterable[tuple[str | None, int | None]]], vocab: Vocabulary,
               novelty: Sequence[LevelNovelty]) -> Routine:
    """The calibration's view of routine novelty (``logbert_core.calibration.Routine``) for the vocabulary that
    ``forward_novelty``'s routine levels gave: each routine key with the test's count, and each template key whose
    lines (``sessions``, as ``forward_novelty`` takes them) are mostly of a routine level, with that level's key."""
    counts = {vocab.key(None, n.level): n.sessions for n in novelty if n.routine}
    if not counts:
        return Routine()
    levels: dict[int, Counter[str]] = {}
    for s in sessions:
        for level, template_id in s:
            if level is not None:
                levels.setdefault(vocab.key(template_id), Counter())[level] += 1
    of_key = {}
    for key, seen in levels.items():
        level = min(seen.items(), key=lambda kv: (-kv[1], kv[0]))[0]  # the commonest level (ties: by name)
        routine = vocab.key(None, level)
        if key != UNK and routine in counts:
            of_key[key] = routine
    return Routine(counts, of_key)
