"""A crashed sweep runner: `gatesweep run` SIGKILLed mid-sweep, together with one of its trainers.

What the local launcher promises, end to end: its trainers die with it (PR_SET_PDEATHSIG -> SIGTERM ->
checkpoint -> KILLED), a trainer still alive keeps its trial's lock (the flock fd it inherited), so
a rerun leaves that trial alone; a trial whose process died hard is left RUNNING, and the rerun marks
it (and the dead launcher's sweep run) KILLED and runs it again from its last checkpoint. In the end
every trial finished exactly once, in exactly one MLflow run.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from tests.sweep_helpers import (
    alive,
    cli_env,
    experiment_runs,
    gatesweep,
    gatesweep_popen,
    last_logged_step,
    local_status,
    results_rows,
    trainers,
    trial_dirs,
    unique,
    wait_until,
    write_data,
    write_spec,
)

pytestmark = pytest.mark.mlflow
N = 150


def test_sigkilled_runner_loses_no_trial_and_duplicates_no_run(tmp_path: Path, mlflow_server):
    name = unique("crash")
    experiment = f"gs-{name}"
    write_data(tmp_path)
    write_spec(tmp_path / "spec.yaml", name, base={"num_iterations": N, "warmdown_iters": 20, "val_every": 50,
                                                   "checkpoint_every": 10})
    env = cli_env(mlflow_server.uri)
    runner = gatesweep_popen(["run", "spec.yaml"], tmp_path, env)
    runs_dir = tmp_path / "runs" / name
    wait_until(lambda: len(trainers(runner.pid)) == 2 and len(list(runs_dir.glob("*/logs"))) == 2
               and all(last_logged_step(d.parent) >= 12 for d in runs_dir.glob("*/logs")),
               120, "two trainers past their step-10 checkpoint")
    (paused, paused_id), (hard, hard_id) = trainers(runner.pid).items()
    os.kill(paused, signal.SIGSTOP)  # keeps the PDEATHSIG SIGTERM pending, and its lock held
    os.kill(hard, signal.SIGKILL)  # dies without a word: its record stays RUNNING
    runner.kill()
    runner.communicate()
    wait_until(lambda: not alive(hard), 30, "the SIGKILLed trainer to go")
    assert local_status(runs_dir / hard_id)["status"] == "RUNNING"
    assert local_status(runs_dir / paused_id)["status"] == "RUNNING"
    (dead_parent,) = experiment_runs(mlflow_server.uri, experiment, "sweep")
    assert dead_parent.info.status == "RUNNING"

    # rerun 1: the stale trial is marked KILLED and resumed; the paused one is left alone (lock held)
    res = gatesweep(["run", "spec.yaml"], tmp_path, env)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout.splitlines()
    assert "1 trial(s) left RUNNING by a dead process: marked KILLED, running again" in out
    assert "1 trial(s) are running in another process; leaving them alone" in out
    assert "a sweep run left RUNNING by a dead launcher was marked KILLED" in out
    assert out[-1] == f"sweep {name}: 3 finished, 0 not (-); records in runs/{name}"
    assert alive(paused) and local_status(runs_dir / paused_id)["status"] == "RUNNING"
    hard_log = (runs_dir / hard_id / "logs" / f"{hard_id}.txt").read_text()
    assert re.search(rf"resumed from step [1-9]\d*0 \(runs/{name}/{hard_id}/checkpoints/", hard_log), hard_log[-500:]

    # the paused trainer continues: the launcher's death reached it as SIGTERM, it checkpoints and stops
    os.kill(paused, signal.SIGCONT)
    wait_until(lambda: not alive(paused), 60, "the paused trainer to stop")
    st = local_status(runs_dir / paused_id)
    m = re.fullmatch(r"stopped by signal SIGTERM at step (\d+); checkpoint saved", st["reason"])
    assert st["status"] == "KILLED" and m, st

    # rerun 2 resumes it
    res = gatesweep(["run", "spec.yaml"], tmp_path, env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.splitlines()[0] == "skipping 3 finished trial(s)"
    assert res.stdout.splitlines()[-1] == f"sweep {name}: 1 finished, 0 not (-); records in runs/{name}"
    assert f"resumed from step {m[1]} " in (runs_dir / paused_id / "logs" / f"{paused_id}.txt").read_text()

    # 0 lost trials, 0 duplicates: 4 records, 4 result rows, 4 runs, one per trial id
    dirs = trial_dirs(tmp_path, name)
    assert len(dirs) == 4 and all(local_status(d)["status"] == "FINISHED" for d in dirs)
    assert sorted(r["run_id"] for r in results_rows(tmp_path)) == sorted(d.name for d in dirs)
    trials = experiment_runs(mlflow_server.uri, experiment, "trial")
    assert sorted(r.data.tags["trial_id"] for r in trials) == sorted(d.name for d in dirs)
    assert all(r.info.status == "FINISHED" and r.data.tags["status"] == "FINISHED" for r in trials)
    sweeps = {r.info.run_id: r for r in experiment_runs(mlflow_server.uri, experiment, "sweep")}
    assert len(sweeps) == 3
    retired = sweeps.pop(dead_parent.info.run_id)
    assert retired.info.status == "KILLED"
    assert re.fullmatch(rf"launcher pid {runner.pid} on \S+ died", retired.data.tags["failure_reason"])
    assert [r.info.status for r in sweeps.values()] == ["FINISHED", "FINISHED"]
