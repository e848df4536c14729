"""The multi-node test cluster itself (#23 item 1): `make slurm-up NODES=3` gives 3 Slurm nodes that are
separate hosts as far as the network goes - own address, own hostname, own 127.0.0.1 - with 8 fake
GPUs each, names that resolve on every node, one munge; and the down script leaves nothing behind."""

from __future__ import annotations

import ipaddress
import json
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.multinode_helpers import node_addr
from tests.services import SCRIPTS, free_port
from tests.slurm_helpers import wait_until

pytestmark = pytest.mark.slurm

# Every task listens on 0.0.0.0:PORT (the same port on every node: on one shared network stack the
# second bind would fail) and answers with its node's name; then it asks every node by name, and
# 127.0.0.1, who answers.
PROBE = r"""
import json, os, socket, sys, threading, time
from pathlib import Path
out, port, nodes = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(",")
me = os.environ["SLURMD_NODENAME"]
srv = socket.socket()
srv.bind(("0.0.0.0", port))
srv.listen()
def serve():
    while True:
        c, _ = srv.accept()
        c.sendall(me.encode())
        c.close()
threading.Thread(target=serve, daemon=True).start()
def wait_all(suffix):
    (out / (me + suffix)).touch()
    deadline = time.time() + 120
    while not all((out / (n + suffix)).exists() for n in nodes):
        assert time.time() < deadline, "peers did not arrive"
        time.sleep(0.1)
def who(host):
    with socket.create_connection((host, port), timeout=10) as s:
        return s.recv(100).decode()
wait_all(".ready")
seen = {"hostname": socket.gethostname(), "addr": socket.gethostbyname(socket.gethostname()),
        "resolves": {n: socket.gethostbyname(n) for n in nodes},
        "answers": {n: who(n) for n in nodes}, "loopback": who("127.0.0.1"),
        "gpus": os.environ.get("CUDA_VISIBLE_DEVICES")}
(out / (me + ".json")).write_text(json.dumps(seen))
wait_all(".done")  # keep serving until every peer has asked
"""


def test_multinode_nodes_are_separate_hosts(multinode, tmp_path):
    nodes = list(multinode.nodes)
    info = subprocess.run(["sinfo", "-h", "-N", "-p", multinode.partition, "-o", "%N %c %G %t"],
                          capture_output=True, text=True, check=True).stdout.splitlines()
    assert sorted(info) == sorted(f"{n} 16 gpu:8 idle" for n in nodes), info
    addrs = {n: node_addr(n) for n in nodes}
    assert len(set(addrs.values())) == len(nodes)
    assert not any(ipaddress.ip_address(a).is_loopback for a in addrs.values()), addrs

    (tmp_path / "probe.py").write_text(PROBE)
    out = tmp_path / "out"
    out.mkdir()
    port = random.randrange(40000, 50000)
    job = subprocess.run(["sbatch", "--parsable", "--wait", "-N", str(len(nodes)), "--ntasks-per-node=1",
                          "--gpus-per-node=8", "-o", str(tmp_path / "job.out"), "--wrap",
                          f"srun {sys.executable} {tmp_path / 'probe.py'} {out} {port} {','.join(nodes)}"],
                         capture_output=True, text=True, timeout=300)
    assert job.returncode == 0, job.stderr + (tmp_path / "job.out").read_text()
    for n in nodes:
        seen = json.loads((out / f"{n}.json").read_text())
        assert seen["hostname"] == n and seen["addr"] == addrs[n]  # its own name and address
        assert seen["resolves"] == addrs  # every name resolves on every node
        assert seen["answers"] == {m: m for m in nodes}  # each node by name is that node
        assert seen["loopback"] == n  # 127.0.0.1 is this node, never another one
        assert seen["gpus"] == "0,1,2,3,4,5,6,7"  # 8 fake GPUs on each node


