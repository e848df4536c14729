"""analysis.stats against scipy on hand-made numbers."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from analysis.stats import PAIRED, UNDEFINED, WELCH, compare, summarize


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


@pytest.mark.parametrize("gate_seeds", [(1, 2, 4), (1, 2), (7, 8, 9)])
def test_compare_falls_back_to_welch_unless_all_seeds_match(gate_seeds):
    base = {1: 3.30, 2: 3.31, 3: 3.29}
    values = [3.27, 3.28, 3.26][: len(gate_seeds)]
    c = compare(dict(zip(gate_seeds, values)), base)
    expected = sps.ttest_ind(values, list(base.values()), equal_var=False).pvalue
    assert c.test == WELCH
    assert c.p_value == pytest.approx(expected)


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
