"""The paired t statistics of successive looks under H0, by numerical integration: the nominal p-value
levels at which each look of a group-sequential t-test spends exactly its share of alpha. Pure.

Why integration. The levels of the early looks are tail probabilities (1e-6 .. 1e-3): simulated null
paths set them from a few dozen crossings (12-20% error at 200k paths), whereas the integral below is
deterministic, within 1e-4 of a five times finer integration and exact where the exact level is known
(tests/test_analysis_seq_bounds.py), in about a second per design and level.

One dimension suffices. Jennison & Turnbull (1991, "Exact calculations for sequential t, chi-square and F
tests", Biometrika 78:133) integrate the joint law of the running sum and sum of squares (two
dimensions); under H0 the scale drops out analytically, leaving one. The differences
d_1..d_N are iid N(0, s^2). The t statistic at look k (n = n_k seeds) is a function of the direction of
(d_1..d_n) alone, and so is every earlier look's; that direction is independent of the length
R^2 = sum d_i^2 (spherical symmetry). So the state of a path is one angle: sin(theta) = S / sqrt(n R^2),
t = sqrt(n - 1) tan(theta), and given the whole past up to look k, R^2 is still s^2 chi2(n).

Kernel to look k+1 (m new seeds, sum A ~ N(0, m s^2), within sum of squares B ~ s^2 chi2(m - 1)).
With a = A / R and b = B / R^2: b is (m - 1)/n times an F(m - 1, n) variable, and given b, a is
sqrt(m (1 + b) / (n + m - 1)) times a t(n + m - 1) variable (R^2 (1 + b) ~ chi2(n + m - 1) given b).
|t_{k+1}| >= tau is a quadratic inequality in a (`_cross_given_b`), so its probability given theta
and b is a difference of t cdfs at the roots; the integral over b (none when m = 1) is Gauss-Legendre
in the quantile of b, up to (or from) the b at which the roots vanish, where it has a square-root edge.

Discretisation. The paths still running after look k are cell masses over |theta| in [0, theta*_k]
(symmetry: |t| is a Markov chain), cells denser toward theta* where the next crossings start; the
kernel is averaged over each source cell (`_cell_mean`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from scipy import optimize
from scipy.special import betainc, fdtri, stdtr, stdtrit

_CELLS = 48  # cells per look: levels within 1e-4 of 240 cells, 6 points per piece, 32 over b (measured)
_SUB = 4  # Gauss points per piece of a cell for the kernel average
_B_NODES = 12  # Gauss-Legendre nodes over the quantile of b


def first_crossing_levels(looks: Sequence[int], increments: Sequence[float] | np.ndarray) -> tuple[float, ...]:
    """Levels q_k with P_H0(p_j > q_j for j < k, p_k <= q_k) = increments[k], p_k the two-sided paired
    t-test's p over the first looks[k] differences. The first level is increments[0] (p is uniform)."""
    nu = looks[0] - 1
    q = float(increments[0])
    out = [q]
    edges = _cells(_angle(q, nu))
    tau = math.sqrt(nu) * np.tan(edges)
    mass = 2.0 * (stdtr(nu, tau[1:]) - stdtr(nu, tau[:-1]))  # exact at the first look: |t| ~ |t(nu)|
    for k in range(1, len(looks)):
        n, m, nu = looks[k - 1], looks[k] - looks[k - 1], looks[k] - 1
        q = _solve(edges, mass, n, m, nu, float(increments[k]))
        out.append(q)
        if k == len(looks) - 1:
            break
        new = _cells(_angle(q, nu))
        beyond = _cell_mean(edges, math.sqrt(nu) * np.tan(new), n, m)  # (cells, new edges): P(|t_k| >= edge)
        mass = mass @ (beyond[:, :-1] - beyond[:, 1:])
        edges = new
    return tuple(out)


def _angle(q: float, nu: int) -> float:
    """theta* of the two-sided t boundary with p = q (pi/2: a look that rejects nothing)."""
    if q <= 0.0:
        return math.pi / 2
    return math.atan(-float(stdtrit(nu, q / 2.0)) / math.sqrt(nu))


def _cells(top: float) -> np.ndarray:
    edges = top * np.sin(np.linspace(0.0, math.pi / 2, _CELLS + 1))
    edges[-1] = min(top, math.pi / 2 - 1e-12)  # tan stays finite
    return edges


