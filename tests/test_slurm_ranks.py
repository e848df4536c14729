"""One allocation of 8 tasks with --gpus-per-node=8 on the real Slurm (fake GPUs): every task is one
trainer rank with the torch.distributed contract and its own GPU. The job is built and submitted the
way the launcher does it (executor parameters, setup lines, code snapshot, TrialJob); only the
trainer command is replaced by a probe that records what its rank saw."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.slurm.snapshot import take_snapshot
from sweeps.spec import Resources
from tests.slurm_helpers import PROBE, probe_results, submit_probe

pytestmark = pytest.mark.slurm

def test_eight_tasks_are_eight_ranks_with_one_gpu_each(slurm_cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_RUN_ID", "leaked-from-the-shell")  # must not reach the trainer
    sweep_dir = tmp_path / "runs" / "probe"
    snapshot = take_snapshot(sweep_dir)
    job = submit_probe(tmp_path, Resources(nodes=1, gpus_per_node=8, cpus_per_task=1), snapshot=snapshot,
                       probe="MARK = None\n" + PROBE)
    seen = probe_results(tmp_path, 8, job)
    assert [s["RANK"] for s in seen] == [str(r) for r in range(8)]
    assert {s["LOCAL_RANK"] for s in seen} == {str(r) for r in range(8)}
    assert {(s["WORLD_SIZE"], s["LOCAL_WORLD_SIZE"]) for s in seen} == {("8", "8")}
    assert len({(s["MASTER_ADDR"], s["MASTER_PORT"]) for s in seen}) == 1
    assert seen[0]["MASTER_ADDR"] == seen[0]["SLURMD_NODENAME"] == seen[0]["hostname"]  # the node, by its name
    assert seen[0]["MASTER_ADDR"] in slurm_cluster.nodes
    assert sorted(s["CUDA_VISIBLE_DEVICES"] for s in seen) == [str(g) for g in range(8)]  # one distinct GPU each
    # the job runs the code snapshot with the sweep's provenance and compile cache
    for s in seen:
        assert Path(s["cluster"]).is_relative_to(snapshot) and Path(s["trainer"]).is_relative_to(snapshot)
        assert s["GATESWEEP_GIT_SHA"] == "cafe-dirty" and s["MLFLOW_RUN_ID"] is None
        assert s["TORCHINDUCTOR_CACHE_DIR"] == str((sweep_dir / ".compile-cache" / "inductor").resolve())
