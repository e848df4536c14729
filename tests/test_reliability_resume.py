"""Kill and resume, three kill points: a trainer sent SIGTERM at a random step (before the step-10 clock
reset, around validation, late) and started again ends bitwise-identical on CPU to an uninterrupted run:
every tensor of the final checkpoint (model, AdamW, Muon momentum, RNG states) and the final val loss.

tests/test_trainer_resume.py holds the single-point version (and SIGKILL from periodic checkpoints);
this module reuses its helpers from tests/trainer_helpers.py.

Hook for the Slurm-requeue variant: `assert_same_final_state(out_a, out_b, run_id)` compares two
finished runs' final checkpoints and summaries; a requeued Slurm job's run directory and an
uninterrupted run's can be compared with it directly.
"""

from __future__ import annotations

import json
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tests.trainer_helpers import cli_args, data_cfg, finish, python_trainer

N = 60
COMMON = dict(num_iterations=N, warmdown_iters=15, val_every=10, save_final=True, attn_gate="elementwise")
SEED = 20261127  # the draw is printed on failure; change it to try other points


def kill_points(seed: int = SEED) -> list[int]:
    """One random step in each band: before the clock reset at step 10, around validation, late."""
    rng = random.Random(seed)
    return [rng.randint(1, 9), rng.randint(10, 25), rng.randint(26, 45)]


def assert_equal_nested(a: Any, b: Any, path: str = "") -> None:
    """Exact equality of nested checkpoint state: tensors with torch.equal, the rest with ==."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, np.ndarray):  # numpy's RNG state
        assert isinstance(b, np.ndarray) and np.array_equal(a, b), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (path, set(a) ^ set(b))
        for k in a:
            assert_equal_nested(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal_nested(x, y, f"{path}[{i}]")
    else:
        assert a == b or (a != a and b != b), (path, a, b)  # NaN == NaN here


def assert_same_final_state(out_a: Path, out_b: Path, run_id: str) -> None:
    """Two finished runs end in the same state: the whole final checkpoint except wall-clock time
    and where the run keeps its files (same data, other dirs), and the same final/best val loss."""
    a, b = (torch.load(Path(o) / "checkpoints" / run_id / "latest.pt", weights_only=False) for o in (out_a, out_b))
    for state in (a, b):
        state.pop("train_time_ms")
        # numpy's and Python's global RNGs are not seeded by the trainer (a fresh process draws them from
        # the OS) and no computation uses them; the torch RNG, seeded by `seed`, must match.
        state["rng"] = {"torch": state["rng"]["torch"]}
        state["config"] = {k: v for k, v in state["config"].items() if k not in ("out_dir", "results_csv", "train_files", "val_files")}
    assert a["step"] == b["step"] == N
    assert_equal_nested(a, b)
    sa, sb = (json.loads((Path(o) / "track" / "summary.json").read_text()) for o in (out_a, out_b))
    assert sa["final_val_loss"] == sb["final_val_loss"] and sa["best_val_loss"] == sb["best_val_loss"]


def test_sigterm_at_three_random_steps_resumes_bitwise(tmp_path: Path):
    points = kill_points()
    ref = data_cfg(tmp_path / "ref", **COMMON)
    cuts = [data_cfg(tmp_path / f"cut{k}", **COMMON) for k in points]
    procs = [python_trainer(cli_args(c)) for c in [ref, *cuts]]  # all at once: 2 cores, ~4 s of imports each
    logs = [Path(c.run.out_dir) / "logs" / "run.txt" for c in cuts]
    pending = dict(enumerate(points))
    deadline = time.monotonic() + 180
    while pending and time.monotonic() < deadline:  # SIGTERM each run once its log shows its kill step
        for i, k in list(pending.items()):
            if logs[i].exists() and f"step:{k}/{N} train_loss" in logs[i].read_text():
                procs[i + 1].send_signal(signal.SIGTERM)
                del pending[i]
            elif procs[i + 1].poll() is not None:
                raise AssertionError(f"kill point {k}: trainer exited before the signal:\n{finish(procs[i + 1])[1]}")
        time.sleep(0.005)
    assert not pending, f"kill points {points}: never reached {pending}"
    saved = []
    for c, k, p in zip(cuts, points, procs[1:]):
        rc, out = finish(p)
        assert rc == 75, (k, out[-3000:])  # KILLED: resumable
        status = json.loads((Path(c.run.out_dir) / "track" / "status.json").read_text())
        step = torch.load(Path(c.run.out_dir) / "checkpoints" / "run" / "latest.pt", weights_only=False)["step"]
        assert status["status"] == "KILLED" and status["reason"] == (
            f"stopped by signal SIGTERM at step {step}; checkpoint saved"), status
        assert k <= step < N, (k, step)
        saved.append(step)
    resumed = [python_trainer(cli_args(c)) for c in cuts]
    for c, step, p in zip(cuts, saved, resumed):
        rc, out = finish(p)
        assert rc == 0, out[-3000:]
        assert f"resumed from step {step}" in (Path(c.run.out_dir) / "logs" / "run.txt").read_text()
    rc, out = finish(procs[0])
    assert rc == 0, out[-3000:]
    for c in cuts:
        assert_same_final_state(Path(ref.run.out_dir), Path(c.run.out_dir), "run")
    assert len(set(saved)) == 3, f"kill points {points} saved at {saved}: expected three different steps"
    print(f"\nSIGTERM at steps {points} (checkpoints at {saved}) of {N}: 3 resumes bitwise equal", file=sys.stderr)
