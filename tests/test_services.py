"""The dev-service fixtures against the real things: mlflow server, Slurm (+ slurmdbd), Chromium."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.services import MlflowServer, SlurmCluster, chromium_dump_dom, http_ok, service_host

# ---------------------------------------------------------------- MLflow


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _log_run(uri: str, run_name: str, num_steps: int = 5) -> tuple[str, str]:
    """Create an experiment with one finished run holding a `train_loss` history; (experiment_id, run_id)."""
    client = _client(uri)
    exp_id = client.create_experiment(f"gs-services-{uuid.uuid4().hex[:8]}")
    run = client.create_run(exp_id, run_name=run_name, tags={"gatesweep.kind": "trial"})
    run_id = run.info.run_id
    client.log_param(run_id, "attn_gate", "elementwise")
    for step in range(num_steps):
        client.log_metric(run_id, "train_loss", 10.0 - step, step=step)
    client.set_terminated(run_id)
    return exp_id, run_id


@pytest.mark.mlflow
def test_mlflow_server_health_on_the_service_host(mlflow_server: MlflowServer):
    assert mlflow_server.uri.startswith(f"http://{service_host()}:")
    assert http_ok(f"{mlflow_server.uri}/health")


@pytest.mark.mlflow
def test_mlflow_artifacts_are_proxied_through_the_server(mlflow_server: MlflowServer, tmp_path: Path):
    """Clients upload artifacts over HTTP (a trainer on a compute node writes nothing to its own disk)
    and the server stores them under its artifacts destination."""
    client = _client(mlflow_server.uri)
    exp_id, run_id = _log_run(mlflow_server.uri, "artifacts")
    (tmp_path / "curve.txt").write_text("step,loss\n1,3.2\n")
    client.log_artifact(run_id, str(tmp_path / "curve.txt"))
    assert client.get_run(run_id).info.artifact_uri.startswith("mlflow-artifacts:/")
    stored = list(mlflow_server.artifact_root.rglob("curve.txt"))
    assert len(stored) == 1 and stored[0].read_text() == "step,loss\n1,3.2\n" and run_id in str(stored[0])


@pytest.mark.mlflow
def test_mlflow_env_routes_fluent_client_and_history_reads_back(mlflow_env: str):
    import mlflow

    assert os.environ["MLFLOW_TRACKING_URI"] == mlflow_env
    assert "MLFLOW_EXPERIMENT_ID" not in os.environ and "MLFLOW_RUN_ID" not in os.environ
    mlflow.set_experiment(f"gs-env-{uuid.uuid4().hex[:8]}")
    with mlflow.start_run(run_name="fluent") as run:
        mlflow.log_param("attn_gate", "headwise")
        for step in range(20):
            mlflow.log_metric("train_loss", 5.0 - 0.1 * step, step=step)

    history = _client(mlflow_env).get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(20))
    assert sorted(history, key=lambda m: m.step)[-1].value == pytest.approx(5.0 - 0.1 * 19)
    got = _client(mlflow_env).get_run(run.info.run_id)
    assert got.data.params["attn_gate"] == "headwise" and got.info.status == "FINISHED"


@pytest.mark.mlflow
def test_mlflow_env_clears_inherited_experiment_and_run(
    mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
):
    # what an earlier mlflow.set_experiment()/start_run() (or the developer's shell) leaves behind
    for name, value in [("MLFLOW_EXPERIMENT_ID", "999"), ("MLFLOW_EXPERIMENT_NAME", "stale"),
                        ("MLFLOW_RUN_ID", "0" * 32), ("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")]:
        monkeypatch.setenv(name, value)
    uri = request.getfixturevalue("mlflow_env")
    assert uri == mlflow_server.uri == os.environ["MLFLOW_TRACKING_URI"]
    assert not {"MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"} & set(os.environ)


@pytest.mark.mlflow
def test_mlflow_server_restart_keeps_data(mlflow_server: MlflowServer):
    exp_id, run_id = _log_run(mlflow_server.uri, "before-outage")
    mlflow_server.stop()
    assert not http_ok(f"{mlflow_server.uri}/health", timeout=1.0)
    mlflow_server.start()

    run = _client(mlflow_server.uri).get_run(run_id)
    assert run.info.experiment_id == exp_id and run.info.run_name == "before-outage"
    history = _client(mlflow_server.uri).get_metric_history(run_id, "train_loss")
    assert sorted(m.value for m in history) == [6.0, 7.0, 8.0, 9.0, 10.0]


@pytest.mark.mlflow
def test_mlflow_ui_runs_page_lists_run_in_headless_chromium(mlflow_server: MlflowServer):
    run_name = f"ui-probe-{uuid.uuid4().hex[:8]}"
    exp_id, _ = _log_run(mlflow_server.uri, run_name)
    # "#/experiments/<id>" opens the GenAI overview; the runs table lives under /runs
    dom = chromium_dump_dom(f"{mlflow_server.uri}/#/experiments/{exp_id}/runs", expect=run_name)
    assert "Training runs" in dom, dom[-2000:]
    assert run_name in dom, dom[-2000:]


# ---------------------------------------------------------------- Slurm


def _sacct_state(job_id: str, timeout_s: float = 30.0) -> str:
    """The job's accounting state once slurmdbd has it (records lag 1-3 s)."""
    deadline = time.monotonic() + timeout_s
    state = ""
    while time.monotonic() < deadline:
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"],
                             capture_output=True, text=True, check=True)
        state = out.stdout.strip()
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
            return state
        time.sleep(0.2)
    return state


