"""Figures for a stage (PNG). Each function writes one file and returns the arrays it drew.

Rendering uses matplotlib's Agg canvas bound to each figure (`Figure` + `FigureCanvasAgg`), so it
needs no display, never touches pyplot's global state and works whatever backend the caller chose.
Only FINISHED runs are drawn, as in the tables. A figure of thousands of configurations is unreadable
and slow: `pick_configs` bounds what the report draws (the best by final loss and their baselines).
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.comparisons import clean, find_baselines
from analysis.table import FINISHED, NOT_KEYS, config_label, group_runs, key_columns, rows_where

Arrays = dict[str, np.ndarray]
MAX_CONFIGS = 12  # configurations a report figure draws at most, their baselines aside


def pick_configs(table: pd.DataFrame, limit: int = MAX_CONFIGS) -> tuple[list[Hashable], int]:
    """(index labels of the stage table's rows to draw, how many rows are left out): every row when
    there are at most `limit`, else the `limit` best by mean final val loss and the attn_gate=none
    baseline of each (analysis.comparisons.find_baselines), in table order."""
    if len(table) <= limit:
        return list(table.index), 0
    order = np.argsort(table["final_val_loss"].to_numpy(float), kind="stable")  # NaN last
    best = table.index[order[:limit]]
    baselines = find_baselines(table, table_keys(table))
    chosen = set(best) | {baselines[i] for i in best if baselines[i] is not None}
    return [i for i in table.index if i in chosen], len(table) - len(chosen)


def runs_of(runs: pd.DataFrame, table: pd.DataFrame, rows: Sequence[Hashable]) -> pd.DataFrame:
    """The runs of the stage table's `rows` (matched on the table's key columns and stage)."""
    keys = table_keys(table) + (["stage"] if "stage" in table.columns else [])
    wanted = {tuple(clean(table.at[i, k]) for k in keys) for i in rows}
    have = zip(*[runs[k].tolist() if k in runs.columns else [None] * len(runs) for k in keys], strict=True)
    return rows_where(runs, [tuple(clean(v) for v in t) in wanted for t in have])


def plot_val_curves(
    histories: pd.DataFrame, runs: pd.DataFrame, out: str | Path, *, key: str = "val_loss",
    band: str = "minmax", keys: Sequence[str] | None = None,
) -> dict[str, Arrays]:
    """Mean `key` curve per configuration across seeds vs step, with a min-max (or +-std) band.
    `keys`: the configuration columns (default: those that vary among `runs`)."""
    if band not in ("minmax", "std"):
        raise ValueError(f"band={band!r}; use 'minmax' or 'std'")
    drawn: dict[str, Arrays] = {}
    for label, wide in _wide_per_config(histories, runs, key, keys):
        drawn[label] = {"step": wide.index.to_numpy(), **_band(wide, band)}
    _draw_curves(drawn, "step", out, xlabel="step", ylabel=key, title=f"{key}: mean over seeds ({band} band)")
    return drawn


def plot_val_vs_time(histories: pd.DataFrame, runs: pd.DataFrame, out: str | Path, *,
                     keys: Sequence[str] | None = None) -> dict[str, Arrays]:
    """Mean val_loss per configuration vs wall-clock train time (minutes), min-max band; the x of a
    step is the seeds' mean train time at that step. Writes nothing when no run has both curves."""
    drawn: dict[str, Arrays] = {}
    times = dict(_wide_per_config(histories, runs, "train_time_ms", keys))
    for label, wide in _wide_per_config(histories, runs, "val_loss", keys):
        if label not in times:
            continue
        t = times[label].reindex(index=wide.index, columns=wide.columns)
        keep = t.notna().all(axis=1).to_numpy()
        if keep.sum() < 2:
            continue
        minutes = t.to_numpy()[keep].mean(axis=1) / 60_000.0
        drawn[label] = {"minutes": minutes, **{k: v[keep] for k, v in _band(wide, "minmax").items()}}
    if drawn:
        _draw_curves(drawn, "minutes", out, xlabel="train time (min)", ylabel="val_loss",
                     title="val_loss vs wall-clock train time: mean over seeds (min-max band)")
    return drawn


def _wide_per_config(histories: pd.DataFrame, runs: pd.DataFrame, key: str,
                     keys: Sequence[str] | None = None) -> list[tuple[str, pd.DataFrame]]:
    """(config label, step x run table of `key`) per configuration with any points."""
    hist = rows_where(histories, histories["key"] == key)
    hist = rows_where(hist, hist["mlflow_run_id"].isin(runs["mlflow_run_id"]))
    out = []
    for config, grp in group_runs(_finished(runs), keys):
        wide = hist[hist["mlflow_run_id"].isin(grp["mlflow_run_id"])].pivot_table(
            index="step", columns="mlflow_run_id", values="value", aggfunc="last")
        if not wide.empty:
            out.append((config_label(config), wide))
    return out


def _band(wide: pd.DataFrame, band: str) -> Arrays:
    mean = wide.mean(axis=1).to_numpy()
    if band == "minmax":
        return {"mean": mean, "lo": wide.min(axis=1).to_numpy(), "hi": wide.max(axis=1).to_numpy()}
    sd = wide.std(axis=1, ddof=1).fillna(0.0).to_numpy()
    return {"mean": mean, "lo": mean - sd, "hi": mean + sd}


