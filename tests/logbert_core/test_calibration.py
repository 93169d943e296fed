"""One level for all rules: conformal thresholds, leave-one-out evidence, the promise and its warnings."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logbert_core.calibration import (
    DISTANCE,
    KEY_MISSES,
    MIN_TAIL,
    PREMATURE_END,
    RARE_TEMPLATE,
    UNSEEN_SET,
    UNSEEN_TEMPLATE,
    NormalSession,
    RuleSample,
    binomial_lower,
    binomial_upper,
    chi2_lower,
    choose_level,
    conformal_threshold,
    exact_evidence,
    length_class,
    length_thresholds,
    loo_pvalues,
    tail_threshold,
)
from logbert_core.judge import RestStats, calibrated_judge
from logbert_core.scoring import WindowScore
from logbert_core.vocab import UNK


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 20), min_size=1, max_size=40), st.floats(0.001, 0.999), st.integers(-1, 22))
def test_conformal_threshold_is_the_p_value_rule(sample, level, x):
    """``x > t`` exactly when the conformal p-value of ``x`` is at most ``level``."""
    t = conformal_threshold(sample, level)
    p = (1 + sum(v >= x for v in sample)) / (len(sample) + 1)
    assert (x > t) == (p <= level + 1e-12)


def test_loo_pvalues_judge_each_value_against_the_others():
    assert loo_pvalues([1.0, 2.0, 3.0, 3.0]).tolist() == [1.0, 0.75, 0.5, 0.5]
    assert loo_pvalues([5.0]).tolist() == [1.0]


def test_binomial_upper_bound():
    assert binomial_upper(0, 100) == pytest.approx(1 - 0.05 ** (1 / 100), rel=1e-6)  # the "rule of three"
    assert 0.05 < binomial_upper(5, 100) < 0.11
    assert binomial_upper(3, 3) == 1.0 and binomial_upper(0, 0) == 1.0


def test_the_level_holds_the_false_positive_rate_on_fresh_normals():
    """Three continuous rules on 2,000 calibration normals; on 100,000 fresh normals the combined rule flags about
    the target, not three times it (the rules share one budget)."""
    rng = np.random.default_rng(0)
    cal = rng.normal(size=(2000, 3))
    exact = [RuleSample(f"r{i}", cal[:, i]) for i in range(3)]
    lv = choose_level(exact, [], [], 0.01)
    fresh = rng.normal(size=(100_000, 3))
    flags = np.zeros(len(fresh), dtype=bool)
    for i in range(3):
        flags |= fresh[:, i] > lv.thresholds[f"r{i}"]
    assert 0.006 < flags.mean() < 0.013
    assert lv.promise.flagged <= 20 and lv.promise.fpr <= 0.01 < lv.promise.fpr_upper < 0.02
    assert lv.promise.level < 0.01 and not lv.promise.warnings


def test_correlated_rules_spend_less_of_the_budget_than_a_split():
    """Two copies of one rule: the level is the target itself (one rule's worth of false positives), where an
    even split would halve each rule's share."""
    x = np.arange(1000, dtype=float)
    lv = choose_level([RuleSample("a", x), RuleSample("b", x)], [], [], 0.01)
    assert lv.promise.level == pytest.approx(0.01, abs=1e-3)


def test_a_small_history_cannot_vouch_for_the_target_and_says_so():
    x = np.arange(50, dtype=float)
    lv = choose_level([RuleSample("r", x)], [RuleSample(KEY_MISSES, x)], list(range(50)), 0.005)
    assert lv.promise.level == pytest.approx(1 / 51)
    assert lv.thresholds["r"] == 49.0  # an exact rule: stranger than every normal session
    # a model rule: past every normal session, and past the tail of the top 10 (mean excess 5.5 over 39, scale
    # at its 95 % upper bound: 20 * 5.5 / chi2(20 dof, 5 %) = 110 / 10.851) extrapolated to 0.005
    assert lv.thresholds[KEY_MISSES] == pytest.approx(39 + 110 / 10.851 * math.log(10 / (50 * 0.005)), rel=1e-3)
    assert any("cannot vouch for target_fpr 0.005" in w and "199" in w for w in lv.promise.warnings)
    # a binary rule no normal session had stays on; too few values to fit a tail: past the largest
    lv = choose_level([RuleSample("b", np.zeros(50), 1.0)], [], [], 0.005)
    assert lv.thresholds["b"] == 0.0
    few = choose_level([], [RuleSample(KEY_MISSES, np.arange(8.0))], list(range(8)), 0.005)
    assert few.thresholds[KEY_MISSES] == 7.0
    # a tail that lands past the ceiling: the rule can never fire, and the warning says it was the tail, not the
    # count (no normal session reached the ceiling)
    capped = choose_level([], [RuleSample(KEY_MISSES, np.arange(50) / 50, 1.0)], list(range(50)), 0.005)
    assert math.isinf(capped.thresholds[KEY_MISSES]) and KEY_MISSES not in capped.promise.rules
    (warning,) = [w for w in capped.promise.warnings if w.startswith(f"rule {KEY_MISSES} can never fire")]
    assert "tail, extrapolated to 0.00500, lies at 1.5" in warning and "past its ceiling (1)" in warning


def test_an_extrapolated_tail_holds_the_rate_on_fresh_normals():
    """50 sessions cannot count a 0.5 % rate; an exponential tail extrapolates to it (SPOT's peaks over threshold),
    with its scale at a 95 % upper bound: on exponential scores the true rate past the threshold is within the
    target in about 95 % of small histories (the point estimate managed about half)."""
    rng = np.random.default_rng(3)
    rates = []
    for _ in range(400):
        lv = choose_level([], [RuleSample(KEY_MISSES, rng.exponential(size=50))], list(range(50)), 0.005)
        rates.append(math.exp(-lv.thresholds[KEY_MISSES]))  # P(X > t) for X ~ Exp(1)
    held = float(np.mean(np.array(rates) <= 0.005))
    assert 0.9 <= held <= 0.99
    assert float(np.mean(rates)) < 0.005


def test_chi2_quantile_matches_tables():
    for dof, q in ((10, 3.940), (20, 10.851), (40, 26.509), (100, 77.929)):
        assert chi2_lower(dof) == pytest.approx(q, rel=0.01)


def test_a_rule_at_its_ceiling_is_off_and_named():
    """A binary rule that fires on 5 % of normal sessions cannot fire at a 1 % level: it is off, and said."""
    ones = np.array([1.0] * 50 + [0.0] * 950)
    lv = choose_level([RuleSample("novel", ones, 1.0), RuleSample("cont", np.arange(1000.0))], [], [], 0.01)
    assert math.isinf(lv.thresholds["novel"]) and "novel" not in lv.promise.rules
    assert any("rule novel can never fire" in w for w in lv.promise.warnings)
    rare = np.array([1.0] * 2 + [0.0] * 998)  # 0.2 %: fits in the budget, and fires on any new session that has it
    lv = choose_level([RuleSample("novel", rare, 1.0)], [], [], 0.01)
    assert lv.thresholds["novel"] == 0.0


def test_a_small_history_turns_a_rule_off_only_when_it_shows_it_breaks_the_target():
    """50 sessions, target 0.5 %: one session with a template of its own (1 of 50: 95 % lower bound 0.001) cannot
    show the novelty rule breaks the target, so the rule fires at its ceiling and the estimate counts that session;
    three of 50 (lower bound 0.017) can, and the rule is off. A large history keeps the counting rule."""
    one = np.array([1.0] + [0.0] * 49)
    lv = choose_level([RuleSample("novel", one, 1.0)], [], [], 0.005)
    assert lv.thresholds["novel"] == 0.0 and "novel" in lv.promise.rules
    assert lv.promise.flagged == 1 and lv.promise.fpr == pytest.approx(0.02)
    assert lv.promise.fpr_upper == pytest.approx(binomial_upper(1, 50))
    assert any("rule novel fires at its ceiling" in w and "1 of 50" in w for w in lv.promise.warnings)
    # the whole decision's estimate misses the target, and the trainer says so in one line
    assert any("flags 1 of its normal sessions" in w and "0.0200" in w and "above target_fpr 0.005" in w
               for w in lv.promise.warnings)
    # graded evidence: the ceiling sessions are set aside, the rule fires past every other normal session
    graded = choose_level([RuleSample("rare", np.array([5.0, *np.arange(49.0) / 49]), 5.0)], [], [], 0.005)
    assert graded.thresholds["rare"] == pytest.approx(48 / 49)
    # within the target (no session flagged): no such line
    lv0 = choose_level([RuleSample("novel", np.zeros(50), 1.0)], [], [], 0.005)
    assert not any("above target_fpr" in w for w in lv0.promise.warnings)
    three = np.array([1.0] * 3 + [0.0] * 47)
    lv = choose_level([RuleSample("novel", three, 1.0)], [], [], 0.005)
    assert math.isinf(lv.thresholds["novel"]) and "novel" not in lv.promise.rules
    assert any("rule novel can never fire" in w for w in lv.promise.warnings)
    big = np.array([1.0] * 10 + [0.0] * 990)  # 1 %: enough sessions to count it, and it breaks a 0.5 % target
    assert math.isinf(choose_level([RuleSample("novel", big, 1.0)], [], [], 0.005).thresholds["novel"])


def test_a_model_rule_with_no_spread_in_a_small_history_is_off_and_said():
    """50 out-of-fold key-miss ratios, all 0: past the largest the rule would flag any session with one missed key,
    and nothing in 50 zeros bounds how often a normal one has it. The rule is off, the exact rules are not, and the
    warning says why. Two small ratios among 48 zeros are no tail either (one 50-session HDFS history had
    0.045 and 0.074, and a tail fitted to ten "excesses", eight of them 0, fired on 4.7 % of other normal windows);
    with five or more spread values above the tail's start it is extrapolated; with 250 sessions (enough to count
    the target) counting decides."""
    zeros = np.zeros(50)
    lv = choose_level([RuleSample("novel", zeros, 1.0)], [RuleSample(KEY_MISSES, zeros, 1.0)], list(range(50)), 0.005)
    assert math.isinf(lv.thresholds[KEY_MISSES]) and KEY_MISSES not in lv.promise.rules
    assert lv.thresholds["novel"] == 0.0
    (warning,) = [w for w in lv.promise.warnings if w.startswith(f"rule {KEY_MISSES} is off")]
    assert "take only 0 (0 above 0)," in warning and "0.058" in warning and "199 sessions" in warning
    sparse = np.array([0.0] * 48 + [0.045, 0.074])
    lv = choose_level([], [RuleSample(KEY_MISSES, sparse, 1.0)], list(range(50)), 0.005)
    assert math.isinf(lv.thresholds[KEY_MISSES])
    assert any("take only 0/0.045/0.074 (2 above 0)" in w for w in lv.promise.warnings)
    assert math.isnan(tail_threshold(sparse, 0.005))
    two = choose_level([], [RuleSample(KEY_MISSES, np.array([0.0] * 45 + [0.05] * 5), 1.0)], list(range(50)), 0.005)
    assert math.isinf(two.thresholds[KEY_MISSES])
    spread = np.array([0.0] * 35 + list(np.linspace(0.01, 0.1, 15)))
    on = choose_level([], [RuleSample(KEY_MISSES, spread, 1.0)], list(range(50)), 0.005)
    assert 0.1 < on.thresholds[KEY_MISSES] < 1.0
    # ties at the tail's start do not count as excesses: 45 zeros and five spread ratios fit a tail of those five,
    # P(X > y) = 5/50 exp(-y / beta), with beta the 95 % upper bound of their mean excess (10 dof)
    five = np.array([0.0] * 45 + [0.02, 0.04, 0.06, 0.08, 0.1])
    beta = 2 * 5 * 0.06 / chi2_lower(10)
    assert tail_threshold(five, 0.005) == pytest.approx(beta * math.log(5 / (50 * 0.005)))
    lv = choose_level([], [RuleSample(KEY_MISSES, five, 1.0)], list(range(50)), 0.005)
    assert lv.thresholds[KEY_MISSES] == pytest.approx(beta * math.log(5 / (50 * 0.005)))
    # sessions that repeat one another tie at the top (17 Hadoop containers, a distance): the tail starts at the
    # next smaller value, past which six values lie
    tied = np.array([3.0, 2.5, 2.0, 2.0, 2.0, 2.0, 1.0, *np.linspace(0.0, 0.9, 10)])
    beta = 2 * 6 * (7.5 / 6) / chi2_lower(12)
    assert tail_threshold(tied, 0.005) == pytest.approx(1.0 + beta * math.log(6 / (17 * 0.005)))
    big = choose_level([], [RuleSample(KEY_MISSES, np.zeros(250), 1.0)], list(range(250)), 0.005)
    assert big.thresholds[KEY_MISSES] == 0.0


def test_largest_fires_a_small_history_s_model_rules_past_every_normal_session():
    """``scoring.small_history_model = 'largest'``: a small history's model rules fire past the largest of their
    out-of-fold scores, as the exact rules do past what every normal session had, instead of past an extrapolated
    tail (or not at all where there is none). All 50 key-miss ratios 0: one missed key flags. A large history
    counts the target either way, and a bad option is refused by name."""
    zeros = np.zeros(50)
    lv = choose_level([RuleSample("novel", zeros, 1.0)], [RuleSample(KEY_MISSES, zeros, 1.0)], list(range(50)), 0.005,
                      "largest")
    assert lv.thresholds[KEY_MISSES] == 0.0 and KEY_MISSES in lv.promise.rules and lv.thresholds["novel"] == 0.0
    assert not any(w.startswith(f"rule {KEY_MISSES} is off") for w in lv.promise.warnings)
    assert any("past the largest of its scores" in w and "0.0196" in w and "fair sample" in w
               for w in lv.promise.warnings)
    x = np.arange(50, dtype=float)  # a tail the default would extrapolate past 49
    assert choose_level([], [RuleSample(KEY_MISSES, x)], list(range(50)), 0.005, "largest").thresholds[KEY_MISSES] \
        == 49.0
    assert choose_level([], [RuleSample(KEY_MISSES, x)], list(range(50)), 0.005).thresholds[KEY_MISSES] > 49.0
    # the default says where to find the option when it keeps a rule off
    off = choose_level([], [RuleSample(KEY_MISSES, zeros, 1.0)], list(range(50)), 0.005)
    assert any("small_history_model = 'largest'" in w for w in off.promise.warnings)
    big = np.zeros(250)
    assert (choose_level([], [RuleSample(KEY_MISSES, big, 1.0)], list(range(250)), 0.005, "largest").thresholds
            == choose_level([], [RuleSample(KEY_MISSES, big, 1.0)], list(range(250)), 0.005).thresholds)
    with pytest.raises(ValueError, match="small_model='max' must be one of tail, largest"):
        choose_level([], [RuleSample(KEY_MISSES, zeros, 1.0)], list(range(50)), 0.005, "max")


def test_binomial_bounds_match_clopper_pearson():
    # closed forms at the edges: k = 0 -> upper 1 - 0.05^(1/n); k = 1 -> lower 1 - 0.95^(1/n); k = n -> lower 0.05^(1/n)
    assert binomial_lower(0, 50) == 0.0
    assert binomial_lower(1, 50) == pytest.approx(1 - 0.95 ** (1 / 50), rel=1e-6)
    assert binomial_upper(0, 50) == pytest.approx(1 - 0.05 ** (1 / 50), rel=1e-6)
    assert binomial_lower(50, 50) == pytest.approx(0.05 ** (1 / 50), rel=1e-6)
    for k, n in ((2, 50), (30, 5000), (4, 17)):
        assert binomial_lower(k, n) < k / n < binomial_upper(k, n)


def test_model_rules_on_a_slice_too_small_for_the_level_are_named():
    exact = [RuleSample("e", np.arange(1000.0))]
    model = [RuleSample(KEY_MISSES, np.arange(12.0), 1.0)]
    lv = choose_level(exact, model, list(range(988, 1000)), 0.005)
    assert math.isinf(lv.thresholds[KEY_MISSES])
    assert any("model rules rest on 12 sessions" in w for w in lv.promise.warnings)


def test_exact_evidence_is_leave_one_out():
    """Each session is judged by the statistics of the others."""
    a = NormalSession([[4, 5, 6]])
    b = NormalSession([[4, 5, 6]])
    c = NormalSession([[4, 5, 7]])  # template 7 and its set: in no other session
    d = NormalSession([[4, 5]], seen=[False])  # part of the others' set, not seen to stop: no evidence yet
    e = NormalSession([[4, 6]], seen=[True])  # part of the others' set, and stopped there
    f = NormalSession([[4, UNK]])
    ev = exact_evidence([a, b, c, d, e, f], unk=UNK, max_len=8, rarity_total=100.0)
    assert ev[UNSEEN_TEMPLATE].tolist() == [0, 0, 1, 0, 0, 1]
    assert ev[UNSEEN_SET].tolist() == [0, 0, 1, 0, 1, 1]
    # rarity of the rarest key counted in the other sessions only: 7 is then unseen (count 0)
    assert ev[RARE_TEMPLATE][2] == pytest.approx(-math.log(1 / 100.0))
    assert ev[RARE_TEMPLATE][0] < ev[RARE_TEMPLATE][2]


def test_premature_evidence_subtracts_the_sessions_own_visits():
    """A state where only this session stopped: against the others it is a state they passed and never rested."""
    ok = [(0.0, 5), (1.0, 4), (2.0, 8), (3600.0, 10)]
    stop = [(0.0, 5), (1.0, 4)]
    visits = [RestStats.visits(e, 30.0, 8, 4) for e in [ok] * 40 + [stop]]
    rest = RestStats.merge(visits, 30.0, 8, 4)
    sessions = [NormalSession([[5, 4, 8, 10]], visits=v) for v in visits[:40]] + [NormalSession([[5, 4]],
                                                                                                visits=visits[40])]
    ev = exact_evidence(sessions, unk=UNK, max_len=8, rarity_total=1000.0, rest=rest)
    assert ev[PREMATURE_END][40] == pytest.approx(RestStats.surprise_of(40, 0))
    assert ev[PREMATURE_END][:40].max() == 0.0


class FixedScorer:
    def __init__(self, miss: dict[tuple[int, ...], float], max_len: int = 8) -> None:
        self.miss = miss
        self.model = SimpleNamespace(config=SimpleNamespace(max_len=max_len))

    def score(self, windows):
        return [WindowScore(len(w), 0, self.miss.get(tuple(w), 0.0), 0.0, ()) for w in windows]


def test_calibrated_judge_fires_past_each_threshold_and_spares_the_normals():
    """Every calibrated rule fires on a window made to pass its threshold, and the calibration normals are flagged
    at no more than the target."""
    sessions, miss = [], {}
    for i in range(400):
        w = [4, 5, 6, 100 + i % 40]  # 40 lifecycles, 10 sessions each; each with its own miss ratio
        miss[tuple(w)] = 0.3 * (i % 40) / 40
        sessions.append(NormalSession([w, [4, 5, 6]]))
    scorer = FixedScorer(miss)
    scorer.miss[(4, 5, 6, 7)] = 0.9  # past every normal
    cal = calibrated_judge(scorer, sessions, list(range(300, 400)), target_fpr=0.05, use_distance=False,
                           rare_template=False)
    th = cal.thresholds
    assert 0.0 < th.miss_ratio < 0.9 and th.promise is not None and th.promise.model_sessions == 100
    assert th.unseen == 0.0 and th.unseen_set == 0.0 and not th.promise.warnings
    normal = cal.judge.judge([w for s in sessions for w in s.windows])
    assert sum(v.anomalous for v in normal) <= 0.05 * 800
    (v,) = cal.judge.judge([[4, 5, 6, 7]])
    assert KEY_MISSES in v.reasons and UNSEEN_SET in v.reasons  # 7 never came with 4, 5, 6
    (v,) = cal.judge.judge([[4, 9, UNK]])
    assert v.reasons == (UNSEEN_TEMPLATE, UNSEEN_SET)
    # every session with a template of its own: under leave-one-out each one's is unseen, so the rule is off
    lonely = [NormalSession([[4, 5, 1000 + i]]) for i in range(400)]
    cal = calibrated_judge(FixedScorer({}), lonely, list(range(300, 400)), target_fpr=0.05, use_distance=False,
                           rare_template=False)
    assert math.isinf(cal.thresholds.unseen) and math.isinf(cal.thresholds.unseen_set)
    assert any("unseen_template can never fire" in w for w in cal.promise.warnings)


def test_a_small_history_s_judge_uses_a_flawless_model_only_when_asked():
    """50 sessions whose out-of-fold key misses are all 0: the default judge leaves the key-miss rule off (1.0 is
    "off"), ``small_history_model='largest'`` fires it on any missed key."""
    sessions = [NormalSession([[4, 5, 6, 7]]) for _ in range(50)]
    scorer = FixedScorer({(4, 5, 6, 7, 5): 0.2})  # one missed key of five, in a window of known templates

    def judge(mode: str):
        return calibrated_judge(scorer, sessions, list(range(50)), target_fpr=0.005, use_distance=False,
                                rare_template=False, small_history_model=mode)

    off, on = judge("tail"), judge("largest")
    assert off.thresholds.miss_ratio == 1.0 and KEY_MISSES not in off.promise.rules
    assert on.thresholds.miss_ratio == 0.0 and KEY_MISSES in on.promise.rules
    assert not off.judge.judge([[4, 5, 6, 7, 5]])[0].anomalous
    (v,) = on.judge.judge([[4, 5, 6, 7, 5]])
    assert v.reasons == (KEY_MISSES,)
    assert not on.judge.judge([[4, 5, 6, 7]])[0].anomalous


def test_length_classes_double():
    assert [length_class(n) for n in (1, 2, 3, 4, 7, 8, 63, 64)] == [0, 1, 1, 2, 2, 3, 5, 6]


def test_length_thresholds_count_extrapolate_or_stay_silent_per_class():
    """Per length class: the count threshold where the class can count the level, else its extrapolated tail,
    else its largest value; never below the rule's threshold over all sessions; no entry under MIN_TAIL."""
    counted = np.arange(100) / 100  # 100 values: level 0.05 lets 4 be >= x, so the 5th largest, 0.95
    spread = np.arange(20, dtype=float)  # 20 values cannot count 0.005: their tail is extrapolated
    flat = np.zeros(30)  # no tail: past the largest
    few = np.arange(MIN_TAIL - 1, dtype=float)
    got = length_thresholds({0: counted, 1: spread, 2: flat, 3: few}, 0.05, base=0.5)
    assert got[0] == pytest.approx(0.95) and 3 not in got
    assert got[2] == 0.5  # its largest (0) lies below the rule's own threshold, which stands
    assert got[1] == max(0.5, conformal_threshold(spread, 0.05))
    small = length_thresholds({1: spread, 2: flat}, 0.005, base=0.5)
    assert small[1] == pytest.approx(tail_threshold(spread, 0.005)) and small[1] > spread.max()
    assert small[2] == 0.5
    assert length_thresholds({0: counted}, 0.05, base=0.99)[0] == 0.99
    assert length_thresholds({0: counted}, 0.05, base=math.inf) == {}


class DistanceScorer:
    def __init__(self, dist: dict[tuple[int, ...], float]) -> None:
        self.dist = dist
        self.model = SimpleNamespace(config=SimpleNamespace(max_len=8))

    def score(self, windows):
        return [WindowScore(len(w), 0, 0.0, self.dist.get(tuple(w), 0.0), ()) for w in windows]


def test_the_model_rules_judge_only_window_lengths_their_calibration_saw():
    """One-line normal windows calibrate the distance; three sessions of three-line windows, far out, are too few
    to say what a normal three-line window scores: the rule judges one-line windows and leaves the others to the
    exact rules (BGL's sample has one line per window, a full BGL stream dozens)."""
    sessions, dist = [], {}
    for i in range(400):
        w = (100 + i % 40,)
        dist[w] = (i % 40) / 40
        sessions.append(NormalSession([list(w)]))
    for _ in range(3):
        sessions.append(NormalSession([[100, 101, 102]]))
    dist[(100, 101, 102)] = 5.0
    dist[(140,)] = dist[(102, 101, 100)] = 9.0
    cal = calibrated_judge(DistanceScorer(dist), sessions, list(range(300, 403)), target_fpr=0.05,
                           novel_template_set=False, rare_template=False)
    th = cal.thresholds
    assert th.distance < 9.0 and set(th.by_length[DISTANCE]) == {0}
    assert th.model(DISTANCE, 1) == th.by_length[DISTANCE][0] >= th.distance
    (one, three) = cal.judge.judge([[140], [102, 101, 100]])
    assert one.reasons == (DISTANCE,) and not three.anomalous
    assert any("does not judge windows of 2-3 (3) entries" in w for w in cal.promise.warnings)
    normal = cal.judge.judge([w for s in sessions for w in s.windows])
    assert sum(v.anomalous for v in normal) <= 0.05 * len(sessions)
