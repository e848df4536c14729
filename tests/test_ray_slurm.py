"""The Ray-on-Slurm recipe for real: the sbatch text `--dry-run` prints, submitted to the project's
Slurm (fake GPUs). The job starts a Ray head with `srun ray start` (token auth on), runs the search
driver against it, and Slurm ends Ray with the job. One node here, so the worker loop is empty; the
recipe on two nodes (a worker per node by srun): test_multinode_ray.py; its text: the golden test."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from cluster.common.trialdir import local_status
from tests.test_ray_search import make_workdir, run_cli, sampled, write_spec

pytestmark = [pytest.mark.slurm, pytest.mark.ray, pytest.mark.slow]


def test_sbatch_recipe_runs_the_search_on_a_slurm_allocation(slurm_cluster, tmp_path, monkeypatch):
    root = make_workdir(tmp_path)
    monkeypatch.chdir(root)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    experiment = f"gs-ray-slurm-{uuid.uuid4().hex[:8]}"
    spec = write_spec(root, "onslurm", experiment=experiment, lrs=[0.03, 0.01], gates=["none"], gpus=1,
                      base={"num_iterations": 20}, scheduler={"type": "fifo"})
    code, out = run_cli(["run", "sweeps/onslurm.yaml", "--backend", "ray", "--dry-run",
                         "--partition", slurm_cluster.partition])
    assert code == 0, out
    script = out.split("# ---- Ray on Slurm", 1)[1].split("\n", 1)[1]
    assert "#SBATCH --gpus-per-task=2" in script and f"#SBATCH --partition={slurm_cluster.partition}" in script
    (root / "search.sbatch").write_text(script)

    done = subprocess.run(["sbatch", "--parsable", "--wait", "search.sbatch"], cwd=root, env=os.environ.copy(),
                          capture_output=True, text=True, timeout=600)
    job = done.stdout.strip().split(";")[0]
    log_path = root / f"slurm-ray-onslurm-{job}.out"
    log = log_path.read_text() if log_path.exists() else "(no job output)"
    try:
        assert done.returncode == 0, f"{done.stderr}\n{log[-4000:]}"
        assert "ray search onslurm: 2 trials" in log and "best learning_rate per design point" in log
        token = root / "runs" / "onslurm" / "_tune" / f"slurm-{job}" / "auth_token"
        assert stat.S_IMODE(token.stat().st_mode) == 0o600 and len(token.read_text()) == 64
        trials = sampled(spec)
        assert all(local_status(root / "runs" / "onslurm" / t.trial_id)[0] == "FINISHED" for t in trials)
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(experiment)
        runs = client.search_runs([exp.experiment_id], "tags.`gatesweep.kind` = 'trial'")
        assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(t.trial_id for t in trials)
        assert {r.data.tags["backend"] for r in runs} == {"ray"} and {r.data.tags["n_gpus"] for r in runs} == {"1"}
        # Slurm ended the job's Ray (the head step): nothing of it is left on the machine
        deadline = time.monotonic() + 30
        while (left := subprocess.run(["pgrep", "-f", f"ray-{job}"], capture_output=True, text=True).stdout.split()) \
                and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not left, f"Ray processes of job {job} still running: {left}"
    finally:
        for temp in Path("/tmp").glob(f"ray-{job}-*"):  # one per node
            shutil.rmtree(temp, ignore_errors=True)


def test_sbatch_recipe_in_a_path_with_spaces_is_accepted_by_sbatch(slurm_cluster, tmp_path):
    """`sbatch --test-only` parses the recipe's directives as the real job would: the quoted --output in
    a project path with a space is one directive, and an option hidden in --partition stays inside the
    partition's name (refused as such) instead of becoming an option of its own."""
    from cluster.ray.on_slurm import RaySlurmJob, sbatch_text

    workdir = tmp_path / "my project"
    workdir.mkdir()

    def test_only(partition: str) -> subprocess.CompletedProcess:
        job = RaySlurmJob(spec_name="s", spec_path="sweeps/s.yaml", workdir=str(workdir), python="/v/bin/python",
                          nodes=1, gpus_per_node=0, cpus_per_node=1, timeout_min=5,
                          sbatch_options={"partition": partition})
        (workdir / "s.sbatch").write_text(sbatch_text(job))
        return subprocess.run(["sbatch", "--test-only", "s.sbatch"], cwd=workdir, capture_output=True, text=True,
                              timeout=60)

    ok = test_only(slurm_cluster.partition)
    assert ok.returncode == 0 and "to start at" in ok.stderr, ok.stderr
    bad = test_only(f"{slurm_cluster.partition} --qos=high")
    assert bad.returncode != 0 and f"{slurm_cluster.partition} --qos=high" in bad.stderr, bad.stderr
