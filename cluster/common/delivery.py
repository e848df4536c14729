"""Delivering a trial's local record (track/) to the sweep's MLflow store, for every backend.

Single-writer rule: with a file store (sqlite) the trainers track locally and the launcher is the one
process that writes MLflow; with a server each trainer forwards its own record and a launcher only
delivers what is left once the trainer's process is gone. A failed delivery never stops a sweep: it is
retried, and `gatesweep sync` delivers whatever is left.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


def deliver(run_dir: Path, store: Any, *, quiet: bool = False) -> bool:
    """Deliver what MLflow lacks of the trial's record; False (with a warning unless `quiet`) on failure."""
    if not store.enabled:
        return True
    from trainer.mlflow_sync import sync_record

    try:
        sync_record(Path(run_dir) / "track", store.uri)
        return True
    except Exception as e:  # noqa: BLE001 - retried by the launcher, else by `gatesweep sync`
        if not quiet:
            print(f"warning: MLflow delivery of {run_dir} failed ({type(e).__name__}: {str(e)[:200]}); retried "
                  f"while the sweep runs, else run `gatesweep sync {run_dir}`", file=sys.stderr)
        return False


def undelivered(run_dir: Path) -> bool:
    """Whether the record holds anything MLflow has not received (imports mlflow)."""
    from trainer.mlflow_sync import pending

    return pending(Path(run_dir) / "track")