def _solve(edges: np.ndarray, mass: np.ndarray, n: int, m: int, nu: int, inc: float) -> float:
    """The level whose first crossings among the running paths have probability inc: at least inc
    (P(first crossing) <= P(p_k <= q) = q), so searched in [inc / 2, 1] on a log scale (not clamped at
    inc, so that a look after one that spends nothing shows the integration's own error, tested)."""
    if inc <= 0.0:
        return 0.0

    def excess(log_q: float) -> float:
        tau = -float(stdtrit(nu, math.exp(log_q) / 2.0))
        return float(mass @ _cell_mean(edges, np.array([tau]), n, m)[:, 0]) / inc - 1.0

    root = optimize.brentq(excess, math.log(inc / 2.0), 0.0, xtol=1e-12)
    return math.exp(root)  # type: ignore[arg-type]  # a float without full_output


def _cell_mean(edges: np.ndarray, tau: np.ndarray, n: int, m: int) -> np.ndarray:
    """P(|t_{k+1}| >= tau_j | theta) averaged over each cell of theta: shape (cells, len(tau)), the
    paths spread within a cell as the marginal law of theta (density cos^(n - 2)), exact at look 1.

    Where the crossing set's roots appear (`_onset`) the integrand has a square-root (m = 1) or
    power-law edge in theta: a cell that holds it is split there, and each piece gets Gauss points
    on v with theta = edge + (piece) v^2, which makes the edge smooth in v."""
    x, w = np.polynomial.legendre.leggauss(_SUB)
    v, w = (x + 1.0) / 2.0, w  # nodes on [0, 1]; weights of d(v^2) = 2 v dv below
    lo, hi = edges[:-1, None, None], edges[1:, None, None]
    split = np.clip(_onset(tau, n, m)[None, :, None], lo, hi)  # (cells, taus, 1)
    below = split - (split - lo) * v * v  # nodes clustered at the split, from either side
    above = split + (hi - split) * v * v
    theta = np.concatenate([below, above], axis=-1)  # (cells, taus, 2 * _SUB)
    weight = np.concatenate([(split - lo) * v * w, (hi - split) * v * w], axis=-1)  # sums to the cell width
    weight = weight * np.cos(theta) ** (n - 2)  # within a cell, paths spread like the marginal of theta
    p = _cross(theta, tau[None, :, None], n, m)
    return np.sum(p * weight, axis=-1) / np.sum(weight, axis=-1)


def _onset(tau: np.ndarray, n: int, m: int) -> np.ndarray:
    """theta at which |t_{k+1}| = tau gains roots with b = 0: disc = P sin^2 + Q cos^2 changes sign
    at tan^2 theta = -Q / P (0 where it does not change sign in (0, pi/2))."""
    t2 = tau * tau
    a2 = (n + m - 1.0) - t2 * n / m
    p = 4.0 * n * (n + m - 1.0 + t2) ** 2 - 4.0 * a2 * ((n + m - 1.0) * n - t2 * m)
    q = 4.0 * a2 * t2 * (n + m)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = -q / p
    return np.where((ratio > 0.0) & np.isfinite(ratio), np.arctan(np.sqrt(np.abs(ratio))), 0.0)


def _cross(theta: np.ndarray, tau: np.ndarray, n: int, m: int) -> np.ndarray:
    """P(|t_{k+1}| >= tau | theta_k = theta), broadcasting theta against tau."""
    theta, tau = np.broadcast_arrays(theta, tau)
    out = np.ones(theta.shape)
    live = tau > 0.0
    if m == 1:
        out[live] = _cross_given_b(theta[live], tau[live], np.zeros(int(live.sum())), n, m)
        return out
    th, ta = theta[live], tau[live]
    a2, _, _, d0 = _quadratic(th, ta, 0.0, n, m)
    with np.errstate(divide="ignore", invalid="ignore"):
        b0 = -d0 / (4.0 * a2 * ta * ta * (n + m))  # the b at which the roots vanish (disc is linear in b)
    v, wv = np.polynomial.legendre.leggauss(_B_NODES)
    s = np.sin(np.pi * (v + 1.0) / 4.0) ** 2  # node positions in [0, 1], dense at both ends
    ds = np.pi / 4.0 * np.sin(np.pi * (v + 1.0) / 2.0) * wv  # their weights (d s)
    res = np.zeros(th.shape)
    inside = (a2 < 0.0) & (b0 > 0.0)  # concave: crossings for b < b0 only
    if inside.any():
        u0 = _b_cdf(b0[inside], n, m)[:, None]
        u = u0 * s
        vals = _cross_given_b(th[inside, None], ta[inside, None], _b_quantile(u, 1.0 - u, n, m), n, m)
        res[inside] = (vals @ ds) * u0[:, 0]
    outside = a2 >= 0.0  # convex: every b below b0 crosses, and some above
    if outside.any():
        lo = np.maximum(b0[outside], 0.0)
        u_lo, up_lo = _b_cdf(lo, n, m)[:, None], _b_sf(lo, n, m)[:, None]
        u, up = u_lo + up_lo * s, up_lo * (1.0 - s)
        vals = _cross_given_b(th[outside, None], ta[outside, None], _b_quantile(u, up, n, m), n, m)
        res[outside] = u_lo[:, 0] + (vals @ ds) * up_lo[:, 0]
    out[live] = res
    return out


