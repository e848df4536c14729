"""A trial's run directory on disk: trial.json, the local tracking record, the liveness lock.

`runs/<spec>/<trial_id>/` is shared by every backend (on Slurm it lives on the shared filesystem).
The liveness lock is an fcntl lock held by the process that runs the trial: if it can be taken,
nobody is running the trial, so a record still saying RUNNING belongs to a dead process.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cluster.common.compile_cache import megacache_path
from cluster.common.runs_fs import check_runs_filesystem
from sweeps.expand import Trial
from trainer.record import read_json, write_json

RUNS_ROOT = Path("runs")
TRIAL_ID_RE = re.compile(r"[0-9a-f]{12}")  # sweeps.expand: config_hash's length


def trial_dir(trial: Trial, root: Path = RUNS_ROOT) -> Path:
    return root / trial.spec / trial.trial_id


def run_config(trial: Trial, run_dir: Path) -> dict[str, Any]:
    """The flat trainer config a trial runs with: its own out_dir, run_id = trial_id so that a
    restarted trial resumes from its checkpoint, and the sweep's portable compile cache (loaded if
    `gatesweep warmup` wrote it). All three keys are outside the trial identity."""
    return trial.config.flat() | {"out_dir": str(run_dir), "run_id": trial.trial_id,
                                  "compile_cache": str(megacache_path(run_dir.parent))}


def write_trial_json(trial: Trial, run_dir: Path, *, backend: str, overrides: dict[str, Any] | None = None,
                     tags: dict[str, str] | None = None) -> Path:
    """`tags` (e.g. mlflow.parentRunId) travel with the trial: a trainer whose run the launcher could
    not create (tracking server down) creates it itself, with the same tags, when the server is back."""
    run_dir.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = trial.meta() | {"backend": backend}
    meta["tags"] = {**meta["tags"], "backend": backend, **(tags or {})}
    body = {"config": run_config(trial, run_dir) | (overrides or {}), "trial": meta}
    path = run_dir / "trial.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(body, indent=1, sort_keys=True))
    os.replace(tmp, path)
    return path


def check_runs_writable(spec: str, root: Path = RUNS_ROOT) -> None:
    """Refuse (StorageError, exit 2) before anything is written when the spec's run directories cannot
    be, or when their filesystem keeps locks per host (cluster.common.runs_fs): trial.json, the records
    and the locks live there."""
    from trainer.errors import StorageError
    from trainer.paths import check_writable

    check_writable(root / spec, None, fix="make it writable (every trial's record and lock lives there) or run "
                                          "from a directory where runs/ can be written")
    for entry in os.scandir(root / spec) if (root / spec).is_dir() else ():
        path = Path(entry.path)  # where a trial's directory goes: a dangling link or a file would stop the sweep
        if TRIAL_ID_RE.fullmatch(entry.name) and not path.is_dir():
            what = f"a symlink to {os.readlink(path)}, which does not exist" if path.is_symlink() else "not a directory"
            raise StorageError(f"{path}: {what} (the run directory of trial {entry.name}); remove it (rm {path}) "
                               "or restore what it pointed to, then run again")
    check_runs_filesystem(root / spec)  # its locks must hold across hosts


def local_status(run_dir: Path) -> tuple[str, str]:
    """(status, reason) from the trial's local record; ('', '') if it never started."""
    st = read_json(run_dir / "track" / "status.json") or {}
    return st.get("status", ""), st.get("reason", "")


def set_local_status(run_dir: Path, status: str, reason: str) -> None:
    (run_dir / "track").mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "track" / "status.json", {"status": status, "reason": reason, "time": time.time()})


@contextmanager
def submission_lock(sweep_dir: Path) -> Iterator[None]:
    """One launcher at a time decides what to submit for a spec and records it: between a trial's
    QUEUED record and its job id, a second launcher would see a QUEUED trial with no live job, take it
    for stale and submit it again. The kernel drops the lock if the holder dies."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(sweep_dir / ".submit.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another launcher to finish submitting {sweep_dir.name} ...", file=sys.stderr)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class TrialLock:
    """Held while a process runs the trial (by the launcher on its behalf)."""

    def __init__(self, run_dir: Path):
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / ".lock"
        self._fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def held_elsewhere(self) -> bool:
        """True if another live process holds the lock."""
        if self.acquire():
            self.release()
            return False
        return True
