"""Power of the sequential-seeds design for one comparison, and the most seeds a spec needs. Pure.

The rule (analysis.sequential): at look k the paired t-test over the first n_k seeds decides when its p
is <= the level q_k(a) of analysis.seq_bounds.t_levels. Holm over the spec's m comparisons starts each
at a = alpha / m and only raises levels as others are decided, so the power at alpha / m is what every
comparison is guaranteed (exact when the others have no effect); at alpha it is the best case.

Method (exact up to quasi-Monte Carlo error, ~1e-4). The per-seed differences are d_i = delta + e_i, e_i
~ N(0, 1) (delta = the effect in SDs of the differences). Cut the seeds into the blocks between looks:
the within-block sums of squares B_j ~ chi2(m_j - 1), and the contrasts between a block and the seeds
before it, u_j ~ N(0, 1), are independent of each other and of the total S_K ~ N(n_K delta, n_K), and
free of delta. Given them, every look's sum is S_k = (n_k / n_K) S_K + o_k (o_k from the u's) and its
within sum of squares V_k = sum B + sum u^2 is fixed, so "|t_k| >= c_k" is "S_K outside an interval":
the first exit of each look, in either direction, is a normal probability in S_K. The shapes (u, B)
are integrated by scrambled Sobol points with a fixed seed: deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from scipy.special import ndtr, stdtrit
from scipy.stats import chi2, norm, qmc

from analysis.seq_bounds import t_levels

MAX_SEQ_SEEDS = 64  # the search for the most seeds stops here (the levels' cost grows with the looks)
_POINTS = 2**14
_SEED = 20240521


@dataclass(frozen=True)
class SeqPower:
    looks: tuple[int, ...]
    alpha: float  # the comparison's level (alpha / m at Holm's first step)
    power: float  # P(decided, in the direction of the effect)
    wrong: float  # P(decided in the other direction)
    stop: tuple[float, ...]  # P(the comparison stops at look k): decided there, or undecided at the last

    @property
    def expected_seeds(self) -> float:
        return float(sum(n * p for n, p in zip(self.looks, self.stop)))


def sequential_power(effect_size: float, looks: Sequence[int], alpha: float, spending: str = "obf") -> SeqPower:
    """Power of the group-sequential paired t-test at `looks` for an effect of `effect_size` SDs of
    the per-seed differences (its sign does not matter). One look: the fixed-sample paired t-test."""
    looks = tuple(int(n) for n in looks)
    levels = t_levels(looks, alpha, spending)
    crit = np.array([math.inf if q <= 0 else -float(stdtrit(n - 1, q / 2.0)) for n, q in zip(looks, levels)])
    offset, within = _shapes(looks)  # (points, K) each
    n = np.array(looks, dtype=float)
    big = n[-1]
    half = crit * np.sqrt(n * within / (n - 1.0))  # |S_k| >= half_k decides at look k
    lo, hi = big / n * (-half - offset), big / n * (half - offset)  # ... i.e. S_K outside [lo, hi]
    lo, hi = np.maximum.accumulate(lo, axis=1), np.minimum.accumulate(hi, axis=1)  # still running after k
    mean, sd = big * abs(effect_size), math.sqrt(big)
    cdf = lambda x: ndtr((x - mean) / sd)  # noqa: E731  # S_K ~ N(n_K delta, n_K)
    running = np.clip(cdf(hi) - cdf(lo), 0.0, None)  # (points, K); nested intervals
    prev_lo = np.concatenate([np.full((len(lo), 1), -np.inf), lo[:, :-1]], axis=1)
    prev_hi = np.concatenate([np.full((len(hi), 1), np.inf), hi[:, :-1]], axis=1)
    up = np.clip(cdf(prev_hi) - cdf(np.maximum(hi, prev_lo)), 0.0, None)  # first exit at k, upward
    down = np.clip(cdf(np.minimum(lo, prev_hi)) - cdf(prev_lo), 0.0, None)
    decided = (up + down).mean(axis=0)
    stop = decided.copy()
    stop[-1] += float(running[:, -1].mean())
    return SeqPower(looks, alpha, float(up.sum(axis=1).mean()), float(down.sum(axis=1).mean()),
                    tuple(float(x) for x in stop))


@lru_cache(maxsize=64)
def _shapes(looks: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Per quasi-random point: o_k (S_k - (n_k / n_K) S_K) and V_k (within sum of squares) at each look.
    Free of the effect, so cached per design (read-only arrays)."""
    blocks = np.diff([0, *looks])
    dfs = [int(m) - 1 for m in blocks]
    chis = [j for j, df in enumerate(dfs) if df > 0]
    dims = len(looks) - 1 + len(chis)  # >= 1: the first look has 2 seeds or more (t_levels checks)
    u = qmc.Sobol(dims, scramble=True, rng=np.random.default_rng(_SEED)).random(_POINTS)
    u = np.clip(u, 1e-12, 1.0 - 1e-12)
    contrast = norm.ppf(u[:, : len(looks) - 1])  # u_j for blocks 2..K
    within = np.zeros((_POINTS, len(looks)))
    for i, j in enumerate(chis):
        within[:, j] = chi2.ppf(u[:, len(looks) - 1 + i], dfs[j])
    within[:, 1:] += contrast**2
    within = np.cumsum(within, axis=1)
    offset = np.zeros((_POINTS, len(looks)))
    for k in range(len(looks) - 1, 0, -1):  # S_{k-1} = (n_{k-1} / n_k) S_k + sqrt(n_{k-1} m_k / n_k) u_k
        r = math.sqrt(looks[k - 1] * blocks[k] / looks[k])
        offset[:, k - 1] = looks[k - 1] / looks[k] * offset[:, k] + r * contrast[:, k - 1]
    offset.flags.writeable = within.flags.writeable = False
    return offset, within


