"""analysis.power against statsmodels' own power functions, textbook sample sizes, a Monte Carlo
simulation of the t-test where statsmodels' two-sided power is NaN, and `gatesweep power` on the
study's stage 1 through a real MLflow server."""

import math
import uuid
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.power import TTestIndPower, TTestPower

from analysis import power
from analysis.cli import import_main
from analysis.power_cli import power_main
from analysis.table import stage_table
from tests.test_analysis_study import tidy

STUDY = Path(__file__).parent / "fixtures" / "legacy" / "study"


@pytest.mark.parametrize("d, n, alpha", [(0.5, 34, 0.05), (1.2, 8, 0.0125), (0.3, 100, 0.01), (2.0, 4, 0.05)])
def test_power_equals_statsmodels_where_statsmodels_is_finite(d, n, alpha):
    assert power.power(d, n, alpha, paired=True) == pytest.approx(TTestPower().power(d, n, alpha), rel=1e-9)
    assert power.power(d, n, alpha, paired=False) == pytest.approx(TTestIndPower().power(d, n, alpha), rel=1e-9)


def test_textbook_sample_sizes():
    """Cohen's d = 0.5, two-sided alpha 0.05, power 0.8: 34 pairs (one-sample / paired t),
    64 per group (two-sample t) - the standard G*Power answers."""
    assert power.seeds_needed(0.5, 1.0, 0.05, 0.8, paired=True) == 34
    assert power.seeds_needed(0.5, 1.0, 0.05, 0.8, paired=False) == 64
    for d, a in [(0.8, 0.0125), (1.5, 0.05), (0.25, 0.01)]:
        assert power.seeds_needed(d, 1.0, a, 0.8, paired=True) == math.ceil(
            TTestPower().solve_power(effect_size=d, alpha=a, power=0.8))
        assert power.seeds_needed(d, 1.0, a, 0.8, paired=False) == math.ceil(
            TTestIndPower().solve_power(effect_size=d, alpha=a, power=0.8))


def test_minimal_effect_equals_statsmodels_solve_power():
    for n, a in [(34, 0.05), (10, 0.0125), (6, 0.05)]:
        expected = TTestPower().solve_power(nobs=n, alpha=a, power=0.8)
        assert power.minimal_effect(2.0, n, a, 0.8, paired=True) == pytest.approx(2.0 * expected, rel=1e-5)
        expected = TTestIndPower().solve_power(nobs1=n, alpha=a, power=0.8)
        assert power.minimal_effect(2.0, n, a, 0.8, paired=False) == pytest.approx(2.0 * expected, rel=1e-5)


@pytest.mark.parametrize("d, n, alpha", [(5.0, 3, 0.0125), (17.2, 2, 0.0125)])
def test_power_in_the_seed_regime_matches_a_simulated_t_test(d, n, alpha):
    """Gate effects are tens of seed-SDs: statsmodels' two-sided power is NaN there; ours must
    match the rejection rate of simulated paired t-tests."""
    assert math.isnan(TTestPower().power(d, n, alpha))
    rng = np.random.default_rng(0)
    diffs = rng.normal(d, 1.0, size=(40_000, n))
    t = diffs.mean(axis=1) / (diffs.std(axis=1, ddof=1) / math.sqrt(n))
    rate = float(np.mean(np.abs(t) > sps.t.ppf(1 - alpha / 2, n - 1)))
    assert power.power(d, n, alpha, paired=True) == pytest.approx(rate, abs=0.01)


def test_pooled_spread_by_hand():
    base = {1: 3.30, 2: 3.32}
    a, b = {1: 3.27, 2: 3.28}, {1: 3.31, 2: 3.305}
    s = power.pooled_spread([(a, base), (b, base)])
    var_a, var_b = np.var([-0.03, -0.04], ddof=1), np.var([0.01, -0.015], ddof=1)
    assert s.paired and s.df == 2 and s.sd == pytest.approx(math.sqrt((var_a + var_b) / 2))
    u = power.pooled_spread([({7: 3.27, 8: 3.28, 9: 3.26}, base)])
    within = (np.var([3.27, 3.28, 3.26], ddof=1) * 2 + np.var([3.30, 3.32], ddof=1)) / 3
    assert not u.paired and u.df == 3 and u.sd == pytest.approx(math.sqrt(within))
    assert power.sd_upper_bound(s) == pytest.approx(s.sd * math.sqrt(2 / sps.chi2.ppf(0.2, 2)))


def test_stage1_plan():
    table = stage_table(tidy("results_stage1.csv", "stage1"), per_seed=True)
    pairs, base, n_now = power.stage_inputs(table)
    assert len(pairs) == 4 and n_now == 2 and base == pytest.approx((3.533581495285034 + 3.533149480819702) / 2)
    spread = power.pooled_spread(pairs)
    plan = power.plan(spread, baseline_mean=base, effect_pct=0.5, alpha=0.05, target=0.8, comparisons=4, n_now=2)
    assert plan.alpha_each == 0.0125 and plan.effect == pytest.approx(base * 0.005)
    d = plan.effect / spread.sd
    assert TTestPower().power(d, plan.seeds, 0.0125, alternative="larger") >= 0.8 - 1e-12  # upper tail alone
    assert power.power(d, plan.seeds - 1, 0.0125, paired=True) < 0.8
    assert plan.mde == pytest.approx(power.minimal_effect(spread.sd, 2, 0.0125, 0.8, paired=True))


@pytest.mark.mlflow
def test_cli_power_on_the_studys_stage1(mlflow_server, capsys):
    common = ["--experiment", f"test-power-{uuid.uuid4().hex[:8]}", "--tracking-uri", mlflow_server.uri]
    assert import_main([str(STUDY / "results_stage1.csv"), "--stage", "stage1", *common]) == 0
    capsys.readouterr()
    assert power_main(["--stage", "stage1", "--effect-pct", "0.5", *common]) == 0
    out = capsys.readouterr().out
    assert "to detect 0.5% of the baseline loss (0.0177 of 3.5334): 3 seeds per configuration" in out
    assert "alpha 0.05 / 4 = 0.0125" in out and "at the current 2 seeds: minimal detectable effect" in out


def test_too_small_an_effect_says_so():
    assert power.seeds_needed(1e-4, 1.0, 0.05, 0.8, paired=True) is None
