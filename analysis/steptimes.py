"""Train times from measured step times: time-matching runs that shared a GPU. Pure, but `load`.

Trials packed several to a GPU (backend.local.trials_per_gpu > 1; their runs carry the tag
`gatesweep.gpu_shared`) train at the speed the neighbours leave them: their train_time_ms and
ms_per_step are not speed figures, and a time-matched comparison on them would compare neighbours.
Given step times measured one process at a time on the same card and config (bench/run.py --plan
study writes them), `retime` puts each run on that clock: a run of configuration c has trained
max(step - 10, 0) * ms(c) at `step`, as the trainer counts (steps 10..N are timed, the reference's
convention), and its summary becomes (N - 10) * ms(c), ms_per_step ms(c).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from trainer.errors import DataError

SHARED_COLUMN = "gpu_shared"  # analysis.fetch: the tag gatesweep.gpu_shared (trials sharing each GPU)
UNTIMED_STEPS = 10
GateKey = tuple[str, str, str]  # (attn_gate, gate_act, gate_pos)


def load(path: Path) -> dict[GateKey, float]:
    """Step times per gate configuration from bench/run.py's results.json ({"results": [{"gate",
    "overrides", "step_ms", "exit_code"}, ...]}) or a plain list of {attn_gate, gate_act, gate_pos,
    ms_per_step}."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"--step-times {path}: cannot read it ({e}); give bench/run.py's results.json") from None
    rows = data.get("results", []) if isinstance(data, dict) else data
    out: dict[GateKey, float] = {}
    for r in rows if isinstance(rows, list) else []:
        if not isinstance(r, dict):
            continue
        if "step_ms" in r:  # bench results: skip failed jobs
            if r.get("exit_code", 0) != 0:
                continue
            o = r.get("overrides") or {}
            key = (str(r.get("gate", "none")), str(o.get("gate_act", "sigmoid")), str(o.get("gate_pos", "sdpa")))
            ms = r["step_ms"]
        else:
            key = (str(r.get("attn_gate", "none")), str(r.get("gate_act", "sigmoid")), str(r.get("gate_pos", "sdpa")))
            ms = r.get("ms_per_step")
        if isinstance(ms, int | float) and math.isfinite(ms) and ms > 0:
            out[key] = float(ms)
    if not out:
        raise DataError(f"--step-times {path}: no step times in it; give bench/run.py's results.json "
                        "(a list of {attn_gate, gate_act, gate_pos, ms_per_step} works too)")
    return out


def gate_key(row: Mapping[str, object]) -> GateKey:
    def text(k: str, default: str) -> str:
        v = row.get(k)
        return default if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
    return text("attn_gate", "none"), text("gate_act", "sigmoid"), text("gate_pos", "sdpa")


def retime(runs: pd.DataFrame, histories: pd.DataFrame | None, step_ms: Mapping[GateKey, float]
           ) -> tuple[pd.DataFrame, pd.DataFrame | None, list[str]]:
    """(runs, histories) on the measured clock, and the configurations without a step time (those runs
    keep their own times and their shared-GPU flag)."""
    runs = runs.copy()
    ms = [step_ms.get(gate_key(r)) for _, r in runs.iterrows()]
    missing = sorted({"/".join(gate_key(r)) for (_, r), m in zip(runs.iterrows(), ms, strict=True) if m is None})
    per_run = {rid: m for rid, m in zip(runs["mlflow_run_id"], ms, strict=True) if m is not None}
    iters = pd.to_numeric(runs.get("num_iterations", pd.Series(math.nan, index=runs.index)), errors="coerce")
    has = pd.Series([m is not None for m in ms], index=runs.index)
    ms_s = pd.Series([m if m is not None else math.nan for m in ms], index=runs.index)
    runs.loc[has, "train_time_ms"] = (iters[has] - UNTIMED_STEPS).clip(lower=0) * ms_s[has]
    runs.loc[has, "ms_per_step"] = ms_s[has]
    if SHARED_COLUMN in runs.columns:
        runs.loc[has, SHARED_COLUMN] = 0
    if histories is not None and not histories.empty:
        histories = histories.copy()
        timed = (histories["key"] == "train_time_ms") & histories["mlflow_run_id"].isin(list(per_run))
        steps = histories.loc[timed, "step"].astype(float)
        factor = histories.loc[timed, "mlflow_run_id"].map(per_run).astype(float)
        histories.loc[timed, "value"] = (steps - UNTIMED_STEPS).clip(lower=0) * factor
    return runs, histories, missing
