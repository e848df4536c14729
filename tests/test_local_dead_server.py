"""A tracking server that goes away for good does not serialise a local sweep: once the launcher has
found it unreachable, the trainers it starts end as soon as they have trained (their records stay local)
instead of each waiting GATESWEEP_SYNC_TIMEOUT for the server; `gatesweep sync` delivers them later."""

from __future__ import annotations

import json
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
    local_status,
    trainers,
    trial_dirs,
    unique,
    wait_until,
    write_data,
    write_spec,
)

pytestmark = pytest.mark.mlflow
SYNC_TIMEOUT = 20  # what each trainer would wait for the server at its end


def exit_lag(run_dir: Path) -> float:
    """Seconds between the trainer's final status and its last output line (printed after the wait)."""
    status = json.loads((run_dir / "track" / "status.json").read_text())["time"]
    return (run_dir / "stdout.log").stat().st_mtime - status


def test_trainers_started_after_the_server_died_do_not_wait_for_it(tmp_path: Path, mlflow_server):
    name = unique("deadsrv")
    write_data(tmp_path)
    write_spec(tmp_path / "spec.yaml", name, seeds=[0, 1], max_parallel=1, base={"num_iterations": 40, "val_every": 0})
    env = cli_env(mlflow_server.uri, GATESWEEP_SYNC_TIMEOUT=str(SYNC_TIMEOUT))
    proc = gatesweep_popen(["run", "spec.yaml"], tmp_path, env)
    try:
        first = wait_until(lambda: next((p for p, t in trainers(proc.pid).items()
                                         if last_logged_step(tmp_path / "runs" / name / t) >= 2), None),
                           120, "the first trial to train")
        os.kill(first, signal.SIGSTOP)  # the server goes away while the first trial trains
        try:
            mlflow_server.stop()
        finally:
            os.kill(first, signal.SIGCONT)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
        mlflow_server.start()
    assert proc.returncode == 0, out + err
    dirs = trial_dirs(tmp_path, name)
    assert len(dirs) == 4 and all(local_status(d)["status"] == "FINISHED" for d in dirs)
    lags = sorted(exit_lag(d) for d in dirs)
    # the first trainer was started while the server answered: it alone waits for it
    assert lags[-2] < SYNC_TIMEOUT / 2, lags
    assert f"gatesweep sync runs/{name}" in err
    res = gatesweep(["sync"], tmp_path, cli_env(mlflow_server.uri))
    assert res.returncode == 0, res.stdout + res.stderr
    runs = experiment_runs(mlflow_server.uri, f"gs-{name}", "trial")
    assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(d.name for d in dirs)
    assert {r.data.tags["status"] for r in runs} == {"FINISHED"}
