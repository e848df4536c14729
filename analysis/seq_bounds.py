"""Group-sequential boundaries: Lan-DeMets alpha spending, two-sided, and the nominal p-value levels
that the sequential-seeds rule (analysis.sequential) holds each look's p-value against. Pure.

Spending (symmetric two-sided test, each side spending alpha/2 as ldbounds, gsDesign and rpact do):
O'Brien-Fleming type a(t) = 4(1 - Phi(z_{1-a/4} / sqrt t)), Pocock type a(t) = a ln(1 + (e - 1) t).
Boundary c_k solves P_H0(|Z_j| < c_j for j < k, |Z_k| >= c_k) = a(t_k) - a(t_{k-1}) with
Corr(Z_i, Z_j) = sqrt(t_i / t_j), by the recursive numerical integration of Armitage, McPherson & Rowe
(1969) (Jennison & Turnbull 2000, ch. 19); its nominal level is p_k = 2(1 - Phi(c_k)).
`t_levels` recalibrates those levels for the paired t-test with few seeds (see there).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from scipy import optimize
from scipy.special import ndtr, ndtri
from scipy.stats import norm

from analysis.seq_t import first_crossing_levels

SPENDING = ("obf", "pocock")
_GRID = 400  # Simpson intervals per continuation region: crossing probabilities to ~1e-7 (tested)
_Z_MAX = 12.0  # |Z| beyond this holds < 1e-32 of the mass: a look that spends nothing is cut here


# ---------------------------------------------------------------- boundaries
def spent(t: float, alpha: float, spending: str) -> float:
    """Cumulative two-sided alpha spent by information fraction t (0 < t <= 1)."""
    if spending == "obf":  # each side spends alpha/2 by the one-sided O'Brien-Fleming-type function
        return float(4.0 * ndtr(-ndtri(1.0 - alpha / 4.0) / math.sqrt(t)))
    if spending == "pocock":
        return float(alpha * math.log1p((math.e - 1.0) * t))
    raise ValueError(f"spending {spending!r} is not one of {', '.join(SPENDING)}")


def fractions_of(looks: Sequence[int]) -> tuple[float, ...]:
    return tuple(n / looks[-1] for n in looks)


def _simpson(c: float) -> tuple[np.ndarray, np.ndarray]:
    x = np.linspace(-c, c, 2 * _GRID + 1)
    w = np.ones_like(x)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    return x, w * (x[1] - x[0]) / 3.0


def _crossing(x: np.ndarray, mass: np.ndarray, r: float, s: float, c: float) -> float:
    """P(reach this look, |Z_k| >= c), Z_k = r Z_{k-1} + s X, given the continuing mass at Z_{k-1} = x."""
    return float(np.sum(mass * (ndtr((r * x - c) / s) + ndtr((-c - r * x) / s))))


def _next_density(x: np.ndarray, mass: np.ndarray, y: np.ndarray, r: float, s: float) -> np.ndarray:
    """Density of Z_k at y over the paths that continued past look k-1 (sub-density: mass < 1)."""
    u = (y[None, :] - r * x[:, None]) / s
    return mass @ np.exp(-0.5 * u * u) / (s * math.sqrt(2.0 * math.pi))


def _excess(c: float, x: np.ndarray, mass: np.ndarray, r: float, s: float, target: float) -> float:
    return _crossing(x, mass, r, s, c) - target


@lru_cache(maxsize=512)
def boundaries(fractions: tuple[float, ...], alpha: float, spending: str = "obf") -> tuple[float, ...]:
    """Two-sided z boundaries c_1..c_K (inf where a look spends no alpha)."""
    cum = [spent(t, alpha, spending) for t in fractions]
    inc = np.diff([0.0, *cum])
    c = float(norm.isf(inc[0] / 2.0)) if inc[0] > 0 else math.inf
    x, w = _simpson(min(c, _Z_MAX))
    density = norm.pdf(x)
    out = [c]
    for k in range(1, len(fractions)):
        r = math.sqrt(fractions[k - 1] / fractions[k])
        s = math.sqrt(1.0 - r * r)
        mass = w * density
        if inc[k] <= 1e-15:
            c = math.inf
        else:
            root = optimize.brentq(_excess, 0.0, 40.0, args=(x, mass, r, s, inc[k]), xtol=1e-10, full_output=False)
            c = float(root)  # type: ignore[arg-type]  # a float without full_output
        out.append(c)
        y, w = _simpson(min(c, _Z_MAX))
        density = _next_density(x, mass, y, r, s)
        x = y
    return tuple(out)


def nominal_levels(fractions: tuple[float, ...], alpha: float, spending: str = "obf") -> tuple[float, ...]:
    """Two-sided nominal p-value thresholds p_k = 2(1 - Phi(c_k)): reject at look k if p <= p_k."""
    return tuple(float(2.0 * norm.sf(c)) for c in boundaries(fractions, alpha, spending))


@lru_cache(maxsize=256)
def t_levels(looks: tuple[int, ...], alpha: float, spending: str = "obf") -> tuple[float, ...]:
    """Nominal two-sided p thresholds for the paired t-test at each look (n_k seeds, df n_k - 1).

    Normal theory (`nominal_levels`) assumes known variance; with 2-8 seeds the t statistics of
    successive looks are less alike than Brownian motion, and the first-crossing probabilities exceed
    the spending (measured: 0.055 instead of 0.05 for one comparison at looks 2,4,6,8). Under H0 the
    paired t sequence is pivotal (normal differences, any variance), so each look's level is set to
    spend exactly a(t_k) - a(t_{k-1}) among the paths still running, by numerical integration of the
    t paths (analysis.seq_t): deterministic, within 1e-4 of a five times finer integration and equal
    to the exact level where it is known (the early looks' levels are tail probabilities that a
    simulation of 200k paths had set from a few dozen crossings, 12-20% off). The first look's level is
    its spent alpha, as in normal theory (p is uniform there). Cached per design and level.
    """
    if looks[0] < 2:
        raise ValueError("a paired t-test needs at least 2 seeds at the first look")
    inc = np.diff([0.0, *(spent(t, alpha, spending) for t in fractions_of(looks))])
    return first_crossing_levels(looks, tuple(float(x) if x > 1e-15 else 0.0 for x in inc))


def crossing_probabilities(fractions: Sequence[float], bounds: Sequence[float]) -> list[float]:
    """P_H0 of first crossing |Z_k| >= c_k at each look (the exit probabilities of a design)."""
    x, w = _simpson(min(bounds[0], _Z_MAX))
    density = norm.pdf(x)
    out = [float(2.0 * norm.sf(bounds[0]))]
    for k in range(1, len(fractions)):
        r = math.sqrt(fractions[k - 1] / fractions[k])
        s = math.sqrt(1.0 - r * r)
        mass = w * density
        out.append(_crossing(x, mass, r, s, bounds[k]))
        y, w = _simpson(min(bounds[k], _Z_MAX))
        density = _next_density(x, mass, y, r, s)
        x = y
    return out
