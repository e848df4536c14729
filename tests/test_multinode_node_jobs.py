"""Node jobs (`backend.slurm.node_jobs`) on the multi-node Slurm: two whole-node jobs, each the local
launcher over the spec's trials, split the trials between their nodes through the per-trial locks on
the shared filesystem: every trial runs once (one start in its log, one MLflow run), both nodes train,
the script submitted is the one the dry run prints, `status` names the queued jobs, and a rerun while
they queue or after they ended submits nothing."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

import cluster.slurm.node_jobs
from cluster.common.trialdir import RUNS_ROOT
from sweeps.expand import expand
from sweeps.spec import load_spec
from tests.slurm_helpers import gatesweep, status, unique, write_data, write_spec
from trainer.record import read_json

pytestmark = [pytest.mark.slurm, pytest.mark.mlflow]
GATES = ["none", "headwise", "elementwise", "const"]


def _trial_runs(uri: str, experiment: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], "tags.`gatesweep.kind` = 'trial'")


def _node_of(job: str) -> str:
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "State,NodeList", "-j", job], capture_output=True,
                         text=True, check=True).stdout.split()
    state, node = out[-1].split("|")
    assert state == "COMPLETED", (job, out)
    return node


def test_node_jobs_split_the_trials_between_nodes_and_run_each_once(multinode, mlflow_env, tmp_path, monkeypatch):
    monkeypatch.setattr(cluster.slurm.node_jobs, "POLL_S", 1.0)
    monkeypatch.chdir(tmp_path)
    write_data(tmp_path)
    name = unique("mn-nodejobs")
    # one trial at a time per node job, ~100 steps each: both jobs start while trials are left to take
    write_spec(tmp_path / "spec.yaml", name, gates=GATES, base={"num_iterations": 100, "val_every": 50},
               resources={"gpus_per_node": 1}, slurm={"node_jobs": 2, "node_gpus": 1, "extra": {"begin": "now+600"}})
    doc = (tmp_path / "spec.yaml").read_text()
    (tmp_path / "spec.yaml").write_text(doc.replace("backend:\n", "backend:\n  local:\n    max_parallel: 1\n"
                                                                  "    trials_per_gpu: 1\n", 1))
    trials = expand(load_spec(tmp_path / "spec.yaml"))
    dirs = {t.trial_id: RUNS_ROOT / name / t.trial_id for t in trials}

    code, dry, err = gatesweep(["run", "spec.yaml", "--dry-run"])
    assert code == 0, err
    # submitted to start in 10 min: queued, so what a user sees meanwhile is certain
    code, out, err = gatesweep(["run", "spec.yaml"])
    assert code == 0 and "submitted 2 node job(s) for 4 trial(s)" in out, out + err
    record = read_json(RUNS_ROOT / name / ".slurm" / "node_jobs.json")
    jobs = [str(j["job_id"]) for j in record["jobs"]]
    code, out, err = gatesweep(["status", "spec.yaml"])
    assert f"node jobs queued or running: {', '.join(jobs)} (they take the PENDING trials)" in out, out + err
    assert "PENDING: 4" in out
    code, out, err = gatesweep(["run", "spec.yaml"])  # a rerun while they queue submits nothing
    assert code == 0 and "2 node job(s) of this spec are still queued or running" in out and "submitted" not in out
    for j in jobs:
        subprocess.run(["scontrol", "update", f"jobid={j}", "starttime=now"], check=True)
    code, out, err = gatesweep(["run", "spec.yaml", "--wait"])  # follows them to the end
    slurm_dir = RUNS_ROOT / name / ".slurm"
    logs = "\n".join(f"---- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(slurm_dir.glob("node-*.out")))
    assert code == 0, out + err + logs
    assert "node jobs ended: 4 FINISHED" in out, out
    assert read_json(slurm_dir / "node_jobs.json") == record and len(jobs) == 2  # no job submitted since
    nodes = {j: _node_of(j) for j in jobs}
    assert len(set(nodes.values())) == 2 and set(nodes.values()) <= set(multinode.nodes), nodes  # two whole nodes

    # what was submitted is what the dry run printed (but for the pinned list's time stamp)
    (script,) = {j["script"] for j in record["jobs"]}
    stamp = re.compile(r"trials-\d{8}-\d{6}\.json")
    submitted = stamp.sub("trials-T.json", open(script).read())
    assert stamp.sub("trials-T.json", dry).split("\n", 1)[1].startswith(submitted), (dry, submitted)

    hosts = {}
    for tid, d in dirs.items():
        assert status(d) == "FINISHED"
        log = (d / "logs" / f"{tid}.txt").read_text()
        assert not re.search(r"^resumed from step", log, re.MULTILINE)  # started once, never again
        hosts[tid] = read_json(d / "track" / "tags.json")["host"]
    assert set(hosts.values()) == set(nodes.values()), hosts  # both node jobs trained
    runs = _trial_runs(mlflow_env, f"gs-{name}")
    assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(dirs)  # one MLflow run per trial
    assert all(r.info.status == "FINISHED" for r in runs)
    for tid, d in dirs.items():  # each step's value once: no trial trained twice
        points = [json.loads(ln) for ln in (d / "track" / "metrics.jsonl").read_text().splitlines()]
        steps = [p["step"] for p in points if p["key"] == "val_loss"]
        assert steps == sorted(set(steps)), (tid, steps)

    code, out, err = gatesweep(["run", "spec.yaml"])
    assert code == 0 and "nothing to submit" in out and "submitted" not in out, out + err
