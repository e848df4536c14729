"""The files of a local tracking record (`track/`): atomic JSON writes, tolerant reads, and the byte
extent of an append-only metrics file. Shared by the tracker that writes a record
(trainer.tracking), the delivery that reads it (trainer.mlflow_sync) and the launchers."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TERMINAL = ("FINISHED", "FAILED", "KILLED", "EARLY_STOPPED")
DONE = ("FINISHED", "EARLY_STOPPED")
"""A trial with one of these statuses is finished and never runs again (EARLY_STOPPED: on purpose)."""


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves no half-written temp file behind
        raise


def read_json(path: Path, default: Any = None) -> Any:
    """A record file (always a JSON object). Missing -> default. Corrupt (empty, cut short, not an
    object) -> default with a one-line warning: the record's files are rewritten by the next run of
    the trial, so one damaged file must not stop a launcher or a sync of every other trial."""
    try:
        obj = json.loads(path.read_bytes())
    except FileNotFoundError:
        return default
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        log.warning("%s is corrupt (%s); ignoring it: the next run of this trial rewrites it", path,
                    str(e).splitlines()[0][:80] if str(e) else "empty")
        return default
    if not isinstance(obj, dict):
        log.warning("%s is corrupt (a JSON %s, not an object); ignoring it: the next run of this trial rewrites it",
                    path, type(obj).__name__)
        return default
    return obj


def complete_size(path: Path) -> int:
    """Bytes of `path` up to its last newline: a last line without one is torn (a write cut short by a
    full disk or a crash) or still being written."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0
    with open(path, "rb") as f:
        pos = size
        while pos > 0:
            start = max(0, pos - 65536)
            f.seek(start)
            chunk = f.read(pos - start)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                return start + cut + 1
            pos = start
    return 0


def repair_tail(path: Path) -> None:
    """Cut a torn last line, so that the next line appended does not merge into it (`{{"key": ...`)."""
    end = complete_size(path)
    if path.exists() and end < path.stat().st_size:
        dropped = path.stat().st_size - end
        os.truncate(path, end)
        log.warning("%s: dropped a torn last line (%d bytes) left by an interrupted write", path, dropped)


RUN_IDS = "run_ids.json"  # every run id that wrote into the record, in order (one, unless two runs shared it)
RUN_UID_TAG = "gatesweep.run_uid"


def note_run_id(root: Path, run_id: str) -> list[str]:
    """Add `run_id` to the record's list of writers; the list after it."""
    ids = (read_json(root / RUN_IDS) or {}).get("run_ids", [])
    if run_id not in ids:
        ids.append(run_id)
        write_json(root / RUN_IDS, {"run_ids": ids})
    return ids


def record_run_ids(root: Path) -> list[str]:
    """The run ids that wrote into a record (older records without the list: the one in tags.json)."""
    ids = (read_json(root / RUN_IDS) or {}).get("run_ids")
    if ids:
        return list(ids)
    uid = (read_json(root / "tags.json") or {}).get(RUN_UID_TAG)
    return [uid] if uid else []


def record_pending(root: Path) -> bool:
    """Whether a record (`track/`) holds anything MLflow has not received, from its JSON files alone (no
    mlflow import): a run not created yet, undelivered metric lines, or an end status not sent."""
    state = read_json(root / "mlflow.json") or {}
    size = complete_size(root / "metrics.jsonl")  # a torn last line is never delivered: not pending
    st = (read_json(root / "status.json") or {}).get("status", "")
    return (not state.get("run_id") or int(state.get("metrics_offset", 0)) < size
            or (st in TERMINAL and state.get("status_sent") != st))
