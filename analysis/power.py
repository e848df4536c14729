"""Seed planning: how many seeds per configuration a stage needs to detect a given loss difference,
and the smallest difference it can detect now. Pure.

Design. Seed-matched rows (the paired test of the tables) are planned as a one-sample t-test on the
per-seed differences: sd = the pooled sample SD of the differences over the stage's paired
comparisons. Otherwise, as Welch is planned in practice, a two-sample t-test with equal group sizes
and sd = the pooled within-configuration SD.

Level. The tables adjust p over the m comparisons of a stage (Holm). Holm's first step is
Bonferroni's α/m and no later step is stricter, so planning at α/m is the conservative choice
(slightly more seeds than Holm may end up needing). A spec with sequential seeds is planned for its
group-sequential design instead (analysis.seq_power: the looks, the spending and Holm's start level).

Power (two-sided, statsmodels' noncentral-t power functions): with effect d = Δ / sd, paired:
df = n - 1, noncentrality λ = d·√n; unpaired: df = 2n - 2, λ = d·√(n/2); power = P(T' > t_{1-α'/2})
+ P(T' < -t_{1-α'/2}) with T' ~ t(df, λ). Each tail is statsmodels' one-sided power at α'/2; the far
tail is below 1e-15 where scipy's noncentral t returns NaN for it, and counts as 0 there (the gate
effects are tens of seed-SDs, a regime in which statsmodels' own two-sided power is NaN).
Seeds needed = the smallest n >= 2 whose power reaches the target.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize
from scipy import stats as sps

from analysis.comparisons import find_baselines
from analysis.stats import is_paired
from analysis.table import SEED_VALUES, STAT_COLUMNS

MAX_SEEDS = 10_000


@dataclass(frozen=True)
class Spread:
    sd: float  # SD of per-seed differences (paired) or within-configuration SD (unpaired)
    df: int  # degrees of freedom of the pooled estimate; 0 when given by hand
    paired: bool


def pooled_spread(comparisons: Sequence[tuple[Mapping[object, float], Mapping[object, float]]]) -> Spread:
    """(group values, baseline values) by seed for each comparison of a stage -> the pooled SD."""
    paired = [(g, b) for g, b in comparisons if is_paired(g, b)]
    if paired:
        samples = [[g[s] - b[s] for s in g if s in b] for g, b in paired]  # the common seeds (stats.compare)
    else:
        groups = {id(x): x for pair in comparisons for x in pair}  # a shared baseline counts once
        samples = [list(x.values()) for x in groups.values()]
    dfs = [len(x) - 1 for x in samples if len(x) >= 2]
    if not dfs or sum(dfs) == 0:
        return Spread(math.nan, 0, bool(paired))
    ss = sum(float(np.var(x, ddof=1)) * (len(x) - 1) for x in samples if len(x) >= 2)
    return Spread(math.sqrt(ss / sum(dfs)), sum(dfs), bool(paired))


def sd_upper_bound(spread: Spread, confidence: float = 0.8) -> float:
    """One-sided upper confidence bound of sd from its chi-square distribution with `df`."""
    if spread.df < 1:
        return math.nan
    return spread.sd * math.sqrt(spread.df / float(sps.chi2.ppf(1 - confidence, spread.df)))


def power(effect_size: float, n: int, alpha: float, *, paired: bool) -> float:
    """Two-sided power of the t-test at level `alpha` with n seeds per configuration."""
    from statsmodels.stats.power import TTestIndPower, TTestPower

    if paired:
        tails = [TTestPower().power(effect_size=effect_size, nobs=n, alpha=alpha / 2, alternative=a)
                 for a in ("larger", "smaller")]
    else:
        tails = [TTestIndPower().power(effect_size=effect_size, nobs1=n, alpha=alpha / 2, ratio=1,
                                       alternative=a) for a in ("larger", "smaller")]
    return float(sum(0.0 if math.isnan(float(t)) else float(t) for t in tails))


def seeds_needed(effect: float, sd: float, alpha: float, target: float, *, paired: bool) -> int | None:
    """Smallest n >= 2 reaching `target` power for a loss difference `effect`; None past MAX_SEEDS."""
    d = abs(effect) / sd
    enough = lambda n: power(d, n, alpha, paired=paired) >= target  # power grows with n
    lo, hi = 1, 2
    while not enough(hi):
        if hi >= MAX_SEEDS:
            return None
        lo, hi = hi, min(2 * hi, MAX_SEEDS)
    while hi - lo > 1:  # lo fails (or is 1), hi passes
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid, hi)
    return hi


def minimal_effect(sd: float, n: int, alpha: float, target: float, *, paired: bool) -> float:
    """The loss difference detected with `target` power at n seeds (the minimal detectable effect)."""
    f = lambda d: power(d, n, alpha, paired=paired) - target
    hi = 1.0
    while f(hi) < 0:
        hi *= 2
        if hi > 1e9:
            return math.inf
    root = optimize.brentq(f, 1e-9, hi, xtol=1e-10)
    return float(root) * sd  # type: ignore[arg-type]  # brentq returns a float unless full_output


@dataclass(frozen=True)
class Plan:
    comparisons: int
    alpha_each: float  # alpha / comparisons
    effect: float  # in loss
    seeds: int | None  # needed for `effect`
    seeds_upper: int | None  # the same with sd at its 80% upper bound
    n_now: int
    mde: float  # minimal detectable effect at n_now, in loss


def plan(spread: Spread, *, baseline_mean: float, effect_pct: float, alpha: float, target: float,
         comparisons: int, n_now: int) -> Plan:
    m = max(comparisons, 1)
    a = alpha / m
    effect = baseline_mean * effect_pct / 100.0
    seeds = seeds_needed(effect, spread.sd, a, target, paired=spread.paired)
    upper = sd_upper_bound(spread)
    seeds_upper = seeds_needed(effect, upper, a, target, paired=spread.paired) if math.isfinite(upper) else None
    mde = minimal_effect(spread.sd, n_now, a, target, paired=spread.paired) if n_now >= 2 else math.inf
    return Plan(m, a, effect, seeds, seeds_upper, n_now, mde)


def stage_inputs(table: pd.DataFrame) -> tuple[list[tuple[dict, dict]], float, int]:
    """From stage_table(..., per_seed=True): the (group, baseline) seed values of each comparison,
    the baselines' mean final loss, and the seeds per configuration now (the fewest in a comparison)."""
    keys = [c for c in table.columns if c not in STAT_COLUMNS and c not in ("stage", SEED_VALUES)]
    baselines = find_baselines(table, keys)
    pairs = [(i, j) for i, j in baselines.items() if j is not None and j != i]
    values = [(dict(table.at[i, SEED_VALUES]), dict(table.at[j, SEED_VALUES])) for i, j in pairs]  # type: ignore[arg-type]
    values = [(g, b) for g, b in values if g and b]
    base_rows = sorted({j for _, j in pairs}, key=str)
    base_mean = float(np.mean([table.at[j, "final_val_loss"] for j in base_rows])) if base_rows else math.nan
    n_now = min((min(len(g), len(b)) for g, b in values), default=0)
    return values, base_mean, n_now


