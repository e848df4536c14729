"""Helpers of the sweep and reliability tests: tiny specs on synthetic data, the real CLI as a
subprocess in a fresh working directory, and reading back what MLflow and the local records hold.

Every sweep runs `python -m gatesweep ...` (the console script's code) with cwd = a fresh tmp dir, so
`runs/`, `experiments/` and `mlflow.db` never land in the repository; trainers get OMP_NUM_THREADS=1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from trainer.shards import write_shard

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
SCOPE_VARS = ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "MLFLOW_PARENT_RUN_ID",
              "MLFLOW_TRACKING_URI", "RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
              "CUDA_VISIBLE_DEVICES")

# The brief's tiny trainer: 2 layers, 2 heads of 16 dims, 4 x 32-token batches, one val batch.
TINY_BASE: dict[str, Any] = {
    "preset": "tiny", "vocab_size": 64, "n_embd": 32, "n_head": 2, "sequence_length": 32, "batch_size": 4,
    "device_batch_size": 4, "val_tokens": 256, "num_iterations": 20, "warmdown_iters": 5, "val_every": 5,
    "learning_rate": 0.02, "train_files": "data/train_*.bin", "val_files": "data/val_*.bin",
}
# Per-step histories compared point by point. train_time_ms is left out: the end-of-run summary logs
# it once more at the last step, so MLflow holds one point more than metrics.jsonl by design.
METRIC_KEYS = ("train_loss", "val_loss", "step_avg_ms", "lr")


def unique(prefix: str) -> str:
    """A fresh spec/experiment name: the MLflow server is shared by the whole session."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def write_data(cwd: Path, *, vocab: int = 64, train_tokens: int = 20_000, val_tokens: int = 2_000) -> None:
    """Random-token shards under cwd/data (train_000.bin, val_000.bin) matching TINY_BASE's patterns."""
    rng = np.random.default_rng(0)
    write_shard(cwd / "data" / "train_000.bin", rng.integers(0, vocab, train_tokens))
    write_shard(cwd / "data" / "val_000.bin", rng.integers(0, vocab, val_tokens))


def write_spec(path: Path, name: str, *, base: dict[str, Any] | None = None, grid: dict[str, list] | None = None,
               seeds: list[int] | None = None, max_parallel: int = 2, experiment: str | None = None,
               **top: Any) -> Path:
    spec: dict[str, Any] = {
        "name": name, "stage": name, "base": TINY_BASE | (base or {}),
        "grid": grid if grid is not None else {"attn_gate": ["none", "headwise"]},
        "seeds": seeds if seeds is not None else [0, 1],
        "resources": {"nodes": 1, "gpus_per_node": 0, "cpus_per_task": 1, "timeout_min": 10},
        "tracking": {"experiment": experiment or f"gs-{name}"},
        "backend": {"default": "local", "local": {"max_parallel": max_parallel}},
    } | top
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def cli_env(uri: str | None = None, **extra: str) -> dict[str, str]:
    """The test process's environment minus anything pointing at a rendezvous, experiment or run."""
    env = {k: v for k, v in os.environ.items() if k not in SCOPE_VARS}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT="true",
               GATESWEEP_SYNC_TIMEOUT="20")
    if uri:
        env["MLFLOW_TRACKING_URI"] = uri
    env.update(extra)
    return env