def _quadratic(theta, tau, b, n: int, m: int):
    """|t_{k+1}| >= tau  <=>  a2 a^2 + a1 a + a0 >= 0 in a = A / R; also disc at b = 0 (or at b)."""
    n1 = n + m
    s0, c0, t2 = np.sin(theta), np.cos(theta), tau * tau
    a2 = (n1 - 1.0) - t2 * n / m
    a1 = 2.0 * math.sqrt(n) * s0 * ((n1 - 1.0) + t2)
    a0 = ((n1 - 1.0) * n - t2 * m) * s0 * s0 - t2 * n1 * (c0 * c0 + b)
    return a2, a1, a0, a1 * a1 - 4.0 * a2 * a0


def _cross_given_b(theta, tau, b, n: int, m: int) -> np.ndarray:
    theta, tau, b = np.broadcast_arrays(theta, tau, b)
    a2, a1, a0, disc = _quadratic(theta, tau, b, n, m)
    root = np.sqrt(np.maximum(disc, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        q = -0.5 * (a1 + np.copysign(root, a1))
        r1, r2 = q / a2, a0 / q  # stable roots
    concave, roots = a2 < 0.0, disc > 0.0
    out = np.where(concave, 0.0, 1.0)  # no roots: never / always across
    scale = np.sqrt(m * (1.0 + b[roots]) / (n + m - 1.0))
    lo = np.nan_to_num(np.minimum(r1, r2)[roots] / scale)
    hi = np.nan_to_num(np.maximum(r1, r2)[roots] / scale)
    tail_lo, tail_hi = stdtr(n + m - 1.0, -np.abs(lo)), stdtr(n + m - 1.0, -np.abs(hi))  # P(T > |x|)
    cdf_lo = np.where(lo < 0.0, tail_lo, 1.0 - tail_lo)
    sf_hi = np.where(hi > 0.0, tail_hi, 1.0 - tail_hi)
    # between the roots, from the tails so that far-out intervals keep their digits
    between = np.where(lo > 0.0, tail_lo - tail_hi, np.where(hi < 0.0, tail_hi - tail_lo, 1.0 - cdf_lo - sf_hi))
    out[roots] = np.where(concave[roots], between, cdf_lo + sf_hi)
    return out


def _b_cdf(b: np.ndarray, n: int, m: int) -> np.ndarray:
    return betainc((m - 1) / 2.0, n / 2.0, b / (1.0 + b))


def _b_sf(b: np.ndarray, n: int, m: int) -> np.ndarray:
    return betainc(n / 2.0, (m - 1) / 2.0, 1.0 / (1.0 + b))


def _b_quantile(u: np.ndarray, upper: np.ndarray, n: int, m: int) -> np.ndarray:
    """b with P(B/R^2 <= b) = u (upper = 1 - u, given separately for precision near 1)."""
    z, log_b = _quantile_table(n, m)
    x = np.log(u) - np.log(upper)
    y = np.interp(x, z, log_b)
    y = np.where(x < z[0], log_b[0] + 2.0 / (m - 1) * (x - z[0]), y)  # cdf ~ b^((m-1)/2) at 0
    y = np.where(x > z[-1], log_b[-1] + 2.0 / n * (x - z[-1]), y)  # sf ~ b^(-n/2) at infinity
    return np.exp(y)


@lru_cache(maxsize=64)
def _quantile_table(n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """log b against logit(u) on a fine grid (both tails are straight lines in these coordinates)."""
    z = np.linspace(-60.0, 60.0, 4801)
    lower, upper = 1.0 / (1.0 + np.exp(-z)), 1.0 / (1.0 + np.exp(z))
    f = np.where(z < 0.0, fdtri(m - 1, n, np.minimum(lower, 0.5)), 1.0 / fdtri(n, m - 1, np.minimum(upper, 0.5)))
    return z, np.log((m - 1) / n * f)
