"""A launcher that dies, or two that run at once (issue #16, items 1 and 2), on the local backend with
the default sqlite store (the launcher is its single writer).

- `gatesweep run` SIGKILLed right after a trial's trainer wrote FINISHED, before the launcher delivered
  the record: the rerun (even one with nothing left to train) delivers it and retires the dead sweep run.
  The kill is a real SIGKILL, sent by the launcher to itself at that point (a wrapper around the
  runner's delivery).
- Two launchers of one spec at once: each trial trains exactly once, none is left QUEUED in MLflow.
"""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

from tests.sweep_helpers import (
    PYTHON,
    cli_env,
    experiment_runs,
    gatesweep,
    gatesweep_popen,
    local_status,
    results_rows,
    trial_dirs,
    unique,
    write_data,
    write_spec,
)

# `python -c KILL_AFTER_END ARGS...`: `gatesweep ARGS`, SIGKILLed by itself at its first delivery of a
# record that says FINISHED (the trainer has ended, or is exiting), before the record goes to MLflow.
KILL_AFTER_END = """
import os, signal, sys
import cluster.local.runner as runner
from cluster.common.trialdir import local_status
deliver = runner._deliver
def die_when_ended(s, store, *, ended, **kw):
    if ended or local_status(s.run_dir)[0] == "FINISHED":
        os.kill(os.getpid(), signal.SIGKILL)
    return deliver(s, store, ended=ended, **kw)
runner._deliver = die_when_ended
from gatesweep.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _killed_after_end(cwd: Path, name: str, **spec: object) -> None:
    write_data(cwd)
    write_spec(cwd / "spec.yaml", name, base={"num_iterations": 6}, **spec)  # type: ignore[arg-type]
    res = subprocess.run([PYTHON, "-c", KILL_AFTER_END, "run", "spec.yaml"], cwd=cwd, env=cli_env(),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == -signal.SIGKILL, res.stdout + res.stderr


def _uri(cwd: Path) -> str:
    return f"sqlite:///{cwd}/mlflow.db"


def _assert_delivered(cwd: Path, name: str) -> None:
    trials = experiment_runs(_uri(cwd), f"gs-{name}", "trial")
    assert len(trials) == len(trial_dirs(cwd, name))
    for r in trials:
        assert (r.info.status, r.data.tags["status"]) == ("FINISHED", "FINISHED"), r.data.tags
        assert "final_val_loss" in r.data.metrics
    assert all(r.info.status != "RUNNING" for r in experiment_runs(_uri(cwd), f"gs-{name}", "sweep"))


def test_a_rerun_with_nothing_to_train_delivers_and_retires(tmp_path: Path):
    name = unique("undelivered")
    _killed_after_end(tmp_path, name, grid={"attn_gate": ["none"]}, seeds=[0])
    (d,) = trial_dirs(tmp_path, name)
    assert local_status(d)["status"] == "FINISHED"
    (trial,) = experiment_runs(_uri(tmp_path), f"gs-{name}", "trial")
    assert trial.data.tags["status"] == "QUEUED" and "final_val_loss" not in trial.data.metrics
    (sweep,) = experiment_runs(_uri(tmp_path), f"gs-{name}", "sweep")
    assert sweep.info.status == "RUNNING"

    res = gatesweep(["run", "spec.yaml"], tmp_path, cli_env())
    assert res.returncode == 0, res.stdout + res.stderr
    assert "nothing to run: 1/1 trials finished" in res.stdout
    assert "a sweep run left RUNNING by a dead launcher was marked KILLED" in res.stdout
    _assert_delivered(tmp_path, name)
    (sweep,) = experiment_runs(_uri(tmp_path), f"gs-{name}", "sweep")
    assert sweep.info.status == "KILLED"


def test_a_rerun_with_trials_left_delivers_the_finished_ones_too(tmp_path: Path):
    name = unique("undelivered2")
    _killed_after_end(tmp_path, name, grid={"attn_gate": ["none", "headwise"]}, seeds=[0], max_parallel=1)
    res = gatesweep(["run", "spec.yaml"], tmp_path, cli_env())
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.splitlines()[-1] == f"sweep {name}: 1 finished, 0 not (-); records in runs/{name}"
    _assert_delivered(tmp_path, name)


def test_two_launchers_at_once_train_each_trial_once(tmp_path: Path):
    """A fresh directory (no mlflow.db yet): both create the store, both walk the same 4 trials."""
    name = unique("twice")
    write_data(tmp_path)
    write_spec(tmp_path / "spec.yaml", name, base={"num_iterations": 10}, max_parallel=2)
    procs = [gatesweep_popen(["run", "spec.yaml"], tmp_path, cli_env()) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    trained = 0
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, out + err
        assert "Traceback" not in err, err
        trained += int(re.search(rf"^sweep {name}: (\d+) finished, 0 not", out, re.M)[1])  # type: ignore[index]
    assert trained == 4, outs
    dirs = trial_dirs(tmp_path, name)
    assert len(dirs) == 4 and all(local_status(d)["status"] == "FINISHED" for d in dirs)
    assert sorted(r["run_id"] for r in results_rows(tmp_path)) == sorted(d.name for d in dirs)  # trained once each
    _assert_delivered(tmp_path, name)  # one run per trial, none left QUEUED, no sweep run left RUNNING


def test_a_trial_that_fails_twice_says_failed_not_queued(tmp_path: Path):
    """The launcher sets a rerun trial's status tag to QUEUED; the record's end must be sent again even
    when it is the same as the last attempt's (it used to stay QUEUED)."""
    name = unique("failtwice")
    write_data(tmp_path)
    write_spec(tmp_path / "spec.yaml", name, grid={"learning_rate": [1e20]}, seeds=[0])
    for _ in range(2):
        res = gatesweep(["run", "spec.yaml"], tmp_path, cli_env())
        assert res.returncode == 1, res.stdout + res.stderr
        (run,) = experiment_runs(_uri(tmp_path), f"gs-{name}", "trial")
        assert (run.info.status, run.data.tags["status"]) == ("FAILED", "FAILED"), run.data.tags
