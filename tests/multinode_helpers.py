"""Helpers of the multi-node tests: the test hosts of `make slurm-up NODES=3` (scripts/slurm_net.sh).

Each node is a network namespace named after the node, with its own address and hostname; what runs
"on" a node runs in that namespace. Killing a node = SIGKILL to every process in its namespace (its
slurmd, the job steps, the trainers), then telling Slurm, as its health check would, that it is down.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from tests.services import SCRIPTS, SlurmCluster

NODE_RESTORE_TIMEOUT_S = 180.0


def node_addr(node: str) -> str:
    out = subprocess.run(["scontrol", "show", "node", node], capture_output=True, text=True, check=True).stdout
    return next(f.split("=", 1)[1] for f in out.split() if f.startswith("NodeAddr="))


def node_state(node: str) -> str:
    """Slurm's state of the node, e.g. IDLE, MIXED, DOWN+COMPLETING (scontrol's spelling)."""
    out = subprocess.run(["scontrol", "show", "node", node], capture_output=True, text=True, check=True).stdout
    return next(f.split("=", 1)[1] for f in out.split() if f.startswith("State="))


def netns_pids(node: str) -> list[int]:
    """Every process on the test host `node` (its network namespace)."""
    out = subprocess.run(["ip", "netns", "pids", node], capture_output=True, text=True, check=True).stdout
    return [int(p) for p in out.split()]


def kill_node(node: str, *, only_env: str | None = None, timeout_s: float = 30.0) -> list[int]:
    """SIGKILL the processes on `node` (all of them, or those whose environment holds `only_env`, a
    KEY=VALUE marker), until none is left; returns the pids it killed."""
    killed: list[int] = []
    deadline = time.monotonic() + timeout_s
    while True:
        pids = [p for p in netns_pids(node) if only_env is None or _has_env(p, only_env)]
        if not pids:
            return killed
        if time.monotonic() > deadline:
            raise AssertionError(f"processes on {node} survived SIGKILL for {timeout_s:.0f}s: {pids}")
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
                killed.append(p)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


def signal_node(node: str, sig: int, *, only_env: str) -> list[int]:
    """Send `sig` once to the processes on `node` whose environment holds `only_env` (SIGSTOP: freeze
    them, so that what a test reads from their files cannot change before it acts; SIGCONT: thaw)."""
    sent = []
    for p in netns_pids(node):
        if _has_env(p, only_env):
            try:
                os.kill(p, sig)
                sent.append(p)
            except ProcessLookupError:
                pass
    return sent


def _has_env(pid: int, marker: str) -> bool:
    try:
        return marker.encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def mark_down(node: str, reason: str) -> None:
    """What slurmctld does when a node stops answering (SlurmdTimeout), without the wait."""
    subprocess.run(["scontrol", "update", f"nodename={node}", "state=down", f"reason={reason}"], check=True)
    deadline = time.monotonic() + 30
    while "DOWN" not in node_state(node):
        assert time.monotonic() < deadline, f"{node} is {node_state(node)}, not DOWN"
        time.sleep(0.2)


def restore_nodes(cluster: SlurmCluster) -> None:
    """Restart what a test killed: scripts/slurm_up.sh starts missing slurmds and resumes down nodes."""
    env = dict(os.environ, SLURM_ROOT=str(cluster.root), **dict(cluster.env))
    up = subprocess.run(["bash", str(SCRIPTS / "slurm_up.sh")], env=env, capture_output=True, text=True,
                        timeout=NODE_RESTORE_TIMEOUT_S)
    assert up.returncode == 0, up.stdout + up.stderr


def on_node(node: str, argv: list[str]) -> list[str]:
    """`argv` as run on the test host `node`: in its network namespace, under its hostname."""
    return ["nsenter", f"--net=/run/netns/{node}", "unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"',
            node, *argv]
