"""The demo spec through the real Slurm: 2 trials x 2 gloo ranks (fake GPUs, device=cpu), tracked in a
real MLflow server; non-blocking submit, no duplicate submission on a rerun, --wait, the job array's
parallelism cap, the dry run printing exactly the submitted script - all from a working directory
whose name would run commands if anything reached a shell unquoted."""

from __future__ import annotations

import os
import subprocess
from datetime import datetime
from pathlib import Path

import pytest

import cluster.slurm.wait
from cluster.common.trialdir import RUNS_ROOT
from sweeps.expand import expand
from sweeps.spec import load_spec
from tests.slurm_helpers import (
    gatesweep,
    job_id,
    job_log,
    sacct,
    squeue,
    status,
    unique,
    write_data,
    write_spec,
)
from trainer.record import read_json

pytestmark = [pytest.mark.slurm, pytest.mark.mlflow]
HOSTILE_DIR = "we ird $(touch PWNED) 'q"


def _runs(uri: str, experiment: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], "tags.`gatesweep.kind` = 'trial'") if exp else []


def test_demo_spec_two_ranks_per_trial(slurm_cluster, mlflow_env, tmp_path, monkeypatch):
    monkeypatch.setattr(cluster.slurm.wait, "POLL_S", 1.0)
    cwd = tmp_path / HOSTILE_DIR
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    write_data(cwd)
    name, experiment = unique("e2e"), unique("gs-slurm-e2e $(touch PWNED)")
    write_spec(cwd / "demo2.yaml", name, gates=["none", "elementwise"], slurm={"array_parallelism": 1},
               experiment=experiment)
    trials = expand(load_spec(cwd / "demo2.yaml"))
    run_dirs = [RUNS_ROOT / name / t.trial_id for t in trials]

    # --dry-run: the sbatch script, nothing written
    code, dry, err = gatesweep(["run", "demo2.yaml", "--dry-run"])
    assert code == 0, err
    assert "2 trial(s) to submit" in dry and "#SBATCH --array=0-1%1" in dry and "#SBATCH --ntasks-per-node=2" in dry
    assert sorted(p.name for p in cwd.iterdir()) == ["data", "demo2.yaml"]

    # non-blocking submit: job ids printed and recorded, the call returns while the jobs queue
    code, out, err = gatesweep(["run", "demo2.yaml"])
    assert code == 0, err
    ids = [job_id(d) for d in run_dirs]
    array = ids[0].split("_")[0]
    assert ids == [f"{array}_0", f"{array}_1"] and all(i in out for i in ids)
    assert "submitted 2 trial(s) as 1 Slurm job(s)" in out
    assert any(squeue(i)[0] in ("PENDING", "RUNNING") for i in ids)
    script = Path(read_json(run_dirs[0] / "slurm.json")["submission_file"]).read_text()
    assert script in dry  # the dry run printed exactly what was submitted

    # a rerun while they queue/run submits nothing and creates no MLflow run
    code, out, err = gatesweep(["run", "demo2.yaml"])
    assert code == 0, err
    assert "2 trial(s) already queued or running" in out and "submitted" not in out
    assert [job_id(d) for d in run_dirs] == ids

    # --wait follows the jobs to the end
    code, out, err = gatesweep(["run", "demo2.yaml", "--wait"])
    assert code == 0, err + "\n".join(job_log(d) for d in run_dirs)
    assert f"sweep {name}: 2 finished, 0 not" in out
    assert [status(d) for d in run_dirs] == ["FINISHED", "FINISHED"]

    # the array's %1 held: the second task started after the first ended
    rows = sorted(sacct(ids, settle_s=60), key=lambda r: r["job"])
    assert [r["state"] for r in rows] == ["COMPLETED", "COMPLETED"]
    spans = sorted((datetime.fromisoformat(r["start"]), datetime.fromisoformat(r["end"])) for r in rows)
    assert spans[1][0] >= spans[0][1], spans

    # MLflow: one child run per trial with the trial's params, tags and metric histories
    from mlflow import MlflowClient

    runs = _runs(mlflow_env, experiment)
    assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(t.trial_id for t in trials)
    client = MlflowClient(mlflow_env)
    for t in trials:
        r = next(r for r in runs if r.data.tags["trial_id"] == t.trial_id)
        tags, params = r.data.tags, r.data.params
        assert (tags["stage"], tags["seed"], tags["backend"], tags["status"]) == (name, "0", "slurm", "FINISHED")
        assert tags["n_gpus"] == "2" and r.info.status == "FINISHED" and tags.get("mlflow.parentRunId")
        for key in ("attn_gate", "learning_rate", "num_iterations", "n_embd", "seed", "device"):
            assert params[key] == str(t.config.flat()[key]), key
        val = sorted((m.step, m.value) for m in client.get_metric_history(r.info.run_id, "val_loss"))
        assert [s for s, _ in val] == [0, 10, 20]
        assert r.data.metrics["final_val_loss"] == pytest.approx(val[-1][1])
        assert [m.step for m in client.get_metric_history(r.info.run_id, "train_loss")] == list(range(1, 21))

    # finished trials are skipped; `status` shows them with their jobs
    code, out, err = gatesweep(["run", "demo2.yaml"])
    assert code == 0 and "skipping 2 finished trial(s)" in out and "submitted" not in out
    assert len(_runs(mlflow_env, experiment)) == 2
    code, out, err = gatesweep(["status", "demo2.yaml"])
    assert code == 0 and out.count("FINISHED") >= 2 and f"job {ids[0]} COMPLETED" in out
    assert not list(tmp_path.rglob("PWNED")) and not Path(os.getcwd(), "PWNED").exists()


def test_a_queued_slurm_trial_is_left_alone_by_the_other_backends(slurm_cluster, mlflow_env, tmp_path, monkeypatch):
    """The local launcher (and Ray's, which shares its state check) sees a trial whose Slurm job is
    still pending as busy, not as stale: no KILLED mark, no second run beside the job."""
    monkeypatch.chdir(tmp_path)
    write_data(tmp_path)
    name = unique("xbackend")
    write_spec(tmp_path / "s.yaml", name, gates=["none"], slurm={"extra": {"hold": True}})
    (trial,) = expand(load_spec(tmp_path / "s.yaml"))
    run_dir = RUNS_ROOT / name / trial.trial_id
    code, out, err = gatesweep(["run", "s.yaml", "notes=held job"])  # notes: same trial id
    assert code == 0, err
    assert "follow with: gatesweep status s.yaml 'notes=held job'" in out  # the overrides repeated
    job = job_id(run_dir)
    try:
        assert squeue(job)[0] == "PENDING" and status(run_dir) == "QUEUED"
        code, out, err = gatesweep(["run", "s.yaml", "--backend", "local"])
        assert code == 0, err
        assert "1 trial(s) are running in another process; leaving them alone" in out
        assert status(run_dir) == "QUEUED" and squeue(job)[0] == "PENDING"
        assert not (run_dir / "logs").exists()  # no trainer ran here
        runs = _runs(mlflow_env, f"gs-{name}")
        assert len(runs) == 1 and runs[0].data.tags["status"] == "QUEUED"
        code, out, err = gatesweep(["status", "s.yaml"])
        assert code == 0 and f"job {job} PENDING" in out
    finally:
        subprocess.run(["scancel", job.split("_")[0]], check=False)
