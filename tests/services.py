"""Real dev services for the tests: an MLflow server on loopback, the project's Slurm, headless Chromium.

Plain helpers (no pytest import, nothing runs at import); `tests/conftest.py` wraps them in fixtures.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
LOOPBACK = "127.0.0.1"
# The project's multi-node test cluster puts its nodes in network namespaces: a job there reaches this
# host only at the cluster's bridge address, which scripts/slurm_up.sh exports in its env.sh.
SERVICE_HOST_ENV = "GATESWEEP_SERVICE_HOST"
DEFAULT_SLURM_ROOT = "/tmp/gatesweep-slurm"
CHROMIUM = "/usr/bin/chromium"
APP = "gatesweep"  # the project's MLflow server app (pyproject.toml entry point mlflow.app)
MLFLOW_HEALTH_TIMEOUT_S = 120.0  # a cold first start of `mlflow server` took 26 s on 2 cores
USABLE_NODE_STATES = {"idle", "mix", "alloc"}


# ---------------------------------------------------------------- generic


def service_host() -> str:
    """Where the tests' servers listen: loopback, or the multi-node cluster's address of this host
    (the only address its nodes reach; still no interface but the test bridge)."""
    if os.environ.get(SERVICE_HOST_ENV):
        return os.environ[SERVICE_HOST_ENV]
    root = Path(os.environ.get("SLURM_ROOT") or DEFAULT_SLURM_ROOT)  # its env.sh not sourced (yet)
    if os.environ.get("SLURM_CONF", str(root / "etc" / "slurm.conf")) == str(root / "etc" / "slurm.conf"):
        return cluster_env(root).get(SERVICE_HOST_ENV) or LOOPBACK
    return LOOPBACK


def free_port(host: str = LOOPBACK) -> int:
    """A port that is free now, chosen below the kernel's ephemeral range (32768+), so that an
    outgoing connection cannot take it while a test has the server stopped."""
    for _ in range(200):
        port = random.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port on {host} in 20000-32000")


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def tail(path: Path, num_lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-num_lines:])
    except OSError:
        return f"(no {path})"


def kill_process_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the process group led by `proc` (started with start_new_session=True), wait until all
    of it is gone, SIGKILL what is left after grace_s."""
    _signal_group(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while _group_alive(proc) and time.monotonic() < deadline:
        time.sleep(0.1)
    _signal_group(proc.pid, signal.SIGKILL)
    proc.wait()


def _group_alive(proc: subprocess.Popen) -> bool:
    proc.poll()  # reap the leader, else its zombie keeps the group "alive"
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        return False
    return True


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


# ---------------------------------------------------------------- MLflow server


class MlflowServer:
    """A real `mlflow server` (sqlite backend, local artifact root) on service_host(): 127.0.0.1, or
    the multi-node test cluster's bridge address of this host.

    `stop()` and `start()` keep the port, the database and the artifacts, so a test can take the
    server away and bring it back. Built with `uri=` it wraps a server that someone else runs
    (MLFLOW_TEST_URI); then `managed` is False and stop()/start() raise NotManagedError.
    """

    def __init__(self, root: Path | None = None, *, port: int | None = None, uri: str | None = None,
                 app: str | None = APP, db: Path | None = None):
        self.managed = uri is None
        self.db = db  # another server's database, to serve the same store twice (default: root/mlflow.db)
        self.app = app  # `--app-name`: the gatesweep routes (analysis.server_app), as make mlflow-up; None: plain
        self.root = Path(root) if root is not None else None
        self.host = service_host()
        self.port = port or (free_port(self.host) if self.managed else 0)
        self.uri = uri.rstrip("/") if uri else f"http://{self.host}:{self.port}"
        self.log_path = self.root / "server.log" if self.root else None
        self._proc: subprocess.Popen | None = None

    def __repr__(self) -> str:
        return f"MlflowServer(uri={self.uri!r}, root={str(self.root)!r}, managed={self.managed})"

    @property
    def backend_uri(self) -> str:
        assert self.root is not None
        return f"sqlite:///{self.db or self.root / 'mlflow.db'}"

    @property
    def artifact_root(self) -> Path:
        assert self.root is not None
        return self.root / "mlartifacts"

    def healthy(self) -> bool:
        return http_ok(f"{self.uri}/health")

    def command(self) -> list[str]:
        # the venv's own console script, next to the interpreter that runs pytest
        mlflow_exe = Path(sys.executable).parent / "mlflow"
        return [str(mlflow_exe), "server", "--backend-store-uri", self.backend_uri,
                "--artifacts-destination", str(self.artifact_root),  # proxied, as scripts/mlflow_up.sh
                "--host", self.host, "--port", str(self.port), "--workers", "1",
                *(["--app-name", self.app] if self.app else []),
                # MLflow's guards accept only localhost and RFC 1918 Host headers (DNS rebinding) and
                # localhost origins (CORS: the UI's own requests) by default
                *([] if self.host == LOOPBACK else ["--allowed-hosts", f"{self.host}:{self.port},{self.host}",
                                                   "--cors-allowed-origins", f"http://{self.host}:{self.port}"])]

    def start(self, timeout_s: float = MLFLOW_HEALTH_TIMEOUT_S) -> float:
        """Start the server and wait for /health; returns the seconds it took."""
        self._require_managed("start")
        assert self.root is not None and self.log_path is not None
        if self.app and self.app not in {e.name for e in metadata.entry_points(group="mlflow.app")}:
            raise RuntimeError(f"MLflow app {self.app!r} is not installed in {sys.prefix}: pyproject.toml "
                               "registers it; run make setup (pip install -e .) to register it")
        if self._proc is not None and self._proc.poll() is None:
            return 0.0
        self.artifact_root.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")  # no GenAI job runners
        t0 = time.monotonic()
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        self._wait_healthy(t0 + timeout_s)
        return time.monotonic() - t0

    def _wait_healthy(self, deadline: float) -> None:
        assert self._proc is not None and self.log_path is not None
        while not self.healthy():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                why = "exited" if self._proc.poll() is not None else "did not answer /health in time"
                self.stop()
                raise RuntimeError(f"mlflow server at {self.uri} {why}; log {self.log_path}:\n"
                                   f"{tail(self.log_path)}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop the server and all its processes (the CLI, the uvicorn worker)."""
        self._require_managed("stop")
        if self._proc is not None:
            kill_process_group(self._proc)
            self._proc = None

    def _require_managed(self, what: str) -> None:
        if not self.managed:
            raise NotManagedError(f"cannot {what} the MLflow server at {self.uri}: it comes from "
                                  "MLFLOW_TEST_URI and is not run by the tests; unset MLFLOW_TEST_URI")


class NotManagedError(RuntimeError):
    """stop()/start() on a server the tests do not run (MLFLOW_TEST_URI)."""


# ---------------------------------------------------------------- Slurm


@dataclass(frozen=True)
class SlurmCluster:
    partition: str  # the default partition (what sinfo marks with "*")
    root: Path  # SLURM_ROOT of the project's cluster (state, logs); unused for an external cluster
    conf: str  # SLURM_CONF for the clients
    nodes: tuple[str, ...] = ()  # the default partition's nodes, in Slurm's order
    env: tuple[tuple[str, str], ...] = ()  # what the cluster's env.sh exports (SLURM_CONF, GATESWEEP_SERVICE_HOST)


class SlurmUpError(RuntimeError):
    """scripts/slurm_up.sh failed; the message holds its output."""


def slurm_state(conf: str, timeout_s: float = 30.0) -> dict[str, str] | None:
    """{partition: node state} from `sinfo` with this SLURM_CONF (default partition marked "*"),
    or None when sinfo does not answer."""
    if not Path(conf).is_file():  # sinfo would retry reading it for 60 s
        return None
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P %t"], env=dict(os.environ, SLURM_CONF=conf),
                             capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return dict(line.split(maxsplit=1) for line in out.stdout.splitlines() if line.strip())


def _usable(state: dict[str, str] | None) -> bool:
    return bool(state) and any(s in USABLE_NODE_STATES for s in state.values())  # type: ignore[union-attr]


def _pid_alive(pidfile: Path) -> bool:
    try:
        os.kill(int(pidfile.read_text().strip()), 0)
    except (OSError, ValueError):
        return False
    return True


def default_partition(state: dict[str, str]) -> str:
    starred = [p for p in state if p.endswith("*")]
    return (starred or list(state))[0].rstrip("*")


def slurm_up(root: Path, timeout_s: float = 900.0) -> str:
    """Run scripts/slurm_up.sh (installs packages on a bare machine); returns its output."""
    cmd = ["bash", str(SCRIPTS / "slurm_up.sh")]
    env = dict(os.environ, SLURM_ROOT=str(root))
    try:
        out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as e:
        raise SlurmUpError(f"scripts/slurm_up.sh timed out after {timeout_s:.0f}s:\n{e.output or ''}") from e
    if out.returncode != 0:
        raise SlurmUpError(
            f"scripts/slurm_up.sh failed (exit {out.returncode}), SLURM_ROOT={root}:\n{out.stdout}"
        )
    return out.stdout


def ensure_slurm(root: Path | None = None) -> SlurmCluster:
    """The cluster that answers `sinfo` with a usable node: the one named by $SLURM_CONF if it answers,
    else the project's own (scripts/slurm_up.sh under SLURM_ROOT, brought up when needed)."""
    root = Path(root or os.environ.get("SLURM_ROOT") or DEFAULT_SLURM_ROOT)
    own_conf = str(root / "etc" / "slurm.conf")
    conf = os.environ.get("SLURM_CONF") or own_conf
    # sinfo spends ~9 s retrying a controller that is down; ours leaves a pid file to check first
    state = None if conf == own_conf and not _pid_alive(root / "run" / "slurmctld.pid") else slurm_state(conf)
    if not _usable(state):
        output = slurm_up(root)
        conf = own_conf
        state = slurm_state(conf)
        if not _usable(state):
            raise SlurmUpError(f"slurm_up.sh succeeded but sinfo shows no usable node: {state}\n{output}")
    assert state is not None
    partition = default_partition(state)
    env = cluster_env(root) if conf == own_conf else {"SLURM_CONF": conf}
    return SlurmCluster(partition=partition, root=root, conf=conf, nodes=partition_nodes(conf, partition),
                        env=tuple(sorted(env.items())))


def cluster_env(root: Path) -> dict[str, str]:
    """The `export K=V` lines of the project's cluster's env.sh (written by scripts/slurm_up.sh)."""
    try:
        lines = (root / "env.sh").read_text().splitlines()
    except OSError:
        return {"SLURM_CONF": str(root / "etc" / "slurm.conf")}
    pairs = (ln.removeprefix("export ").split("=", 1) for ln in lines if ln.startswith("export "))
    return {k: v for k, v in pairs}


def partition_nodes(conf: str, partition: str) -> tuple[str, ...]:
    out = subprocess.run(["sinfo", "-h", "-N", "-p", partition, "-o", "%N"], env=dict(os.environ, SLURM_CONF=conf),
                         capture_output=True, text=True, timeout=60)
    return tuple(dict.fromkeys(out.stdout.split()))  # -N lists a node once per partition


# ---------------------------------------------------------------- headless Chromium

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


def chromium_dump_dom(url: str, *, expect: str | None = None, budget_ms: int = 15000,
                      attempts: int = 3, timeout_s: float = 120.0) -> str:
    """The DOM of `url` after headless Chromium ran its scripts for `budget_ms` of virtual time.

    With `expect`, retry (doubling the budget) until that text is in the DOM and return the last
    DOM either way, so the caller's assertion shows what rendered. The MLflow runs table had the
    run names at a 300 ms budget already; 15 s leaves a wide margin on a loaded 2-core machine.
    """
    if not os.access(CHROMIUM, os.X_OK):
        raise FileNotFoundError(f"{CHROMIUM} not found: run scripts/chromium_install.sh (make services-up)")
    dom = ""
    for _ in range(attempts):
        dom = _dump_dom_once(url, budget_ms, timeout_s)
        if expect is None or expect in dom:
            break
        budget_ms *= 2
    return dom


def _dump_dom_once(url: str, budget_ms: int, timeout_s: float) -> str:
    profile = tempfile.mkdtemp(dir="/tmp", prefix="gs-chromium-")
    cmd = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
           f"--virtual-time-budget={budget_ms}", "--dump-dom", url]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill_process_group(proc, grace_s=2.0)  # chromium's renderer/zygote children too
        raise RuntimeError(f"chromium --dump-dom {url} did not finish in {timeout_s:.0f}s") from None
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    if proc.returncode != 0:  # the dbus errors on stderr are harmless; a non-zero exit is not
        raise RuntimeError(f"chromium --dump-dom {url} exited {proc.returncode}:\n{stderr[-3000:]}")
    return stdout
