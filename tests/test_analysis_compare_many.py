"""stats.compare_many (the stage table's batched t-tests) gives, pair by pair, what scipy's own 1-D
tests give: paired t on seed-matched values, Welch otherwise, n/a below two values a side."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from analysis.stats import PAIRED, UNDEFINED, WELCH, compare, compare_many
from analysis.table import stage_table


def reference(group: dict, baseline: dict) -> tuple:
    """Independent of analysis.stats: scipy called once per pair on plain lists."""
    g = {k: v for k, v in group.items() if math.isfinite(v)}
    b = {k: v for k, v in baseline.items() if math.isfinite(v)}
    if not g or not b:
        return (math.nan, math.nan, math.nan, UNDEFINED, math.nan, math.nan)
    delta = float(np.mean(list(g.values())) - np.mean(list(b.values())))
    pct = 100 * delta / float(np.mean(list(b.values())))
    seeds = [s for s in g if s in b]  # paired on the seeds both ran, when there are 2 or more
    if len(seeds) >= 2:
        delta = float(np.mean([g[s] for s in seeds]) - np.mean([b[s] for s in seeds]))  # = mean of differences
        pct = 100 * delta / float(np.mean([b[s] for s in seeds]))
        res, test = sps.ttest_rel([g[s] for s in seeds], [b[s] for s in seeds]), PAIRED
    elif len(g) >= 2 and len(b) >= 2:
        res, test = sps.ttest_ind(list(g.values()), list(b.values()), equal_var=False), WELCH
    else:
        return (delta, pct, math.nan, UNDEFINED, math.nan, math.nan)
    ci = res.confidence_interval(0.95)
    return (delta, pct, float(res.pvalue), test, float(ci.low), float(ci.high))


def pairs(n: int, seed: int = 0) -> list[tuple[dict, dict]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(1, 6))
        base = {s: 3.3 + rng.normal(0, 0.01) for s in range(k)}
        kind = rng.integers(0, 4)
        if kind == 0:  # paired
            group = {s: v - 0.01 + rng.normal(0, 0.005) for s, v in base.items()}
        elif kind == 1:  # other seeds: Welch; or some common seeds: paired on those
            shift = int(rng.choice([100, 1, 2]))
            group = {s + shift: 3.29 + rng.normal(0, 0.01) for s in range(int(rng.integers(1, 5)))}
        elif kind == 2:  # a NaN seed breaks the pairing
            group = {s: (math.nan if s == 0 else v - 0.01) for s, v in base.items()}
        else:  # constant differences: zero variance, scipy's NaN
            group = {s: v - 0.01 for s, v in base.items()}
        out.append((group, base))
    return out


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # scipy on the zero-variance pairs
def test_batched_comparisons_match_scipy_pair_by_pair():
    ps = pairs(400)
    got = compare_many(ps)
    tests = {c.test for c in got}
    assert tests == {PAIRED, WELCH, UNDEFINED}
    for (g, b), c in zip(ps, got, strict=True):
        want = reference(g, b)
        have = (c.delta, c.delta_pct, c.p_value, c.test, c.ci_low, c.ci_high)
        assert have[3] == want[3]
        for x, y in zip(have[:3] + have[4:], want[:3] + want[4:], strict=True):
            assert (math.isnan(x) and math.isnan(y)) or x == pytest.approx(y, rel=1e-12, abs=1e-15), (g, b, have, want)


def test_compare_is_compare_many_of_one_pair():
    for g, b in pairs(50, seed=1):
        one, many = compare(g, b), compare_many([(g, b)])[0]
        assert one.test == many.test and all(
            (math.isnan(x) and math.isnan(y)) or x == y
            for x, y in zip((one.delta, one.p_value, one.ci_low), (many.delta, many.p_value, many.ci_low), strict=True))
    assert compare_many([]) == []


def synthetic_runs(configs: int, seeds: int = 2) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`configs` configurations (4 gates x learning rates), `seeds` runs each, 3-point histories."""
    rng = np.random.default_rng(0)
    rows, hist = [], []
    for c in range(configs):
        gate, lr = ("none", "headwise", "elementwise", "const")[c % 4], 0.001 * (1 + c // 4)
        for s in range(seeds):
            rid = f"r{c}-{s}"
            loss, ms = 3.3 - 0.01 * (gate != "none") + rng.normal(0, 0.003), 60_000 + rng.normal(0, 500)
            rows.append({"mlflow_run_id": rid, "seed": s, "status": "FINISHED", "attn_gate": gate, "learning_rate": lr,
                         "num_iterations": 100, "final_val_loss": loss, "train_time_ms": ms})
            hist += [(rid, "val_loss", st, loss + (100 - st) / 100) for st in (0, 50, 100)]
            hist += [(rid, "train_time_ms", st, ms * st / 100) for st in (0, 50, 100)]
    return pd.DataFrame(rows), pd.DataFrame(hist, columns=["mlflow_run_id", "key", "step", "value"])


def test_the_stage_table_neither_iterates_rows_nor_tests_row_by_row(monkeypatch):
    """#16: the table grew as rows x configurations (iterrows, a mask per group) and ran scipy once
    per row; now one pass over the rows and a few vectorised tests per table."""
    runs, hist = synthetic_runs(400)
    calls = {"ttest": 0}
    for name in ("ttest_rel", "ttest_ind"):
        real = getattr(sps, name)

        def counted(*a, real=real, **k):
            calls["ttest"] += 1
            return real(*a, **k)
        monkeypatch.setattr(sps, name, counted)

    def no_iterrows(self):
        raise AssertionError("DataFrame.iterrows in the stage table")
    monkeypatch.setattr(pd.DataFrame, "iterrows", no_iterrows)
    table = stage_table(runs, histories=hist)
    assert len(table) == 400 and table["delta"].notna().sum() == 300 and table["delta_time"].notna().sum() == 300
    assert calls["ttest"] <= 4, calls  # paired tests of 2 seeds: one call for Δ, one for the time-matched Δ
