"""A node lost mid-trial on the multi-node Slurm (#23 item 4). Killing a node here is what a power cut
does to it: SIGKILL to every process on that host (its slurmd, the job's steps, the trainer), then the
node is marked DOWN, as slurmctld does when the node stops answering (SlurmdTimeout; the test does not
wait for it). Slurm requeues the job (--requeue); it starts on another node and the trainer resumes
from its last periodic checkpoint (checkpoint_every) - no signal, no final checkpoint."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys

import pytest
import torch

import cluster.slurm.wait
from cluster.common.trialdir import RUNS_ROOT
from sweeps.expand import expand
from sweeps.spec import load_spec
from tests.multinode_helpers import kill_node, mark_down, node_state, restore_nodes
from tests.slurm_helpers import (
    gatesweep,
    job_id,
    job_log,
    last_step,
    sacct,
    squeue,
    status,
    unique,
    wait_until,
    write_data,
    write_spec,
)
from tests.test_reliability_resume import assert_equal_nested
from trainer.record import read_json

pytestmark = [pytest.mark.slurm, pytest.mark.mlflow]
N, EVERY = 160, 20
BASE = {"num_iterations": N, "val_every": 40, "warmdown_iters": 40, "checkpoint_every": EVERY, "save_final": True}


def _running_node(job: str) -> str:
    wait_until(lambda: squeue(job)[0] == "RUNNING", 300, f"job {job} to run")
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%N"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def _attempts(job: str) -> list[tuple[str, str]]:
    out = subprocess.run(["sacct", "-X", "-n", "-P", "--duplicates", "-o", "State,NodeList", "-j", job],
                         capture_output=True, text=True, check=True).stdout
    return [tuple(line.split("|")) for line in out.splitlines() if line]  # type: ignore[misc]


def _lose(node: str, run_dir, at_step: int) -> int:
    """Train past a checkpoint, then kill the node; the step the trial had reached."""
    wait_until(lambda: last_step(run_dir) >= at_step, 300, f"the trial to train {at_step} steps")
    killed = kill_node(node)
    reached = last_step(run_dir)
    mark_down(node, "gatesweep test: node lost")
    assert killed and "DOWN" in node_state(node)
    return reached


def test_multinode_lost_node_requeues_and_resumes_bitwise(multinode, mlflow_env, tmp_path, monkeypatch):
    monkeypatch.setattr(cluster.slurm.wait, "POLL_S", 1.0)
    monkeypatch.chdir(tmp_path)
    write_data(tmp_path)
    lost, reference = unique("mn-lost"), unique("mn-ref")
    write_spec(tmp_path / "lost.yaml", lost, gates=["headwise"], base=BASE, resources={"gpus_per_node": 1})
    code, _, err = gatesweep(["run", "lost.yaml"])
    assert code == 0, err
    (trial,) = expand(load_spec(tmp_path / "lost.yaml"))
    run_dir, ref_dir = RUNS_ROOT / lost / trial.trial_id, RUNS_ROOT / reference / trial.trial_id
    job = job_id(run_dir)
    node = _running_node(job)
    # the same trial, uninterrupted, on another node (its own results file: a run_id gets one row per file)
    write_spec(tmp_path / "ref.yaml", reference, gates=["headwise"], resources={"gpus_per_node": 1},
               base=BASE | {"results_csv": "experiments/reference.csv"}, slurm={"extra": {"exclude": node}})
    code, _, err = gatesweep(["run", "ref.yaml"])
    assert code == 0, err
    try:
        _lose(node, run_dir, EVERY * 2 + 5)
        # the requeued job waits for the lost run's credential to expire (cred_expire=30 s): time to look
        saved = torch.load(run_dir / "checkpoints" / trial.trial_id / "latest.pt", weights_only=False)["step"]
        assert saved >= EVERY * 2 and saved % EVERY == 0
        # the job is requeued under its id and starts on a node that is up
        code, out, err = gatesweep(["run", "lost.yaml", "--wait"])
        assert code == 0, err + job_log(run_dir)
        assert "submitted" not in out  # followed, never submitted a second time
        code, out, err = gatesweep(["run", "ref.yaml", "--wait"])
        assert code == 0, err + job_log(ref_dir)
    finally:
        restore_nodes(multinode)
    assert status(run_dir) == status(ref_dir) == "FINISHED" and job_id(run_dir) == job
    attempts = wait_until(lambda: (a := _attempts(job))[-1:] and a[-1][0] == "COMPLETED" and a, 60,
                          "sacct to record the job's end")
    assert [a[0] for a in attempts] == ["NODE_FAIL", "COMPLETED"] and attempts[0][1] == node
    assert attempts[1][1] in multinode.nodes and attempts[1][1] != node  # another node
    log = (run_dir / "logs" / f"{trial.trial_id}.txt").read_text()
    resumed = [int(s) for s in re.findall(r"^resumed from step (\d+)", log, re.MULTILINE)]
    assert resumed == [saved]  # from the last checkpoint the lost node had written
    assert read_json(run_dir / "track" / "tags.json")["host"] == attempts[1][1]

    final = read_json(run_dir / "track" / "summary.json")["final_val_loss"]
    assert final == read_json(ref_dir / "track" / "summary.json")["final_val_loss"]  # bitwise
    a, b = (torch.load(d / "checkpoints" / trial.trial_id / "latest.pt", weights_only=False) for d in (run_dir, ref_dir))
    assert a["step"] == b["step"] == N and a["loader_drawn"] == b["loader_drawn"]
    for key in ("model", "adam", "muon", "val_history", "best_val_loss"):
        assert_equal_nested(a[key], b[key], key)

    # one MLflow run; the steps trained twice (after the checkpoint, before the loss) have the same values
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_env)
    exp = client.get_experiment_by_name(f"gs-{lost}")
    (run,) = client.search_runs([exp.experiment_id], f"tags.trial_id = '{trial.trial_id}'")
    assert run.info.status == "FINISHED" and run.data.metrics["final_val_loss"] == pytest.approx(final)
    points: dict[int, set[float]] = {}
    for m in client.get_metric_history(run.info.run_id, "train_loss"):
        points.setdefault(m.step, set()).add(m.value)
    assert sorted(points) == list(range(1, N + 1)) and all(len(v) == 1 for v in points.values())
    with open(tmp_path / "experiments" / "results.csv") as f:
        assert [row["run_id"] for row in csv.DictReader(f)] == [trial.trial_id]  # one results row


def test_multinode_node_lost_while_waiting_then_rerun_finishes(multinode, mlflow_env, tmp_path, monkeypatch):
    """max_requeues: 0 - no requeue allowed: the launcher waiting with --wait sees the trial end KILLED
    with a line that says why, exit 1; `gatesweep run` then resubmits it and it resumes."""
    monkeypatch.chdir(tmp_path)
    write_data(tmp_path)
    name = unique("mn-wait")
    write_spec(tmp_path / "spec.yaml", name, gates=["none"], base=BASE, resources={"gpus_per_node": 1},
               slurm={"max_requeues": 0})
    (trial,) = expand(load_spec(tmp_path / "spec.yaml"))
    run_dir = RUNS_ROOT / name / trial.trial_id
    launcher = subprocess.Popen([sys.executable, "-m", "gatesweep", "run", "spec.yaml", "--wait"], cwd=tmp_path,
                                env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: (run_dir / "slurm.json").exists(), 120, "the submission")
        job = job_id(run_dir)
        node = _running_node(job)
        _lose(node, run_dir, EVERY + 5)
        out, _ = launcher.communicate(timeout=400)
    finally:
        if launcher.poll() is None:
            launcher.kill()
        restore_nodes(multinode)
    assert launcher.returncode == 1, out
    assert re.search(rf"^sweep {name}: 0 finished, 1 not \(.*KILLED", out, re.MULTILINE), out
    record = read_json(run_dir / "track" / "status.json")
    assert record["status"] == "KILLED" and "more than max_requeues=0" in record["reason"], record
    assert "resumes it" in record["reason"]
    assert [a[0] for a in _attempts(job)][0] == "NODE_FAIL"

    monkeypatch.setattr(cluster.slurm.wait, "POLL_S", 1.0)
    code, out, err = gatesweep(["run", "spec.yaml", "--wait"])
    assert code == 0, err + job_log(run_dir)
    assert "submitted 1 trial(s)" in out and status(run_dir) == "FINISHED" and job_id(run_dir) != job
    log = (run_dir / "logs" / f"{trial.trial_id}.txt").read_text()
    assert re.findall(r"^resumed from step (\d+)", log, re.MULTILINE)  # from the checkpoint the lost node left
    assert sacct([job_id(run_dir)], settle_s=60)[0]["state"] == "COMPLETED"
