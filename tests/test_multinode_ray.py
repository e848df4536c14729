"""Ray across hosts (#23 item 5), on the test hosts of the multi-node cluster.

1. A real Ray cluster of two nodes on different addresses (`ray start --head` on one test host,
   `ray start --address` on another), the LR search's driver on the head: trials run on both nodes;
   the worker node is killed mid-search (every Ray process on it); no trial is lost - Tune starts the
   killed trial again on the head, it resumes from its checkpoint, ASHA keeps its rungs (the killed
   trial's rung value is the one it reported before), every trial has one MLflow run.
2. Ray on Slurm (cluster/ray/on_slurm.py) on the multi-node Slurm: the sbatch recipe puts the head on
   the allocation's first node and a worker on the second (srun); trials run on both.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from cluster.common.trialdir import local_status
from tests.multinode_helpers import kill_node, node_addr, on_node, signal_node
from tests.services import kill_process_group
from tests.slurm_helpers import last_step, wait_until
from tests.test_ray_search import DONE, make_workdir, sampled, trial_runs, write_spec
from trainer.record import read_json

pytestmark = [pytest.mark.slurm, pytest.mark.ray, pytest.mark.mlflow, pytest.mark.slow]
RAY = str(Path(sys.executable).parent / "ray")
SEARCH = {"num_iterations": 160, "val_every": 10, "warmdown_iters": 20, "checkpoint_every": 5}
ASHA = {"type": "asha", "grace_period": 20, "reduction_factor": 2, "max_t": 160}  # rungs at steps 20, 40, 80
# The victim: a trial on the worker node past its first checkpoint (step 5) and short of the first rung
# (step 20), where ASHA may stop it. A step takes ~20 ms on a fast core: the window is ~0.2 s, so the
# test polls every 10 ms and freezes the node (SIGSTOP) before it decides, so nothing moves between
# the look and the kill.
VICTIM_STEPS = range(6, 17)


def _start_ray(node: str, marker: str, temp: str, log: Path, *, head: str | None, port: int) -> subprocess.Popen:
    """`ray start --block` on the test host `node` (1 CPU, 1 fake GPU: one trial per node at a time)."""
    where = ["--head", f"--port={port}", "--include-dashboard=false"] if head is None else [f"--address={head}"]
    argv = [RAY, "start", *where, f"--node-ip-address={node_addr(node)}", "--num-cpus=1", "--num-gpus=1",
            "--object-store-memory=100000000", f"--temp-dir={temp}", "--block"]
    env = dict(os.environ, GS_TEST_RAY_NODE=marker, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    with open(log, "wb") as out:
        return subprocess.Popen(on_node(node, argv), env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _host(run_dir: Path) -> str | None:
    return (read_json(run_dir / "track" / "tags.json") or {}).get("host")


def _val_at(run_dir: Path, step: int) -> float | None:
    """The first val_loss recorded at `step` (None: not reached, or the trial has not started)."""
    path = run_dir / "track" / "metrics.jsonl"
    for line in (path.read_text() if path.exists() else "").splitlines():
        p = json.loads(line)
        if p["key"] == "val_loss" and p["step"] == step:
            return p["value"]
    return None


def test_multinode_ray_search_loses_no_trial_when_a_worker_node_dies(multinode, mlflow_env, tmp_path):
    head_node, worker_node = multinode.nodes[0], multinode.nodes[1]
    root = make_workdir(tmp_path)
    experiment = f"gs-mn-ray-{uuid.uuid4().hex[:8]}"
    spec = write_spec(root, "mnray", experiment=experiment, lrs=[0.03, 0.02, 0.01, 0.005], gates=["none"],
                      base=SEARCH, scheduler=ASHA)
    trials = sampled(spec)
    dirs = {t.trial_id: root / "runs" / "mnray" / t.trial_id for t in trials}
    tag = uuid.uuid4().hex[:6]
    temps = [f"/tmp/gsr{tag}h", f"/tmp/gsr{tag}w"]  # unix socket paths: at most 107 bytes
    port = random.randrange(30000, 40000)  # in the head's own network namespace
    address = f"{node_addr(head_node)}:{port}"
    procs = [_start_ray(head_node, f"{tag}-head", temps[0], tmp_path / "ray-head.log", head=None, port=port)]
    driver = None
    try:
        wait_until(lambda: subprocess.run(on_node(head_node, [RAY, "status", f"--address={address}"]),
                                          capture_output=True).returncode == 0, 180, "the Ray head")
        procs.append(_start_ray(worker_node, f"{tag}-worker", temps[1], tmp_path / "ray-worker.log", head=address,
                                port=port))
        log = open(root / "driver.log", "wb")
        env = dict(os.environ, RAY_AUTH_MODE="disabled")
        driver = subprocess.Popen(on_node(head_node, [sys.executable, "-m", "gatesweep", "run", str(spec), "--backend",
                                                      "ray", f"backend.ray.address={address}", "backend.ray.nodes=2"]),
                                  cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

        marker = f"GS_TEST_RAY_NODE={tag}-worker"

        def in_window() -> str | None:
            for tid, d in dirs.items():
                if _host(d) == worker_node and local_status(d)[0] == "RUNNING" and last_step(d) in VICTIM_STEPS:
                    return tid
            return None

        def victim() -> str | None:  # seen in the window, and still there once the worker node is frozen
            if in_window() is None:
                assert driver.poll() is None, (root / "driver.log").read_text()[-3000:]
                return None
            signal_node(worker_node, signal.SIGSTOP, only_env=marker)
            if (tid := in_window()) is None:
                signal_node(worker_node, signal.SIGCONT, only_env=marker)
            return tid

        lost = wait_until(victim, 400, f"a trial on the worker node at a step in {VICTIM_STEPS}", interval_s=0.01)
        killed = kill_node(worker_node, only_env=marker)
        assert killed
        # what the search had before the loss: trials on the head, rung values reported so far
        on_head = {tid for tid, d in dirs.items() if _host(d) == head_node}
        before = {tid: v for tid, d in dirs.items() if (v := _val_at(d, 20)) is not None}
        driver.wait(timeout=600)
        out = (root / "driver.log").read_text()
    finally:
        if driver is not None and driver.poll() is None:
            kill_process_group(driver)
        for p in procs:
            kill_process_group(p)
        for node in (head_node, worker_node):
            kill_node(node, only_env=f"GS_TEST_RAY_NODE={tag}-{'head' if node == head_node else 'worker'}")
        for t in temps:
            shutil.rmtree(t, ignore_errors=True)

    assert driver.returncode == 0, out[-4000:]
    assert on_head, "no trial ran on the head node"  # trials on both nodes
    status = {tid: local_status(d)[0] for tid, d in dirs.items()}
    assert set(status.values()) <= set(DONE), status  # no trial lost
    assert _host(dirs[lost]) == head_node  # restarted on the node that is left
    log = (dirs[lost] / "logs" / f"{lost}.txt").read_text()
    assert "resumed from step" in log, log[-2000:]
    # ASHA kept its rungs (its state lives in the driver on the head): every value recorded before the
    # loss is still there, and each trial, the restarted one too, is recorded once at the first rung
    rungs = {r["step"]: r["val_loss"] for r in read_json(root / "runs" / "mnray" / "_tune" / "asha_rungs.json")["rungs"]}
    assert set(rungs[20]) == set(dirs) and all(rungs[20][tid] == v for tid, v in before.items()), (rungs, before)
    assert rungs[20][lost] == _val_at(dirs[lost], 20)
    # records exactly once: one MLflow run per trial, each step's value once
    runs = trial_runs(mlflow_env, experiment)
    assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(dirs)
    client = MlflowClient(mlflow_env)
    (lost_run,) = [r for r in runs if r.data.tags["trial_id"] == lost]
    points: dict[int, set[float]] = {}
    for m in client.get_metric_history(lost_run.info.run_id, "val_loss"):
        points.setdefault(m.step, set()).add(m.value)
    assert all(len(v) == 1 for v in points.values()) and points[20] == {rungs[20][lost]}


def test_multinode_ray_on_slurm_runs_trials_on_every_node(multinode, tmp_path, monkeypatch):
    root = make_workdir(tmp_path)
    monkeypatch.chdir(root)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    experiment = f"gs-mn-rayslurm-{uuid.uuid4().hex[:8]}"
    spec = write_spec(root, "mnslurm", experiment=experiment, lrs=[0.03, 0.02, 0.01, 0.005], gates=["none"],
                      base={"num_iterations": 20}, scheduler={"type": "fifo"}, max_concurrent=2)
    doc = spec.read_text() + "backend:\n  ray:\n    nodes: 2\n"
    spec.write_text(doc)
    from tests.test_ray_search import run_cli

    code, out = run_cli(["run", "sweeps/mnslurm.yaml", "--backend", "ray", "--dry-run",
                         "--partition", multinode.partition])
    assert code == 0, out
    script = out.split("# ---- Ray on Slurm", 1)[1].split("\n", 1)[1]
    assert "#SBATCH --nodes=2" in script
    (root / "search.sbatch").write_text(script)
    done = subprocess.run(["sbatch", "--parsable", "--wait", "search.sbatch"], cwd=root, env=os.environ.copy(),
                          capture_output=True, text=True, timeout=600)
    job = done.stdout.strip().split(";")[0]
    log_path = root / f"slurm-ray-mnslurm-{job}.out"
    log = log_path.read_text() if log_path.exists() else "(no job output)"
    try:
        assert done.returncode == 0, f"{done.stderr}\n{log[-4000:]}"
        trials = sampled(spec)
        dirs = [root / "runs" / "mnslurm" / t.trial_id for t in trials]
        assert all(local_status(d)[0] == "FINISHED" for d in dirs), log[-3000:]
        alloc = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "NodeList", "-j", job], capture_output=True,
                               text=True, check=True).stdout.strip()
        nodes = subprocess.run(["scontrol", "show", "hostnames", alloc], capture_output=True, text=True,
                               check=True).stdout.split()
        assert len(nodes) == 2 and {_host(d) for d in dirs} == set(nodes)  # trials on every node
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(experiment)
        runs = client.search_runs([exp.experiment_id], "tags.`gatesweep.kind` = 'trial'")
        assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(t.trial_id for t in trials)
    finally:
        for leftover in Path("/tmp").glob(f"ray-{job}-*"):
            shutil.rmtree(leftover, ignore_errors=True)