@pytest.mark.slurm
def test_slurm_node_advertises_16_cpus_and_8_gpus(slurm_cluster: SlurmCluster):
    assert os.environ["SLURM_CONF"] == slurm_cluster.conf
    out = subprocess.run(["sinfo", "-h", "-N", "-p", slurm_cluster.partition, "-o", "%N %c %G"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert sorted(out) == sorted(f"{node} 16 gpu:8" for node in slurm_cluster.nodes) and out, out  # every node


@pytest.mark.slurm
def test_sbatch_job_completes_and_sacct_records_it(slurm_cluster: SlurmCluster, tmp_path: Path):
    token = uuid.uuid4().hex
    log = tmp_path / "job-%j.out"
    job_id = subprocess.run(
        ["sbatch", "--parsable", "-p", slurm_cluster.partition, "-o", str(log),
         "--gpus-per-node=8", "--wrap", f"echo {token} $CUDA_VISIBLE_DEVICES"],
        capture_output=True, text=True, check=True, timeout=60).stdout.strip().split(";")[0]

    # (sbatch --wait polls every 2 s; sacct answers as soon as the job is done)
    assert _sacct_state(job_id, timeout_s=120) == "COMPLETED"
    assert (tmp_path / f"job-{job_id}.out").read_text().split() == [token, "0,1,2,3,4,5,6,7"]
    tres = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "AllocTRES"],
                          capture_output=True, text=True, check=True).stdout
    assert "gres/gpu=8" in tres


def _task_report() -> dict:
    import submitit

    env = submitit.JobEnvironment()
    return {"global_rank": env.global_rank, "local_rank": env.local_rank, "num_tasks": env.num_tasks,
            "hostname": env.hostnames[0], "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "pid": os.getpid()}


@pytest.mark.slurm
def test_submitit_8_tasks_with_8_gpus(slurm_cluster: SlurmCluster, tmp_path: Path):
    import cloudpickle
    import submitit

    # job functions defined in a test module are not importable in the job: ship them by value
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    executor = submitit.AutoExecutor(folder=tmp_path / "%j", cluster="slurm")
    executor.update_parameters(slurm_partition=slurm_cluster.partition, nodes=1, tasks_per_node=8,
                               slurm_gpus_per_node=8, cpus_per_task=2, timeout_min=5)
    job = executor.submit(_task_report)
    reports = job.results()  # one per task; raises FailedJobError with the job's traceback

    assert sorted(r["global_rank"] for r in reports) == list(range(8))
    assert sorted(r["local_rank"] for r in reports) == list(range(8))
    assert len({r["pid"] for r in reports}) == 8
    assert {r["num_tasks"] for r in reports} == {8} and len({r["hostname"] for r in reports}) == 1  # one node
    assert reports[0]["hostname"] in slurm_cluster.nodes
    assert all(r["cuda"] == "0,1,2,3,4,5,6,7" for r in reports), [r["cuda"] for r in reports]
    assert _sacct_state(job.job_id) == "COMPLETED"


# ---------------------------------------------------------------- plain fixtures


def test_session_environment_defaults():
    assert os.environ["RAY_AUTH_MODE"] == "disabled"
    assert os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] == "true"
    assert os.environ["HF_HUB_DISABLE_TELEMETRY"] == "1"


def test_short_tmp_leaves_room_for_ray_sockets(short_tmp: Path):
    # Ray puts e.g. <temp_dir>/session_<date>_<pid>/sockets/plasma_store under it: 107 bytes at most
    assert short_tmp.is_dir() and short_tmp.parent == Path("/tmp") and len(str(short_tmp)) <= 20
    (short_tmp / "probe").write_text("ok")
