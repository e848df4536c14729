"""Preemption on the real Slurm: a trial stopped mid-run by Slurm's warning signal (SIGUSR2, as
`--signal=USR2@<delay>` sends it before the time limit) checkpoints, is requeued through submitit's
checkpoint protocol, resumes from its checkpoint and ends with the same final val loss as the same
trial run without interruption - in one MLflow run, not two."""

from __future__ import annotations

import re
import subprocess
import time

import pytest
import torch

import cluster.slurm.wait
from cluster.common.trialdir import RUNS_ROOT
from sweeps.expand import expand
from sweeps.spec import load_spec
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
N = 240


def test_requeued_trial_resumes_and_matches_an_uninterrupted_one(slurm_cluster, mlflow_env, tmp_path, monkeypatch):
    monkeypatch.setattr(cluster.slurm.wait, "POLL_S", 1.0)
    monkeypatch.chdir(tmp_path)
    write_data(tmp_path)
    base = {"num_iterations": N, "val_every": 60, "warmdown_iters": 60, "save_final": True}
    interrupted, reference = unique("requeue"), unique("reference")
    for name in (interrupted, reference):  # the same trial (same id and config) in two sweeps
        write_spec(tmp_path / f"{name}.yaml", name, gates=["elementwise"], base=base)
        code, _, err = gatesweep(["run", f"{name}.yaml"])
        assert code == 0, err
    (trial,) = expand(load_spec(tmp_path / f"{interrupted}.yaml"))
    run_dir, ref_dir = RUNS_ROOT / interrupted / trial.trial_id, RUNS_ROOT / reference / trial.trial_id
    job = job_id(run_dir)

    wait_until(lambda: last_step(run_dir) >= 30, 300, "the trial to train 30 steps")
    subprocess.run(["scancel", "--signal=USR2", job], check=True)  # what Slurm sends before the time limit
    wait_until(lambda: squeue(job)[0] == "PENDING" and status(run_dir) == "QUEUED", 60, "the job to be requeued")
    stopped_at = last_step(run_dir)
    assert 30 <= stopped_at < N
    # Slurm holds a requeued job until the credential of its last run expires (120 s by default), so
    # that slurmd does not refuse the new launch as "Job credential revoked"; slurmd compares whole
    # seconds, so a start 2 s after the kill is safe and the test need not wait the 120 s out.
    time.sleep(2)
    subprocess.run(["scontrol", "update", f"jobid={job}", "starttime=now"], check=True)

    for name in (interrupted, reference):
        code, out, err = gatesweep(["run", f"{name}.yaml", "--wait"])
        assert code == 0, err + job_log(run_dir)
        assert "submitted" not in out  # followed (or found finished), never submitted a second time
    assert status(run_dir) == status(ref_dir) == "FINISHED"

    # one job, requeued once by submitit's handler, resumed from its checkpoint
    # the job's end reaches accounting (slurmdbd) a moment after our own record says FINISHED
    states = wait_until(lambda: (st := [r["state"] for r in sacct([job], duplicates=True)])[-1:] == ["COMPLETED"]
                        and st, 60, "sacct to record the job's end")
    assert states == ["REQUEUED", "COMPLETED"]
    assert "Requeued job" in job_log(run_dir)
    log = (run_dir / "logs" / f"{trial.trial_id}.txt").read_text()
    resumed = [int(s) for s in re.findall(r"^resumed from step (\d+)", log, re.MULTILINE)]
    assert resumed == [stopped_at]  # from the checkpoint it saved when stopped
    final = read_json(run_dir / "track" / "summary.json")["final_val_loss"]
    assert final == read_json(ref_dir / "track" / "summary.json")["final_val_loss"]
    # bitwise the same final state as the uninterrupted run: weights, both optimizers, data position
    a, b = (torch.load(d / "checkpoints" / trial.trial_id / "latest.pt", weights_only=False) for d in (run_dir, ref_dir))
    assert a["step"] == b["step"] == N and a["loader_drawn"] == b["loader_drawn"]
    for key in ("model", "adam", "muon", "val_history", "best_val_loss"):
        assert_equal_nested(a[key], b[key], key)
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])

    # MLflow: the trial's one run carries both attempts, each step once
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_env)
    exp = client.get_experiment_by_name(f"gs-{interrupted}")
    (run,) = client.search_runs([exp.experiment_id], f"tags.trial_id = '{trial.trial_id}'")
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "FINISHED"
    assert run.data.metrics["final_val_loss"] == pytest.approx(final)
    val_steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")]
    assert sorted(val_steps) == [0, 60, 120, 180, 240]
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss")) == list(range(1, N + 1))


def test_cancelled_trial_is_resubmitted_into_its_mlflow_run(slurm_cluster, mlflow_env, tmp_path, monkeypatch):
    """A trial whose job was cancelled (pending or running) is submitted again by the next run; it keeps
    its one MLflow run."""
    monkeypatch.setattr(cluster.slurm.wait, "POLL_S", 1.0)
    monkeypatch.chdir(tmp_path)
    write_data(tmp_path)
    name = unique("cancel")
    write_spec(tmp_path / "spec.yaml", name, gates=["headwise"], resources={"gpus_per_node": 0})
    (trial,) = expand(load_spec(tmp_path / "spec.yaml"))
    run_dir = RUNS_ROOT / name / trial.trial_id
    code, _, err = gatesweep(["run", "spec.yaml"])
    assert code == 0, err
    first = job_id(run_dir)
    subprocess.run(["scancel", first], check=True)
    wait_until(lambda: squeue(first)[0] not in ("PENDING", "RUNNING", "COMPLETING"), 30, "the job to end")

    code, out, err = gatesweep(["run", "spec.yaml", "--wait"])
    assert code == 0, err + job_log(run_dir)
    second = job_id(run_dir)
    assert second != first and read_json(run_dir / "slurm.json")["previous"] == [first]
    assert "submitted 1 trial(s)" in out and status(run_dir) == "FINISHED"
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_env)
    exp = client.get_experiment_by_name(f"gs-{name}")
    (run,) = client.search_runs([exp.experiment_id], "tags.`gatesweep.kind` = 'trial'")
    assert run.data.tags["trial_id"] == trial.trial_id and run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_loss")) == [0, 10, 20]


