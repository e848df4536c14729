"""The service scripts trust a PID file only while its pid runs the named program.

A machine restart leaves PID files behind and their pids get reused: CI once skipped starting
slurmctld because a stale slurmctld.pid now named some other live process ("Slurm node is not
idle"). These tests put a live stranger's pid in the PID files and check that *_up starts the real
service anyway and *_down leaves the stranger alone.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.services import free_port, http_ok

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"


@pytest.fixture
def stranger():
    """A live process that is none of our services."""
    proc = subprocess.Popen(["sleep", "600"])
    yield proc.pid
    proc.kill()
    proc.wait()


def _pid_running(pidfile: Path, name: str) -> bool:
    cmd = f'. "{SCRIPTS}/pidfile.sh"; pid_running "$1" "$2"'
    return subprocess.run(["bash", "-c", cmd, "_", str(pidfile), name]).returncode == 0


def test_pid_running_needs_the_named_program(tmp_path: Path, stranger: int):
    pidfile = tmp_path / "slurmctld.pid"
    pidfile.write_text(f"{stranger}\n")
    assert _pid_running(pidfile, "sleep")
    assert not _pid_running(pidfile, "slurmctld")
    assert not _pid_running(pidfile, "slee")  # exact name, not a substring
    pidfile.write_text("not-a-pid\n")
    assert not _pid_running(pidfile, "sleep")
    assert not _pid_running(tmp_path / "missing.pid", "sleep")


def test_slurm_down_leaves_a_stranger_with_a_stale_pidfile_alive(tmp_path: Path, stranger: int):
    root = tmp_path / "slurm"
    (root / "run").mkdir(parents=True)
    (root / "mysql").mkdir()
    for f in ("run/slurmctld.pid", "run/slurmd.pid", "run/slurmdbd.pid", "mysql/mysqld.pid"):
        (root / f).write_text(f"{stranger}\n")
    env = {**os.environ, "SLURM_ROOT": str(root)}
    out = subprocess.run(["bash", str(SCRIPTS / "slurm_down.sh")], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    os.kill(stranger, 0)  # still alive: raises ProcessLookupError if slurm_down killed it
    assert "stopped" not in out.stdout
    assert not (root / "run/slurmctld.pid").exists()  # the stale file is cleared


@pytest.mark.mlflow
def test_mlflow_up_starts_a_server_despite_a_stale_pidfile(tmp_path: Path, stranger: int):
    root = tmp_path / "mlflow"
    root.mkdir()
    (root / "server.pid").write_text(f"{stranger}\n")
    port = free_port()
    env = {**os.environ, "MLFLOW_ROOT": str(root), "MLFLOW_PORT": str(port), "VENV": str(REPO / ".venv")}
    try:
        up = subprocess.run(["bash", str(SCRIPTS / "mlflow_up.sh")], env=env, capture_output=True, text=True)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "healthy in" in up.stdout  # started, not "already running" on the stranger's pid
        assert http_ok(f"http://127.0.0.1:{port}/health")
        assert int((root / "server.pid").read_text()) != stranger
    finally:
        down = subprocess.run(["bash", str(SCRIPTS / "mlflow_down.sh")], env=env, capture_output=True, text=True)
    assert down.returncode == 0 and "stopped mlflow server" in down.stdout
    assert not http_ok(f"http://127.0.0.1:{port}/health")
    os.kill(stranger, 0)


@pytest.mark.slurm
def test_slurm_up_brings_back_a_node_left_drained(slurm_cluster):
    """State saved by an earlier cluster (or an admin) can keep the node DOWN or DRAINED across restarts;
    slurm_up resumes it instead of failing with "Slurm node is not idle". (DRAIN here: unlike DOWN it
    kills no job that another test might still have on the node.)"""
    env = {**os.environ, "SLURM_CONF": slurm_cluster.conf, "SLURM_ROOT": str(slurm_cluster.root)}
    node = slurm_cluster.nodes[-1]
    subprocess.run(["scontrol", "update", f"NodeName={node}", "State=DRAIN", "Reason=test"], env=env, check=True)
    try:
        state = subprocess.run(["sinfo", "-h", "-n", node, "-o", "%t"], env=env, capture_output=True,
                               text=True).stdout.strip()
        assert state.startswith("drain")
        up = subprocess.run(["bash", str(SCRIPTS / "slurm_up.sh")], env=env, capture_output=True, text=True)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "State=RESUME" in up.stdout
    finally:
        subprocess.run(["scontrol", "update", f"NodeName={node}", "State=RESUME"], env=env, capture_output=True)
    state = subprocess.run(["sinfo", "-h", "-n", node, "-o", "%t"], env=env, capture_output=True,
                           text=True).stdout.strip()
    assert state in ("idle", "mix", "alloc")
