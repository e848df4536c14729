"""Tidy runs -> seed-averaged stage table (numbers) and the study's compat view (strings). Pure.

Grouping. A row of the table is one configuration: the runs of a stage that agree on every config
column that *varies* among the selected runs (`CONFIG_COLUMNS`; seed and run bookkeeping are never
config). `attn_gate` is always a key, so a one-config stage still says what it ran.

Row order (documented in the report). Stage blocks in the order the stages were asked for; inside a
block, configurations sorted by their key values (strings alphabetically, numbers ascending, missing
last) - the order of the study's ``DataFrame.groupby(keys)``, which is what its published tables
use. The study's stage-3 table is its stage-3 groupby followed by the stage-3.5 baseline run, i.e.
two blocks: ``--stage stage3 --stage stage3.5``.

Runs. Only status FINISHED enters the statistics. EARLY_STOPPED runs are reported in their own
column (they stopped on purpose; their final loss is not comparable); every other status (FAILED,
KILLED, RUNNING, missing) is counted as `failed`.

Comparisons. Each row against its `attn_gate == "none"` baseline: Δ with its 95% CI, raw and
multiplicity-adjusted p, and, given the runs' histories, the time-matched Δ (analysis.comparisons).
`low_n` flags rows with fewer than 3 finished seeds, or whose paired test ran on fewer than 3 common
seeds (a paired test with 1 degree of freedom).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, cast

import numpy as np
import pandas as pd

from analysis import fmt
from analysis.comparisons import (
    COMPARISON_COLUMNS,
    GATE_COLUMNS,
    HELPER_COLUMNS,
    TIME_COLUMNS,
    add_comparisons,
)
from analysis.stats import MIN_SEEDS, summarize
from analysis.steptimes import SHARED_COLUMN
from analysis.timematch import curves_from_histories
from sweeps.select import CONFIG_KEYS, clean, group, varying_keys
from trainer.errors import DataError

CONFIG_COLUMNS = CONFIG_KEYS  # sweeps.select: the keys that define a trial's math, seed aside
FINISHED, EARLY_STOPPED = "FINISHED", "EARLY_STOPPED"
COMPAT_METRICS = ("seeds", "final_loss", "train_time")
REQUIRED = ("attn_gate", "status", "final_val_loss", "train_time_ms")
GROUP_COLUMNS = (
    "n", "low_n", "failed", "early_stopped", "final_val_loss", "std", "ci95", "best_val_loss",
    "train_time_ms", "ms_per_step", "gpu_shared",
)
STAT_COLUMNS = GROUP_COLUMNS + COMPARISON_COLUMNS + TIME_COLUMNS
SEED_VALUES = "seed_values"
# a spec with sequential seeds: the design's verdict and its repeated CI (filled by analysis.seq_table)
SEQ_COLUMNS = ("seq_verdict", "seq_stop", "rci_low", "rci_high", "rci_look", "rci_n", "rci_level")
NOT_KEYS = frozenset((*STAT_COLUMNS, *SEQ_COLUMNS, SEED_VALUES))  # the rest of a table's columns are its keys


def varying_columns(runs: pd.DataFrame, candidates: Sequence[str] = CONFIG_COLUMNS) -> list[str]:
    """Candidate config columns with more than one distinct non-missing value, in candidate order."""
    return [c for c in key_columns(runs, candidates) if c in runs.columns and _distinct(runs[c]) > 1]


def key_columns(runs: pd.DataFrame, candidates: Sequence[str] = CONFIG_COLUMNS) -> list[str]:
    """The configuration keys: `attn_gate` and every varying config column (sweeps.select.varying_keys)."""
    return varying_keys(_records(runs, candidates), candidates)


def _records(runs: pd.DataFrame, columns: Sequence[str]) -> list[dict]:
    cols = [c for c in columns if c in runs.columns]
    return cast(list[dict], cast(pd.DataFrame, runs[cols]).to_dict(orient="records"))


def stage_table(
    runs: pd.DataFrame,
    *,
    stages: Sequence[str] | None = None,
    keys: Sequence[str] | None = None,
    adjust: str = "holm",
    histories: pd.DataFrame | None = None,
    per_seed: bool = False,
) -> pd.DataFrame:
    """One row per configuration: key columns then `STAT_COLUMNS` (plus `stage` for >1 stage).

    `adjust`: holm | bh | none, for `p_adj` and `p_time_adj`. `histories` (fetch_histories with
    keys val_loss and train_time_ms) turns on the time-matched columns; without it they are NaN.
    `per_seed` keeps a last column `seed_values` (seed -> final loss) for planning (analysis.power)."""
    _check_columns(runs)
    keys = list(keys) if keys is not None else key_columns(runs)
    blocks = _blocks(runs, stages)
    rows = [_group_row(stage, key, grp, keys) for stage, key, grp in _group_columns(blocks, keys)]
    table = pd.DataFrame(rows, columns=["stage", *keys, *GROUP_COLUMNS, *HELPER_COLUMNS])
    curves = None if histories is None else curves_from_histories(histories, _last_steps(runs))
    add_comparisons(table, keys, adjust=adjust, curves=curves, budget_keys=_budget_keys(runs))
    table = table.drop(columns=list(HELPER_COLUMNS[1:] if per_seed else HELPER_COLUMNS))
    table = table.rename(columns={"_values": SEED_VALUES})
    if per_seed:
        table = table.reindex(columns=[c for c in table.columns if c != SEED_VALUES] + [SEED_VALUES])
    if _distinct(table["stage"]) <= 1:
        table = table.drop(columns="stage")
    return table.reset_index(drop=True)


def _budget_keys(runs: pd.DataFrame) -> frozenset[str]:
    """Keys a time_of budget set in some run (analysis.fetch.BUDGET_COLUMN, "num_iterations")."""
    if "budget_matched" not in runs.columns:
        return frozenset()
    return frozenset(k for v in runs["budget_matched"].dropna() for k in str(v).split(",") if k)


def compat_table(
    runs: pd.DataFrame,
    *,
    stages: Sequence[str] | None = None,
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The study's table: key columns, seeds, final_loss (4 dp), train_time ("10m 9.1s"); strings.

    `columns` picks and orders the output columns as the study did by hand for some stages (its
    stage-2 table has no `seeds`; its stage-2.5 table lists constant `learning_rate` and
    `num_iterations`). A varying key may not be left out: it would silently pool configurations.
    """
    _check_columns(runs)
    varying = key_columns(runs)
    if columns is None:
        columns = [*varying, *COMPAT_METRICS]
    _check_compat_columns(runs, columns, varying)
    keys = [c for c in columns if c not in COMPAT_METRICS]
    keys += [c for c in varying if c not in keys]
    out = []
    for _, key, grp in _group_columns(_blocks(runs, stages), keys):
        ok = _finished_positions(grp)
        cells = dict(zip(keys, key, strict=True))
        cells["seeds"] = len(ok)
        cells["final_loss"] = fmt.format_loss(_mean(_pick(grp, "final_val_loss", ok)))
        cells["train_time"] = fmt.format_train_time(_mean(_pick(grp, "train_time_ms", ok)))
        out.append({c: cells[c] if c in COMPAT_METRICS else fmt.format_value(cells[c]) for c in columns})
    return pd.DataFrame(out, columns=list(columns), dtype=object)


