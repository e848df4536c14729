"""Shared fixtures: real MLflow server, the project's Slurm, short tmp dirs for Ray, a clean env.

Fixtures (see tests/services.py for the helpers behind them):
  mlflow_server  (session)  MlflowServer: .uri .root .port .stop() .start(); MLFLOW_TEST_URI reuses a server
  mlflow_env     (function) str: the tracking URI, exported as MLFLOW_TRACKING_URI, experiment/run env cleared
  slurm_cluster  (session)  SlurmCluster: .partition .root .conf .nodes; its env.sh exported; fails (never skips)
  multinode      (session)  SlurmCluster of at least 3 nodes (make slurm-up NODES=3); fails (never skips)
  short_tmp      (function) Path: /tmp/gsXXXX, short enough for Ray's 107-byte unix socket paths
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.services import MlflowServer, SlurmCluster, SlurmUpError, ensure_slurm

MULTINODE_MIN = 3

# `mlflow.set_experiment()` writes MLFLOW_EXPERIMENT_ID into os.environ and child processes (Ray
# workers, sbatch --export=ALL) inherit it: runs then land in the wrong experiment.
MLFLOW_SCOPE_VARS = ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID")


@pytest.fixture(scope="session", autouse=True)
def _test_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Quiet, offline, hermetic: nothing inherited from the developer's shell points at a real
    tracking server, experiment or run; Ray runs without token auth; the tables' cache
    (analysis.cache) is the session's own; torch compiles into this session's own cache
    (inductor's default /tmp/torchinductor_<user> outlives sessions, and a graph cached there by a
    process with another ATEN_CPU_CAPABILITY loads without a miss and corrupts the heap of the next
    in-process compile: torch 2.13 keys the FX-graph cache without it)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        cache = tmp_path_factory.mktemp("torch-cache")
        mp.setenv("TORCHINDUCTOR_CACHE_DIR", str(cache / "inductor"))
        mp.setenv("TRITON_CACHE_DIR", str(cache / "triton"))
        mp.setenv("RAY_AUTH_MODE", "disabled")
        mp.setenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        mp.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        for name in (*MLFLOW_SCOPE_VARS, "MLFLOW_TRACKING_URI"):
            mp.delenv(name, raising=False)
        yield


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real `mlflow server` on services.service_host() (loopback, or the multi-node test cluster's
    address of this host; a free port, fresh sqlite DB and artifact root) for the whole session, killed with its process tree at the end. MLFLOW_TEST_URI=http://... uses that
    server instead (then stop()/start() raise NotManagedError)."""
    external = os.environ.get("MLFLOW_TEST_URI")
    if external:
        yield MlflowServer(uri=external)
        return
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def plain_mlflow_server(mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A plain `mlflow server` (no --app-name: MLflow's routes only) over the session server's database:
    the same store, read through MLflow's search (analysis.server_reads falls back)."""
    if not mlflow_server.managed:
        pytest.skip("MLFLOW_TEST_URI: the server's database is not ours to serve again")
    assert mlflow_server.root is not None
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-plain"), app=None, db=mlflow_server.root / "mlflow.db")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _mlflow_server_alive(request: pytest.FixtureRequest) -> None:
    """A test that takes the session server away (an outage test) and fails before bringing it back
    must not fail every later test that needs it: start it again before the next such test."""
    if "mlflow_server" not in request.fixturenames:
        return
    server: MlflowServer = request.getfixturevalue("mlflow_server")
    if server.managed and not server.healthy():
        server.stop()
        server.start()


@pytest.fixture
def mlflow_env(mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Point MLflow clients (this process and its children) at the test server; yields its URI."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    monkeypatch.setenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    for name in MLFLOW_SCOPE_VARS:
        monkeypatch.delenv(name, raising=False)
    _reset_mlflow_fluent_state(mlflow_server.uri)
    yield mlflow_server.uri
    _reset_mlflow_fluent_state(None)


def _reset_mlflow_fluent_state(uri: str | None) -> None:
    """mlflow's fluent API keeps the tracking URI, the active experiment and the run stack in module
    globals, which outlive monkeypatch; reset them so tests cannot leak into each other.
    Only when mlflow is imported already: importing it costs ~3 s."""
    mlflow = sys.modules.get("mlflow")
    if mlflow is None:
        return
    while mlflow.active_run() is not None:
        mlflow.end_run()
    fluent: Any = sys.modules.get("mlflow.tracking.fluent")
    if fluent is not None and hasattr(fluent, "_active_experiment_id"):
        fluent._active_experiment_id = None  # set by mlflow.set_experiment(); no public reset
    mlflow.set_tracking_uri(uri)  # None clears it (and the env var it exported)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """The project's single-node Slurm (scripts/slurm_up.sh under SLURM_ROOT, default
    /tmp/gatesweep-slurm), brought up unless `sinfo` already answers. SLURM_CONF is exported for the
    session. The cluster stays up afterwards (make slurm-down stops it). If it cannot be brought
    up the test FAILS with the script's output: a Slurm test must never pass by skipping."""
    try:
        cluster = ensure_slurm()
    except SlurmUpError as e:
        failure = str(e)
    else:
        failure = ""
    if failure:  # outside the except block: no "during handling ... another exception" noise
        pytest.fail(failure, pytrace=False)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in cluster.env:  # SLURM_CONF; with several nodes GATESWEEP_SERVICE_HOST too
            mp.setenv(key, value)
        yield cluster


@pytest.fixture(scope="session")
def multinode(slurm_cluster: SlurmCluster) -> SlurmCluster:
    """The project's Slurm with at least 3 nodes (test hosts with their own addresses). A test that is
    about several hosts fails on a single-node cluster: it must never pass by not running."""
    if len(slurm_cluster.nodes) < MULTINODE_MIN:
        pytest.fail(f"this test needs a Slurm cluster of >= {MULTINODE_MIN} nodes, the partition "
                    f"{slurm_cluster.partition} has {list(slurm_cluster.nodes)}: run `make slurm-up NODES=3` "
                    f"(SLURM_ROOT={slurm_cluster.root}) and `source {slurm_cluster.root}/env.sh`", pytrace=False)
    return slurm_cluster


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory under /tmp (e.g. Ray's _temp_dir: unix socket paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(dir="/tmp", prefix="gs"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
