"""A tracking server that hangs, not dies (issue #25 item 3): a real `mlflow server` SIGSTOPped after 2 of 6
short trials started made the local sweep take 347 s instead of 15 s - every request of the launcher
waited 20 s three times, inside the loop that starts trials, before the 30 s back-off began.

Now every request has a deadline (5 s, no retries), the first timeout starts the back-off, records of
ended trials go by a courier thread off the loop's path, and a trainer waits at most 5 s for the server
at its end. The sweep ends about as soon as its trials have trained; once the server runs again,
`gatesweep sync` delivers every record exactly once. (bench/hung_server.py measures the same sweep
with a healthy and a stopped server side by side.)
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import MlflowServer
from tests.sweep_helpers import (
    cli_env,
    experiment_runs,
    gatesweep,
    gatesweep_popen,
    kill_tree,
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
# The sweep after the stop: 4 more trials of a few seconds each, two at a time, on a loaded 2-core
# machine. Before the fix it took ~330 s more than with a healthy server.
BOUND_S = 150


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[MlflowServer]:
    """A server of this test alone (stopping the session's would stall other tests); never left stopped."""
    server = MlflowServer(tmp_path / "mlflow")
    server.start()
    try:
        yield server
    finally:
        if server._proc is not None:
            try:
                os.killpg(server._proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        server.stop()


def six_trial_spec(cwd: Path) -> str:
    name = unique("hung")
    write_data(cwd)
    write_spec(cwd / "spec.yaml", name, base={"num_iterations": 30, "warmdown_iters": 5, "val_every": 10},
               grid={"attn_gate": ["none", "headwise", "elementwise"]}, seeds=[0, 1], max_parallel=2)
    return name


def test_a_stopped_server_does_not_hold_up_the_sweep(tmp_path: Path, own_server: MlflowServer):
    name = six_trial_spec(tmp_path)
    proc = gatesweep_popen(["run", "spec.yaml"], tmp_path, cli_env(own_server.uri))
    try:
        wait_until(lambda: len(trainers(proc.pid)) == 2, 180, "the first two trials to start")
        assert own_server._proc is not None
        os.killpg(own_server._proc.pid, signal.SIGSTOP)  # hung: it accepts connections and answers nothing
        stopped = time.monotonic()
        try:
            out, err = proc.communicate(timeout=BOUND_S)
        except Exception:
            kill_tree(proc)
            out, err = proc.communicate()
            raise AssertionError(f"the sweep did not end {BOUND_S} s after the server stopped:\n{out}\n{err}") from None
        wall = time.monotonic() - stopped
    finally:
        if proc.poll() is None:
            kill_tree(proc)
        os.killpg(own_server._proc.pid, signal.SIGCONT)
    print(f"\nsweep ended {wall:.1f} s after the server was stopped", flush=True)
    assert proc.returncode == 0, out + err
    dirs = trial_dirs(tmp_path, name)
    assert len(dirs) == 6 and all(local_status(d)["status"] == "FINISHED" for d in dirs)
    assert f"gatesweep sync runs/{name}" in err, err

    # the server back: every record delivered, one run per trial, each point once
    res = gatesweep(["sync"], tmp_path, cli_env(own_server.uri))
    assert res.returncode == 0, res.stdout + res.stderr
    runs = experiment_runs(own_server.uri, f"gs-{name}", "trial")
    assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(d.name for d in dirs)
    for run in runs:
        track = tmp_path / "runs" / name / run.data.tags["trial_id"] / "track"
        assert (run.info.status, run.data.tags["status"]) == ("FINISHED", "FINISHED")
        assert point_diff(mlflow_points(own_server.uri, run.info.run_id), local_points(track)) == ([], [])
