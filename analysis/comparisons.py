"""Each stage-table row against its baseline: Δ with 95% CI, raw and adjusted p, time-matched Δ. Pure.

Baseline. For each row, the group with ``attn_gate == "none"`` that agrees on the other varying
keys except the gate columns (so learning rate and iterations must match); preferring the same
stage, then equal gate columns, then the first in row order. Found by a keyed lookup, one pass.

Multiplicity. `p_adj` adjusts the p-values of all comparison rows of one table together (rows with
a defined p; baseline rows have none), Holm by default; `p_time_adj` does the same for the
time-matched comparisons, a second family.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import pandas as pd

from analysis.stats import adjust_p, compare
from analysis.timematch import Curve, baseline_point, time_matched
from sweeps.select import clean

GATE_COLUMNS = frozenset({"attn_gate", "gate_pos", "gate_act"})
BASELINE_GATE = "none"
COMPARISON_COLUMNS = ("delta", "delta_ci_low", "delta_ci_high", "delta_pct", "p_value", "p_adj", "test")
TIME_COLUMNS = ("loss_at_base_time", "delta_time", "delta_time_ci_low", "delta_time_ci_high", "p_time",
                "p_time_adj", "time_note")
# per-row helper columns stage_table keeps while comparing: seed -> final loss / run id / train time
HELPER_COLUMNS = ("_values", "_runs", "_times")
_NAN5 = (math.nan,) * 5
SHARED_GPU = "runs shared a GPU (their train times are not speed figures; give --step-times)"


def add_comparisons(
    table: pd.DataFrame, keys: Sequence[str], *, adjust: str = "holm", curves: Mapping[str, Curve] | None = None,
    budget_keys: frozenset[str] = frozenset(),
) -> None:
    """Fill COMPARISON_COLUMNS and TIME_COLUMNS in place. `curves` None: time matching not asked for.
    `budget_keys`: keys a time_of budget set (a budget-matched design gives each gate its own
    num_iterations for the baseline's wall-clock), ignored when matching a row to its baseline."""
    baselines = find_baselines(table, [k for k in keys if k not in budget_keys])
    step = [_step_cells(table, i, baselines[i]) for i in table.index]
    table[list(COMPARISON_COLUMNS)] = pd.DataFrame(step, index=table.index, columns=list(COMPARISON_COLUMNS))
    table["p_adj"] = adjust_p(table["p_value"].tolist(), adjust)
    timed = [_time_cells(table, i, baselines[i], curves) for i in table.index]
    table[list(TIME_COLUMNS)] = pd.DataFrame(timed, index=table.index, columns=list(TIME_COLUMNS))
    table["p_time_adj"] = adjust_p(table["p_time"].tolist(), adjust)


def find_baselines(table: pd.DataFrame, keys: Sequence[str]) -> dict[Hashable, Hashable | None]:
    """Row index -> index of its baseline row (itself for a baseline), or None."""
    match_cols = [k for k in keys if k not in GATE_COLUMNS]
    gate_cols = [k for k in keys if k in GATE_COLUMNS and k != "attn_gate"]
    rows = {i: row for i, row in table.iterrows()}
    by_key: dict[tuple, list] = {}
    for j, row in rows.items():
        if clean(row["attn_gate"]) == BASELINE_GATE:
            by_key.setdefault(_key(row, match_cols), []).append(j)

    def preference(row: pd.Series, j) -> tuple:
        other = rows[j]
        return (other.get("stage") != row.get("stage"), _key(other, gate_cols) != _key(row, gate_cols), j)

    return {i: min(by_key.get(_key(row, match_cols), []), key=lambda j, r=row: preference(r, j), default=None)
            for i, row in rows.items()}


def _step_cells(table: pd.DataFrame, i, j) -> tuple:
    if j is None:
        return (*_NAN5[:4], math.nan, math.nan, "")
    if j == i:
        # a baseline whose runs all failed cannot anchor a comparison: say so in the row
        label = "baseline" if table.at[i, "n"] else "baseline (no finished runs)"
        return (*_NAN5[:4], math.nan, math.nan, label)
    c = compare(dict(table.at[i, "_values"]), dict(table.at[j, "_values"]))  # type: ignore[arg-type]
    return (c.delta, c.ci_low, c.ci_high, c.delta_pct, c.p_value, math.nan, c.test)


def _time_cells(table: pd.DataFrame, i, j, curves: Mapping[str, Curve] | None) -> tuple:
    if curves is None or j is None:
        return (*_NAN5, math.nan, "")
    if j != i and (table.at[i, "gpu_shared"] or table.at[j, "gpu_shared"]):
        return (*_NAN5, math.nan, SHARED_GPU)
    base = _baseline_points(table, j, curves)
    if j == i:
        return (_mean(base.values(), 1), *_NAN5[:4], math.nan, "")
    values, base_loss, note = time_matched(dict(table.at[i, "_runs"]), base, curves)  # type: ignore[arg-type]
    if not values:
        return (*_NAN5, math.nan, note)
    c = compare(values, base_loss)
    return (float(np.mean(list(values.values()))), c.delta, c.ci_low, c.ci_high, c.p_value, math.nan, "")


def _baseline_points(table: pd.DataFrame, j, curves: Mapping[str, Curve]) -> dict[object, tuple[float, float]]:
    runs, times, losses = (dict(table.at[j, c]) for c in ("_runs", "_times", "_values"))  # type: ignore[arg-type]
    return {s: baseline_point(curves.get(runs[s]) if runs[s] else None, times[s], losses[s]) for s in runs}


def _mean(points, index: int) -> float:
    vals = [p[index] for p in points if math.isfinite(p[index])]
    return float(np.mean(vals)) if vals else math.nan


def _key(row: pd.Series, cols: Sequence[str]) -> tuple:
    return tuple(clean(row[c]) for c in cols)