def _check_columns(runs: pd.DataFrame) -> None:
    for col in REQUIRED:
        if col not in runs.columns:
            raise DataError(f"runs table has no column {col!r}; it needs {', '.join(REQUIRED)}")
    if runs.empty:
        raise DataError("runs table is empty; check --stage/--experiment")


def _check_compat_columns(runs: pd.DataFrame, columns: Sequence[str], varying: Sequence[str]) -> None:
    allowed = [c for c in CONFIG_COLUMNS if c in runs.columns] + list(COMPAT_METRICS)
    unknown = [c for c in columns if c not in allowed]
    if unknown:
        raise DataError(f"--columns: unknown {', '.join(unknown)}; choose from {', '.join(allowed)}")
    missing = [c for c in varying if c not in columns]
    if missing:
        raise DataError(f"--columns leaves out {', '.join(missing)}, which varies in these runs; add it")


def _blocks(runs: pd.DataFrame, stages: Sequence[str] | None) -> list[tuple[str, pd.DataFrame]]:
    if "stage" not in runs.columns:
        return [("", runs)]
    order = list(stages) if stages else list(dict.fromkeys(runs["stage"].tolist()))
    blocks = [(s, rows_where(runs, runs["stage"] == s)) for s in order]
    return [(s, b) for s, b in blocks if not b.empty]


def _groups(
    blocks: Iterable[tuple[str, pd.DataFrame]], keys: Sequence[str]
) -> list[tuple[str, tuple, pd.DataFrame]]:
    """(stage, key, its runs) per configuration, in row order."""
    return [(stage, key, cast(pd.DataFrame, block.iloc[idx])) for stage, block in blocks
            for key, idx in group(_records(block, keys), keys)]


Columns = dict[str, list]  # one configuration's runs: column -> values (plain lists, no frame per group)


