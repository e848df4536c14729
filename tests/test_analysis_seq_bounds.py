"""Group-sequential boundaries (analysis.seq_bounds) against the literature and independent computations.

Published values (two-sided, alpha = 0.05, K equally spaced looks):
- classical designs, Jennison & Turnbull (2000), "Group Sequential Methods with Applications to
  Clinical Trials", Table 2.1 (Pocock constant C_P) and Table 2.3 (O'Brien-Fleming C_B, boundary
  C_B sqrt(K/k)): C_P = 2.178, 2.289, 2.361, 2.413 and C_B = 1.977, 2.004, 2.024, 2.040 for K = 2..5;
- Lan-DeMets spending boundaries, DeMets & Lan (1994), "Interim analysis: the alpha spending function
  approach", Stat Med 13:1341, Table I (K = 5; also the Reboussin et al. 2000 ld98 example):
  O'Brien-Fleming type 4.877, 3.357, 2.680, 2.290, 2.031; Pocock type 2.438, 2.427, 2.410, 2.397, 2.386;
  O'Brien-Fleming type for K = 2..4 as printed by ldbounds/gsDesign (sfLDOF, two-sided symmetric):
  2.963, 1.969 | 3.710, 2.511, 1.993 | 4.333, 2.963, 2.359, 2.014.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize
from scipy.stats import multivariate_normal, norm
from scipy.stats import t as student_t

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
@pytest.mark.parametrize(("looks", "alpha"), [((2, 4, 6, 8), 0.05), ((2, 4, 6, 8), 0.0125), ((3, 4, 5, 6), 0.05)])
def test_t_levels_spend_the_planned_alpha_per_look_for_paired_t_tests(kind, looks, alpha):
    """On fresh null paths (another seed than the calibration's), the first crossings of the paired
    t-test at the calibrated levels follow the spending function look by look."""
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
    assert calibrated[0] == normal[0]  # exact at the first look: p is uniform there
    assert all(c < nv for c, nv in zip(calibrated[1:], normal[1:]))
    assert t_levels(looks, 0.05, "obf") is calibrated  # cached, and the same on every call


def test_t_levels_need_two_seeds_at_the_first_look():
    with pytest.raises(ValueError, match="at least 2 seeds"):
        t_levels((1, 2, 3), 0.05, "obf")
