"""Tracking outage: the real MLflow server stopped mid-sweep.

Two sweeps (2 trials each, one at a time) share one outage that starts while their first trials train:
- "restarted": the server comes back while the second trial trains. That trial was started during the
  outage (the launcher could not create its run; the trainer creates it itself), the first one ended
  during it (its trainer gave up; the launcher delivers its record once the server answers).
- "gone for good": the sweep ends with the server still down; every trial finishes with its local
  record, then `gatesweep sync` delivers the records and the sweep run's end.
Either way: training finished, every metric point reaches MLflow exactly once, one run per trial.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.sweep_helpers import (
    cli_env,
    experiment_runs,
    gatesweep,
    gatesweep_popen,
    last_logged_step,
    local_points,
    local_status,
    mlflow_points,
    point_diff,
    trainers,
    trial_dirs,
    unique,
    wait_until,
    write_data,
    write_spec,
)

pytestmark = pytest.mark.mlflow
N = 200


def _sweep(tmp: Path, label: str) -> tuple[Path, str]:
    cwd = tmp / label
    cwd.mkdir()
    name = unique(label)
    write_data(cwd)
    write_spec(cwd / "spec.yaml", name, seeds=[0], max_parallel=1,
               base={"num_iterations": N, "warmdown_iters": 20, "val_every": 50})
    return cwd, name


def _trainer_of(cwd: Path, name: str, launcher: int) -> tuple[int, str] | None:
    """(pid, trial id) of the trial the launcher runs now, once it has trained 5 steps."""
    for pid, tid in trainers(launcher).items():
        if last_logged_step(cwd / "runs" / name / tid) >= 5:
            return pid, tid
    return None


def _assert_delivered(uri: str, cwd: Path, name: str) -> list:
    """One FINISHED run per trial, each holding exactly the points of its local record."""
    dirs = trial_dirs(cwd, name)
    runs = experiment_runs(uri, f"gs-{name}", "trial")
    assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(d.name for d in dirs) and len(dirs) == 2
    for run in runs:
        d = cwd / "runs" / name / run.data.tags["trial_id"]
        assert local_status(d)["status"] == "FINISHED"
        assert (run.info.status, run.data.tags["status"]) == ("FINISHED", "FINISHED")
        assert point_diff(mlflow_points(uri, run.info.run_id), local_points(d / "track")) == ([], [])
        assert sorted(s for k, s, _, _ in mlflow_points(uri, run.info.run_id, ["train_loss"])) == list(range(1, N + 1))
    return runs


def _resume(*pids: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def test_server_outage_mid_sweep(tmp_path: Path, mlflow_server):
    back, back_name = _sweep(tmp_path, "restarted")
    gone, gone_name = _sweep(tmp_path, "gone")
    # trainers give up on the server 2 s after training (the default waits 30 s): records stay local
    env = cli_env(mlflow_server.uri, GATESWEEP_SYNC_TIMEOUT="2")
    procs = {cwd: gatesweep_popen(["run", "spec.yaml"], cwd, env) for cwd in (back, gone)}
    wait_until(lambda: _trainer_of(back, back_name, procs[back].pid) and _trainer_of(gone, gone_name, procs[gone].pid),
               120, "both sweeps' first trials to train 5 steps")
    first_back = _trainer_of(back, back_name, procs[back].pid)
    first_gone = _trainer_of(gone, gone_name, procs[gone].pid)
    assert first_back and first_gone
    # the outage starts while both first trials train (the premise of everything below): hold them while
    # the server goes down, so a fast machine cannot finish them first
    for pid, _ in (first_back, first_gone):
        os.kill(pid, signal.SIGSTOP)
    try:
        mlflow_server.stop()
        assert all(last_logged_step(cwd / "runs" / n / t[1]) < N for cwd, n, t in
                   ((back, back_name, first_back), (gone, gone_name, first_gone))), "a first trial finished too soon"
        _resume(first_back[0], first_gone[0])
        # "restarted": its second trial starts during the outage; hold it until the server is back
        second = wait_until(lambda: (t := _trainer_of(back, back_name, procs[back].pid)) and t != first_back and t,
                            120, "the second trial to start during the outage")
        os.kill(second[0], signal.SIGSTOP)
        out_gone, err_gone = procs[gone].communicate(timeout=240)  # "gone for good" ends during the outage
    finally:
        _resume(first_back[0], first_gone[0])  # never leave a trainer stopped, whatever failed
        mlflow_server.start()
    os.kill(second[0], signal.SIGCONT)
    out_back, err_back = procs[back].communicate(timeout=240)

    # restarted: finished, and everything delivered without any help
    assert procs[back].returncode == 0, out_back + err_back
    assert f"warning: MLflow unreachable while starting trial {second[1]}" in err_back
    runs = _assert_delivered(mlflow_server.uri, back, back_name)
    (parent,) = experiment_runs(mlflow_server.uri, f"gs-{back_name}", "sweep")
    assert parent.info.status == "FINISHED"
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}

    # gone for good: finished locally, told the user how to deliver, and `gatesweep sync` did
    assert procs[gone].returncode == 0, out_gone + err_gone
    assert out_gone.splitlines()[-1] == f"sweep {gone_name}: 2 finished, 0 not (-); records in runs/{gone_name}"
    assert f"gatesweep sync runs/{gone_name}" in err_gone
    dirs = trial_dirs(gone, gone_name)
    assert all(local_status(d)["status"] == "FINISHED" for d in dirs)
    res = gatesweep(["sync"], gone, cli_env(mlflow_server.uri))
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.splitlines()[-1] == "sync: 2 record(s) delivered, 0 failed, 0 already up to date"
    runs = _assert_delivered(mlflow_server.uri, gone, gone_name)
    (parent,) = experiment_runs(mlflow_server.uri, f"gs-{gone_name}", "sweep")
    assert f"sweep run {parent.info.run_id} marked FINISHED" in res.stdout
    assert parent.info.status == "FINISHED"
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}
    # a second sync has nothing left to do
    res = gatesweep(["sync"], gone, cli_env(mlflow_server.uri))
    assert res.stdout == "sync: 0 record(s) delivered, 0 failed, 2 already up to date\n"
