"""Node jobs (`backend.slurm.node_jobs`), the parts that need no cluster: the sbatch script (pure), the
dry run, what is refused before anything is written, and the pin that keeps a node job to the trials
it was submitted for. The jobs themselves run on the multi-node Slurm in test_multinode_node_jobs.py."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.common.prepare import PINNED_ENV, check_pinned, prepare
from cluster.common.sbatch_options import SlurmOptions
from cluster.slurm.node_jobs import node_script
from sweeps.errors import SpecError
from tests.slurm_helpers import REPO, write_data, write_spec

SERVER = "http://127.0.0.1:9"  # a server URI (a dry run and the refusals never call it)


def test_node_script_is_one_whole_node_running_the_local_launcher():
    opts = SlurmOptions(partition="gpu a;b", timeout_min=30, node_jobs=2, node_gpus=4,
                        extra=(("mail-type", "END"),), setup=("module load cuda",))
    text = node_script(job_name="gs-x-node", options=opts, log=Path("/r/x/.slurm/node-%j.out"),
                       setup=["export A=1", "module load cuda"], workdir=Path("/home/u/my study"),
                       python="/venv/bin/python", spec_path="sweeps/my spec.yaml",
                       overrides=("learning_rate=0.01", "notes=a b"))
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    directives = [ln for ln in lines if ln.startswith("#SBATCH")]
    assert directives == ["#SBATCH --job-name=gs-x-node", "#SBATCH --nodes=1", "#SBATCH --ntasks=1",
                          "#SBATCH --exclusive", "#SBATCH --time=30", "#SBATCH --output=/r/x/.slurm/node-%j.out",
                          "#SBATCH --requeue", "#SBATCH --gpus-per-node=4", "#SBATCH --partition='gpu a;b'",
                          "#SBATCH --mail-type=END"]
    body = lines[len(directives) + 2:]
    assert body[:2] == ["export A=1", "module load cuda"]  # the job's environment first
    assert body[2] == "cd '/home/u/my study'"
    assert shlex.split(body[3]) == ["exec", "/venv/bin/python", "-m", "gatesweep", "run", "sweeps/my spec.yaml",
                                    "learning_rate=0.01", "notes=a b", "--backend", "local"]
    assert text.endswith("\n") and len(body) == 4
    no_gpus = node_script(job_name="j", options=SlurmOptions(node_jobs=1, node_gpus=0), log=Path("l"), setup=[],
                          workdir=Path("/w"), python="p", spec_path="s.yaml", overrides=())
    assert "gpus-per-node" not in no_gpus


def _cli(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    import os

    full = dict(os.environ, PYTHONPATH=str(REPO), **env)
    return subprocess.run([sys.executable, "-m", "gatesweep", *args], cwd=cwd, env=full, capture_output=True,
                          text=True, timeout=120)


def test_dry_run_prints_the_node_job_and_writes_nothing(tmp_path: Path):
    write_spec(tmp_path / "spec.yaml", "nj", gates=["none", "headwise"], resources={"gpus_per_node": 1},
               slurm={"node_jobs": 3, "node_gpus": 2})
    res = _cli(["run", "spec.yaml", "--dry-run", "learning_rate=0.01"], tmp_path, MLFLOW_TRACKING_URI=SERVER)
    assert res.returncode == 0, res.stderr
    assert list(tmp_path.iterdir()) == [tmp_path / "spec.yaml"]  # no runs/, no snapshot, no store
    out = res.stdout
    # 2 trials: 2 node jobs, not 3 (a third would find nothing to run)
    assert "2 trial(s) to run (0 finished or running skipped) in 2 node job(s)" in out
    assert "#SBATCH --gpus-per-node=2\n" in out and "#SBATCH --exclusive\n" in out
    assert f"export {PINNED_ENV}={tmp_path}/runs/nj/.slurm/trials-" in out
    assert "exec " + shlex.join([sys.executable, "-m", "gatesweep", "run", "spec.yaml", "learning_rate=0.01",
                                 "--backend", "local"]) + "\n" in out
    assert SERVER not in out  # the tracking URI goes through sbatch's environment, never into the script
    assert out.rstrip().endswith("dry run: nothing was submitted or written")


@pytest.mark.parametrize("case, spec, uri, expect", [
    ("multi-node trials", {"resources": {"nodes": 2, "gpus_per_node": 1}}, SERVER,
     "backend.slurm.node_jobs runs single-node trials, but resources.nodes is 2; set resources.nodes: 1"),
    ("trial wider than the node job", {"resources": {"gpus_per_node": 4}, "slurm": {"node_gpus": 2}}, SERVER,
     "a trial takes 4 GPUs (resources.gpus_per_node) but a node job has 2 (backend.slurm.node_gpus); raise node_gpus"),
    ("a single-writer store", {"resources": {"gpus_per_node": 1}}, "sqlite:///mlflow.db",
     "backend.slurm.node_jobs needs an MLflow server: 2 launchers write at once and the store sqlite:///mlflow.db "
     "is a single-writer file"),
])
def test_what_node_jobs_cannot_do_is_refused_before_anything_is_written(tmp_path: Path, case, spec, uri, expect):
    write_spec(tmp_path / "spec.yaml", "nj", gates=["none"], resources=spec["resources"],
               slurm={"node_jobs": 2} | spec.get("slurm", {}))
    res = _cli(["run", "spec.yaml", "--dry-run"], tmp_path, MLFLOW_TRACKING_URI=uri)
    assert res.returncode == 2, (case, res.stdout, res.stderr)
    assert res.stderr.startswith("error: spec.yaml: ") and expect in res.stderr, (case, res.stderr)
    assert list(tmp_path.iterdir()) == [tmp_path / "spec.yaml"]


def test_a_node_job_runs_only_the_trials_it_was_submitted_for(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_data(tmp_path)
    write_spec(tmp_path / "spec.yaml", "pin", gates=["none", "headwise"], resources={"gpus_per_node": 1})
    prep = prepare("spec.yaml", [], None, use_store=False)
    ids = sorted(t.trial_id for t in prep.trials)
    pin = tmp_path / "pinned.json"
    pin.write_text(json.dumps({"trial_ids": ids}))
    check_pinned(prep, {PINNED_ENV: str(pin)})  # the same trials: runs
    check_pinned(prep, {})  # not a node job
    changed = prepare("spec.yaml", ["learning_rate=0.5"], None, use_store=False)  # a chained value moved, say
    with pytest.raises(SpecError, match=r"submitted for 2 trial\(s\) .* now expands to 2 \(2 not submitted, 2 gone\)"):
        check_pinned(changed, {PINNED_ENV: str(pin)})
    # the same through the command line: exit 2, one line, nothing run or written
    res = _cli(["run", "spec.yaml", "learning_rate=0.5", "--backend", "local"], tmp_path,
               **{PINNED_ENV: str(pin), "MLFLOW_TRACKING_URI": ""})
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Submit again: gatesweep run spec.yaml --backend slurm" in res.stderr
    assert not (tmp_path / "runs").exists()
