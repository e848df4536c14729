"""Trials on several hosts of the multi-node Slurm (#23 items 2 and 3): a stage sweep's job array
spread over the nodes (one trainer per allocation, every record delivered once), and one trial whose
2 DDP ranks (gloo) run on 2 nodes, rendezvousing at the allocation's first node, with the same final
loss, bit for bit, as the same trial on 2 ranks of one node."""

from __future__ import annotations

import csv
import re
import subprocess

import pytest
import torch

import cluster.slurm.wait
from cluster.common.trialdir import RUNS_ROOT
from sweeps.expand import expand
from sweeps.spec import load_spec
from tests.multinode_helpers import node_addr
from tests.slurm_helpers import gatesweep, job_id, job_log, sacct, status, unique, write_data, write_spec
from tests.test_reliability_resume import assert_equal_nested
from trainer.record import read_json

pytestmark = [pytest.mark.slurm, pytest.mark.mlflow]
RANK_LINE = re.compile(r"gatesweep: trial (\w+) rank (\d+)/(\d+) on (\S+), MASTER_ADDR=(\S+) MASTER_PORT=(\d+)")


def _node_lists(jobs: list[str]) -> dict[str, str]:
    arrays = sorted({j.split("_")[0] for j in jobs})
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,NodeList", "-j", ",".join(arrays)],
                         capture_output=True, text=True, check=True).stdout
    rows = dict(line.split("|") for line in out.splitlines() if line)
    return {j: rows[j] for j in jobs}


def _hostnames(nodelist: str) -> list[str]:
    return subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                          check=True).stdout.split()


def _trial_runs(uri: str, experiment: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], "tags.`gatesweep.kind` = 'trial'")


def test_multinode_array_spreads_over_nodes_one_trainer_each(multinode, mlflow_env, tmp_path, monkeypatch):
    """3 trials as one job array of whole-node allocations (`extra: {exclusive: true}`, as GPU clusters
    often allocate): the tasks run on different nodes at once, each allocation runs its one trainer on
    the node Slurm gave it, and each trial has one MLflow run and one results row."""
    monkeypatch.setattr(cluster.slurm.wait, "POLL_S", 1.0)
    monkeypatch.chdir(tmp_path)
    write_data(tmp_path)
    name = unique("mn-array")
    write_spec(tmp_path / "spec.yaml", name, gates=["none", "headwise", "elementwise"],
               base={"num_iterations": 20, "val_every": 10}, resources={"gpus_per_node": 1},
               slurm={"extra": {"exclusive": True}})
    trials = expand(load_spec(tmp_path / "spec.yaml"))
    run_dirs = [RUNS_ROOT / name / t.trial_id for t in trials]

    code, out, err = gatesweep(["run", "spec.yaml", "--wait"])
    assert code == 0, err + "\n".join(job_log(d) for d in run_dirs)
    assert f"sweep {name}: 3 finished, 0 not" in out
    jobs = [job_id(d) for d in run_dirs]
    assert len({j.split("_")[0] for j in jobs}) == 1  # one job array
    where = _node_lists(jobs)
    assert len(set(where.values())) >= 2, where  # spread over the nodes
    assert all(n in multinode.nodes for n in where.values())
    assert sorted(r["state"] for r in sacct(jobs, settle_s=60)) == ["COMPLETED"] * 3

    for t, d, j in zip(trials, run_dirs, jobs):
        ranks = RANK_LINE.findall(job_log(d))
        assert ranks == [(t.trial_id, "0", "1", where[j], where[j], ranks[0][5])]  # one trainer, on its node
        assert read_json(d / "track" / "tags.json")["host"] == where[j]
        assert status(d) == "FINISHED"

    runs = _trial_runs(mlflow_env, f"gs-{name}")
    assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(t.trial_id for t in trials)  # one run each
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_env)
    for r in runs:
        assert r.info.status == "FINISHED" and r.data.tags["host"] in multinode.nodes
        assert [m.step for m in client.get_metric_history(r.info.run_id, "val_loss")] == [0, 10, 20]
    with open(tmp_path / "experiments" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(row["run_id"] for row in rows) == sorted(t.trial_id for t in trials)  # one row each


def test_multinode_trial_runs_ddp_across_two_nodes_bitwise_like_one_node(multinode, mlflow_env, tmp_path,
                                                                         monkeypatch):
    monkeypatch.setattr(cluster.slurm.wait, "POLL_S", 1.0)
    monkeypatch.chdir(tmp_path)
    write_data(tmp_path)
    base = {"num_iterations": 20, "val_every": 10, "save_final": True}
    spread, packed = unique("mn-2nodes"), unique("mn-1node")
    write_spec(tmp_path / "spread.yaml", spread, gates=["elementwise"], base=base,
               resources={"nodes": 2, "gpus_per_node": 1})
    write_spec(tmp_path / "packed.yaml", packed, gates=["elementwise"], base=base,
               resources={"nodes": 1, "gpus_per_node": 2})

    # the dry run shows the shape: 2 nodes x 1 GPU, one rank per node, 2 GPU-hours per GPU-hour of steps
    code, dry, err = gatesweep(["run", "spread.yaml", "--dry-run"])
    assert code == 0, err
    assert "1 trial(s) to submit (0 finished or queued skipped), 2 node(s) x 1 GPU(s) each, 1 rank(s) per node" in dry
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=1"):
        assert line in dry
    assert re.search(r"estimate: 1 trials x 2 node\(s\) x 1 GPU\(s\) x ", dry), dry

    for spec in ("spread.yaml", "packed.yaml"):  # both queued at once
        code, _, err = gatesweep(["run", spec])
        assert code == 0, err
    (trial,) = expand(load_spec(tmp_path / "spread.yaml"))
    (ref,) = expand(load_spec(tmp_path / "packed.yaml"))
    run_dir, ref_dir = RUNS_ROOT / spread / trial.trial_id, RUNS_ROOT / packed / ref.trial_id
    for spec, d in (("spread.yaml", run_dir), ("packed.yaml", ref_dir)):
        code, out, err = gatesweep(["run", spec, "--wait"])
        assert code == 0, err + job_log(d)
        assert status(d) == "FINISHED"

    job = job_id(run_dir)
    hosts = _hostnames(_node_lists([job])[job])
    assert len(hosts) == 2
    ranks = sorted(RANK_LINE.findall(job_log(run_dir)), key=lambda r: r[1])
    assert [(r[1], r[2], r[3]) for r in ranks] == [("0", "2", hosts[0]), ("1", "2", hosts[1])]  # a rank per node
    master = {(r[4], r[5]) for r in ranks}
    assert len(master) == 1 and next(iter(master))[0] == hosts[0]  # the allocation's first node, by name
    assert node_addr(hosts[0]) != "127.0.0.1"
    ref_job = job_id(ref_dir)
    assert len(_hostnames(_node_lists([ref_job])[ref_job])) == 1

    final = read_json(run_dir / "track" / "summary.json")["final_val_loss"]
    assert final == read_json(ref_dir / "track" / "summary.json")["final_val_loss"]  # bitwise
    a, b = (torch.load(d / "checkpoints" / t.trial_id / "latest.pt", weights_only=False)
            for d, t in ((run_dir, trial), (ref_dir, ref)))
    assert a["world_size"] == b["world_size"] == 2 and a["step"] == b["step"] == 20
    for key in ("model", "adam", "muon"):
        assert_equal_nested(a[key], b[key], key)
    (run,) = _trial_runs(mlflow_env, f"gs-{spread}")
    assert run.info.status == "FINISHED" and run.data.tags["n_gpus"] == "2" and run.data.tags["host"] == hosts[0]
