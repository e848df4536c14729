"""Checkpoints for exact resume: atomic writes, newest one wins.

A checkpoint holds the model, AdamW's state, Muon's gathered momentum buffers, the step, the number
of micro-batches the loader has drawn, and every RNG state, so a resumed run continues bit for bit.
"""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.config import FIELD_SECTION, TrainConfig, trial_identity
from trainer.errors import ConfigError

log = logging.getLogger(__name__)

LATEST = "latest.pt"
SIDECAR = "latest.json"


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                             "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(ckpt_dir: str | os.PathLike[str], state: dict[str, Any], *, keep_history: bool = False) -> Path:
    """Write `latest.pt` atomically (temp file + rename): a kill mid-save leaves the previous one."""
    d = Path(ckpt_dir)
    d.mkdir(parents=True, exist_ok=True)
    _write(state, d / f".{LATEST}.tmp.{os.getpid()}", d / LATEST)
    if keep_history:
        _write(state, d / f".{LATEST}.tmp.{os.getpid()}", d / f"state_step{int(state['step']):06d}.pt")
    # A small sidecar lets a restart check the config before it loads (or records) anything.
    side = d / SIDECAR
    tmp_side = d / f".{SIDECAR}.tmp.{os.getpid()}"
    tmp_side.write_text(json.dumps({"step": int(state["step"]), "config": state.get("config", {}),
                                    "world_size": state.get("world_size")}, default=str))
    os.replace(tmp_side, side)
    return d / LATEST


def _write(state: dict[str, Any], tmp: Path, path: Path) -> None:
    """torch.save into `tmp`, synced, renamed to `path`. Through a Python file object: a full disk is then
    the kernel's OSError (ENOSPC, one line for the user) instead of torch's RuntimeError ("unexpected
    pos"); a failed save (disk full, unpicklable state) leaves no checkpoint-sized orphan."""
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, e.strerror, e.filename or str(path)) from None  # the file, for the message
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def sidecar(ckpt_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """{"step", "config"} of the newest checkpoint, without loading it; None if there is none."""
    path = Path(ckpt_dir) / SIDECAR
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def check_same_world(saved_world: int | None, world_size: int, ckpt_dir: str | os.PathLike[str]) -> None:
    """The loader position in a checkpoint counts micro-batches per rank and the token order depends
    on the world size, so only the same number of ranks continues a run exactly."""
    if saved_world is not None and int(saved_world) != world_size:
        raise ConfigError(f"{Path(ckpt_dir) / LATEST} was written by {saved_world} rank(s); this run has {world_size}. "
                          f"Resume with --nproc_per_node={saved_world} (x nodes), or start a new run_id")


def check_same_trial(cfg: TrainConfig, saved: dict[str, Any], ckpt_dir: str | os.PathLike[str]) -> None:
    """A checkpoint continues only the trial that wrote it: resuming a run_id under other
    hyperparameters would silently splice two configs into one run."""
    diff = [k for k, v in trial_identity(cfg).items() if k in saved and saved[k] != v]
    if diff:
        was = ", ".join(f"{k}={saved[k]!r}" for k in diff)
        now = ", ".join(f"{k}={getattr(getattr(cfg, FIELD_SECTION[k]), k)!r}" for k in diff)
        raise ConfigError(f"{Path(ckpt_dir) / LATEST} was written with {was}; now {now}. Resume with the "
                          "same config, or start a new run with another run_id or out_dir")


def load_latest(ckpt_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The newest readable checkpoint: latest.pt, else (cut short by a full disk or an interrupted
    copy) the newest `state_step*.pt` of the history, if one was kept. None if there is none."""
    d = Path(ckpt_dir)
    remove_orphans(d)
    candidates = [d / LATEST, *sorted(d.glob("state_step*.pt"), reverse=True)]
    problems = []
    for path in candidates:
        if not path.exists():
            continue
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, EOFError, UnpicklingError...
            problems.append(f"{path.name}: {str(e).splitlines()[0][:120] if str(e) else type(e).__name__}")
            continue
        if problems:
            log.warning("%s is unreadable (%s); resuming from %s (step %s)", d / LATEST, problems[0], path.name,
                        state.get("step"))
        return state
    if problems:
        raise ConfigError(f"{d / LATEST}: unreadable checkpoint ({problems[0]}; cut short by a full disk or an "
                          f"interrupted copy?); restore it, or delete {d} to start run_id {d.name} over")
    return None


def remove_orphans(ckpt_dir: Path) -> None:
    """Temp files of saves whose process was killed (SIGKILL skips the cleanup in `save`)."""
    for tmp in [*ckpt_dir.glob(f".{LATEST}.tmp.*"), *ckpt_dir.glob(f".{SIDECAR}.tmp.*")]:
        pid = tmp.name.rsplit(".", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
