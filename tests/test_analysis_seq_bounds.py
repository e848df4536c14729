"""Group-sequential boundaries (analysis.seq_bounds) against the literature and independent computations.

Published values (two-sided, alpha = 0.05, K equally spaced looks):
- classical designs, Jennison & Turnbull (2000), "Group Sequential Methods with Applications to
  Clinical Trials", Table 2.1 (Pocock constant C_P) and Table 2.3 (O'Brien-Fleming C_B, boundary
  C_B sqrt(K/k)): C_P = 2.178, 2.289, 2.361, 2.413 and C_B = 1.977, 2.004, 2.024, 2.040 for K = 2..5;
- Lan-DeMets spending boundaries, DeMets & Lan (1994), "Interim analysis: the alpha spending function
  approach", Stat Med 13:1341, Table I (K = 5; also the Reboussin et al. 2000 ld98 example):
  O'Brien-Fleming type 4.877, 3.357, 2.680, 2.290, 2.031; Pocock type 2.438, 2.427, 2.410, 2.397, 2.386;
  O'Brien-Fleming type for K = 2..4 as printed by ldbounds/gsDesign (sfLDOF, two-sided symmetric):
  2.963, 1.969 | 3.710, 2.511, 1.993 | 4.333, 2.963, 2.359, 2.014; to four decimals for K = 4
  (ldbounds' `bounds(c(.25, .5, .75, 1), iuse = c(1, 1), alpha = c(.025, .025))`, gsDesign sfLDOF):
  4.3326, 2.9631, 2.3590, 2.0141.
Which is which: the Lan-DeMets O'Brien-Fleming-TYPE spending function is what `boundaries` computes;
the classical O'Brien & Fleming (1979) design is a different one, the constant C_B sqrt(K / k) =
4.048, 2.862, 2.337, 2.024 for K = 4 (its C_B is checked through the crossing engine below).

The t-calibrated levels (`t_levels`, by the numerical integration of analysis.seq_t) are checked against
the exact level where it is known, the normal-theory levels where the t correction vanishes, a finer
integration, and simulated paired t-tests.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize
from scipy.stats import multivariate_normal, norm
from scipy.stats import t as student_t

import analysis.seq_t as seq_t
from analysis.seq_bounds import (
    boundaries,
    crossing_probabilities,
    fractions_of,
    nominal_levels,
    spent,
    t_levels,
)


def equal(k: int) -> tuple[float, ...]:
    return tuple((i + 1) / k for i in range(k))


@pytest.mark.parametrize(("k", "c_p", "c_b"), [(2, 2.178, 1.977), (3, 2.289, 2.004), (4, 2.361, 2.024),
                                               (5, 2.413, 2.040)])
def test_the_crossing_engine_reproduces_the_classical_pocock_and_obrien_fleming_constants(k, c_p, c_b):
    t = equal(k)
    pocock = optimize.brentq(lambda c: sum(crossing_probabilities(t, [c] * k)) - 0.05, 1.5, 4.0)
    obf = optimize.brentq(lambda c: sum(crossing_probabilities(t, [c / math.sqrt(x) for x in t])) - 0.05, 1.5, 4.0)
    assert round(pocock, 3) == c_p
    assert round(obf, 3) == c_b


@pytest.mark.parametrize(("k", "published"), [
    (2, (2.963, 1.969)), (3, (3.710, 2.511, 1.993)), (4, (4.333, 2.963, 2.359, 2.014)),
    (5, (4.877, 3.357, 2.680, 2.290, 2.031))])
def test_obrien_fleming_type_spending_boundaries_match_the_published_ones(k, published):
    assert tuple(round(c, 3) for c in boundaries(equal(k), 0.05, "obf")) == published


def test_lan_demets_obrien_fleming_type_boundaries_to_four_decimals_and_not_the_classical_ones():
    lan_demets = boundaries(equal(4), 0.05, "obf")
    assert tuple(round(c, 4) for c in lan_demets) == (4.3326, 2.9631, 2.3590, 2.0141)
    classical = tuple(2.024 * math.sqrt(4 / k) for k in range(1, 5))  # O'Brien & Fleming (1979), K = 4
    assert abs(lan_demets[0] - classical[0]) > 0.25 and abs(lan_demets[-1] - classical[-1]) > 0.009


def test_pocock_type_spending_boundaries_match_the_published_ones():
    assert tuple(round(c, 3) for c in boundaries(equal(5), 0.05, "pocock")) == (2.438, 2.427, 2.410, 2.397, 2.386)


def test_spending_functions_spend_alpha_by_the_end_and_nothing_at_the_start():
    for kind in ("obf", "pocock"):
        assert spent(1.0, 0.05, kind) == pytest.approx(0.05, abs=1e-15)
        assert spent(1e-9, 0.05, kind) < 1e-9
        values = [spent(t, 0.05, kind) for t in np.linspace(0.01, 1, 50)]
        assert values == sorted(values)
    assert spent(0.5, 0.05, "pocock") == pytest.approx(0.05 * math.log(1 + (math.e - 1) / 2))
    assert spent(0.5, 0.05, "obf") == pytest.approx(4 * norm.sf(norm.isf(0.0125) / math.sqrt(0.5)))
    with pytest.raises(ValueError, match="spending 'linear' is not one of obf, pocock"):
        spent(0.5, 0.05, "linear")


@pytest.mark.parametrize("kind", ["obf", "pocock"])
@pytest.mark.parametrize("looks", [(2, 4, 6, 8), (3, 5, 8), (2, 3, 5, 8, 10)])
def test_each_look_spends_its_share_by_scipys_multivariate_normal(kind, looks):
    """An independent computation of the same probabilities: P(|Z_j| < c_j, j <= k) by scipy's
    Genz integration over the canonical joint distribution."""
    t = fractions_of(looks)
    c = boundaries(t, 0.05, kind)
    cov = np.sqrt(np.minimum.outer(t, t) / np.maximum.outer(t, t))
    for k in range(1, len(t) + 1):
        inside = multivariate_normal(mean=np.zeros(k), cov=cov[:k, :k]).cdf(
            np.array(c[:k]), lower_limit=-np.array(c[:k]), rng=np.random.default_rng(0))
        assert 1.0 - inside == pytest.approx(spent(t[k - 1], 0.05, kind), abs=2e-5)


@pytest.mark.parametrize("kind", ["obf", "pocock"])
def test_spent_alpha_sums_to_alpha_by_monte_carlo_of_correlated_normals(kind):
    looks = (2, 4, 6, 8)
    t = np.array(fractions_of(looks))
    c = np.array(boundaries(tuple(t), 0.05, kind))
    n = 400_000
    # Z_k = B(t_k) / sqrt(t_k) for a Brownian motion B: independent increments
    increments = np.random.default_rng(1).standard_normal((n, len(t))) * np.sqrt(np.diff(np.r_[0.0, t]))
    z = np.cumsum(increments, axis=1) / np.sqrt(t)
    crossed = (np.abs(z) >= c).any(axis=1).mean()
    assert crossed == pytest.approx(0.05, abs=3 * math.sqrt(0.05 * 0.95 / n))


def test_nominal_levels_are_the_two_sided_p_of_the_boundaries():
    t = equal(4)
    levels = nominal_levels(t, 0.05, "obf")
    assert levels == pytest.approx(tuple(2 * norm.sf(c) for c in boundaries(t, 0.05, "obf")))
    assert levels[0] == pytest.approx(spent(0.25, 0.05, "obf"))  # the first look spends its share alone


@pytest.mark.parametrize("kind", ["obf", "pocock"])
@pytest.mark.parametrize(("looks", "alpha"), [((2, 4, 6, 8), 0.05), ((2, 4, 6, 8), 0.0125), ((3, 4, 5, 6), 0.05),
                                             ((2, 3, 4, 5, 6), 0.05)])
def test_t_levels_spend_the_planned_alpha_per_look_for_paired_t_tests(kind, looks, alpha):
    """An independent Monte Carlo check: the first crossings of simulated paired t-tests at the
    integrated levels follow the spending function look by look, within 4 standard errors."""
    levels = t_levels(looks, alpha, kind)
    n = 200_000
    d = np.random.default_rng(99).standard_normal((n, looks[-1])) * 3.7  # any variance: the t paths are pivotal
    running = np.ones(n, dtype=bool)
    previous = 0.0
    for k, m in enumerate(looks):
        x = d[:, :m]
        t = x.mean(axis=1) / (x.std(axis=1, ddof=1) / math.sqrt(m))
        p = 2 * student_t.sf(np.abs(t), m - 1)
        first = running & (p <= levels[k])
        running &= ~first
        share = spent(fractions_of(looks)[k], alpha, kind) - previous
        previous += share
        assert first.mean() == pytest.approx(share, abs=4 * math.sqrt(share / n) + 1e-6)


def test_t_levels_are_below_the_normal_theory_levels_after_the_first_look():
    looks = (2, 4, 6, 8)
    normal = nominal_levels(fractions_of(looks), 0.05, "obf")
    calibrated = t_levels(looks, 0.05, "obf")
    assert calibrated[0] == spent(0.25, 0.05, "obf")  # exact at the first look: p is uniform there
    assert calibrated[0] == pytest.approx(normal[0], rel=1e-12)
    assert all(c < nv for c, nv in zip(calibrated[1:], normal[1:]))
    assert t_levels(looks, 0.05, "obf") is calibrated  # cached, and the same on every call


def test_t_levels_need_two_seeds_at_the_first_look():
    with pytest.raises(ValueError, match="at least 2 seeds"):
        t_levels((1, 2, 3), 0.05, "obf")


# ---------------------------------------------------------------- accuracy of the t levels
@pytest.mark.parametrize("looks", [(2, 3), (2, 4), (3, 8), (6, 7), (4, 12), (2, 10)])
@pytest.mark.parametrize("q", [1e-3, 1e-5, 1e-7])
def test_a_look_after_one_that_spends_nothing_has_the_single_look_level(looks, q):
    """Exact: when the first look stops no path, the second look's p is uniform over all of them, so its
    level is the increment itself. This runs the whole kernel (one new seed: m = 1, and m >= 2) over
    the whole first-look law, into the far tail, and is not clamped at the increment."""
    assert seq_t.first_crossing_levels(looks, (0.0, q))[1] == pytest.approx(q, rel=2e-4)


def test_the_early_looks_of_obrien_fleming_sit_between_their_exact_bounds():
    """The issue's case: at alpha 0.05 / 2, looks 2,4,6,8, the first look spends 1.2e-6 and the second
    8.2e-4. P(first crossing at 2) <= P(p_2 <= q_2) = q_2 <= increment + P(crossing at 1), so
    inc_2 <= q_2 <= inc_2 + inc_1: 0.000822 <= q_2 <= 0.000824 (the simulated calibration gave 0.000723)."""
    looks, alpha = (2, 4, 6, 8), 0.025
    inc = np.diff([0.0, *(spent(t, alpha, "obf") for t in fractions_of(looks))])
    q = t_levels(looks, alpha, "obf")
    assert inc[1] * (1 - 2e-4) <= q[1] <= (inc[1] + inc[0]) * (1 + 2e-4)
    assert q[1] == pytest.approx(0.000823, abs=1e-6)


@pytest.mark.parametrize(("looks", "gap"), [((5, 10, 15, 20), 0.05), ((50, 100, 150, 200), 0.006)])
def test_t_levels_approach_the_normal_theory_levels_as_the_seeds_grow(looks, gap):
    """With many seeds per look the t statistics are z statistics: the t correction (4% at 5-20 seeds)
    vanishes, and at 50-200 seeds the levels are the normal-theory ones within 0.5%."""
    normal = nominal_levels(fractions_of(looks), 0.05, "obf")
    t = t_levels(looks, 0.05, "obf")
    worst = max(abs(a / b - 1) for a, b in zip(t, normal))
    assert worst < gap
    assert worst > gap / 10  # the correction is there at few seeds, and shrinks


@pytest.mark.parametrize(("looks", "alpha", "kind"), [((2, 4, 6, 8), 0.0125, "obf"), ((2, 3, 4, 5, 6), 0.05, "obf")])
def test_t_levels_are_converged(monkeypatch, looks, alpha, kind):
    """A finer integration (1.5 times the cells, more points per cell and over b) moves no level by
    more than 1e-4 of itself: the levels are within 2% of the exact ones with a wide margin."""
    inc = np.diff([0.0, *(spent(t, alpha, kind) for t in fractions_of(looks))])
    coarse = seq_t.first_crossing_levels(looks, inc)
    monkeypatch.setattr(seq_t, "_CELLS", 3 * seq_t._CELLS // 2)
    monkeypatch.setattr(seq_t, "_SUB", seq_t._SUB + 1)
    monkeypatch.setattr(seq_t, "_B_NODES", seq_t._B_NODES + 8)
    fine = seq_t.first_crossing_levels(looks, inc)
    assert coarse == pytest.approx(fine, rel=1e-4)
