"""Shared helpers of the trainer tests: tiny configs, token shards, real multi-rank runs on CPU.

Multi-rank helpers start real gloo process groups (spawned processes, 127.0.0.1, a free port); the
trainer subprocess helpers run `python -m trainer` / `torchrun -m trainer` with OMP_NUM_THREADS=1
(oversubscribed intra-op threads made CPU steps ~10x slower on the 2-core CI machine).
"""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.config import TrainConfig, preset_config
from trainer.dist import DistEnv
from trainer.shards import write_shard

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))

# The smallest model/batch that still exercises every code path: 2 layers, 2 heads of 16 dims,
# 4 x 32-token micro-batches, one val micro-batch per rank on up to 2 ranks. fast=false: the tests
# that compare against independent references (or against a fast option) start from the plain path.
TINY = {
    "vocab_size": 64, "n_layer": 2, "n_head": 2, "n_embd": 32, "sequence_length": 32,
    "batch_size": 8, "device_batch_size": 4, "val_tokens": 256, "num_iterations": 6,
    "warmdown_iters": 2, "val_every": 0, "device": "cpu", "compile": "off", "fast": False,
}


def tiny_cfg(**over: Any) -> TrainConfig:
    return preset_config("tiny").override({**TINY, **over})


def write_shards(directory: Path, prefix: str, sizes: list[int], *, vocab: int, seed: int = 0) -> str:
    """Shards `<prefix>_000.bin`, ... of uniformly random tokens; returns the glob pattern."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i, n in enumerate(sizes):
        write_shard(directory / f"{prefix}_{i:03d}.bin", rng.integers(0, vocab, n, dtype=np.int64))
    return str(directory / f"{prefix}_*.bin")


def data_cfg(tmp: Path, *, vocab: int = 64, train_sizes: tuple[int, ...] = (3000, 2000),
             val_size: int = 1000, **over: Any) -> TrainConfig:
    """tiny_cfg with fresh random shards and every output under `tmp`."""
    train = write_shards(tmp / "data", "train", list(train_sizes), vocab=vocab, seed=1)
    val = write_shards(tmp / "data", "val", [val_size], vocab=vocab, seed=2)
    base = {"vocab_size": vocab, "train_files": train, "val_files": val, "out_dir": str(tmp / "out"),
            "results_csv": str(tmp / "experiments" / "results.csv"), "run_id": "run"}
    return tiny_cfg(**{**base, **over})


def single_env() -> DistEnv:
    torch.set_num_threads(1)
    return DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


def ckpt_model(out_dir: str | Path, run_id: str) -> dict[str, torch.Tensor]:
    state = torch.load(Path(out_dir) / "checkpoints" / run_id / "latest.pt", map_location="cpu", weights_only=False)
    return state["model"]


def assert_state_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"tensors differ: {diff}"


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


# ---------------------------------------------------------------- real gloo process groups
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(fn: Callable[..., Any], rank: int, world_size: int, port: int, args: tuple, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    try:
        torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
        try:
            result: Any = ("ok", fn(rank, world_size, *args))
        finally:
            torch.distributed.destroy_process_group()
    except BaseException:  # noqa: BLE001 - reported to the parent, which fails the test
        result = ("error", traceback.format_exc())
    with open(out, "wb") as f:
        pickle.dump(result, f)


def run_ranks(fn: Callable[..., Any], *args: Any, tmp: Path, world_size: int = 2, timeout: float = 120) -> list:
    """Run fn(rank, world_size, *args) in `world_size` spawned processes joined by a gloo group;
    returns the per-rank results (picklable). A rank's exception fails the calling test."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    port = free_port()
    outs = [str(tmp / f"rank{r}.{port}.pkl") for r in range(world_size)]
    procs = [ctx.Process(target=_rank_main, args=(fn, r, world_size, port, args, outs[r])) for r in range(world_size)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    results = []
    for r, (p, out) in enumerate(zip(procs, outs)):
        if not Path(out).exists():
            raise AssertionError(f"rank {r} exited with {p.exitcode} and no result (timeout or crash)")
        with open(out, "rb") as f:
            status, value = pickle.load(f)
        if status != "ok":
            raise AssertionError(f"rank {r} failed:\n{value}")
        results.append(value)
    return results


# ---------------------------------------------------------------- trainer subprocesses
def trainer_env(**extra: str) -> dict[str, str]:
    """The test process's environment minus anything that points at a rendezvous or tracking
    server, plus one intra-op thread per process. These trainers run in the repository with their
    outputs in pytest's tmp dir: outside the project, so they opt out of trainer.paths' confinement
    (tests of the confinement itself run the trainer in a tmp project directory instead)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "MLFLOW_TRACKING_URI")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), GATESWEEP_TRACKING="local",
               GATESWEEP_ALLOW_OUTSIDE_PATHS="1")
    env.update(extra)
    return env


def cli_args(cfg: TrainConfig) -> list[str]:
    """The config as `key=value` arguments for `python -m trainer`."""
    return [f"{k}={v}" for k, v in cfg.flat().items()]


def python_trainer(args: list[str], **popen: Any) -> subprocess.Popen:
    return subprocess.Popen([PYTHON, "-m", "trainer", *args], cwd=REPO, env=trainer_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def torchrun_trainer(args: list[str], nproc: int = 2, **popen: Any) -> subprocess.Popen:
    # --standalone: a local c10d rendezvous on a free port; workers bind 127.0.0.1.
    cmd = [TORCHRUN, "--standalone", f"--nproc_per_node={nproc}", "--local-addr=127.0.0.1", "-m", "trainer", *args]
    return subprocess.Popen(cmd, cwd=REPO, env=trainer_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **popen)


def finish(proc: subprocess.Popen, timeout: float = 180) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"trainer did not finish in {timeout}s:\n{out[-3000:]}") from None
    return proc.returncode, out


def wait_for_line(path: Path, needle: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Poll a growing log file until it contains `needle` (the process must still be running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and needle in path.read_text():
            return
        if proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) before logging {needle!r}:\n"
                                 f"{proc.stdout.read()[-3000:] if proc.stdout else ''}")
        time.sleep(0.01)
    raise AssertionError(f"{path} did not show {needle!r} within {timeout}s")