def header(label: str, spread: Spread, *, comparisons: int, n_now: int, given_sd: bool) -> str:
    """The first two lines of `gatesweep power`: the stage's comparisons and the spread planned with."""
    design = "paired (the seeds both ran: one-sample t on per-seed differences)" if spread.paired else \
        "unpaired (two-sample t, equal seeds per configuration)"
    now = f"{n_now} seed pairs in the smallest comparison now" if spread.paired else \
        f"{n_now} seeds per configuration now"
    what = "SD of per-seed differences" if spread.paired else "within-configuration SD"
    source = "given with --sd" if given_sd else f"pooled over the stage's comparisons, {spread.df} df"
    return (f"{label}: {comparisons} comparison(s), {design}; {now}\n"
            f"spread: {what} = {spread.sd:.5f} ({source})")


def describe(label: str, spread: Spread, p: Plan, *, effect_pct: float, alpha: float, target: float,
             given_sd: bool) -> str:
    """The `gatesweep power` report: one fact per line, the seed count in 'N seeds'."""
    need = f"{p.seeds} seeds" if p.seeds else f"more than {MAX_SEEDS} seeds"
    lines = [
        header(label, spread, comparisons=p.comparisons, n_now=p.n_now, given_sd=given_sd),
        f"level: alpha {alpha:g} / {p.comparisons} = {p.alpha_each:.4g} per comparison (Bonferroni, the "
        f"conservative side of Holm); power {target:g}",
        f"to detect {effect_pct:g}% of the baseline loss ({p.effect:.4f} of {p.effect / effect_pct * 100:.4f}): "
        f"{need} per configuration",
    ]
    if not given_sd and p.seeds_upper is not None:
        lines.append(f"  with the spread at its 80% upper bound ({sd_upper_bound(spread):.5f}; the estimate has "
                     f"only {spread.df} df): {p.seeds_upper} seeds")
    if p.n_now >= 2:
        pct = 100 * p.mde / (p.effect / effect_pct * 100)
        lines.append(f"at the current {p.n_now} seeds: minimal detectable effect {p.mde:.4f} ({pct:.2f}% of the "
                     "baseline loss)")
    return "\n".join(lines) + "\n"
