"""Time-matched comparison, an approximation: a run's val loss at the baseline's final train time. Pure.

A run's val curve is val_loss against train_time_ms, joined on step: the trainer logs both at every
evaluation, and imported logs and curve CSVs carry the same pair. The loss at time T is the linear
interpolation between the two evaluations around T. Past its last evaluation, a run that reached its
last step holds its final loss (it finished earlier: a faster configuration); a curve that stops
before its run's end is never extrapolated (NaN, with a note), nor is a time before the first point.

Why "approximation": a run read at T was not trained to end at T. Its LR schedule warms down towards
its own last step, so the same configuration given a budget of exactly T would do somewhat better
than its curve says at T. A time-matched Δ that favours the slower configuration is therefore
conservative; one that favours the baseline may overstate the slower run's handicap.

The baseline's point per seed is (its final train time, its final loss): the last point of its curve
when the curve is complete, else the run's summary `train_time_ms` and `final_val_loss`. When the
seeds pair (`stats.is_paired`: at least 2 seeds in common, the paired test's condition), each run of a
common seed is read at its own seed's baseline time, and a run of a seed the baseline did not run at
the mean of the baseline's final times (it enters the row's mean, not the paired test); without
pairing every run is read at that mean.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.stats import is_paired

VAL_KEY, TIME_KEY = "val_loss", "train_time_ms"
HISTORY_KEYS = (VAL_KEY, TIME_KEY)
NO_CURVE, SHORT_CURVE, NO_TIME = "no val curve", "curve stops before the baseline's time", "baseline has no train time"


@dataclass(frozen=True)
class Curve:
    time_ms: np.ndarray  # ascending
    loss: np.ndarray
    complete: bool  # the curve reaches the run's last step, so the run holds its last loss after it


def curves_from_histories(histories: pd.DataFrame, last_steps: Mapping[str, object]) -> dict[str, Curve]:
    """Long histories (mlflow_run_id, key, step, value) -> one Curve per run that has both keys.

    `last_steps`: run id -> the run's last step (num_iterations); a curve reaching it is complete.
    An unknown last step counts as complete: only FINISHED runs are passed here."""
    h = histories[histories["key"].isin(HISTORY_KEYS)]
    if h.empty:
        return {}
    wide = h.pivot_table(index=["mlflow_run_id", "step"], columns="key", values="value", aggfunc="last")
    if VAL_KEY not in wide.columns or TIME_KEY not in wide.columns:
        return {}
    # one sort of all points, then each run's curve is a slice: no per-run frame operations
    wide = wide.dropna(subset=[VAL_KEY, TIME_KEY]).reset_index()
    wide = wide.sort_values(["mlflow_run_id", TIME_KEY, "step"], kind="stable")
    runs, steps = wide["mlflow_run_id"].to_numpy(), wide["step"].to_numpy()
    times, losses = wide[TIME_KEY].to_numpy(float), wide[VAL_KEY].to_numpy(float)
    starts = np.flatnonzero(np.r_[True, runs[1:] != runs[:-1]]) if len(runs) else np.array([], int)
    curves = {}
    for a, b in zip(starts.tolist(), [*starts[1:].tolist(), len(runs)], strict=True):
        last = last_steps.get(str(runs[a]))
        complete = not _is_number(last) or int(steps[a:b].max()) >= int(last)  # type: ignore[arg-type]
        curves[str(runs[a])] = Curve(times[a:b], losses[a:b], complete)
    return curves


def loss_at(curve: Curve | None, time_ms: float) -> float:
    """The curve's loss at `time_ms` (see the module docstring); NaN where it cannot be read."""
    if curve is None or not math.isfinite(time_ms) or time_ms < curve.time_ms[0]:
        return math.nan
    if time_ms <= curve.time_ms[-1]:
        return float(np.interp(time_ms, curve.time_ms, curve.loss))
    return float(curve.loss[-1]) if curve.complete else math.nan


def baseline_point(curve: Curve | None, train_time_ms: float, final_loss: float) -> tuple[float, float]:
    """(final train time, final loss) of one baseline run."""
    if curve is not None and curve.complete:
        return float(curve.time_ms[-1]), float(curve.loss[-1])
    return float(train_time_ms), float(final_loss)


def time_matched(
    runs: Mapping[object, str | None],
    base: Mapping[object, tuple[float, float]],
    curves: Mapping[str, Curve],
) -> tuple[dict[object, float], dict[object, float], str]:
    """(group losses at the baseline time, baseline final losses, note) by seed.

    `runs`: seed -> run id of the group; `base`: seed -> baseline_point(). The group's values are
    empty (so its Δ is undefined) unless every run could be read; the note then says why."""
    base_loss = {s: loss for s, (_, loss) in base.items()}
    if not runs or not base:
        return {}, base_loss, ""
    times = [t for t, _ in base.values() if math.isfinite(t)]
    mean_t = float(np.mean(times)) if times else math.nan
    paired = is_paired(runs, base)
    targets = {s: base[s][0] if paired and s in base else mean_t for s in runs}
    values, reasons = {}, []
    for seed, run_id in runs.items():
        curve = curves.get(run_id) if run_id else None
        values[seed] = loss_at(curve, targets[seed])
        if not math.isfinite(values[seed]):
            reasons.append(NO_TIME if not math.isfinite(targets[seed]) else NO_CURVE if curve is None else SHORT_CURVE)
    if reasons:
        counts = {r: reasons.count(r) for r in dict.fromkeys(reasons)}
        return {}, base_loss, "; ".join(f"{r} ({n} run{'s' if n > 1 else ''})" for r, n in counts.items())
    return values, base_loss, ""


def _is_number(v: object) -> bool:
    try:
        return math.isfinite(float(v))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
