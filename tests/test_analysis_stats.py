"""analysis.stats against scipy on hand-made numbers."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from analysis.stats import PAIRED, UNDEFINED, WELCH, adjust_p, compare, summarize


def test_summarize_matches_scipy_t_interval():
    x = [3.2919, 3.2939, 3.2922, 3.2950]
    s = summarize(x)
    assert s.n == 4
    assert s.mean == pytest.approx(np.mean(x))
    assert s.std == pytest.approx(np.std(x, ddof=1))
    lo, hi = sps.t.interval(0.95, df=3, loc=np.mean(x), scale=sps.sem(x))
    assert s.ci95 == pytest.approx((hi - lo) / 2)


@pytest.mark.parametrize("values, n", [([], 0), ([3.5], 1), ([float("nan"), 3.5], 1)])
def test_summarize_undefined_spread_below_two_values(values, n):
    s = summarize(values)
    assert s.n == n
    assert math.isnan(s.std) and math.isnan(s.ci95)
    assert (n == 0 and math.isnan(s.mean)) or s.mean == 3.5


def test_compare_uses_paired_t_when_seeds_match_and_pairs_by_seed():
    base = {1337: 3.5336, 1338: 3.5331, 1339: 3.5350}
    # inserted in another order: pairing must follow the seed, not the position
    gate = {1339: 3.5170, 1337: 3.5165, 1338: 3.5153}
    c = compare(gate, base)
    expected = sps.ttest_rel([3.5165, 3.5153, 3.5170], [3.5336, 3.5331, 3.5350]).pvalue
    assert c.test == PAIRED
    assert c.p_value == pytest.approx(expected)
    assert c.delta == pytest.approx(np.mean(list(gate.values())) - np.mean(list(base.values())))
    assert c.delta_pct == pytest.approx(100 * c.delta / np.mean(list(base.values())))


@pytest.mark.parametrize("gate_seeds", [(1, 2, 4), (1, 2), (2, 3)])
def test_compare_pairs_on_the_seeds_both_ran(gate_seeds):
    """A group that ran a subset (or another set) of the baseline's seeds is tested paired on the
    common ones: Δ is the mean of those differences, the CI and p are ttest_rel's over them."""
    base = {1: 3.30, 2: 3.31, 3: 3.29}
    group = dict(zip(gate_seeds, [3.27, 3.28, 3.26]))
    common = sorted(set(group) & set(base))
    c = compare(group, base)
    g, b = [group[s] for s in common], [base[s] for s in common]
    res = sps.ttest_rel(g, b)
    ci = res.confidence_interval(0.95)
    assert (c.test, c.n_pairs) == (PAIRED, len(common))
    assert c.p_value == pytest.approx(res.pvalue, rel=1e-12)
    assert (c.ci_low, c.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-12)
    assert c.delta == pytest.approx(np.mean(g) - np.mean(b), rel=1e-12)
    assert c.delta_pct == pytest.approx(100 * c.delta / np.mean(b), rel=1e-12)


def test_a_six_seed_arm_against_an_eight_seed_baseline_is_paired_on_six():
    """The sequential design's case: Δ is over the 6 pairs, not mean(6 seeds) - mean(8 seeds)."""
    base = dict(enumerate([3.5645, 3.5930, 3.5754, 3.5841, 3.5691, 3.5467, 3.5730, 3.5837]))
    arm = dict(enumerate([3.4797, 3.4963, 3.4691, 3.4819, 3.5058, 3.4525]))
    c = compare(arm, base)
    d = [arm[s] - base[s] for s in range(6)]
    assert (c.test, c.n_pairs) == (PAIRED, 6)
    assert c.p_value == pytest.approx(sps.ttest_1samp(d, 0.0).pvalue, rel=1e-12)
    assert c.delta == pytest.approx(np.mean(d), rel=1e-12)
    assert c.delta != pytest.approx(np.mean(list(arm.values())) - np.mean(list(base.values())), rel=1e-3)


@pytest.mark.parametrize("gate_seeds", [(1, 4, 5), (7, 8, 9), (7, 8)])
def test_compare_falls_back_to_welch_below_two_common_seeds(gate_seeds):
    base = {1: 3.30, 2: 3.31, 3: 3.29}
    values = [3.27, 3.28, 3.26][: len(gate_seeds)]
    c = compare(dict(zip(gate_seeds, values)), base)
    expected = sps.ttest_ind(values, list(base.values()), equal_var=False).pvalue
    assert (c.test, c.n_pairs) == (WELCH, 0)
    assert c.p_value == pytest.approx(expected)
    assert c.delta == pytest.approx(np.mean(values) - np.mean(list(base.values())))


def test_a_seed_without_a_finite_value_is_not_common():
    base = {1: 3.30, 2: 3.31, 3: 3.29}
    c = compare({1: 3.27, 2: float("nan"), 3: 3.26}, base)
    assert (c.test, c.n_pairs) == (PAIRED, 2)
    assert c.p_value == pytest.approx(sps.ttest_rel([3.27, 3.26], [3.30, 3.29]).pvalue)


def test_compare_single_run_has_delta_but_no_test():
    c = compare({5: 3.2938}, {1: 3.2920, 2: 3.2939, 3: 3.2922})
    assert c.delta == pytest.approx(3.2938 - np.mean([3.2920, 3.2939, 3.2922]))
    assert math.isnan(c.p_value) and c.test == UNDEFINED