def _group_columns(
    blocks: Iterable[tuple[str, pd.DataFrame]], keys: Sequence[str]
) -> list[tuple[str, tuple, Columns]]:
    """As `_groups`, each configuration's runs as lists of the columns the table reads: one pass
    over the rows and a dict lookup per row, so the cost grows with runs, not runs x configurations."""
    out = []
    for stage, block in blocks:
        cols = {c: block[c].tolist() for c in _GROUP_INPUTS if c in block.columns}
        for key, idx in group(_records(block, keys), keys):
            out.append((stage, key, {c: [v[i] for i in idx] for c, v in cols.items()}))
    return out


_GROUP_INPUTS = ("status", "final_val_loss", "best_val_loss", "train_time_ms", "ms_per_step", "seed",
                 "mlflow_run_id", SHARED_COLUMN)


def _group_row(stage: str, key: tuple, grp: Columns, keys: Sequence[str]) -> dict:
    status = grp["status"]
    ok = _finished_positions(grp)
    s = summarize(_pick(grp, "final_val_loss", ok) or [])
    return {
        "stage": stage, **dict(zip(keys, key, strict=True)),
        "n": s.n, "low_n": s.n < MIN_SEEDS, "failed": sum(x not in (FINISHED, EARLY_STOPPED) for x in status),
        "early_stopped": sum(x == EARLY_STOPPED for x in status),
        "final_val_loss": s.mean, "std": s.std, "ci95": s.ci95,
        "best_val_loss": _mean(_pick(grp, "best_val_loss", ok)), "train_time_ms": _mean(_pick(grp, "train_time_ms", ok)),
        "ms_per_step": _mean(_pick(grp, "ms_per_step", ok)), "gpu_shared": _shared(_pick(grp, SHARED_COLUMN, ok)),
        "_values": _per_seed(grp, "final_val_loss", ok),
        "_runs": _per_seed(grp, "mlflow_run_id", ok), "_times": _per_seed(grp, "train_time_ms", ok),
    }


def _finished_positions(grp: Columns) -> list[int]:
    return [i for i, x in enumerate(grp["status"]) if x == FINISHED]


def _pick(grp: Columns, col: str, idx: list[int]) -> list | None:
    """The column's values at `idx`; None when the runs table has no such column."""
    return [grp[col][i] for i in idx] if col in grp else None


def _shared(values: list | None) -> bool:
    """Some run shared its GPU with other trials (and was not put on measured step times): its train
    time and ms/step are not speed figures (analysis.steptimes)."""
    return values is not None and any(_number(v) > 1 for v in values)


def _per_seed(grp: Columns, col: str, ok: list[int]) -> dict:
    """seed -> the runs' `col`; runs without a usable (unique) seed get keys that never pair."""
    seeds = [clean(s) for s in (_pick(grp, "seed", ok) or [None] * len(ok))]
    values = _pick(grp, col, ok) or [None] * len(ok)
    if any(s is None for s in seeds) or len(set(seeds)) < len(seeds):
        return {("run", i): v for i, v in enumerate(values)}
    return dict(zip(seeds, values, strict=True))


def _last_steps(runs: pd.DataFrame) -> dict[str, object]:
    if "mlflow_run_id" not in runs.columns or "num_iterations" not in runs.columns:
        return {}
    return {str(r): n for r, n in zip(runs["mlflow_run_id"], runs["num_iterations"], strict=True) if r}


def _mean(values: list | None) -> float:
    """Mean of the finite values (NaN when none, or when the runs table has no such column)."""
    finite = [x for x in (_number(v) for v in values or []) if math.isfinite(x)]
    return float(np.mean(finite)) if finite else math.nan


def _number(v: object) -> float:
    try:
        return float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def rows_where(df: pd.DataFrame, mask) -> pd.DataFrame:
    """df[mask], typed: boolean row selection always gives a DataFrame."""
    return cast(pd.DataFrame, df[mask])


def _distinct(values: Any) -> int:  # a Series; pandas' own hints say "Series | DataFrame"
    return len(values.dropna().unique())




def group_runs(runs: pd.DataFrame, keys: Sequence[str] | None = None) -> list[tuple[dict, pd.DataFrame]]:
    """(config dict, its runs) per configuration, in table row order (stages ignored)."""
    keys = list(keys) if keys is not None else key_columns(runs)
    return [(dict(zip(keys, key, strict=True)), grp) for _, key, grp in _groups([("", runs)], keys)]


def config_label(config: dict) -> str:
    """"elementwise/sigmoid lr=0.00468": gate values joined by "/", other keys as k=v."""
    short = {"learning_rate": "lr", "num_iterations": "iters", "warmdown_iters": "warmdown"}
    gates = [fmt.format_value(v) for k, v in config.items() if k in GATE_COLUMNS]
    others = [f"{short.get(k, k)}={fmt.format_value(v)}" for k, v in config.items()
              if k not in GATE_COLUMNS and k != "stage"]
    return " ".join(["/".join(gates), *others]).strip()
