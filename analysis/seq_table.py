"""A sequential sweep's decisions in the stage table: the design's verdict with its direction, the look at
which it was reached, and a repeated confidence interval for Δ. Pure, except `annotate_for_spec`, which
reads the decision log (analysis.sequential.decisions_for_spec).

Why the table's own numbers do not decide these rows. For a comparison that the design stopped, the
table's p adj (Holm over the seeds in hand) and its 95% CI are fixed-sample numbers: they are computed
as if the number of seeds had been fixed in advance, and ignore that seeds were added until a boundary
was crossed. "p adj < 0.05" is then not a test of size 5% (looking after every batch inflates it,
analysis.sequential), and the t interval is too narrow. The design's decision is the valid test; these
columns carry it, and a valid interval with it.

The interval: repeated confidence intervals (RCI; Jennison & Turnbull 2000, "Group Sequential Methods
with Applications to Clinical Trials", ch. 9). At look k, with n_k seeds (the first n_k of the plan),
per-seed differences of mean Δ_k and sd s_k, and the nominal level p_k(alpha_j) that the look's p was
held against (from the decision log):

    Δ_k ± t_{1 - p_k/2, n_k - 1} · s_k / √n_k

- It is the interval the design's test inverts: it excludes 0 exactly when p_k <= p_k(alpha_j), i.e.
  exactly when the design rejected with that look's data; verdict and interval never disagree.
- It covers Δ whenever the sweep stopped. The levels p_k(a) are calibrated so that a null paired-t path
  crosses some look's level with probability a (analysis.seq_bounds). Centred at the true Δ, the
  per-seed differences form such a null path, so P(Δ in I_k at every look) = 1 - a, and the interval
  at a data-dependent stopping look covers Δ with probability >= 1 - a. Holm gives comparison j a level
  alpha_j <= alpha (alpha/m, raised by recycling, never above alpha), and the levels grow with a, so the
  interval at alpha_j contains the one at alpha: each row's interval covers its Δ with probability
  >= 1 - alpha (95%), however the looks and the other comparisons went. Coverage is per row, not
  simultaneous over the rows.
- Which look: decided - the look whose data crossed (`look` in the log; after Holm recycling it can
  be earlier than `stopped_at`, the look at which the decision was reached); undecided - the last look;
  open - the latest complete look, at the current alpha_j.

Alternatives not taken: a stagewise-ordering interval (J&T ch. 8) is exact at the stopping look but
needs the boundary-crossing distribution under alternatives, which for t-calibrated levels means more
simulation; an RCI needs only the levels the design used and stays valid even if the stopping rule was
not followed. Its price is width: it is conservative, by design.

The interval is recomputed from the table's per-seed values over the look's planned seeds (the log's
`seeds`) and checked against the log: where the records do not reproduce the look's logged p, the row
says so and shows no interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from analysis.fmt import format_p, format_value
from analysis.sequential import DECIDED, OPEN, UNDECIDED, decision_text, decisions_for_spec, p_value
from analysis.table import NOT_KEYS, SEED_VALUES, SEQ_COLUMNS

VERDICT, SEQ_COLUMN, RCI_LOW, RCI_HIGH, RCI_LOOK, RCI_N, RCI_LEVEL = SEQ_COLUMNS
BETTER, WORSE, BASELINE = "better", "worse", "baseline"  # better: lower loss than the baseline
SEQUENTIAL_VERDICTS = (BETTER, WORSE, UNDECIDED, OPEN)  # the rows a design compared
_TEXT = (VERDICT, SEQ_COLUMN)


def has_sequential(table: pd.DataFrame) -> bool:
    """Some row is a comparison that a sequential design decides (`annotate`)."""
    return VERDICT in table.columns and bool(table[VERDICT].isin(SEQUENTIAL_VERDICTS).any())


def annotate(table: pd.DataFrame, log: Mapping[str, Any]) -> pd.DataFrame:
    """A copy of a stage table with SEQ_COLUMNS filled from a sweep's decision log (runs/<spec>/
    sequential.json): `seq_verdict` better | worse | undecided | open | baseline, `seq_stop` the
    decision in words, and the repeated CI `rci_low`/`rci_high` with its look, seeds and nominal level.
    The interval needs the per-seed values (stage_table(..., per_seed=True)); without them it is NaN.
    Rows the design did not compare get empty cells."""
    out = table.copy()
    rows = [dict(r) for _, r in out.iterrows()]
    cells = [row_cells(row, rows, log) for row in rows]
    for col in SEQ_COLUMNS:
        values = [c.get(col, "" if col in _TEXT else math.nan) for c in cells]
        out[col] = values if col in _TEXT else pd.Series(values, index=out.index, dtype=object)
    return out


def row_cells(row: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], log: Mapping[str, Any]) -> dict[str, Any]:
    """SEQ_COLUMNS of one table row (`rows`: every row of the table, where its baseline is found)."""
    comparisons = log.get("comparisons", [])
    num_looks = len((log.get("design") or {}).get("looks") or []) or max(
        (len(c.get("history") or []) for c in comparisons), default=0)
    for c in comparisons:
        if _same_config(row, c.get("config") or {}):
            base = next((r for r in rows if _same_config(r, c.get("baseline_config") or {})), None)
            seeds = log.get("seeds") or _sorted_seeds(row, base)
            return comparison_cells(c, _values(row), _values(base), seeds, num_looks, _number(row.get("delta")))
    for c in comparisons:
        if _same_config(row, c.get("baseline_config") or {}):
            return {VERDICT: BASELINE, SEQ_COLUMN: f"baseline (n={log.get('required', {}).get(c['baseline'], '?')})"}
    return {}


def comparison_cells(c: Mapping[str, Any], group: Mapping[str, float], base: Mapping[str, float],
                     seeds: Sequence[Any], num_looks: int, table_delta: float) -> dict[str, Any]:
    """The cells of one compared row. `c`: its entry in the decision log; `group`, `base`: seed (as
    text) -> final loss; `seeds`: the planned seed order; `table_delta`: the table's Δ, for the
    direction only when the per-seed values are missing."""
    status = str(c.get("status"))
    text = decision_text(status, int(c.get("look") or 0), int(c.get("stopped_at") or 0), int(c.get("n") or 0),
                         _number(c.get("p")), _number(c.get("threshold")), num_looks)
    entry = _interval_look(c)
    cells: dict[str, Any] = {VERDICT: status if status in (UNDECIDED, OPEN) else "", SEQ_COLUMN: text}
    delta = table_delta
    if entry is not None and group and base:
        sub = [str(format_value(s)) for s in seeds[: int(entry["n"])]]
        if len(sub) == int(entry["n"]) and all(s in group and s in base for s in sub):
            diffs = [group[s] - base[s] for s in sub]
            mine, logged = p_value(dict(enumerate(group[s] for s in sub)), dict(enumerate(base[s] for s in sub))), \
                _number(entry.get("p"))
            if _same_p(mine, logged):
                low, high = repeated_ci(diffs, _number(entry["threshold"]))
                delta = float(np.mean(diffs))
                cells |= {RCI_LOW: low, RCI_HIGH: high, RCI_LOOK: int(entry["look"]), RCI_N: len(sub),
                          RCI_LEVEL: _number(entry["threshold"])}
            else:
                cells[SEQ_COLUMN] = (f"{text} (the records give p={format_p(mine)} at look {entry['look']}, the log "
                                     f"{format_p(logged)}: no interval)")
    if status == DECIDED:
        cells[VERDICT] = BETTER if delta < 0 else WORSE if delta > 0 else ""
    return cells


def repeated_ci(diffs: Sequence[float], level: float) -> tuple[float, float]:
    """Δ_k ± t_{1 - level/2, n-1} · s / √n over one look's per-seed differences (see the module
    docstring); NaN where the test is undefined (n < 2, or no spread and no difference)."""
    d = np.asarray(diffs, dtype=float)
    if len(d) < 2 or not 0 < level < 1:
        return math.nan, math.nan
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd == 0 and mean == 0:
        return math.nan, math.nan
    half = float(sps.t.isf(level / 2, len(d) - 1)) * sd / math.sqrt(len(d))
    return mean - half, mean + half


def _interval_look(c: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The history entry the interval is taken at, with the level the decision used (module docstring)."""
    history = c.get("history") or []
    if not history:
        return None
    if c.get("status") == OPEN:
        return history[-1]
    entry = next((h for h in history if h.get("look") == c.get("look")), None)
    return None if entry is None else dict(entry) | {"threshold": c.get("threshold", entry.get("threshold"))}


