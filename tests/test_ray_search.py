"""The Ray Tune backend for real: a local Ray on 127.0.0.1 (2 CPUs, 4 fake GPUs, one session for the
module), a real MLflow server or sqlite store, the tiny trainer on synthetic data.

ASHA stops trials early (EARLY_STOPPED, not failures), every trial is one MLflow child run with the
local backend's schema, the best LR per gate is printed and logged, multi-GPU trials run torchrun
children, and the stage table shows the search's runs beside local-backend runs. Interrupted searches:
test_ray_resume.py; Ray on Slurm: test_ray_slurm.py.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from mlflow.tracking import MlflowClient

from analysis.fetch import fetch_runs
from analysis.table import stage_table
from cluster.common.search import parse_search, search_trials
from cluster.common.trialdir import local_status
from gatesweep.cli import main as cli_main
from sweeps.expand import expand
from sweeps.spec import load_spec
from trainer.config import TrainConfig, config_hash
from trainer.record import read_json
from trainer.synth import write_synth_dataset

pytestmark = [pytest.mark.ray, pytest.mark.mlflow, pytest.mark.slow]
DONE = ("FINISHED", "EARLY_STOPPED")

# 2 layers of 32 dims on 64-token sequences: ~15 ms/step on one core; LR 0.03 reaches val 5.72 at
# step 10, LR 1e-4 stays at 6.43, so ASHA's first rung separates them for sure.
BASE: dict[str, Any] = {
    "preset": "tiny", "n_embd": 32, "sequence_length": 64, "batch_size": 8, "device_batch_size": 8,
    "val_tokens": 2048, "num_iterations": 40, "warmdown_iters": 10, "val_every": 10, "learning_rate": 0.02,
    "train_files": "data/synth/synth_train_*.bin", "val_files": "data/synth/synth_val_*.bin",
}


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """One local Ray for the module, every server on 127.0.0.1 (single-machine mode), fake GPUs."""
    with pytest.MonkeyPatch.context() as mp:
        # Ray's single-machine mode, read when Ray is imported; workers and subprocess drivers inherit it
        mp.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        import ray

        assert not ray.is_initialized()
        temp = tempfile.mkdtemp(prefix="gsray", dir="/tmp")  # unix socket paths: at most 107 bytes
        ray.init(num_cpus=2, num_gpus=4, _temp_dir=temp, include_dashboard=False, _node_ip_address="127.0.0.1",
                 log_to_driver=False)
        try:
            address = ray.get_runtime_context().gcs_address
            assert address.startswith("127.0.0.1:"), address
            assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
            yield address
        finally:
            ray.shutdown()
            shutil.rmtree(temp, ignore_errors=True)


def make_workdir(root: Path) -> Path:
    write_synth_dataset(root / "data" / "synth", train_tokens=200_000, val_tokens=16_384, num_train_shards=1)
    (root / "sweeps").mkdir(exist_ok=True)
    return root


def write_spec(root: Path, name: str, *, experiment: str, lrs: list[float], gates: list[str], gpus: int = 1,
               max_concurrent: int = 2, base: dict[str, Any] | None = None, scheduler: dict | None = None) -> Path:
    doc = {"name": name, "stage": name, "base": BASE | (base or {}), "grid": {"attn_gate": gates}, "seeds": [0],
           "search": {"space": {"learning_rate": {"grid": lrs}}, "max_concurrent_trials": max_concurrent,
                      "scheduler": scheduler or {"type": "asha", "grace_period": 10, "reduction_factor": 2}},
           "resources": {"nodes": 1, "gpus_per_node": gpus, "cpus_per_task": 1, "timeout_min": 5},
           "tracking": {"experiment": experiment}}
    path = root / "sweeps" / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def run_cli(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli_main(argv)
    return code, out.getvalue()


def trial_runs(uri: str, experiment: str) -> list[Any]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    return client.search_runs([exp.experiment_id], "tags.`gatesweep.kind` = 'trial'", max_results=1000)


def sampled(spec_path: Path) -> list:
    spec = load_spec(spec_path)
    return search_trials(parse_search(spec), expand(spec))


# ---------------------------------------------------------------- one ASHA search, read three ways
@pytest.fixture(scope="module")
def lr_search(ray_address: str, mlflow_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """2 gates x 3 LRs (one far too small), ASHA from step 10, two at a time, against the MLflow server:
    the trials forward their own records."""
    root = make_workdir(tmp_path_factory.mktemp("lr_search"))
    experiment = f"gs-ray-{uuid.uuid4().hex[:8]}"
    spec = write_spec(root, "lrs", experiment=experiment, lrs=[0.03, 0.0001, 0.01], gates=["none", "elementwise"])
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
        t0 = time.monotonic()
        code, out = run_cli(["run", "sweeps/lrs.yaml", "--backend", "ray"])
        seconds = time.monotonic() - t0
    print(out)
    yield SimpleNamespace(root=root, spec=spec, experiment=experiment, uri=mlflow_server.uri, code=code, out=out,
                          trials=sampled(spec), seconds=seconds)


def test_asha_stops_trials_early_and_they_are_not_failures(lr_search):
    s = lr_search
    assert s.code == 0, s.out
    status = {t.trial_id: local_status(s.root / "runs" / "lrs" / t.trial_id)[0] for t in s.trials}
    assert set(status.values()) <= set(DONE), status
    stopped = [t for t in s.trials if status[t.trial_id] == "EARLY_STOPPED"]
    assert stopped, f"ASHA stopped nothing: {status}"
    # the last small-LR trial meets a rung that already holds better values: it cannot survive
    last_small = [t for t in s.trials if t.config.optim.learning_rate == 0.0001][-1]
    assert status[last_small.trial_id] == "EARLY_STOPPED"
    for t in stopped:  # stopped at the rung it was judged at, with its record complete
        summary = read_json(s.root / "runs" / "lrs" / t.trial_id / "track" / "summary.json")
        assert summary["final_step"] < 40 and summary["best_val_loss"] > 0
        assert "stopped by the scheduler" in local_status(s.root / "runs" / "lrs" / t.trial_id)[1]
    assert any(status[t.trial_id] == "FINISHED" for t in s.trials)
    print(f"lr_search: {len(s.trials)} trials in {s.seconds:.1f}s, {len(stopped)} early-stopped")


def test_each_trial_is_one_mlflow_child_run_with_the_common_schema(lr_search):
    s = lr_search
    runs = trial_runs(s.uri, s.experiment)
    by_tid = {r.data.tags["trial_id"]: r for r in runs}
    assert len(runs) == len(by_tid) == len(s.trials)  # exactly one run per trial id
    assert set(by_tid) == {t.trial_id for t in s.trials}
    client = MlflowClient(s.uri)
    for t in s.trials:
        r = by_tid[t.trial_id]
        tags, params = r.data.tags, r.data.params
        # the id is the hash of the resolved config the run recorded
        assert config_hash(TrainConfig.from_flat({k: v for k, v in params.items() if k != "run_id"})) == t.trial_id
        assert tags["backend"] == "ray" and tags["gatesweep.kind"] == "trial" and tags["stage"] == "lrs"
        assert tags["spec"] == "lrs" and tags["seed"] == "0" and tags["n_gpus"] == "1" and tags["git_sha"]
        parent = client.get_run(tags["mlflow.parentRunId"])
        assert parent.data.tags["gatesweep.kind"] == "sweep" and parent.data.tags["backend"] == "ray"
        assert float(params["learning_rate"]) == t.config.optim.learning_rate
        local = local_status(s.root / "runs" / "lrs" / t.trial_id)[0]
        assert tags["status"] == local and r.info.status == "FINISHED"  # EARLY_STOPPED ends FINISHED in MLflow
        history = client.get_metric_history(r.info.run_id, "val_loss")
        assert [m.step for m in sorted(history, key=lambda m: m.step)][0] == 0
        if local == "EARLY_STOPPED":
            assert max(m.step for m in history) < 40 and "final_val_loss" in r.data.metrics
        else:
            assert max(m.step for m in history) == 40 and r.data.metrics["final_val_loss"] > 0


def test_best_lr_per_gate_is_printed_and_logged_to_the_parent_run(lr_search):
    s = lr_search
    assert "best learning_rate per design point" in s.out
    client = MlflowClient(s.uri)
    exp = client.get_experiment_by_name(s.experiment)
    parents = client.search_runs([exp.experiment_id], "tags.`gatesweep.kind` = 'sweep'")
    assert len(parents) == 1
    p = parents[0]
    for gate in ("none", "elementwise"):
        finished = {}
        for t in s.trials:
            rd = s.root / "runs" / "lrs" / t.trial_id
            if t.config.model.attn_gate == gate and local_status(rd)[0] == "FINISHED":
                finished[t.config.optim.learning_rate] = read_json(rd / "track" / "summary.json")["final_val_loss"]
        best = min(finished, key=lambda lr: finished[lr])
        assert float(p.data.params[f"best.attn_gate_{gate}.learning_rate"]) == best
        assert p.data.metrics[f"best.attn_gate_{gate}.final_val_loss"] == pytest.approx(finished[best])
        assert f"attn_gate={gate}" in s.out and f"learning_rate={best:g}" in s.out
    assert p.data.params["search.grace_period"] == "10" and p.data.params["search.scheduler"].startswith("asha")
    assert {a.path for a in client.list_artifacts(p.info.run_id)} >= {"best_lr.md", "best_lr.csv"}
    assert p.info.status == "FINISHED"


def test_stage_table_shows_ray_runs_beside_local_runs(lr_search, monkeypatch):
    """`--backend local` runs the spec's own (unsearched) trials into the same stage and experiment;
    the table treats both backends' runs alike."""
    s = lr_search
    monkeypatch.chdir(s.root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", s.uri)
    code, out = run_cli(["run", "sweeps/lrs.yaml", "--backend", "local"])
    assert code == 0, out
    runs = fetch_runs([s.experiment], stage="lrs", tracking_uri=s.uri)
    assert set(runs["backend"]) == {"ray", "local"}
    local, remote = runs[runs["backend"] == "local"], runs[runs["backend"] == "ray"]
    assert len(local) == 2 and set(local["learning_rate"]) == {0.02}
    table = stage_table(runs)
    assert set(table["learning_rate"]) == {0.02, 0.03, 0.0001, 0.01}
    assert table["failed"].sum() == 0
    assert table["early_stopped"].sum() == (remote["status"] == "EARLY_STOPPED").sum() >= 1
    row = table[(table["attn_gate"] == "none") & (table["learning_rate"] == 0.02)].iloc[0]
    assert row["n"] == 1 and row["final_val_loss"] > 0
    # same schema: the params and tags a local run has, a Ray run has too
    client = MlflowClient(s.uri)
    a, b = (client.get_run(df["mlflow_run_id"].iloc[0]).data for df in (local, remote[remote["status"] == "FINISHED"]))
    assert set(a.params) == set(b.params)
    assert set(a.tags) - {"failure_reason"} == set(b.tags) - {"failure_reason"}


# ---------------------------------------------------------------- multi-GPU trials
def test_multi_gpu_trials_run_torchrun_children_and_stop_early(ray_address, mlflow_env, tmp_path, monkeypatch):
    """2 fake GPUs per trial: the actor runs torchrun (2 gloo ranks on CPU) and tails its record. The
    first trial sets the rung; the second (LR 1e-4) is stopped there: SIGTERM, then EARLY_STOPPED.
    150 steps leave the child ~3 s of training after step 10, far more than the decision takes."""
    root = make_workdir(tmp_path)
    monkeypatch.chdir(root)
    experiment = f"gs-ray-ddp-{uuid.uuid4().hex[:8]}"
    spec = write_spec(root, "ddp", experiment=experiment, lrs=[0.03, 0.0001], gates=["none"], gpus=2,
                      max_concurrent=1, base={"num_iterations": 150, "warmdown_iters": 30, "batch_size": 16})
    code, out = run_cli(["run", str(spec), "--backend", "ray"])
    assert code == 0, out
    good, bad = sampled(spec)
    status = {t.trial_id: local_status(root / "runs" / "ddp" / t.trial_id) for t in (good, bad)}
    assert status[good.trial_id][0] == "FINISHED"
    assert status[bad.trial_id][0] == "EARLY_STOPPED" and "scheduler" in status[bad.trial_id][1]
    runs = {r.data.tags["trial_id"]: r for r in trial_runs(mlflow_env, experiment)}
    assert runs[good.trial_id].data.tags["n_gpus"] == "2" and runs[good.trial_id].data.tags["status"] == "FINISHED"
    stopped = runs[bad.trial_id]
    assert stopped.data.tags["status"] == "EARLY_STOPPED" and stopped.info.status == "FINISHED"
    history = MlflowClient(mlflow_env).get_metric_history(stopped.info.run_id, "val_loss")
    last = max(m.step for m in history)
    assert 10 <= last < 150
    print(f"torchrun trial stopped at step 10 by ASHA; its child had evaluated up to step {last}")


def test_a_spec_without_search_runs_its_own_trials_on_ray(ray_address, mlflow_env, tmp_path, monkeypatch):
    """A stage spec (grid x seeds, no `search:`) on Ray: the same trials and ids as the local backend, each
    to the end (no scheduler), so a later local run of the spec finds them all finished."""
    root = make_workdir(tmp_path)
    experiment = f"gs-ray-grid-{uuid.uuid4().hex[:8]}"
    doc = {"name": "grid", "stage": "grid", "base": BASE, "grid": {"attn_gate": ["none", "headwise"]},
           "seeds": [0], "resources": {"nodes": 1, "gpus_per_node": 1, "cpus_per_task": 1, "timeout_min": 5},
           "tracking": {"experiment": experiment}}
    (root / "sweeps" / "grid.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    monkeypatch.chdir(root)
    code, out = run_cli(["run", "sweeps/grid.yaml", "--backend", "ray", "--max-parallel", "2"])
    assert code == 0, out
    assert "2/2 trials finished" in out
    expected = {t.trial_id for t in expand(load_spec(root / "sweeps" / "grid.yaml"))}
    runs = trial_runs(mlflow_env, experiment)
    assert {r.data.tags["trial_id"] for r in runs} == expected and len(runs) == 2
    assert all(r.data.tags["status"] == "FINISHED" and r.data.tags["backend"] == "ray" for r in runs)
    code, out = run_cli(["run", "sweeps/grid.yaml", "--backend", "local"])
    assert code == 0 and "skipping 2 finished trial(s)" in out and "nothing to run" in out
