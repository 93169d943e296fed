"""The decision rule: exact evidence and the learned model, each explained.

A window is anomalous when a rule's evidence passes its threshold; ``logbert_core.calibration`` sets every threshold
at once, from one false-positive budget on all normal history (its docstring says how). The rules:

* ``unseen_template``: it holds a template never seen in normal training logs (key ``UNK``). An unseen template
  at a level where the training history shows new templates to be routine (``logbert_core.novelty``) has its
  level's key instead: it is no evidence for this rule, for ``unseen_template_set`` or (through its count) for
  ``rare_template``;
* ``unseen_template_set``: its set of templates was never the set of a normal training window. A set that is part
  of a normal one (a session that stopped half-way, or one still running) counts only once the session was seen to
  stop: the quiet after the window was observed (``quiet_seen``); until then the verdict is pending, as for
  ``premature_end``. A finished block followed by one delete error is such a set: every line of it is normal, and
  no normal block ever looked like it;
* ``rare_template``: its rarest template is rarer in normal training windows than the calibrated rarity threshold
  (``-log`` of the smoothed training frequency, as the ``rare_key`` baseline scores it);
* ``masked_key_misses``: LogBERT's share of missed keys (true key outside the top-g predictions, each position
  masked once on a fixed schedule) exceeds the calibrated threshold;
* ``hypersphere_distance``: the window's DIST embedding lies farther from the centre than the calibrated threshold.
  The paper detects with key misses only; ``use_distance = false`` restores that. The distance is always reported;
* ``premature_end``: a session went quiet in a state where normal sessions keep going. For every state a normal
  training session passed through (the multiset of templates of the window that would close there), ``RestStats``
  counts how often the next line came ``quiet_s`` or more later (or never). A closing window whose state normal
  sessions reached often but almost never rested in is flagged above the calibrated surprise. This is the timing
  half of R2Log's "complete logs".

Thresholds come from normal sessions only (``calibrated_judge``); labels never choose them.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from logbert_core.bundle import Bundle, Thresholds
from logbert_core.calibration import (
    DISTANCE,
    KEY_MISSES,
    MIN_TAIL,
    PREMATURE_END,
    RARE_TEMPLATE,
    UNSEEN_SET,
    UNSEEN_TEMPLATE,
    NormalSession,
    Promise,
    Routine,
    RuleSample,
    choose_level,
    conformal_threshold,
    exact_evidence,
    length_class,
    length_span,
    length_thresholds,
)
from logbert_core.config import ScoringSection
from logbert_core.rest import RestStats, State, end_state, wilson_upper
from logbert_core.scoring import WindowScore, WindowScorer
from logbert_core.vocab import UNK

__all__ = ["DISTANCE", "KEY_MISSES", "PREMATURE_END", "RARE_TEMPLATE", "UNSEEN_SET", "UNSEEN_TEMPLATE",
           "Calibrated", "KeyCounts", "NormalSession", "RestStats", "State", "Verdict", "WindowJudge",
           "calibrated_judge", "end_state", "wilson_upper"]



@dataclass(frozen=True, slots=True)
class Verdict:
    anomalous: bool
    reasons: tuple[str, ...]
    score: WindowScore
    rarest: tuple[int, int] | None = None  # (key, occurrences in normal training windows) of the rarest key
    quiet: tuple[int, int] | None = None  # closing windows: (times normal sessions reached this state, rested in it)
    # premature_end (or an unfinished unseen_template_set) would fire, but the quiet after the window was not seen
    # yet: a live detector holds this verdict until the log has gone on for the rest horizon without the session
    # (and drops it if it comes back)
    end_pending: bool = False
    pending_reasons: tuple[str, ...] = ()  # the rules that fire once the quiet is seen (``end_pending``)


@dataclass(frozen=True)
class KeyCounts:
    """How often each template key occurred in the normal training windows."""

    counts: Mapping[int, int]

    @classmethod
    def of(cls, windows: Iterable[Sequence[int]]) -> KeyCounts:
        return cls(dict(Counter(k for w in windows for k in w)))

    def rarest(self, keys: Sequence[int]) -> tuple[int, int]:
        """(key, count) of the rarest key of a window; ties go to the smaller key, so the result is stable."""
        return min((self.counts.get(k, 0), k) for k in keys)[::-1]

    @property
    def total(self) -> float:
        """The denominator of ``rarity``."""
        return float(sum(self.counts.values()) + len(self.counts) + 1)

    @property
    def ceiling(self) -> float:
        """The rarity of a key never seen in training: no window is rarer."""
        return -math.log(1 / self.total)

    def rarity(self, keys: Sequence[int]) -> float:
        """``-log`` of the add-one-smoothed training frequency of the window's rarest key (higher = rarer)."""
        return -math.log((self.rarest(keys)[1] + 1) / self.total)