def _draw_curves(drawn: dict[str, Arrays], x: str, out: str | Path, *, xlabel: str, ylabel: str, title: str) -> None:
    fig, ax = _figure()
    # The first evaluations (loss ~ln(vocab)) dwarf the differences that matter; an inset zooms on
    # the last 40% of the run, where the variants separate.
    last = max((a[x].max() for a in drawn.values()), default=0)
    inset = ax.inset_axes((0.40, 0.14, 0.57, 0.47)) if last > 0 else None
    for label, a in drawn.items():
        (line,) = ax.plot(a[x], a["mean"], label=label, linewidth=1.2)
        ax.fill_between(a[x], a["lo"], a["hi"], color=line.get_color(), alpha=0.2, linewidth=0)
        if inset is not None:
            tail = a[x] >= 0.6 * last
            inset.plot(a[x][tail], a["mean"][tail], color=line.get_color(), linewidth=1.2, marker=".")
            inset.fill_between(a[x][tail], a["lo"][tail], a["hi"][tail], color=line.get_color(), alpha=0.2,
                               linewidth=0)
    if inset is not None:
        inset.grid(True, alpha=0.3)
        inset.tick_params(labelsize=7)
    _finish(fig, ax, out, xlabel=xlabel, ylabel=ylabel, title=title)


def plot_lr_sweep(table: pd.DataFrame, out: str | Path) -> dict[str, Arrays]:
    """Final loss vs learning rate, one line per gate configuration; error bars = 95% CI."""
    if "learning_rate" not in table.columns:
        raise ValueError("plot_lr_sweep needs a learning_rate column (an LR stage)")
    others = [c for c in _key_cols(table) if c != "learning_rate"]
    drawn: dict[str, Arrays] = {}
    for _, rows in table.groupby(others, sort=False, dropna=False):
        rows = rows.sort_values("learning_rate")
        label = config_label({c: rows.iloc[0][c] for c in others})
        drawn[label] = {"learning_rate": rows["learning_rate"].to_numpy(dtype=float),
                        "mean": rows["final_val_loss"].to_numpy(dtype=float),
                        "ci95": rows["ci95"].to_numpy(dtype=float)}
    fig, ax = _figure()
    for label, a in drawn.items():
        ax.errorbar(a["learning_rate"], a["mean"], yerr=np.nan_to_num(a["ci95"]), marker="o",
                    capsize=3, label=label)
    _finish(fig, ax, out, xlabel="learning rate", ylabel="final val loss",
            title="final val loss vs learning rate (95% CI)")
    return drawn


def plot_stage_bars(table: pd.DataFrame, out: str | Path) -> Arrays:
    """One bar per configuration (mean final val loss) with its 95% CI."""
    keys = _key_cols(table)
    labels = np.array([config_label({k: r[k] for k in keys}) for _, r in table.iterrows()], dtype=object)
    mean = table["final_val_loss"].to_numpy(dtype=float)
    ci = table["ci95"].to_numpy(dtype=float)
    fig, ax = _figure()
    x = np.arange(len(labels))
    ax.bar(x, mean, yerr=np.nan_to_num(ci), capsize=4, color="#4c72b0")
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    finite = mean[np.isfinite(mean)]
    if finite.size:  # losses differ in the 3rd decimal: zoom in instead of starting at 0
        spread = max(float(finite.max() - finite.min()), float(np.nanmax(np.nan_to_num(ci))), 1e-3)
        ax.set_ylim(finite.min() - 1.5 * spread, finite.max() + 1.5 * spread)
    _finish(fig, ax, out, xlabel="", ylabel="final val loss", title="final val loss (95% CI)", legend=False)
    return {"labels": labels, "mean": mean, "ci95": ci}


def plot_per_layer(df: pd.DataFrame, metric: str, out: str | Path) -> dict[str, Arrays]:
    """`metric/layer_NN` columns (e.g. diag/gate_mean/layer_03) vs layer, mean over seeds per config."""
    pattern = re.compile(rf"^{re.escape(metric)}/layer_(\d+)$")
    cols = sorted((int(m.group(1)), c) for c in df.columns if (m := pattern.match(str(c))))
    if not cols:
        raise ValueError(f"no columns named {metric}/layer_NN in the runs table")
    layers = np.array([i for i, _ in cols])
    runs = _finished(df) if "status" in df.columns else df
    drawn: dict[str, Arrays] = {}
    for config, grp in group_runs(runs, key_columns(runs) if "attn_gate" in runs.columns else []):
        values = grp[[c for _, c in cols]].astype(float)
        drawn[config_label(config) or "all runs"] = {"layer": layers, "mean": values.mean(axis=0).to_numpy()}
    fig, ax = _figure()
    for label, a in drawn.items():
        ax.plot(a["layer"], a["mean"], marker="o", label=label)
    ax.set_xticks(layers)
    _finish(fig, ax, out, xlabel="layer", ylabel=metric, title=f"{metric} per layer (mean over seeds)")
    return drawn


def _finished(runs: pd.DataFrame) -> pd.DataFrame:
    return rows_where(runs, runs["status"] == FINISHED)


def _key_cols(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c not in NOT_KEYS and c != "stage"]


def bar_columns(table: pd.DataFrame) -> list[str]:
    """The stage table's columns that plot_stage_bars and plot_lr_sweep read: keys, mean and CI."""
    return [*_key_cols(table), "final_val_loss", "ci95"]


def table_keys(table: pd.DataFrame) -> list[str]:
    """The stage table's configuration columns (what its rows' labels are made of)."""
    return _key_cols(table)


def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=110)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _finish(fig, ax, out: str | Path, *, xlabel: str, ylabel: str, title: str, legend: bool = True) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper right" if ax.child_axes else "best")
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")


def is_lr_stage(table: pd.DataFrame) -> bool:
    """Whether the table compares learning rates (then the LR-sweep figure is drawn)."""
    return "learning_rate" in table.columns and len(table["learning_rate"].dropna().unique()) > 1
