"""One decision, one false-positive budget: the judge's rules calibrated together on all normal history.

Every rule of ``logbert_core.judge`` turns a window into a number, higher = stranger:

============================  ===========================================================================
rule                          evidence of a window
============================  ===========================================================================
``unseen_template``           1 if it holds a template that no normal training session had, else 0
``unseen_template_set``       1 if its set of templates was never the set of a normal training window
                              (a part of one counts only once the session was seen to stop), else 0
``rare_template``             rarity of its rarest template (``KeyCounts.rarity``)
``masked_key_misses``         LogBERT's share of missed keys
``hypersphere_distance``      LogBERT's distance to the centre
``premature_end``             how strange a place to stop (``RestStats.surprise``), closing windows only
============================  ===========================================================================

A session's evidence on a rule is the largest over its windows (a session is flagged when any window is).

**Cross-fitting.** The statistics a final bundle judges by (known templates and template sets, key counts, where
sessions rest) come from *every* normal training session. A calibration score must come from a session those
statistics did not include, so each normal session's exact evidence is computed *leave-one-out*: against the
statistics of all the other sessions (cheap: what a session contributed is subtracted). The model's evidence comes
from sessions the model did not fit on (a held-out slice, or out-of-fold models). No labels go in.

**One level for all rules.** For a new session with evidence ``x`` on rule ``r``, the conformal p-value is
``(1 + #{calibration sessions with evidence >= x}) / (n_r + 1)``. The verdict is anomalous when some rule's p-value
is at most the level ``alpha``, and the rules that reach it are the reasons. ``alpha`` is the largest level (at most
``target_fpr``) at which the combined rule flags at most ``target_fpr`` of the calibration sessions, each judged
against the others; so correlated rules share the budget instead of adding up. Each rule's threshold follows from
``alpha`` (``conformal_threshold``): the judge still compares numbers to thresholds, and the decision is this one.

**What it promises** (``Promise``): the level, the sessions behind it, the share of calibration sessions flagged and
a one-sided 95 % upper bound of the false-positive rate. A history too small for the target cannot vouch for it:
the level is then ``1 / (n + 1)`` (a session must be stranger than every normal one on some rule), and a warning
says so. A rule whose threshold sits at its ceiling can never fire; a warning names it. In a small history one
normal session with a template of its own would put the novelty rules at their ceiling, and 1 of 50 says little:
there an exact rule is turned off only when its count *shows* it breaks the target (the 95 % lower bound of its
rate exceeds ``target_fpr``); otherwise it fires at its ceiling, the estimate counts what it flags, and a warning
gives the rate and its bound. A model rule in a small history fires past its extrapolated tail, fitted to the
scores strictly above the tail's start (``tail_excesses``). One with fewer than five such scores, or all equal
(key misses that were 0 on every session the model did not fit on, or 0 on all but two), has no tail, and is off,
with a warning: past the largest value it would fire on a single missed key, which measures how much of normal
behaviour 50 sessions covered (on ten 50-session histories of DeepLog's HDFS sessions, such rules cost 248, 213,
129 and 2 false positives of about 4,800 other normals of the file in one machine's fits, and 205 in another's).

**Window lengths.** The model rules' thresholds are also set per window length class (``length_thresholds``),
raised where windows of that length score higher, and missing where too few calibration sessions had such windows:
the level is chosen over all sessions, and a class conditions it (Mondrian conformal calibration).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from logbert_core.rest import State

UNSEEN_TEMPLATE = "unseen_template"
UNSEEN_SET = "unseen_template_set"
RARE_TEMPLATE = "rare_template"
KEY_MISSES = "masked_key_misses"
DISTANCE = "hypersphere_distance"
PREMATURE_END = "premature_end"
CONFIDENCE = 0.95  # of the stated false-positive bound
MIN_TAIL = 10  # sessions a rule's tail needs before it is extrapolated
MIN_EXCESS = 5  # values above the tail's start needed to fit its scale


def conformal_threshold(sample: Sequence[float] | np.ndarray, level: float) -> float:
    """The threshold ``t`` with ``(1 + #{sample >= x}) / (n + 1) <= level`` exactly when ``x > t``.

    ``inf`` when no ``x`` reaches the level (``level < 1 / (n + 1)``), ``-inf`` when every ``x`` does.
    """
    x = np.asarray(sample, dtype=np.float64)
    n = x.size
    k = math.floor(level * (n + 1) + 1e-9) - 1  # at most k calibration values may be >= x
    if k < 0:
        return math.inf
    if k >= n:
        return -math.inf
    return float(np.sort(x)[::-1][k])


def loo_pvalues(sample: Sequence[float] | np.ndarray) -> np.ndarray:
    """Each sample value's conformal p-value against the others: ``(1 + #{j != i: x_j >= x_i}) / n``."""
    x = np.asarray(sample, dtype=np.float64)
    n = x.size
    if n < 2:
        return np.ones(n)
    ge = n - np.searchsorted(np.sort(x), x, side="left")  # includes x_i itself
    return ge / n


def chi2_lower(dof: int, p: float = 1 - CONFIDENCE) -> float:
    """The ``p`` quantile of a chi-square law with ``dof`` degrees of freedom (Wilson-Hilferty; within 1 % for
    ``dof`` >= 10, which is all ``tail_threshold`` asks of it)."""
    z = -math.sqrt(2) * _erfinv(1 - 2 * p)  # the normal p quantile (p < 0.5: negative)
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


def _erfinv(y: float) -> float:
    lo, hi = 0.0, 6.0
    for _ in range(80):  # erf rises on [0, 6]; bisection is exact enough
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if math.erf(mid) < y else (lo, mid)
    return (lo + hi) / 2


def tail_excesses(sample: Sequence[float] | np.ndarray) -> tuple[float, np.ndarray] | None:
    """Where a sample's tail starts and the values past it: ``u`` is the ``(k+1)``-th largest value
    (``k = max(5, n // 5)``), or the next smaller value when ties at it leave fewer than ``MIN_EXCESS`` values
    above it, and the excesses are those of the values *strictly* above ``u``. ``None`` when there is no tail to
    fit: fewer than ``MIN_EXCESS`` values above ``u`` (ties at ``u`` do not count), or all equal.

    Ties matter for scores like a key-miss ratio, which is 0 on most normal sessions: 48 zeros and two small ratios
    would otherwise give ten "excesses", eight of them 0, and a scale that describes the zeros, not the ratios
    (on one 50-session HDFS history that put the threshold at 0.081, where 4.7 % of the file's other normal windows
    scored higher). Only values above ``u`` say how the tail falls, and two of them cannot."""
    x = np.sort(np.asarray(sample, dtype=np.float64))[::-1]
    k = max(5, x.size // 5)
    if x.size <= k:
        return None
    u = float(x[k])
    if int((x > u).sum()) < MIN_EXCESS:
        # ties at u reach up into the top k (sessions that repeat one another score alike): start the tail at the
        # next smaller value instead, and let m / n carry how much of the sample lies past it
        lower = x[x < u]
        if lower.size == 0:
            return None
        u = float(lower[0])
    excess = x[x > u] - u
    if excess.size < MIN_EXCESS or float(excess.max() - excess.min()) <= 0:
        return None
    return u, excess


def tail_threshold(sample: Sequence[float] | np.ndarray, rate: float) -> float:
    """The value a normal session exceeds with probability at most ``rate``, with 95 % confidence, extrapolated
    past the sample's largest values by an exponential tail fitted to the excesses over the tail's start ``u``
    (``tail_excesses``; peaks over threshold with a generalised Pareto tail of shape 0, as SPOT does: Siffer et al.,
    KDD 2017): ``P(X > u + y) = (m / n) exp(-y / beta)`` for the ``m`` of ``n`` values above ``u``.

    The tail's scale is the 95 % upper bound of the mean excess, not the mean excess itself: ``m`` exponential
    excesses of scale ``beta`` sum to a Gamma(m, beta), so ``2 m mean / beta`` is chi-square with ``2 m`` degrees
    of freedom. A point estimate from 10 excesses puts the threshold below the true quantile about half the time,
    and the promise is a 95 % statement. For rates a small sample cannot show by counting; ``nan`` under
    ``MIN_TAIL`` values or when the sample has no tail to fit."""
    tail = tail_excesses(sample) if np.asarray(sample).size >= MIN_TAIL else None
    if tail is None:
        return math.nan
    u, excess = tail
    m, n = excess.size, np.asarray(sample).size
    beta = 2 * m * float(np.mean(excess)) / chi2_lower(2 * m)
    return u + beta * math.log(m / (n * rate))


def binomial_lower(k: int, n: int, confidence: float = CONFIDENCE) -> float:
    """One-sided Clopper-Pearson lower bound of a rate seen ``k`` times in ``n`` trials (0 when ``k`` is 0)."""
    if k <= 0 or n <= 0:
        return 0.0
    if k >= n:
        return float((1 - confidence) ** (1 / n))

    def at_least(p: float) -> float:  # P(X >= k) for X ~ Binomial(n, p); rises as p grows
        lp, lq = math.log(p), math.log1p(-p)
        return 1.0 - sum(math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp
                                  + (n - i) * lq) for i in range(k))

    lo, hi = 0.0, k / n
    for _ in range(60):
        mid = (lo + hi) / 2
        if mid <= 0.0 or at_least(mid) < 1 - confidence:
            lo = mid
        else:
            hi = mid
    return lo


def binomial_upper(k: int, n: int, confidence: float = CONFIDENCE) -> float:
    """One-sided Clopper-Pearson upper bound of a rate seen ``k`` times in ``n`` trials."""
    if n <= 0:
        return 1.0
    if k >= n:
        return 1.0

    def cdf(p: float) -> float:  # P(X <= k) for X ~ Binomial(n, p), summed in log space
        lp, lq = math.log(p), math.log1p(-p)
        return sum(math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq)
                   for i in range(k + 1))

    lo, hi = k / n, 1.0
    for _ in range(60):  # bisection: cdf falls as p grows
        mid = (lo + hi) / 2
        if mid <= 0.0 or cdf(mid) > 1 - confidence:
            lo = mid
        else:
            hi = mid
    return hi