class WindowJudge:
    """Scores windows of template keys in batches and applies the decision rule."""

    def __init__(self, scorer: WindowScorer, thresholds: Thresholds, known_sets: frozenset[frozenset[int]],
                 novel_template: bool = True, novel_template_set: bool = True, use_distance: bool = True,
                 key_counts: KeyCounts | None = None, rest: RestStats | None = None,
                 routine_keys: frozenset[int] = frozenset()) -> None:
        self.scorer = scorer
        self.thresholds = thresholds
        self.known_sets = known_sets
        self.novel_template = novel_template
        self.novel_template_set = novel_template_set
        self.use_distance = use_distance
        self.key_counts = key_counts  # None, or a bundle without a rarity threshold: the rare rule is off
        self.rest = rest  # None, or a bundle without a premature-end threshold: the rule is off
        self.routine_keys = routine_keys  # unseen templates at routine levels: no template set counts them
        self.max_len = scorer.model.config.max_len  # windows shorter than this close their session
        # only the maximal sets matter for containment; most normal windows are subsets of a few lifecycles
        self._maximal = [k for k in known_sets if not any(k < other for other in known_sets)]
        self._covered: dict[frozenset[int], bool] = {}

    @classmethod
    def from_bundle(cls, scorer: WindowScorer, bundle: Bundle, scoring: ScoringSection) -> WindowJudge:
        """The bundle's rules, each on or off as ``scoring`` says (the detector, ``serve`` and offline evaluation)."""
        rest = bundle.rest if scoring.premature_end else None
        return cls(scorer, bundle.thresholds, bundle.known_sets, scoring.novel_template, scoring.novel_template_set,
                   scoring.use_distance, KeyCounts(bundle.key_counts) if scoring.rare_template else None, rest,
                   bundle.vocab.routine_keys)

    def covered(self, keys: frozenset[int]) -> bool:
        """Whether some normal training window had all of these templates together."""
        hit = self._covered.get(keys)
        if hit is None:
            hit = self._covered[keys] = any(keys <= k for k in self._maximal)
            if len(self._covered) > 100_000:
                self._covered.clear()
        return hit

    def judge(self, windows: Sequence[Sequence[int]], quiet_seen: Sequence[bool] | None = None) -> list[Verdict]:
        """One verdict per window. ``quiet_seen[i]`` says whether the quiet after window ``i`` was observed: the
        log went on for at least the rest horizon (``RestStats.quiet_s``) after the window's last line with
        nothing more for its session. Where it was not (not yet, or the input itself stopped: the end of a
        replayed file, a shipper outage), the session's silence is no evidence yet: neither ``premature_end`` nor
        an unfinished ``unseen_template_set`` is among the reasons, and ``Verdict.end_pending`` says whether one
        would be once the quiet is seen. The other rules apply as usual. ``None``: every closing window's quiet
        was seen (finished sessions)."""
        if quiet_seen is not None and len(quiet_seen) != len(windows):
            raise ValueError(f"quiet_seen has {len(quiet_seen)} flags for {len(windows)} windows")
        scores = self.scorer.score(windows)
        th = self.thresholds
        counts = self.key_counts if math.isfinite(th.rare) else None
        rest = self.rest if math.isfinite(th.premature) else None
        unseen_on = self.novel_template and 1.0 > th.unseen
        set_on = self.novel_template_set and 1.0 > th.unseen_set
        out = []
        for i, (keys, s) in enumerate(zip(windows, scores)):
            reasons = []
            seen = quiet_seen is None or quiet_seen[i]
            waits: list[str] = []
            if unseen_on and UNK in keys:
                reasons.append(UNSEEN_TEMPLATE)
            if set_on:
                fs = frozenset(keys).difference(self.routine_keys)
                if fs and fs not in self.known_sets:
                    if seen or len(keys) >= self.max_len or not self.covered(fs):
                        reasons.append(UNSEEN_SET)
                    else:  # part of a normal set, in a session not yet seen to stop
                        waits.append(UNSEEN_SET)
            rarest = None
            if counts is not None:
                rarest = counts.rarest(keys)
                if counts.rarity(keys) > th.rare:
                    reasons.append(RARE_TEMPLATE)
            if s.miss_ratio > th.model(KEY_MISSES, s.length):
                reasons.append(KEY_MISSES)
            if self.use_distance and s.distance > th.model(DISTANCE, s.length):
                reasons.append(DISTANCE)
            quiet = None
            if rest is not None and rest.closing(keys):
                fires = rest.surprise(keys) > th.premature
                if seen or fires:
                    quiet = rest.lookup(keys)
                if fires and seen:
                    reasons.append(PREMATURE_END)
                elif fires:
                    waits.append(PREMATURE_END)
            out.append(Verdict(bool(reasons), tuple(reasons), s, rarest, quiet, bool(waits), tuple(waits)))
        return out