def test_multinode_cluster_up_and_down_leave_nothing_behind(multinode, tmp_path):
    """A second, 2-node cluster of its own (root, node names, net, ports) beside the session's: up runs a
    job over both nodes; down with SLURM_PURGE=1 removes its processes, namespaces, bridge, /etc/hosts
    lines and state. Prints the start-up time (README: "Local dev cluster")."""
    tag = uuid.uuid4().hex[:4]
    root = Path(f"/tmp/gs-updown-{tag}")
    prefix, net = f"gsud{tag[:2]}x", f"198.18.{200 + random.randrange(50)}"
    env = {**os.environ, "SLURM_ROOT": str(root), "SLURM_NODES": "2", "SLURM_NODE_PREFIX": prefix,
           "SLURM_NET_PREFIX": net, "SLURMCTLD_PORT": str(free_port()), "SLURMDBD_PORT": str(free_port()),
           "SLURMD_PORT": "6818", "SLURM_DB_PORT": str(free_port())}
    env.pop("SLURM_CONF", None)
    nodes = [f"{prefix}1", f"{prefix}2"]
    mine: dict[int, str] = {}
    try:
        t0 = time.monotonic()
        up = subprocess.run(["bash", str(SCRIPTS / "slurm_up.sh")], env=env, capture_output=True, text=True,
                            timeout=300)
        started = time.monotonic() - t0
        assert up.returncode == 0, up.stdout + up.stderr
        print(f"2-node cluster up in {started:.1f}s (fresh state: MariaDB, slurmdbd, slurmctld, 2 slurmd)")
        env["SLURM_CONF"] = str(root / "etc" / "slurm.conf")
        assert f"export GATESWEEP_SERVICE_HOST={net}.1" in (root / "env.sh").read_text()
        assert set(nodes) <= set(_namespaces()) and _has_link(f"{prefix}-br")
        hosts = Path("/etc/hosts").read_text()
        assert f"{net}.11 {prefix}1 " in hosts and f"{net}.12 {prefix}2 " in hosts and f"{net}.1 {prefix}-login " in hosts
        job = subprocess.run(["sbatch", "--parsable", "--wait", "-N2", "--wrap", "srun hostname"], env=env,
                             capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert job.returncode == 0, job.stderr
        jid = job.stdout.strip()
        assert sorted((tmp_path / f"slurm-{jid}.out").read_text().split()) == nodes
        mine = _processes_of(root, nodes)
        assert {"slurmctld", "slurmdbd", "mariadbd", "slurmd"} <= set(mine.values()), mine
        assert sum(v == "slurmd" for v in mine.values()) == 2
    finally:
        down = subprocess.run(["bash", str(SCRIPTS / "slurm_down.sh")], env={**env, "SLURM_PURGE": "1"},
                              capture_output=True, text=True, timeout=300)
    assert down.returncode == 0, down.stdout + down.stderr
    wait_until(lambda: not _alive(mine), 30, f"the cluster's processes to exit: {mine}")
    assert not set(nodes) & set(_namespaces()) and not _has_link(f"{prefix}-br")
    assert f"gatesweep test cluster {root}" not in Path("/etc/hosts").read_text()
    assert not root.exists()
    # the session's cluster is untouched
    assert all(n in _namespaces() for n in multinode.nodes)
    shutil.rmtree(root, ignore_errors=True)


def _alive(procs: dict[int, str]) -> dict[int, str]:
    """Those of `procs` that still run the same program (a reused pid does not count)."""
    left = {}
    for pid, comm in procs.items():
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == comm:
                left[pid] = comm
        except OSError:
            pass
    return left


def _namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _has_link(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", name], capture_output=True).returncode == 0


def _processes_of(root: Path, nodes: list[str]) -> dict[int, str]:
    """{pid: program} of the cluster's daemons (their PID files) and of everything in its nodes' namespaces."""
    pids = [int(f.read_text().split()[0]) for f in [*root.glob("run/*.pid"), root / "mysql" / "mysqld.pid"]
            if f.exists() and f.read_text().strip()]
    for n in nodes:
        if n in _namespaces():
            pids += [int(p) for p in subprocess.run(["ip", "netns", "pids", n], capture_output=True,
                                                    text=True).stdout.split()]
    found = {}
    for pid in pids:
        try:
            found[pid] = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            pass
    return found