def test_compare_one_shared_seed_is_not_paired():
    c = compare({1: 3.0}, {1: 3.1})
    assert c.test == UNDEFINED and math.isnan(c.p_value)


def test_compare_empty_group_is_undefined():
    c = compare({}, {1: 3.0, 2: 3.1})
    assert math.isnan(c.delta) and c.test == UNDEFINED


def test_paired_ci_is_the_t_interval_of_the_per_seed_differences():
    base = {1337: 3.5336, 1338: 3.5331, 1339: 3.5350}
    gate = {1337: 3.5165, 1338: 3.5153, 1339: 3.5170}
    d = np.array([gate[s] - base[s] for s in base])
    half = sps.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    c = compare(gate, base)
    assert (c.ci_low, c.ci_high) == pytest.approx((d.mean() - half, d.mean() + half))


def test_welch_ci_uses_welch_satterthwaite_degrees_of_freedom():
    g, b = [3.27, 3.28, 3.26, 3.25], [3.30, 3.33, 3.29]
    vg, vb = np.var(g, ddof=1) / len(g), np.var(b, ddof=1) / len(b)
    df = (vg + vb) ** 2 / (vg ** 2 / (len(g) - 1) + vb ** 2 / (len(b) - 1))
    half = sps.t.ppf(0.975, df) * math.sqrt(vg + vb)
    c = compare(dict(enumerate(g)), {10 + i: v for i, v in enumerate(b)})
    delta = np.mean(g) - np.mean(b)
    assert c.test == WELCH and (c.ci_low, c.ci_high) == pytest.approx((delta - half, delta + half))


def test_study_stage1_elementwise_by_hand():
    """The issue's figures: seeds 1337/1338 of results_stage1.csv, 1 df, Holm over 4 comparisons."""
    base = {1337: 3.533581495285034, 1338: 3.533149480819702}
    elem = {1337: 3.51651382446289, 1338: 3.5152833461761475}
    c = compare(elem, base)
    d = [elem[s] - base[s] for s in base]
    half = 12.706204736174698 * abs(d[0] - d[1]) / math.sqrt(2) / math.sqrt(2)  # t_{0.975,1} * sd / sqrt(n)
    assert c.delta == pytest.approx(-0.017467, abs=1e-6)
    assert (c.ci_low, c.ci_high) == pytest.approx((c.delta - half, c.delta + half))
    assert round(c.ci_low, 4) == -0.0225 and round(c.ci_high, 4) == -0.0124
    assert round(c.p_value, 4) == 0.0145
    others = [0.16941309700083226, 0.030076661867268418, 0.06912649319036517]  # const, headwise/ns, headwise
    assert round(adjust_p([c.p_value, *others])[0], 4) == 0.0582  # smallest of 4: 4 * p


def holm_by_hand(ps):
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    out, running = [0.0] * len(ps), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(ps) - rank) * ps[i]))
        out[i] = running
    return out


@pytest.mark.parametrize("ps", [[0.0145, 0.030, 0.069, 0.169], [0.01, 0.04, 0.03, 0.5, 0.001], [0.2]])
def test_adjust_p_holm_and_bh(ps):
    assert adjust_p(ps, "holm") == pytest.approx(holm_by_hand(ps))
    assert adjust_p(ps, "bh") == pytest.approx(list(sps.false_discovery_control(ps, method="bh")))
    assert adjust_p(ps, "none") == ps


def test_adjust_p_leaves_undefined_out_of_the_family():
    out = adjust_p([0.01, math.nan, 0.04])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)
    assert adjust_p([]) == [] and math.isnan(adjust_p([math.nan])[0])
    with pytest.raises(ValueError, match="holm, bh, none"):
        adjust_p([0.1], "bonferroni")


def test_every_user_of_the_pairing_rule_pairs_on_the_common_seeds():
    """sequential.p_value (the design's test) equals the table's; power pools the differences over the
    common seeds; the time-matched reading takes each common seed at its own baseline time."""
    from analysis import power
    from analysis.sequential import p_value
    from analysis.timematch import Curve, time_matched

    base = {0: 3.30, 1: 3.31, 2: 3.29, 3: 3.305}
    arm = {0: 3.27, 1: 3.285, 2: 3.262}  # stopped at 3 seeds, the baseline went on to 4
    assert p_value(arm, base) == pytest.approx(compare(arm, base).p_value, rel=1e-12)
    assert p_value(arm, base) == pytest.approx(sps.ttest_rel([3.27, 3.285, 3.262], [3.30, 3.31, 3.29]).pvalue, rel=1e-12)
    spread = power.pooled_spread([(arm, base)])
    assert spread.paired and spread.df == 2
    assert spread.sd == pytest.approx(np.std([-0.03, -0.025, -0.028], ddof=1))
    curve = Curve(np.array([0.0, 4000.0]), np.array([5.0, 3.0]), True)
    curves = {"r0": curve, "r1": curve, "r9": curve}
    points = {0: (1000.0, 4.6), 1: (2000.0, 4.4), 2: (3000.0, 4.2)}
    values, _, note = time_matched({0: "r0", 1: "r1", 9: "r9"}, points, curves)
    # seeds 0 and 1 at their own baseline's time; seed 9 (no baseline run) at the mean, 2000 ms
    assert note == "" and values == pytest.approx({0: 4.5, 1: 4.0, 9: 4.0})