def _submit_one(tmp_path, monkeypatch, prefix: str, **spec) -> tuple:
    """One `none` trial of N steps submitted to Slurm and trained 20 steps: (name, trial, run_dir, job)."""
    monkeypatch.setattr(cluster.slurm.wait, "POLL_S", 1.0)
    monkeypatch.chdir(tmp_path)
    write_data(tmp_path)
    name = unique(prefix)
    write_spec(tmp_path / "spec.yaml", name, gates=["none"],
               base={"num_iterations": N, "val_every": 60, "warmdown_iters": 60}, **spec)
    (trial,) = expand(load_spec(tmp_path / "spec.yaml"))
    run_dir = RUNS_ROOT / name / trial.trial_id
    code, _, err = gatesweep(["run", "spec.yaml"])
    assert code == 0, err
    wait_until(lambda: last_step(run_dir) >= 20, 300, "the trial to train 20 steps")
    return name, trial, run_dir, job_id(run_dir)


def test_out_of_requeues_the_trial_is_killed_and_the_next_run_resumes_it(slurm_cluster, mlflow_env, tmp_path,
                                                                          monkeypatch):
    """max_requeues=1: the first warning signal requeues, the second ends the job with the trial KILLED
    (its checkpoint saved); the next `gatesweep run` submits a new job that resumes from that
    checkpoint, into the same MLflow run."""
    name, trial, run_dir, job = _submit_one(tmp_path, monkeypatch, "outofrequeues", slurm={"max_requeues": 1})
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    wait_until(lambda: squeue(job)[0] == "PENDING" and status(run_dir) == "QUEUED", 60, "the job to be requeued")
    first_stop = last_step(run_dir)
    time.sleep(2)  # see the test above: the credential of the last run must be older than 1 s
    subprocess.run(["scontrol", "update", f"jobid={job}", "starttime=now"], check=True)
    wait_until(lambda: last_step(run_dir) >= first_stop + 20, 300, "the requeued job to train 20 more steps")
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    wait_until(lambda: squeue(job)[0] in ("", "COMPLETED", "FAILED", "CANCELLED"), 60, "the job to end")
    assert status(run_dir) == "KILLED"
    assert "max_requeues=1 reached" in read_json(run_dir / "track" / "status.json")["reason"]
    second_stop = last_step(run_dir)
    assert first_stop < second_stop < N

    code, out, err = gatesweep(["run", "spec.yaml", "--wait"])
    assert code == 0, err + job_log(run_dir)
    assert "submitted 1 trial(s)" in out and status(run_dir) == "FINISHED"
    assert job_id(run_dir) != job and read_json(run_dir / "slurm.json")["previous"] == [job]
    log = (run_dir / "logs" / f"{trial.trial_id}.txt").read_text()
    assert [int(s) for s in re.findall(r"^resumed from step (\d+)", log, re.MULTILINE)] == [first_stop, second_stop]

    from mlflow import MlflowClient

    client = MlflowClient(mlflow_env)
    exp = client.get_experiment_by_name(f"gs-{name}")
    (run,) = client.search_runs([exp.experiment_id], "tags.`gatesweep.kind` = 'trial'")
    assert run.data.tags["status"] == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss")) == list(range(1, N + 1))


def test_scontrol_requeue_sigterms_checkpoints_and_the_job_resumes(slurm_cluster, mlflow_env, tmp_path, monkeypatch):
    """`scontrol requeue` (an admin, or a node failure with JobRequeue): Slurm SIGTERMs the job and queues
    it again under the same id. The trainer checkpoints on SIGTERM; the restarted job resumes from that
    checkpoint; a `gatesweep run` meanwhile sees a live job and submits nothing; one MLflow run."""
    name, trial, run_dir, job = _submit_one(tmp_path, monkeypatch, "scontrolrequeue")
    subprocess.run(["scontrol", "requeue", job], check=True)
    wait_until(lambda: squeue(job)[0] == "PENDING" and status(run_dir) == "KILLED", 60, "the job to be requeued")
    stopped_at = last_step(run_dir)
    code, out, err = gatesweep(["run", "spec.yaml"])  # the job is live again: nothing to submit
    assert code == 0 and "1 trial(s) already queued or running" in out and "submitted" not in out
    time.sleep(2)  # see the first test: the credential of the last run must be older than 1 s
    subprocess.run(["scontrol", "update", f"jobid={job}", "starttime=now"], check=True)
    code, out, err = gatesweep(["run", "spec.yaml", "--wait"])
    assert code == 0, err + job_log(run_dir)
    assert status(run_dir) == "FINISHED" and job_id(run_dir) == job
    log = (run_dir / "logs" / f"{trial.trial_id}.txt").read_text()
    assert [int(s) for s in re.findall(r"^resumed from step (\d+)", log, re.MULTILINE)] == [stopped_at]

    from mlflow import MlflowClient

    client = MlflowClient(mlflow_env)
    exp = client.get_experiment_by_name(f"gs-{name}")
    (run,) = client.search_runs([exp.experiment_id], "tags.`gatesweep.kind` = 'trial'")
    assert run.data.tags["status"] == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss")) == list(range(1, N + 1))