@dataclass(frozen=True)
class Calibrated:
    judge: WindowJudge
    thresholds: Thresholds
    known_sets: frozenset[frozenset[int]]
    key_counts: KeyCounts
    calib_scores: list[WindowScore]  # the model's scores of its calibration sessions' windows, flat
    promise: Promise
    rest: RestStats | None = None


def session_scores(scores: Sequence[WindowScore], sizes: Sequence[int]) -> list[list[WindowScore]]:
    """A flat list of window scores cut back into sessions of ``sizes`` windows."""
    out, at = [], 0
    for n in sizes:
        out.append(list(scores[at:at + n]))
        at += n
    return out


def calibrated_judge(scorer: WindowScorer, sessions: Sequence[NormalSession], model_rows: Sequence[int],
                     model_scores: Sequence[Sequence[WindowScore]] | None = None, *, target_fpr: float,
                     novel_template: bool = True, novel_template_set: bool = True, use_distance: bool = True,
                     rare_template: bool = True, rest: RestStats | None = None,
                     routine: Routine | None = None, small_history_model: str = "tail") -> Calibrated:
    """The product's decision for a trained model, from normal sessions only (``logbert_core.calibration``).

    ``sessions``: every normal training session; the judge's statistics (known templates and sets, key counts;
    ``rest``, built from the same sessions, turns the premature-end rule on) come from all of them, and each
    session's exact evidence is taken leave-one-out. ``model_rows``: the sessions the model did not fit on, whose
    model evidence calibrates the model rules: ``model_scores`` (one list of window scores per row, from
    out-of-fold models), or, without it, ``scorer``'s scores of their windows (a held-out slice). ``routine``:
    the routine-novelty keys (``Vocabulary.routine_levels``, ``logbert_core.novelty``) with their counts, which
    join the key counts, and the templates of routine levels, which leave-one-out evidence judges as the
    detector would judge them unseen. ``small_history_model``: how a history too small to count the target fires
    the model rules (``choose_level``)."""
    if not sessions:
        raise ValueError("calibration needs at least one normal session")
    counts = KeyCounts.of(w for s in sessions for w in s.windows)
    if routine is not None and routine.counts:
        counts = KeyCounts({**counts.counts, **routine.counts})
    known = frozenset(frozenset(w) for s in sessions for w in s.windows)
    ev = exact_evidence(sessions, unk=UNK, max_len=scorer.model.config.max_len, rarity_total=counts.total,
                        rest=rest, routine=routine)
    exact = []
    if novel_template:
        exact.append(RuleSample(UNSEEN_TEMPLATE, ev[UNSEEN_TEMPLATE], 1.0))
    if novel_template_set:
        exact.append(RuleSample(UNSEEN_SET, ev[UNSEEN_SET], 1.0))
    if rare_template:
        exact.append(RuleSample(RARE_TEMPLATE, ev[RARE_TEMPLATE], counts.ceiling))
    if rest is not None:
        exact.append(RuleSample(PREMATURE_END, ev[PREMATURE_END]))
    rows = list(model_rows)
    if model_scores is None:
        flat = scorer.score([w for r in rows for w in sessions[r].windows])
        model_scores = session_scores(flat, [len(sessions[r].windows) for r in rows])
    if len(model_scores) != len(rows):
        raise ValueError(f"model_scores has {len(model_scores)} sessions for {len(rows)} model rows")
    model = []
    if rows:
        model.append(RuleSample(KEY_MISSES, np.array([max(x.miss_ratio for x in ss) for ss in model_scores]), 1.0))
        if use_distance:
            model.append(RuleSample(DISTANCE, np.array([max(x.distance for x in ss) for ss in model_scores])))
    level = choose_level(exact, model, rows, target_fpr, small_history_model)
    t = level.thresholds
    inf = math.inf
    distance = t.get(DISTANCE, inf)
    if not use_distance and rows:  # not part of the decision; events still show where the level would put it
        distance = conformal_threshold([max(x.distance for x in ss) for ss in model_scores], level.promise.level)
    miss_ratio = min(1.0, t.get(KEY_MISSES, 1.0))  # a share of missed keys never exceeds 1: 1.0 is "off"
    by_length: dict[str, dict[int, float]] = {}
    warnings = list(level.promise.warnings)
    for name, base, of in ((KEY_MISSES, miss_ratio if miss_ratio < 1.0 else inf, lambda x: x.miss_ratio),
                           (DISTANCE, distance if use_distance else inf, lambda x: x.distance)):
        if not rows or not math.isfinite(base):
            continue
        classes = _by_class(model_scores, of)
        by_length[name] = length_thresholds(classes, level.promise.level, base)
        left = [c for c in sorted(classes) if c not in by_length[name]]
        if left:
            spans = ", ".join(f"{length_span(c)} ({len(classes[c])})" for c in left)
            warnings.append(f"rule {name} does not judge windows of {spans} entries: fewer than {MIN_TAIL} of the "
                            f"{len(rows)} sessions the model did not fit on had such windows (their count in "
                            "brackets), nor windows of any length they never had; the exact rules still do")
    promise = replace(level.promise, warnings=tuple(warnings))
    th = Thresholds(
        miss_ratio=miss_ratio,
        distance=distance,
        method="one level for all rules (conformal p-values, leave-one-out / out-of-fold normal sessions): "
               + promise.describe(),
        rare=t.get(RARE_TEMPLATE, inf), premature=t.get(PREMATURE_END, inf), unseen=t.get(UNSEEN_TEMPLATE, inf),
        unseen_set=t.get(UNSEEN_SET, inf), promise=promise, by_length=by_length)
    judge = WindowJudge(scorer, th, known, novel_template, novel_template_set, use_distance, counts, rest,
                        frozenset(routine.counts if routine is not None else ()))
    return Calibrated(judge, th, known, counts, [x for ss in model_scores for x in ss], promise, rest)


def _by_class(model_scores: Sequence[Sequence[WindowScore]], of: Callable[[WindowScore], float]
              ) -> dict[int, list[float]]:
    """Per window length class, one value per session with windows of that class: its largest there."""
    out: dict[int, list[float]] = {}
    for ss in model_scores:
        best: dict[int, float] = {}
        for x in ss:
            c = length_class(x.length)
            best[c] = max(best.get(c, -math.inf), of(x))
        for c, v in best.items():
            out.setdefault(c, []).append(v)
    return out
