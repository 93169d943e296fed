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
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from logbert_core.calibration import CONFIDENCE, Routine, binomial_lower
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


def forward_novelty(sessions: Sequence[Iterable[tuple[str | None, int | None]]], candidates: Iterable[str],
                    target_fpr: float, confidence: float = CONFIDENCE) -> list[LevelNovelty]:
    """The forward test of the module docstring. ``sessions``: the normal training sessions in time order, each as
    its lines' ``(level, template id)``. ``candidates``: the level names that may be routine (compared without
    case). Levels in order of how many later sessions they made new; lines without a level are never routine."""
    cut = len(sessions) // 2
    seen = {t for s in sessions[:cut] for _, t in s}
    later = sessions[cut:]
    counts: dict[str, int] = {}
    for s in later:
        for level in {lv for lv, t in s if t not in seen and lv is not None}:
            counts[level] = counts.get(level, 0) + 1
    allowed = {c.casefold() for c in candidates}
    out = []
    for level, k in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        lower = binomial_lower(k, len(later), confidence)
        out.append(LevelNovelty(level, k, len(later), lower, level.casefold() in allowed and lower > target_fpr))
    return out


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
