"""Interrupted Ray searches, for real (the module's own local Ray on 127.0.0.1, the CLI as a separate
driver process): SIGKILL of the driver, then a rerun that neither retrains nor duplicates finished
trials; SIGTERM, which stops a search like Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from cluster.common.trialdir import TrialLock, local_status
from tests.test_ray_search import DONE, make_workdir, ray_address, run_cli, sampled, trial_runs, write_spec
from trainer.record import read_json

pytestmark = [pytest.mark.ray, pytest.mark.mlflow, pytest.mark.slow]
__all__ = ["ray_address"]  # the module-scoped fixture: one Ray for this module


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


def test_interrupted_search_resumes_without_rerunning_or_duplicating(ray_address, tmp_path, monkeypatch):
    """SIGKILL the driver (a separate process on the module's Ray) after two trials finished; the rerun
    replays those two from their records and runs the rest; sqlite: the driver is MLflow's only writer."""
    root = make_workdir(tmp_path)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    spec = write_spec(root, "resume", experiment="gs-ray-resume", lrs=[0.03, 0.02, 0.01, 0.005], gates=["none"],
                      max_concurrent=1, base={"num_iterations": 60}, scheduler={"type": "fifo"})
    trials = sampled(spec)
    dirs = [root / "runs" / "resume" / t.trial_id for t in trials]
    log = open(root / "driver.log", "wb")
    driver = subprocess.Popen([sys.executable, "-m", "gatesweep", "run", str(spec), "--backend", "ray",
                               f"backend.ray.address={ray_address}"], cwd=root, stdout=log, stderr=subprocess.STDOUT,
                              env=os.environ.copy(), start_new_session=True)
    finished = lambda: [d for d in dirs if local_status(d)[0] in DONE]  # noqa: E731
    try:
        _wait(lambda: len(finished()) >= 2 or driver.poll() is not None, 180, "two finished trials")
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        log.close()
    # Ray ends the dead driver's actors; a trial cut short lets go of its lock (one may finish meanwhile)
    _wait(lambda: not any(TrialLock(d).held_elsewhere() for d in dirs), 60, "the killed trials to release their locks")
    before = {d.name: ((d / "track" / "metrics.jsonl").read_bytes(), read_json(d / "track" / "mlflow.json")["run_id"])
              for d in finished()}
    assert 2 <= len(before) < len(trials), (root / "driver.log").read_text()[-3000:]

    code, out = run_cli(["run", str(spec), "--backend", "ray"])
    assert code == 0, out
    assert f"{len(before)} recorded earlier and replayed" in out
    for d in dirs:
        assert local_status(d)[0] == "FINISHED", d
    for name, (metrics, run_id) in before.items():  # not trained again, same MLflow run
        d = root / "runs" / "resume" / name
        assert (d / "track" / "metrics.jsonl").read_bytes() == metrics
        assert read_json(d / "track" / "mlflow.json")["run_id"] == run_id
    runs = trial_runs(uri, "gs-ray-resume")
    assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(t.trial_id for t in trials)  # no duplicates
    assert all(r.data.tags["status"] == "FINISHED" and r.info.status == "FINISHED" for r in runs)
    assert all(r.data.metrics["final_val_loss"] > 0 for r in runs)


def test_sigterm_stops_the_search_like_ctrl_c(ray_address, tmp_path, monkeypatch):
    """`kill PID` on the driver: Tune stops the running trial, which records KILLED (it resumes on rerun);
    the sweep run ends KILLED, never-started trials have no MLflow run, the driver exits 130."""
    root = make_workdir(tmp_path)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    spec = write_spec(root, "term", experiment="gs-ray-term", lrs=[0.03, 0.02, 0.01], gates=["none"],
                      max_concurrent=1, base={"num_iterations": 100}, scheduler={"type": "fifo"})
    dirs = [root / "runs" / "term" / t.trial_id for t in sampled(spec)]
    driver = subprocess.Popen([sys.executable, "-m", "gatesweep", "run", str(spec), "--backend", "ray",
                               f"backend.ray.address={ray_address}"], cwd=root, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, env=os.environ.copy(), start_new_session=True, text=True)
    try:
        _wait(lambda: local_status(dirs[0])[0] == "FINISHED" and local_status(dirs[1])[0] == "RUNNING"
              or driver.poll() is not None, 180, "the second trial to run")
        driver.send_signal(signal.SIGTERM)
        out, _ = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 130, out[-3000:]
    assert "interrupted: rerun the same command to resume" in out
    assert [local_status(d)[0] for d in dirs] == ["FINISHED", "KILLED", ""]
    assert "rerun the search to resume" in local_status(dirs[1])[1]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("gs-ray-term")
    sweep = client.search_runs([exp.experiment_id], "tags.`gatesweep.kind` = 'sweep'")
    assert [r.info.status for r in sweep] == ["KILLED"]
    runs = {r.data.tags["trial_id"]: r for r in trial_runs(uri, "gs-ray-term")}
    assert sorted(runs) == sorted(d.name for d in dirs[:2])  # the third never started: no run, as on local
    assert runs[dirs[1].name].data.tags["status"] == "KILLED" and runs[dirs[1].name].info.status == "KILLED"