def schedule(initial: int, per_look: int, top: int) -> tuple[int, ...]:
    """The looks of a spec's plan (sweeps.sequential.Sequential.looks) with `top` seeds at most."""
    looks = [initial]
    while looks[-1] < top:
        looks.append(min(looks[-1] + per_look, top))
    return tuple(looks)


def seeds_needed(effect_size: float, alpha: float, target: float, *, initial: int, per_look: int,
                 spending: str, start: int = 0) -> SeqPower | None:
    """The design with the fewest max seeds (looks by the spec's rule) whose power reaches `target`;
    None past MAX_SEQ_SEEDS. `start`: the smallest max worth trying (the fixed-sample n: at max N the
    sequential test has no more power than the fixed-sample test of N seeds)."""
    for top in range(max(initial + 1, start), MAX_SEQ_SEEDS + 1):
        result = sequential_power(effect_size, schedule(initial, per_look, top), alpha, spending)
        if result.power >= target:
            return result
    return None


# ---------------------------------------------------------------- `gatesweep power` on a sequential spec
@dataclass(frozen=True)
class SeqPlan:
    comparisons: int
    alpha_each: float  # alpha / comparisons: Holm's first step
    effect: float  # in loss
    sd: float  # SD of the per-seed differences planned with
    sd_upper: float  # its 80% upper confidence bound (NaN when given by hand)
    fixed: int | None  # seeds of the fixed-sample paired t-test at alpha_each
    needed: SeqPower | None  # the fewest max seeds (the spec's initial and per_look) reaching the target
    needed_upper: SeqPower | None  # the same with the SD at its 80% upper bound
    spec: SeqPower  # the spec's own design, at alpha_each
    spec_best: SeqPower  # ... at alpha (every other comparison decided first)
    mde: float  # the spec's design's minimal detectable effect, in loss


def plan_sequential(sd: float, sd_upper: float, *, baseline_mean: float, effect_pct: float, alpha: float,
                    target: float, comparisons: int, initial: int, per_look: int, top: int,
                    spending: str) -> SeqPlan:
    from analysis.power import seeds_needed as fixed_seeds

    m = max(comparisons, 1)
    a = alpha / m
    effect = baseline_mean * effect_pct / 100.0
    d = abs(effect) / sd

    def needed(spread: float) -> tuple[int | None, SeqPower | None]:
        # the sequential test at max N has at most the power of the fixed-sample t-test at N (the latter
        # is the most powerful scale- and sign-invariant test), so the search starts at the fixed n
        n = fixed_seeds(effect, spread, a, target, paired=True)
        found = seeds_needed(abs(effect) / spread, a, target, initial=initial, per_look=per_look,
                             spending=spending, start=n) if n else None
        return n, found

    fixed, found = needed(sd)
    upper = needed(sd_upper)[1] if math.isfinite(sd_upper) else None
    looks = schedule(initial, per_look, top)
    return SeqPlan(m, a, effect, sd, sd_upper, fixed, found, upper, sequential_power(d, looks, a, spending),
                   sequential_power(d, looks, alpha, spending), _mde(looks, a, spending, target) * sd)