@dataclass(frozen=True)
class Promise:
    """What a calibration can promise about false positives on normal sessions, and why."""

    target_fpr: float
    level: float  # alpha: a rule fires when its conformal p-value is at most this
    sessions: int  # normal sessions behind the exact rules (every normal training session, leave-one-out)
    model_sessions: int  # sessions behind the model rules (the model did not fit on them); 0: no model rule
    flagged: int  # calibration sessions the combined decision flags, each judged against the others
    fpr: float  # the estimated false-positive rate (flagged share; exact and model parts added)
    fpr_upper: float  # one-sided 95 % upper bound of the false-positive rate
    rules: tuple[str, ...]  # the rules that can fire at this level
    warnings: tuple[str, ...] = ()

    def describe(self) -> str:
        model = f" and {self.model_sessions} the model did not fit on" if self.model_sessions else ""
        return (f"FPR {self.fpr:.4f} (95 % bound {self.fpr_upper:.4f}, target {self.target_fpr}) from "
                f"{self.sessions} normal sessions{model}; level {self.level:.5f}; rules: {', '.join(self.rules)}")

    def to_json(self) -> dict[str, Any]:
        return {"target_fpr": self.target_fpr, "level": self.level, "sessions": self.sessions,
                "model_sessions": self.model_sessions, "flagged": self.flagged, "fpr": self.fpr,
                "fpr_upper": self.fpr_upper, "rules": list(self.rules), "warnings": list(self.warnings)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Promise:
        return cls(float(d["target_fpr"]), float(d["level"]), int(d["sessions"]), int(d["model_sessions"]),
                   int(d["flagged"]), float(d["fpr"]), float(d["fpr_upper"]), tuple(str(r) for r in d["rules"]),
                   tuple(str(w) for w in d.get("warnings", ())))


@dataclass(frozen=True)
class RuleSample:
    """One rule's calibration evidence: one value per calibration session, and the largest value the rule's
    evidence can take (``inf``: unbounded), so that a threshold at the ceiling is known to never fire."""

    name: str
    values: np.ndarray  # (n,)
    ceiling: float = math.inf


SMALL_MODEL = ("tail", "largest")  # how a small history's model rules fire (``choose_level``)


@dataclass(frozen=True)
class Level:
    """The chosen level, each rule's threshold at it, and the promise."""

    thresholds: Mapping[str, float]  # rule -> evidence threshold (fires when evidence > threshold); inf: never
    promise: Promise


def choose_level(exact: Sequence[RuleSample], model: Sequence[RuleSample], model_rows: Sequence[int] | np.ndarray,
                 target_fpr: float, small_model: str = "tail") -> Level:
    """The largest level at most ``target_fpr`` whose estimated false-positive rate stays within it.

    ``exact`` samples hold one value per normal session (leave-one-out evidence); ``model`` samples one value per
    session the model did not fit on, which are the normal sessions ``model_rows`` (indices into the exact samples).
    The estimate adds the share of normal sessions an exact rule flags and the share of model sessions only a
    model rule flags, each session's p-values taken against the other sessions.

    ``small_model`` (config ``scoring.small_history_model``), for histories too small to count the target: ``tail``
    fires a model rule only past its tail extrapolated to its share of the target, and turns it off where its
    scores have no tail; ``largest`` fires it past the largest of its scores, as an exact rule fires past what
    every normal session had. Under ``largest`` the rule's rate is at most ``1 / (n + 1)`` if the history's
    sessions and the logs to come are alike (exchangeable); a history from one stretch of time does not give that
    (docs/evaluation.md, "Small histories: what the decision cannot know").
    """
    if not 0 < target_fpr < 1:
        raise ValueError(f"target_fpr={target_fpr} must be in (0, 1)")
    if small_model not in SMALL_MODEL:
        raise ValueError(f"small_model={small_model!r} must be one of {', '.join(SMALL_MODEL)}")
    rows = np.asarray(model_rows, dtype=np.int64)
    n_e = len(exact[0].values) if exact else 0
    n_m = len(rows) if model else 0
    for s in exact:
        if len(s.values) != n_e:
            raise ValueError(f"rule {s.name} has {len(s.values)} calibration values, expected {n_e}")
    for s in model:
        if len(s.values) != n_m:
            raise ValueError(f"rule {s.name} has {len(s.values)} calibration values, expected {n_m}")
    if n_e == 0 and n_m == 0:
        raise ValueError("calibration needs at least one normal session and one rule")
    p_exact = np.min([loo_pvalues(s.values) for s in exact], axis=0) if exact else np.ones(n_e)
    p_model = np.min([loo_pvalues(s.values) for s in model], axis=0) if model else np.ones(n_m)
    p_exact_of_model = p_exact[rows] if exact and n_m else np.ones(n_m)

    def estimate(a: float, also: np.ndarray | None = None) -> tuple[int, int, float]:
        """Calibration sessions flagged at level ``a`` (exact, and model-only), and the estimated rate; ``also``:
        exact sessions flagged besides (by rules kept at their ceiling)."""
        exact_flags = p_exact <= a if also is None else (p_exact <= a) | also
        of_model = exact_flags[rows] if exact and n_m else p_exact_of_model <= a
        fe = int(exact_flags.sum())
        fm = int(((p_model <= a) & ~of_model).sum())
        return fe, fm, (fe / n_e if n_e else 0.0) + (fm / n_m if n_m else 0.0)

    n_min = min(n for n in (n_e, n_m) if n)
    floor = 1.0 / (max(n_e, n_m) + 1)  # below this no rule can fire
    candidates = sorted({*(p_exact[p_exact <= target_fpr]), *(p_model[p_model <= target_fpr]), target_fpr, floor})
    level = floor
    for a in candidates:
        if a >= floor and estimate(a)[2] <= target_fpr:
            level = max(level, a)
    fe, fm, est = estimate(level)
    warnings = []
    small = floor > target_fpr
    # A history too small to count the target: a rule fires only on a session stranger than every normal one (a
    # binary rule: only if no normal session had it, leave-one-out); a model rule, whose scores are continuous,
    # also only past its tail extrapolated to its share of the target. Exact evidence is a function of counts
    # (templates, sets, visits): it has no tail to extrapolate, and counting is all a small history gives.
    largest = small and small_model == "largest" and n_m > 0
    graded = [] if largest else [s for s in model if tail_excesses(s.values) is not None]
    if small:
        how = ("past the largest of its scores (scoring.small_history_model = 'largest'): a bound of "
               f"{1 / (n_m + 1):.4f} for each only if the {n_m} sessions are a fair sample of the logs to come, "
               "not one stretch of time" if largest else
               f"only past its tail extrapolated to {target_fpr / max(1, len(graded)):.5f}")
        warnings.append(f"{n_min if n_m else n_e} normal sessions cannot vouch for target_fpr {target_fpr} by "
                        f"counting: a rule fires only on a session stranger than every normal one (level "
                        f"{floor:.4f}), and a model rule {how}; about {math.ceil(1 / target_fpr - 1)} normal "
                        "sessions are needed for the target")
    thresholds: dict[str, float] = {}
    at_ceiling = np.zeros(n_e, dtype=bool)  # normal sessions an exact rule kept at its ceiling flags (small history)
    for s in (*exact, *model):
        if small and not largest and any(s is m for m in model) and not any(s is g for g in graded):
            # A model rule whose out-of-sample scores have no tail (at most two values, or fewer than MIN_EXCESS
            # above the tail's start: 48 key-miss ratios of 0 and two small ones) has nothing to extrapolate, and
            # past the largest it fires on any session scoring higher: with key misses all 0, on one missed key.
            # That is a statement about how much of normal behaviour the small history covered, not about the
            # session, and the history cannot bound how often it happens: off until the scores spread or the
            # history can count the target.
            values = sorted({float(v) for v in s.values})
            shown = "/".join(f"{v:g}" for v in values) if len(values) <= 4 else f"{values[0]:g} to {values[-1]:g}"
            above = int((s.values > values[0]).sum())
            thresholds[s.name] = math.inf
            warnings.append(f"rule {s.name} is off: its {len(s.values)} scores from sessions the model did not fit "
                            f"on take only {shown} ({above} above {values[0]:g}), which gives no tail to "
                            f"extrapolate to target_fpr {target_fpr}; past the largest it would fire on any higher "
                            f"score, at a rate {len(s.values)} sessions bound only by "
                            f"{binomial_upper(0, len(s.values)):.3f} (95 %); it returns when its scores spread or "
                            f"the history reaches about {math.ceil(1 / target_fpr - 1)} sessions, or with "
                            "scoring.small_history_model = 'largest' where the history is a fair sample of the "
                            "logs to come")
            continue
        t = counted = conformal_threshold(s.values, level)
        if small and any(s is g for g in graded):
            tail = tail_threshold(s.values, target_fpr / len(graded))
            if not math.isnan(tail):
                t = max(t, tail)
        if t >= s.ceiling and counted < s.ceiling:
            # The count allowed the rule; its tail, extrapolated to the rule's share of the target, lies past the
            # largest score it can give (a key-miss ratio of 1): the small history's scores say a normal session
            # reaches that share only past the ceiling.
            warnings.append(f"rule {s.name} can never fire: its {len(s.values)} scores' tail, extrapolated to "
                            f"{target_fpr / len(graded):.5f}, lies at {t:.4g}, past its ceiling ({s.ceiling:g})")
            t = math.inf
        elif t >= s.ceiling:
            t = math.inf
            top = s.values >= s.ceiling
            at = int(top.sum())
            if small and any(s is e for e in exact) and binomial_lower(at, len(s.values)) <= target_fpr:
                # A small history cannot prove this rule safe, and it cannot prove it unsafe either: ``at`` of n
                # sessions at the ceiling is consistent with a rate within the target. Turning the rule off would
                # lose the evidence counting gives best (a template no normal session had); it stays on, and the
                # estimate below counts the sessions it flags.
                below = s.values[~top]
                t = float(below.max()) if below.size else -math.inf
                at_ceiling |= top
                warnings.append(f"rule {s.name} fires at its ceiling ({s.ceiling:g}) although {at} of {len(s.values)} "
                                f"normal sessions reach it (rate {at / len(s.values):.3f}, 95 % bound "
                                f"{binomial_upper(at, len(s.values)):.3f}): {len(s.values)} sessions cannot show it "
                                f"breaks target_fpr {target_fpr} (95 % lower bound "
                                f"{binomial_lower(at, len(s.values)):.4f}), nor that it keeps it")
            else:
                warnings.append(f"rule {s.name} can never fire: {at} of {len(s.values)} normal sessions already "
                                f"reach its ceiling ({s.ceiling:g}), more than level {level:.5f} allows")
        thresholds[s.name] = t
    if at_ceiling.any():  # the sessions those rules flag join the estimate
        fe, fm, est = estimate(level, at_ceiling)
    upper = (binomial_upper(fe, n_e) if n_e else 0.0) + (binomial_upper(fm, n_m) if n_m else 0.0)
    if est > target_fpr:  # only rules kept at their ceiling can spend past the level search (small histories)
        warnings.append(f"the decision flags {fe + fm} of its normal sessions, each judged against the others: an "
                        f"estimated false-positive rate of {est:.4f} (95 % bound {min(1.0, upper):.4f}), above "
                        f"target_fpr {target_fpr}; expect about that share of normal sessions to be flagged")
    if model and n_m and 1.0 / (n_m + 1) > level:
        warnings.append(f"the model rules rest on {n_m} sessions the model did not fit on: they can never fire at "
                        f"level {level:.5f} (cross-fit the model to give them every normal session)")
    fired = tuple(name for name, t in thresholds.items() if math.isfinite(t))
    promise = Promise(target_fpr, level, n_e, n_m, fe + fm, est, min(1.0, upper), fired, tuple(warnings))
    return Level(thresholds, promise)


def length_class(n: int) -> int:
    """A window's length class for the model rules: ``floor(log2(n))`` (1; 2-3; 4-7; ...; 64-127 entries)."""
    return max(1, n).bit_length() - 1


def length_span(c: int) -> str:
    """The entries a length class holds, in words: ``"1"``, ``"2-3"``, ``"64-127"``."""
    return "1" if c == 0 else f"{1 << c}-{(2 << c) - 1}"


def length_thresholds(by_class: Mapping[int, Sequence[float] | np.ndarray], level: float, base: float
                      ) -> dict[int, float]:
    """A model rule's threshold for each window length class it was calibrated on (Mondrian conformal
    calibration: Vovk et al., "Algorithmic learning in a random world", ch. 4), never below ``base``, the rule's
    threshold over all sessions.

    A model's scores depend on how many entries a window holds (one line gives a transformer no context), and the
    sessions a history holds need not be as long as those a stream brings: BGL's sample has one line per 5-minute
    window, a full BGL stream dozens. A threshold counted over all calibration sessions is counted mostly over
    the commonest length, so it promises nothing for the others. ``by_class`` holds, per class, one value per
    calibration session with windows of that class (its largest there). Per class: the count threshold at
    ``level`` where the class's sessions can count it; else the tail extrapolated to ``level``
    (``tail_threshold``); else past the class's largest value. A class with fewer than ``MIN_TAIL`` sessions has
    no threshold: the rule does not judge such windows (``Thresholds.model``), as no normal ones were seen to
    judge them by. Raising a threshold only removes flags, so the promise over all sessions still holds."""
    out: dict[int, float] = {}
    if not math.isfinite(base):
        return out
    for c, values in sorted(by_class.items()):
        x = np.asarray(values, dtype=np.float64)
        if x.size < MIN_TAIL:
            continue
        t = conformal_threshold(x, level)
        if not math.isfinite(t):
            t = tail_threshold(x, level)
            if math.isnan(t):
                t = float(x.max())
        out[c] = max(base, t)
    return out


# -- leave-one-out exact evidence ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class NormalSession:
    """One normal training session as the judge sees it: its windows, whether the quiet after each was seen, and
    (for the premature-end rule) its own visits to rest states: state -> (times reached, times rested)."""

    windows: Sequence[Sequence[int]]
    seen: Sequence[bool] | None = None  # None: every window's quiet was seen
    visits: Mapping[State, tuple[int, int]] = field(default_factory=dict)

    def quiet_seen(self) -> Sequence[bool]:
        return self.seen if self.seen is not None else [True] * len(self.windows)


@dataclass
class ExactHistory:
    """The exact statistics of all normal sessions, with what each one contributed, for leave-one-out evidence."""

    key_sessions: Counter[int]  # key -> sessions holding it
    set_sessions: Counter[frozenset[int]]  # window set -> sessions with a window of exactly that set
    key_counts: Counter[int]  # key -> occurrences over all windows (``KeyCounts``)
    set_owner: dict[frozenset[int], int]  # sets of a single session -> that session

    @classmethod
    def of(cls, sessions: Sequence[NormalSession]) -> ExactHistory:
        key_sessions: Counter[int] = Counter()
        set_sessions: Counter[frozenset[int]] = Counter()
        key_counts: Counter[int] = Counter()
        owner: dict[frozenset[int], int] = {}
        for i, s in enumerate(sessions):
            key_sessions.update({k for w in s.windows for k in w})
            sets = {frozenset(w) for w in s.windows}
            set_sessions.update(sets)
            for st in sets:
                owner[st] = i
            for w in s.windows:
                key_counts.update(w)
        return cls(key_sessions, set_sessions, key_counts, {s: i for s, i in owner.items() if set_sessions[s] == 1})

    def covered_by_others(self, keys: frozenset[int], me: int) -> bool:
        """Whether a window of another session held all of these templates (and maybe more)."""
        for other, n in self.set_sessions.items():
            if keys <= other and (n > 1 or self.set_owner.get(other) != me):
                return True
        return False


@dataclass(frozen=True)
class Routine:
    """What calibration needs of routine novelty: ``counts``, each routine-novelty key with how many later normal
    sessions of the forward test held such novelty (its count for ``rare_template``, which no training window
    gives); ``of_key``, each template key mined from lines of a routine level with that level's key (what the
    detector would have given the template, had the training history lacked it: leave-one-out evidence uses it)."""

    counts: Mapping[int, int] = field(default_factory=dict)
    of_key: Mapping[int, int] = field(default_factory=dict)


def exact_evidence(sessions: Sequence[NormalSession], *, unk: int, max_len: int, rarity_total: float,
                   rest: Any | None = None, routine: Routine | None = None) -> dict[str, np.ndarray]:
    """Leave-one-out evidence of every normal session on the exact rules: each session judged by the statistics of
    all the *other* sessions, as a session the bundle never saw would be judged by all of them.

    ``rarity_total`` is the denominator of ``KeyCounts.rarity``; ``rest`` (a ``RestStats`` of all sessions) turns
    the premature-end evidence on. ``routine``: a template that only this session had, mined from lines of a
    routine level, is judged as the detector would judge it, by its level's routine-novelty key
    (``logbert_core.novelty``): no unseen template, left out of the set, and as rare as that key's count.
    Returns rule name -> (n,) array."""
    h = ExactHistory.of(sessions)
    of_key = routine.of_key if routine is not None else {}
    routine_count = routine.counts if routine is not None else {}
    n = len(sessions)
    unseen = np.zeros(n)
    novel_set = np.zeros(n)
    rarity = np.zeros(n)
    surprise = np.zeros(n)
    for i, s in enumerate(sessions):
        own = Counter(k for w in s.windows for k in w)
        own_keys = set(own)
        mine_only = {k for k in own_keys if h.key_sessions[k] <= 1}  # unseen, were this session new
        quiet_new = {k for k in mine_only if k in of_key}  # ... at a routine level
        for w, seen in zip(s.windows, s.quiet_seen()):
            if not w:
                continue
            if unk in w or any(k in mine_only and k not in quiet_new for k in w):
                unseen[i] = 1.0
            ws = frozenset(w) - quiet_new if quiet_new else frozenset(w)
            if ws and h.set_sessions[ws] <= 1:  # only this session had this set
                closing = len(w) < max_len
                if not h.covered_by_others(ws, i) or not closing or seen:
                    novel_set[i] = 1.0
            c = min(routine_count.get(of_key[k], 0) if k in quiet_new else h.key_counts[k] - own[k] for k in w)
            rarity[i] = max(rarity[i], -math.log((c + 1) / rarity_total))
            if rest is not None and seen and rest.closing(w):
                state = tuple(sorted(Counter(w).items()))
                reached, rested = rest.seen.get(state, (0, 0))
                mine = s.visits.get(state, (0, 0))
                surprise[i] = max(surprise[i], rest.surprise_of(reached - mine[0], rested - mine[1]))
    out = {UNSEEN_TEMPLATE: unseen, UNSEEN_SET: novel_set, RARE_TEMPLATE: rarity}
    if rest is not None:
        out[PREMATURE_END] = surprise
    return out
