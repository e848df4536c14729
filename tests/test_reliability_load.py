"""Load: 16 tiny trials at once (`gatesweep run` with max_parallel 16) logging to one real `mlflow
server` on a 2-core machine. Every trial finishes, its forwarder never fails a write, and MLflow holds
exactly the points of each trial's local metrics.jsonl (none lost, none twice), in 16 runs + 1 parent."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.sweep_helpers import (
    cli_env,
    experiment_runs,
    gatesweep,
    local_points,
    local_status,
    mlflow_points,
    point_diff,
    trial_dirs,
    unique,
    write_data,
    write_spec,
)

pytestmark = [pytest.mark.mlflow, pytest.mark.slow]
N = 20


def test_sixteen_concurrent_trials_lose_no_metric_point(tmp_path: Path, mlflow_server):
    name = unique("load")
    write_data(tmp_path)
    write_spec(tmp_path / "spec.yaml", name, grid={"attn_gate": ["none", "headwise", "elementwise", "const"]},
               seeds=[0, 1, 2, 3], max_parallel=16)
    res = gatesweep(["run", "spec.yaml"], tmp_path, cli_env(mlflow_server.uri), timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    assert res.stdout.splitlines()[-1] == f"sweep {name}: 16 finished, 0 not (-); records in runs/{name}"
    assert "running 16" in res.stderr  # all 16 trainers were alive at once
    dirs = trial_dirs(tmp_path, name)
    assert len(dirs) == 16 and all(local_status(d)["status"] == "FINISHED" for d in dirs)
    # no write error: no forwarder ever had to retry a delivery
    failed = [d.name for d in dirs if "MLflow delivery failed" in (d / "stdout.log").read_text()]
    assert failed == [], failed

    runs = experiment_runs(mlflow_server.uri, f"gs-{name}", "trial")
    assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(d.name for d in dirs)  # 16, no duplicate
    assert len(experiment_runs(mlflow_server.uri, f"gs-{name}", "sweep")) == 1
    lost = extra = 0
    for run in runs:
        d = tmp_path / "runs" / name / run.data.tags["trial_id"]
        only_mlflow, only_local = point_diff(mlflow_points(mlflow_server.uri, run.info.run_id), local_points(d / "track"))
        extra, lost = extra + len(only_mlflow), lost + len(only_local)
        assert run.info.status == "FINISHED"
        summary = json.loads((d / "track" / "summary.json").read_text())
        assert run.data.metrics["final_val_loss"] == summary["final_val_loss"]
    points = sum(len(local_points(d / "track")) for d in dirs)
    print(f"\n16 concurrent trials: {points} metric points, {lost} lost, {extra} duplicated or extra", file=sys.stderr)
    assert (lost, extra) == (0, 0), f"{lost} of {points} points lost, {extra} extra"
    assert points == 16 * (3 * N + N // 5 + 1)  # train_loss, lr, step_avg_ms per step; val_loss at 0, 5, ...
