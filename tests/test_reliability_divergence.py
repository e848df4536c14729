"""Divergence: a trial whose loss goes non-finite (a real one: learning_rate=1e20 overflows the weights
within a few steps) ends FAILED with "non-finite loss at step N", the sweep goes on with the next
trial, MLflow records the failure, and `gatesweep table` counts it as failed."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest

from tests.sweep_helpers import (
    cli_env,
    experiment_runs,
    gatesweep,
    local_status,
    results_rows,
    trial_dirs,
    unique,
    write_data,
    write_spec,
)

pytestmark = pytest.mark.mlflow


def test_diverging_trial_fails_cleanly_and_the_sweep_continues(tmp_path: Path, mlflow_server):
    name = unique("diverge")
    write_data(tmp_path)
    # seed-major order, one at a time: the diverging trial runs first, the sweep must go on after it
    write_spec(tmp_path / "spec.yaml", name, grid={"learning_rate": [1e20, 0.02]}, seeds=[0], max_parallel=1)
    env = cli_env(mlflow_server.uri)
    res = gatesweep(["run", "spec.yaml"], tmp_path, env)
    assert res.returncode == 1, res.stdout + res.stderr  # not every trial finished
    by_lr = {}
    for d in trial_dirs(tmp_path, name):
        lr = float(re.search(r'"learning_rate": ([^,\n]+)', (d / "trial.json").read_text())[1])
        by_lr[lr] = d
    bad, good = by_lr[1e20], by_lr[0.02]
    st = local_status(bad)
    m = re.fullmatch(r"non-finite loss at step (\d+)", st["reason"])
    assert st["status"] == "FAILED" and m, st
    # the sweep's last line says which trial did not finish and why (issue #24 item 8)
    label = json.loads((bad / "trial.json").read_text())["trial"]["label"]
    assert res.stdout.splitlines()[-1] == (f"sweep {name}: 1 finished, 1 not (FAILED {bad.name} ({label} seed=0): "
                                           f"{st['reason']}); records in runs/{name}")
    step = int(m[1])
    assert 1 <= step <= 20
    log = (bad / "logs" / f"{bad.name}.txt").read_text()
    assert f"step:{step}/20 train_loss:nan non-finite loss at step {step}" in log
    assert local_status(good)["status"] == "FINISHED"
    assert [r["run_id"] for r in results_rows(tmp_path)] == [good.name]  # a failed trial is not a result

    runs = {r.data.tags["trial_id"]: r for r in experiment_runs(mlflow_server.uri, f"gs-{name}", "trial")}
    assert set(runs) == {bad.name, good.name}
    assert runs[bad.name].info.status == "FAILED"
    assert runs[bad.name].data.tags["status"] == "FAILED"
    assert runs[bad.name].data.tags["failure_reason"] == f"non-finite loss at step {step}"
    assert runs[good.name].info.status == "FINISHED"
    (parent,) = experiment_runs(mlflow_server.uri, f"gs-{name}", "sweep")
    assert parent.info.status == "FINISHED"  # the sweep itself ran to its end

    res = gatesweep(["table", "spec.yaml", "--format", "csv"], tmp_path, env)
    assert res.returncode == 0, res.stderr
    rows = {float(r["learning_rate"]): r for r in csv.DictReader(io.StringIO(res.stdout))}
    assert (rows[1e20]["n"], rows[1e20]["failed"], rows[1e20]["final_val_loss"]) == ("0", "1", "")
    assert (rows[0.02]["n"], rows[0.02]["failed"]) == ("1", "0")
    res = gatesweep(["table", "spec.yaml"], tmp_path, env)  # the console table too
    assert res.returncode == 0, res.stderr
    assert "Excluded from the statistics: 1 failed run(s), 0 early-stopped run(s)." in res.stdout, res.stdout
