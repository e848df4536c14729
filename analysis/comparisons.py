"""Each stage-table row against its baseline: Δ with 95% CI, raw and adjusted p, time-matched Δ. Pure.

Baseline. For each row, the group with ``attn_gate == "none"`` that agrees on the other varying
keys except the gate columns (so learning rate and iterations must match); preferring the same
stage, then equal gate columns, then the first in row order. Found by a keyed lookup, one pass.

Pairing (analysis.stats.compare). A row is tested against its baseline on the seeds both ran when at
least 2 are common (`n_pairs` of them: Δ, its CI and p are over those pairs), Welch otherwise
(`n_pairs` 0); `low_n` also flags a paired test on fewer than 3 pairs.

Multiplicity. `p_adj` adjusts the p-values of all comparison rows of one table together (rows with
a defined p; baseline rows have none), Holm by default; `p_time_adj` does the same for the
time-matched comparisons, a second family.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import pandas as pd

from analysis.stats import MIN_SEEDS, adjust_p, compare_many
from analysis.timematch import Curve, baseline_point, time_matched
from sweeps.select import clean

GATE_COLUMNS = frozenset({"attn_gate", "gate_pos", "gate_act"})
BASELINE_GATE = "none"
COMPARISON_COLUMNS = ("delta", "delta_ci_low", "delta_ci_high", "delta_pct", "p_value", "p_adj", "test", "n_pairs")
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
    found = find_baselines(table, [k for k in keys if k not in budget_keys])
    position = {label: k for k, label in enumerate(table.index)}
    base = [None if found[i] is None else position[found[i]] for i in table.index]
    rows = {c: table[c].tolist() for c in ("n", "gpu_shared", *HELPER_COLUMNS)}
    step = _step_cells(rows, base)
    table[list(COMPARISON_COLUMNS)] = pd.DataFrame(step, index=table.index, columns=list(COMPARISON_COLUMNS))
    table["p_adj"] = adjust_p(table["p_value"].tolist(), adjust)
    # a paired test on fewer than MIN_SEEDS common seeds has 1 degree of freedom, whatever the rows' n
    table["low_n"] = table["low_n"] | ((table["n_pairs"] > 0) & (table["n_pairs"] < MIN_SEEDS))
    timed = _time_cells(rows, base, curves)
    table[list(TIME_COLUMNS)] = pd.DataFrame(timed, index=table.index, columns=list(TIME_COLUMNS))
    table["p_time_adj"] = adjust_p(table["p_time"].tolist(), adjust)


def find_baselines(table: pd.DataFrame, keys: Sequence[str]) -> dict[Hashable, Hashable | None]:
    """Row index -> index of its baseline row (itself for a baseline), or None."""
    match = _keys(table, [k for k in keys if k not in GATE_COLUMNS])
    gates = _keys(table, [k for k in keys if k in GATE_COLUMNS and k != "attn_gate"])
    stage = table["stage"].tolist() if "stage" in table.columns else [None] * len(table)
    index = table.index.tolist()
    by_key: dict[tuple, list[int]] = {}
    for pos, gate in enumerate(table["attn_gate"].tolist()):
        if clean(gate) == BASELINE_GATE:
            by_key.setdefault(match[pos], []).append(pos)

    def preference(pos: int, q: int) -> tuple:
        return (stage[q] != stage[pos], gates[q] != gates[pos], index[q])

    found = {pos: min(by_key.get(match[pos], []), key=lambda q, p=pos: preference(p, q), default=None)
             for pos in range(len(index))}
    return {index[pos]: None if q is None else index[q] for pos, q in found.items()}


def _step_cells(rows: Mapping[str, list], base: list[int | None]) -> list[tuple]:
    """COMPARISON_COLUMNS per row; `base[k]`: position of row k's baseline row."""
    out: list[tuple] = []
    pairs, asked = [], []
    for k, j in enumerate(base):
        if j is None:
            out.append((*_NAN5[:4], math.nan, math.nan, "", 0))
        elif j == k:
            # a baseline whose runs all failed cannot anchor a comparison: say so in the row
            label = "baseline" if rows["n"][k] else "baseline (no finished runs)"
            out.append((*_NAN5[:4], math.nan, math.nan, label, 0))
        else:
            out.append(())
            pairs.append((dict(rows["_values"][k]), dict(rows["_values"][j])))
            asked.append(k)
    for k, c in zip(asked, compare_many(pairs), strict=True):
        out[k] = (c.delta, c.ci_low, c.ci_high, c.delta_pct, c.p_value, math.nan, c.test, c.n_pairs)
    return out


def _time_cells(rows: Mapping[str, list], base: list[int | None], curves: Mapping[str, Curve] | None) -> list[tuple]:
    """TIME_COLUMNS per row (all NaN when `curves` is None: time matching not asked for)."""
    out: list[tuple] = []
    pairs, asked, means = [], [], []
    for k, j in enumerate(base):
        if curves is None or j is None:
            out.append((*_NAN5, math.nan, ""))
            continue
        if j != k and (rows["gpu_shared"][k] or rows["gpu_shared"][j]):
            out.append((*_NAN5, math.nan, SHARED_GPU))
            continue
        points = _baseline_points(rows, j, curves)
        if j == k:
            out.append((_mean(points.values(), 1), *_NAN5[:4], math.nan, ""))
            continue
        values, base_loss, note = time_matched(dict(rows["_runs"][k]), points, curves)
        out.append(() if values else (*_NAN5, math.nan, note))
        if values:
            pairs.append((values, base_loss))
            asked.append(k)
            means.append(float(np.mean(list(values.values()))))
    for k, mean, c in zip(asked, means, compare_many(pairs), strict=True):
        out[k] = (mean, c.delta, c.ci_low, c.ci_high, c.p_value, math.nan, "")
    return out


def _baseline_points(rows: Mapping[str, list], j: int, curves: Mapping[str, Curve]) -> dict[object, tuple[float, float]]:
    runs, times, losses = (dict(rows[c][j]) for c in ("_runs", "_times", "_values"))
    return {s: baseline_point(curves.get(runs[s]) if runs[s] else None, times[s], losses[s]) for s in runs}


def _mean(points, index: int) -> float:
    vals = [p[index] for p in points if math.isfinite(p[index])]
    return float(np.mean(vals)) if vals else math.nan


def _keys(table: pd.DataFrame, cols: Sequence[str]) -> list[tuple]:
    """Each row's values of `cols` as a hashable key (missing -> None)."""
    if not cols:
        return [()] * len(table)
    return list(zip(*[[clean(v) for v in table[c].tolist()] for c in cols], strict=True))


