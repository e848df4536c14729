"""Timing `python -m gatesweep ...` as a fresh process against a checkout (wall, CPU, peak memory, the
machine's load), a real `mlflow server` of the bench's own on a free loopback port, and another
revision's code as a plain directory (for before/after runs side by side)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

TIME = "/usr/bin/time"  # GNU time (Debian package `time`)


def quiet(max_load: float | None, max_wait_s: float = 600.0) -> float:
    """Wait (bounded) until the 1-minute load average is below `max_load`; returns the seconds waited."""
    t0 = time.monotonic()
    while max_load is not None and os.getloadavg()[0] >= max_load and time.monotonic() - t0 < max_wait_s:
        time.sleep(5)
    return round(time.monotonic() - t0, 1)


def timed(argv: list[str], cwd: Path, code: Path, env_extra: dict[str, str] | None = None) -> dict:
    """One CLI process: wall and CPU seconds, its peak resident memory (MiB), the load average when it
    started; raises SystemExit with its stderr when it fails."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "GATESWEEP_"))}
    env.update(PYTHONPATH=str(code), MLFLOW_LOGGING_LEVEL="WARNING", MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT="true",
               **(env_extra or {}))
    load = os.getloadavg()[0]
    # GNU time forks the command: a child forked from this (large) Python process would count this
    # process's memory in its peak (Linux keeps the high-water mark across exec).
    cmd = [TIME, "-f", "%e %U %S %M", "-o", str(cwd / "time.txt"), sys.executable, "-m", "gatesweep", *argv]
    t0 = time.perf_counter()
    with open(cwd / "stdout.txt", "wb") as out, open(cwd / "stderr.txt", "wb") as err:
        rc = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL).returncode
    wall = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"gatesweep {' '.join(argv)} failed ({rc}):\n{(cwd / 'stderr.txt').read_text()[-3000:]}")
    _, user, system, peak_kib = (cwd / "time.txt").read_text().split()[-4:]
    return {"wall_s": round(wall, 2), "cpu_s": round(float(user) + float(system), 2),
            "peak_mib": round(int(peak_kib) / 1024), "load": round(load, 2)}


def checkout(rev: str, repo: Path, into: Path) -> Path:
    """The tracked files of `rev` (git archive) in `into`: another revision's code to time."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(repo), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Server:
    """A running server: its URI and process group (the `mlflow server` CLI and its uvicorn worker)."""

    uri: str
    pgid: int

    def processes(self) -> list[int]:
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == self.pgid:  # pgrp, after state and ppid
                found.append(int(stat.parent.name))
        return found

    def reset_peak(self) -> None:
        """Start the servers' peak resident memory afresh, at what they hold now (Linux clear_refs 5)."""
        for pid in self.processes():
            try:
                Path(f"/proc/{pid}/clear_refs").write_text("5")
            except OSError:
                pass

    def peak_mib(self) -> int:
        """The largest peak resident memory (VmHWM) of the server's processes since reset_peak."""
        peaks = [0]
        for pid in self.processes():
            try:
                line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmHWM:"))
            except (OSError, StopIteration):
                continue
            peaks.append(int(line.split()[1]))
        return round(max(peaks) / 1024)


@contextmanager
def mlflow_server(backend_uri: str, root: Path, timeout_s: float = 300.0, *, app: str | None = None) -> Iterator[Server]:
    """A real `mlflow server` (the venv's, one worker, as scripts/mlflow_up.sh starts it) on a free
    loopback port over `backend_uri`, with `--app-name app` when given (`gatesweep`: the routes of
    analysis.server_app, as mlflow_up.sh); yields it; stops its own process group at the end."""
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", backend_uri,
           "--artifacts-destination", str(root / "mlartifacts"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", *(["--app-name", app] if app else [])]
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    log_path = root / f"server-{app or 'plain'}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while not _healthy(uri):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"mlflow server did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.5)
        yield Server(uri, proc.pid)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # the server and the worker it forked, nothing else
            proc.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False