def _same_p(mine: float, logged: float) -> bool:
    if math.isnan(mine) or math.isnan(logged):
        return math.isnan(mine) and math.isnan(logged)
    return math.isclose(mine, logged, rel_tol=1e-9, abs_tol=1e-300)


def _values(row: Mapping[str, Any] | None) -> dict[str, float]:
    """seed (as text, so that 3, 3.0 and "3" meet) -> finite final loss of the row's runs."""
    values = (row or {}).get(SEED_VALUES)
    if not isinstance(values, Mapping):
        return {}
    return {str(format_value(s)): float(v) for s, v in values.items() if math.isfinite(_number(v))}


def _sorted_seeds(row: Mapping[str, Any], base: Mapping[str, Any] | None) -> list[Any]:
    """A log without its seed plan (older sweeps): the common seeds in numeric order; the check against
    the logged p says whether that was the plan."""
    common = set(_values(row)) & set(_values(base))
    return sorted(common, key=lambda s: (_number(s), s))


def _same_config(row: Mapping[str, Any], config: Mapping[str, Any]) -> bool:
    """The row is this configuration: every config key the table shows has the same value."""
    shown = [k for k in config if k in row and k not in NOT_KEYS and k != "stage"]
    return "attn_gate" in shown and all(_same_value(row[k], config[k]) for k in shown)


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return str(a).lower() == str(b).lower()
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    except (TypeError, ValueError):
        return str(a) == str(b)


def _number(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def annotate_for_spec(table: pd.DataFrame, spec: str | Path | None, *, tracking_uri: str | None = None) -> pd.DataFrame:
    """The table with SEQ_COLUMNS when `spec` (file or name) ran with sequential seeds, else unchanged;
    either way without the per-seed values (`seed_values`) it read the intervals from."""
    return with_log(table, decisions_for_spec(spec, tracking_uri=tracking_uri) if spec else None)


def with_log(table: pd.DataFrame, log: Mapping[str, Any] | None) -> pd.DataFrame:
    """annotate_for_spec with the decision log already read (None: not a sequential spec)."""
    out = annotate(table, log) if log else table
    return out.drop(columns=[SEED_VALUES], errors="ignore")