def gatesweep(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """`gatesweep ARGS` to completion; a hang fails the test with the output so far."""
    proc = gatesweep_popen(args, cwd, env)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        out, err = proc.communicate()
        raise AssertionError(f"gatesweep {' '.join(args)} did not finish in {timeout}s:\n{out}\n{err}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def gatesweep_popen(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([PYTHON, "-m", "gatesweep", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)


def trainer_cli(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "trainer", *args], cwd=cwd, env=env, text=True, capture_output=True,
                          stdin=subprocess.DEVNULL, timeout=timeout)


def children(pid: int) -> list[int]:
    """Direct children of a process (the local launcher's trainers)."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def trainers(launcher: int) -> dict[int, str]:
    """{pid: trial id} of the trainers a local launcher runs now: the first processes below it whose
    stdout is a trial's stdout.log (a fresh `python -m trainer` is the launcher's child; a trial forked
    by the warm trainer is its grandchild). A process still starting or already gone is left out."""
    out, todo = {}, children(launcher)
    while todo:
        pid = todo.pop()
        try:
            stdout = os.readlink(f"/proc/{pid}/fd/1")
        except OSError:
            continue
        if stdout.endswith("/stdout.log") and (Path(stdout).parent / "trial.json").exists():
            out[pid] = Path(stdout).parent.name
        else:
            todo += children(pid)
    return out


def descendants(pid: int) -> list[int]:
    out, todo = [], children(pid)
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children(p)
    return out


def alive(pid: int) -> bool:
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a launcher and every process below it (trainers run in their own sessions)."""
    for pid in descendants(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.kill()


def wait_until(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def trial_dirs(cwd: Path, spec: str) -> list[Path]:
    return sorted(p for p in (cwd / "runs" / spec).iterdir() if p.is_dir() and not p.name.startswith("."))


def last_logged_step(run_dir: Path) -> int:
    """The newest train step in a trial's reference-format log (0 before the first)."""
    logs = list((run_dir / "logs").glob("*.txt"))
    if not logs:
        return 0
    steps = [int(line.split("/")[0][5:]) for line in logs[0].read_text().splitlines()
             if line.startswith("step:") and " train_loss:" in line]
    return max(steps, default=0)


def local_status(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "track" / "status.json").read_text())
    except FileNotFoundError:
        return {}


def local_points(track: Path, keys: Iterable[str] = METRIC_KEYS) -> list[tuple[str, int, float, int]]:
    """The metric points of a local record: (key, step, value, timestamp ms)."""
    return [(p["key"], p["step"], p["value"], p["ts"])
            for p in map(json.loads, (track / "metrics.jsonl").read_text().splitlines()) if p["key"] in keys]


def results_rows(cwd: Path) -> list[dict[str, str]]:
    import csv

    path = cwd / "experiments" / "results.csv"
    return list(csv.DictReader(path.open())) if path.exists() else []


# ---------------------------------------------------------------- MLflow
def client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def experiment_runs(uri: str, experiment: str, kind: str | None = None) -> list[Any]:
    """Every run of an experiment (optionally only gatesweep.kind=trial|sweep), all pages."""
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return []
    flt = f"tags.`gatesweep.kind` = '{kind}'" if kind else ""
    runs, token = [], None
    while True:
        page = c.search_runs([exp.experiment_id], flt, max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def count_all_runs(uri: str) -> int:
    """Runs in every experiment of the server (active and deleted experiments alike)."""
    from mlflow.entities import ViewType

    c = client(uri)
    ids = [e.experiment_id for e in c.search_experiments(view_type=ViewType.ALL)]
    n, token = 0, None
    while ids:
        page = c.search_runs(ids, "", run_view_type=ViewType.ALL, max_results=1000, page_token=token)
        n += len(page)
        token = page.token
        if not token:
            break
    return n


def mlflow_points(uri: str, run_id: str, keys: Iterable[str] = METRIC_KEYS) -> list[tuple[str, int, float, int]]:
    c = client(uri)
    return [(k, m.step, m.value, m.timestamp) for k in keys for m in c.get_metric_history(run_id, k)]


def point_diff(mlflow: list[tuple[str, int, float, int]], local: list[tuple[str, int, float, int]]
               ) -> tuple[list, list]:
    """(points only MLflow has, points only the local record has), as multisets; NaN (step_avg_ms
    through step 11) equals NaN. Both empty: every point delivered exactly once, nothing invented."""
    from collections import Counter

    def norm(p: tuple[str, int, float, int]) -> tuple:
        return (p[0], p[1], "nan" if p[2] != p[2] else p[2], p[3])

    a, b = Counter(map(norm, mlflow)), Counter(map(norm, local))
    return sorted((a - b).elements(), key=repr), sorted((b - a).elements(), key=repr)


def cwd_snapshot(cwd: Path) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime_ns)} of every file and directory under cwd."""
    return {str(p.relative_to(cwd)): (p.stat().st_size if p.is_file() else -1, p.stat().st_mtime_ns)
            for p in cwd.rglob("*")}