def _mde(looks: tuple[int, ...], alpha: float, spending: str, target: float) -> float:
    """Effect (in SDs of the differences) that the design decides with `target` power."""
    from scipy import optimize

    f = lambda d: sequential_power(d, looks, alpha, spending).power - target  # noqa: E731
    hi = 1.0
    while f(hi) < 0:
        hi *= 2.0
        if hi > 1e6:
            return math.inf
    return float(optimize.brentq(f, 0.0, hi, xtol=1e-6))  # type: ignore[arg-type]


def report(label: str, spread: Any, design: Any, *, comparisons: int, n_now: int, base_mean: float,
           effect_pct: float, target: float, given_sd: bool) -> str:
    """`gatesweep power` on a sequential spec. spread: analysis.power.Spread; design: the spec's
    sweeps.sequential.Sequential (initial, per_look, max, alpha, spending)."""
    from analysis.power import header, sd_upper_bound

    sd, upper = spread.sd, sd_upper_bound(spread)
    head = header(label, spread, comparisons=comparisons, n_now=n_now, given_sd=given_sd)
    if not spread.paired:  # the design pairs by seed; without matched seeds yet, a difference of 2 runs
        sd, upper = math.sqrt(2.0) * sd, math.sqrt(2.0) * upper
        head += f"\n  planned as paired with the SD of a difference of two independent runs: {sd:.5f}"
    plan = plan_sequential(sd, upper, baseline_mean=base_mean, effect_pct=effect_pct, alpha=design.alpha,
                           target=target, comparisons=comparisons, initial=design.initial,
                           per_look=design.per_look, top=design.max, spending=design.spending)
    return head + "\n" + describe_sequential(plan, effect_pct=effect_pct, alpha=design.alpha, target=target,
                                              spending=design.spending)


def describe_sequential(p: SeqPlan, *, effect_pct: float, alpha: float, target: float, spending: str) -> str:
    """The sequential lines of `gatesweep power` (after its header and spread lines)."""
    name = {"obf": "O'Brien-Fleming", "pocock": "Pocock"}[spending]
    base = p.effect / effect_pct * 100
    looks = ", ".join(map(str, p.spec.looks))
    lines = [
        f"level: sequential seeds, looks {looks} ({name}-type alpha spending, paired t levels), Holm over "
        f"{p.comparisons} comparison(s): each starts at alpha {alpha:g} / {p.comparisons} = {p.alpha_each:.4g} "
        f"(a decided comparison's alpha goes to the others, so this is the least each gets); power {target:g}",
    ]
    if p.needed is None:
        need = f"more than {MAX_SEQ_SEEDS} seeds per configuration (the search stops there)"
    else:
        inflation = f": inflation {p.needed.looks[-1] / p.fixed:.2f}" if p.fixed else ""
        need = (f"max {p.needed.looks[-1]} seeds per configuration (looks {', '.join(map(str, p.needed.looks))}; "
                f"a fixed-sample test at this level needs {p.fixed}{inflation}), "
                f"{p.needed.expected_seeds:.1f} expected when the effect is real")
    lines.append(f"to detect {effect_pct:g}% of the baseline loss ({p.effect:.4f} of {base:.4f}): {need}")
    if p.needed_upper is not None:
        lines.append(f"  with the spread at its 80% upper bound ({p.sd_upper:.5f}): max {p.needed_upper.looks[-1]} seeds")
    pct = 100 * p.mde / base
    lines.append(f"the spec's design (max {p.spec.looks[-1]} seeds): power {p.spec.power:.3f} for this effect "
                 f"({p.spec_best.power:.3f} once the other comparisons are decided), {p.spec.expected_seeds:.1f} "
                 f"seeds expected; minimal detectable effect {p.mde:.4f} ({pct:.2f}% of the baseline loss)")
    return "\n".join(lines) + "\n"
