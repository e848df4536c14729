"""Delivering a trial's local record (track/) to the sweep's MLflow store, for every backend.

Single-writer rule: with a file store (sqlite) the trainers track locally and the launcher is the one
process that writes MLflow; with a server each trainer forwards its own record and a launcher only
delivers what is left once the trainer's process is gone. A failed delivery never stops a sweep: it is
retried, and `gatesweep sync` delivers whatever is left.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cluster.common.trialdir import TrialLock, local_status
from trainer.record import TERMINAL, record_pending


def deliver(run_dir: Path, store: Any, *, quiet: bool = False) -> bool:
    """Deliver what MLflow lacks of the trial's record; False (with a warning unless `quiet`) on failure."""
    if not store.enabled:
        return True
    from trainer.mlflow_sync import sync_record

    try:
        store.client  # noqa: B018 - a new sqlite store is made whole first (sweeps.store_file), not by MLflow in place
        sync_record(Path(run_dir) / "track", store.uri)
        return True
    except Exception as e:  # noqa: BLE001 - retried by the launcher, else by `gatesweep sync`
        if not quiet:
            print(f"warning: MLflow delivery of {run_dir} failed ({type(e).__name__}: {str(e)[:200]}); retried "
                  f"while the sweep runs, else run `gatesweep sync {run_dir}`", file=sys.stderr)
        return False


def undelivered(run_dir: Path, uri: str | None = None) -> bool:
    """Whether the record holds anything the store at `uri` (default: the record's) has not received."""
    return record_pending(Path(run_dir) / "track", uri)


def deliver_pending(states: Iterable[Any], store: Any, *, current: bool = False) -> tuple[int, int]:
    """Deliver what ended trials' records still hold (a launcher killed between a trial's end and its
    delivery leaves it so): (delivered, failed). Reads only the records' JSON files (no mlflow import)
    when nothing waits. `current`: judge "ended" by the record's status now, not the state's (after a
    backend has run the trials)."""
    if not store.enabled:
        return 0, 0
    ok = failed = 0
    for s in states:
        status = local_status(s.run_dir)[0] if current else s.status
        if status in TERMINAL and record_pending(s.run_dir / "track", store.uri):
            done = deliver_locked(s.run_dir, store)
            ok, failed = ok + (done is True), failed + (done is False)
    return ok, failed


def deliver_locked(run_dir: Path, store: Any) -> bool | None:
    """`deliver` under the trial's lock, so that two launchers never deliver one record at once (each
    would send the same points); None: another process holds the trial (it runs or delivers it)."""
    lock = TrialLock(Path(run_dir))
    if not lock.acquire():
        return None
    try:
        return deliver(run_dir, store)
    finally:
        lock.release()
