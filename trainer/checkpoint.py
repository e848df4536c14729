"""Checkpoints for exact resume: atomic writes, newest one wins.

A checkpoint holds the model, AdamW's state, Muon's gathered momentum buffers, the step, the number
of micro-batches the loader has drawn, and every RNG state, so a resumed run continues bit for bit.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

LATEST = "latest.pt"


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
    tmp = d / f".{LATEST}.tmp.{os.getpid()}"
    try:
        torch.save(state, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, d / LATEST)
    except BaseException:
        # A failed save (disk full, unpicklable state) must not leave a checkpoint-sized orphan.
        tmp.unlink(missing_ok=True)
        raise
    if keep_history:
        hist = d / f"state_step{int(state['step']):06d}.pt"
        torch.save(state, hist)
    return d / LATEST


def load_latest(ckpt_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    path = Path(ckpt_dir) / LATEST
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)
