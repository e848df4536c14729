"""Per-group statistics over seeds and the test of a group against its baseline. Pure functions.

`summarize` gives n, mean, sample std (ddof=1) and the 95% CI half-width with Student's t.
`compare` gives the difference to a baseline, its 95% CI and a two-sided p-value. Pairing: runs of
the same seed share the data order and init noise, so a group is compared with its baseline on the
seeds both ran, when there are at least 2 (a paired t-test on those per-seed differences; the rest
of either group's seeds do not enter the comparison); Welch's unequal-variance t-test over all seeds
only when fewer than 2 are common. Groups of different sizes are common in a sequential design: an
arm that stopped at 6 seeds meets a baseline that ran on to 8, and the paired test on the 6 common
seeds is the one the design decided with (analysis.sequential.p_value). Δ is then the mean of the
`n_pairs` per-seed differences - mean(group) - mean(baseline) over the common seeds, not the
difference of the two rows' own means. The CI is scipy's `confidence_interval()` of the same test,
so CI and p always agree (the CI excludes 0 iff p < 0.05).
`adjust_p` corrects the p-values of one table's comparisons for multiplicity (Holm by default).
Undefined quantities are NaN, never 0.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

PAIRED = "paired"
WELCH = "welch"
UNDEFINED = "n/a"
NAN = float("nan")
MIN_SEEDS = 3  # below this a paired test has 1 degree of freedom: flagged in every table
MIN_PAIRS = 2  # common seeds needed for the paired test (1 degree of freedom)
ADJUST_METHODS = {"holm": "holm", "bh": "fdr_bh", "none": None}  # --adjust name -> statsmodels method


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float  # sample std, ddof=1; NaN for n < 2
    ci95: float  # half-width t_{0.975, n-1} * std / sqrt(n); NaN for n < 2


@dataclass(frozen=True)
class Comparison:
    delta: float  # mean(group) - mean(baseline), over the common seeds when paired
    delta_pct: float  # 100 * delta / mean(baseline), the baseline's mean over the same seeds
    p_value: float
    test: str  # PAIRED, WELCH or UNDEFINED
    ci_low: float = NAN  # 95% CI of delta, from the same test as p_value
    ci_high: float = NAN
    n_pairs: int = 0  # seeds the paired test ran on (0: not paired)


def summarize(values: Sequence[float]) -> Summary:
    x = _finite(values)
    n = len(x)
    if n == 0:
        return Summary(0, NAN, NAN, NAN)
    mean = float(np.mean(x))
    if n < 2:
        return Summary(1, mean, NAN, NAN)
    std = float(np.std(x, ddof=1))
    half = _t975(n - 1) * std / math.sqrt(n)
    return Summary(n, mean, std, half)


@functools.lru_cache(maxsize=256)
def _t975(dof: int) -> float:
    return float(sps.t.ppf(0.975, dof))


def compare(group: Mapping[object, float], baseline: Mapping[object, float]) -> Comparison:
    """Compare a group's per-seed values with the baseline's; both map seed -> value.

    Seeds are keys, so a group cannot hold one seed twice; callers with unknown seeds pass unique
    placeholders, which never match and so fall back to Welch. Values that are not finite (a run
    without a final loss) take no part, so their seeds are not common.
    """
    return compare_many([(group, baseline)])[0]


def compare_many(pairs: Sequence[tuple[Mapping[object, float], Mapping[object, float]]]) -> list[Comparison]:
    """`compare` of each (group, baseline) pair. The t-tests of pairs with the same test and sample
    sizes run as one vectorised scipy call (a table of 10,000 rows makes ~10 calls, not 10,000)."""
    out: list[Comparison | None] = [None] * len(pairs)
    batches: dict[tuple, list[tuple[int, float, float, list[float], list[float]]]] = {}
    for k, (group, baseline) in enumerate(pairs):
        g = {s: v for s, v in group.items() if _is_finite(v)}
        b = {s: v for s, v in baseline.items() if _is_finite(v)}
        if not g or not b:
            out[k] = Comparison(NAN, NAN, NAN, UNDEFINED)
            continue
        seeds = common_seeds(g, b)
        if len(seeds) >= MIN_PAIRS:
            g, b = {s: g[s] for s in seeds}, {s: b[s] for s in seeds}  # Δ on the pairs, as the test
        g_mean, b_mean = float(np.mean(list(g.values()))), float(np.mean(list(b.values())))
        delta = g_mean - b_mean
        delta_pct = 100.0 * delta / b_mean if b_mean != 0 else NAN
        if len(seeds) >= MIN_PAIRS:
            batch = (PAIRED, len(seeds)), ([g[s] for s in seeds], [b[s] for s in seeds])
        elif len(g) >= 2 and len(b) >= 2:
            batch = (WELCH, len(g), len(b)), (list(g.values()), list(b.values()))
        else:
            out[k] = Comparison(delta, delta_pct, NAN, UNDEFINED)
            continue
        batches.setdefault(batch[0], []).append((k, delta, delta_pct, *batch[1]))
    for (test, *_), items in batches.items():
        p, lo, hi = _t_tests(test, np.array([x for *_, x, _ in items], float), np.array([y for *_, y in items], float))
        for row, (k, delta, delta_pct, x, _) in enumerate(items):
            pairs_n = len(x) if test == PAIRED else 0
            out[k] = Comparison(delta, delta_pct, float(p[row]), test, float(lo[row]), float(hi[row]), pairs_n)
    return out  # type: ignore[return-value]


def common_seeds(group_seeds: Iterable[object], baseline_seeds: Iterable[object]) -> list[object]:
    """The seeds both ran, in one fixed order (by repr: seeds may be ints or placeholders)."""
    return sorted(set(group_seeds) & set(baseline_seeds), key=repr)


def is_paired(group_seeds: Iterable[object], baseline_seeds: Iterable[object]) -> bool:
    """The paired test applies: at least MIN_PAIRS seeds in common (it runs on those)."""
    return len(common_seeds(group_seeds, baseline_seeds)) >= MIN_PAIRS


def adjust_p(p_values: Sequence[float], method: str = "holm") -> list[float]:
    """Multiplicity-adjusted p-values of one family of comparisons; NaN entries stay NaN and are
    not counted in the family. `method`: holm (family-wise error), bh (false discovery rate), none."""
    if method not in ADJUST_METHODS:
        raise ValueError(f"adjust method {method!r}; use one of {', '.join(ADJUST_METHODS)}")
    out = [float(p) for p in p_values]
    idx = [i for i, p in enumerate(out) if math.isfinite(p)]
    sm_method = ADJUST_METHODS[method]
    if not idx or sm_method is None:
        return out
    from statsmodels.stats.multitest import multipletests

    adjusted = np.asarray(multipletests([out[i] for i in idx], method=sm_method)[1], dtype=float)
    for i, p in zip(idx, adjusted.tolist(), strict=True):
        out[i] = float(p)
    return out


def _t_tests(test: str, g: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(p, CI low, CI high) per row of `g` vs the same row of `b` (one comparison per row)."""
    with warnings.catch_warnings():
        # Zero-variance inputs make scipy warn and return NaN; NaN is the answer we want.
        warnings.simplefilter("ignore", RuntimeWarning)
        if test == PAIRED:
            res = sps.ttest_rel(g, b, axis=1)
        else:
            res = sps.ttest_ind(g, b, axis=1, equal_var=False)
        ci = res.confidence_interval(0.95)  # type: ignore[attr-defined]
    return (np.atleast_1d(res.pvalue), np.atleast_1d(ci.low), np.atleast_1d(ci.high))  # type: ignore[attr-defined]


def _finite(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values if _is_finite(v)]


def _is_finite(v: object) -> bool:
    try:
        return math.isfinite(float(v))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
