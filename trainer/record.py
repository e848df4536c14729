"""The files of a local tracking record (`track/`): atomic JSON writes, tolerant reads, and the byte
extent of an append-only metrics file. Shared by the tracker that writes a record
(trainer.tracking), the delivery that reads it (trainer.mlflow_sync) and the launchers."""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from trainer.errors import ConfigError

log = logging.getLogger(__name__)

TERMINAL = ("FINISHED", "FAILED", "KILLED", "EARLY_STOPPED")
DONE = ("FINISHED", "EARLY_STOPPED")
"""A trial with one of these statuses is finished and never runs again (EARLY_STOPPED: on purpose)."""
# What track/mlflow.json keeps of a delivery when the store it went to is replaced (its store_id no longer
# matches): only where the record goes; everything it says was delivered was delivered elsewhere.
KEPT_ON_NEW_STORE = ("tracking_uri",)


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


READ_BLOCK = 1 << 18  # bytes of metrics.jsonl read at a time: a delivery's memory does not grow with the record


def metric_chunks(path: Path, offset: int, batch: int) -> Iterator[tuple[list[dict], int, int]]:
    """The metric points of the complete lines after byte `offset`, streamed: (at most `batch` points,
    the offset just past the last line they came from, damaged lines among those lines), reading
    READ_BLOCK bytes at a time. A trailing line still being written is left for later; a last chunk
    may hold no point (only damaged lines to step over)."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return
    with f:
        f.seek(offset)
        pos = last = offset
        rest, points, damaged = b"", [], 0
        while block := f.read(READ_BLOCK):
            data = rest + block
            cut = data.rfind(b"\n") + 1
            rest = data[cut:]
            lines = data[:cut].splitlines(keepends=True)
            for line, (p, bad) in zip(lines, _points(lines), strict=True):
                pos += len(line)
                damaged += bad
                if p is not None:
                    points.append(p)
                if len(points) == batch:
                    yield points, pos, damaged
                    points, damaged, last = [], 0, pos
        if points or damaged or pos != last:
            yield points, pos, damaged


def _points(lines: list[bytes]) -> list[tuple[dict | None, bool]]:
    """_point of each line; whole lines parsed as one JSON array (3x faster than one by one), line by
    line only where that fails (a damaged line). A blank line is (None, False)."""
    whole = [i for i, line in enumerate(lines) if line.strip()]
    try:
        parsed = json.loads(b"[" + b",".join(lines[i] for i in whole) + b"]")
    except ValueError:
        return [_point(line) if line.strip() else (None, False) for line in lines]
    out: list[tuple[dict | None, bool]] = [(None, False)] * len(lines)
    for i, p in zip(whole, parsed, strict=True):
        whole_point = type(p) is dict and "key" in p and "value" in p and "step" in p and "ts" in p
        out[i] = (p, False) if whole_point else _point(lines[i])
    return out


_KEYS = frozenset({"key", "value", "step", "ts"})


def _point(line: bytes) -> tuple[dict | None, bool]:
    """(metric point or None, whether the line was damaged). A line that a torn write merged into
    (`{"key": "lr", "va{"key": ...}`: a point cut short by a full disk or a crash, then the next one
    appended after it) still ends with the next point whole: that point is kept, the fragment dropped."""
    for start in (0, line.rfind(b'{"key"')):
        if start < 0:
            continue
        try:
            p = json.loads(line[start:])
        except ValueError:
            continue
        if isinstance(p, dict) and _KEYS <= p.keys():
            return p, start > 0
    return None, True


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


def sqlite_path(uri: str | None) -> Path | None:
    """The file of a `sqlite:///` URI (relative to the working directory), else None."""
    if not uri or not uri.startswith("sqlite:///") or uri.startswith("sqlite:///:memory:"):
        return None
    return Path(urllib.parse.unquote(uri.removeprefix("sqlite:///").split("?", 1)[0]))


def open_store_file(path: str | Path, **kwargs: Any) -> sqlite3.Connection:
    """A connection to an existing sqlite store for reads (never creates the file). Read-write, not
    read-only: a writer killed inside a transaction leaves a hot journal that the next connection must
    roll back, and a read-only one cannot ("attempt to write a readonly database"), which would call a
    healthy store damaged. A write-protected file still opens read-only. The one opener of the store
    check (sweeps.store_file), the store identity (below) and the tables' SQL reads (analysis.store_sql)."""
    return sqlite3.connect(f"file:{urllib.parse.quote(str(Path(path).resolve()))}?mode=rw", uri=True, **kwargs)


_CREATED: dict[tuple[int, int], str] = {}  # (device, inode) -> creation time of the store in that file


def file_store_id(uri: str | None) -> str | None:
    """The identity of a sqlite store's file, which changes whenever the store is replaced - moved aside
    and made anew, deleted and made anew, restored from a copy: its device and inode, and the creation
    time MLflow wrote into it when it made the store (an inode number is reused after a delete).
    "absent" while there is no file; None for a store that is not a file (a server: trainer.mlflow_sync
    asks it) or one that cannot be read (the store's own check names it)."""
    path = sqlite_path(uri)
    if path is None:
        return None
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "absent"
    except OSError:
        return None
    key = (st.st_dev, st.st_ino)
    if key not in _CREATED:
        try:
            con = open_store_file(path)
            try:
                row = con.execute("SELECT min(creation_time) FROM experiments").fetchone()
            finally:
                con.close()
        except sqlite3.Error:  # not made yet, busy, or damaged: no identity to remember
            return None
        _CREATED[key] = str(row[0] if row else None)
    return f"sqlite:{st.st_dev}:{st.st_ino}:{_CREATED[key]}"


def record_pending(root: Path, uri: str | None = None) -> bool:
    """Whether a record (`track/`) holds anything the store at `uri` (default: the one it names) has not
    received, from its JSON files and the store's file alone (no mlflow import): a run not created yet,
    undelivered metric lines, an end status not sent - or everything, when it went to another store
    (another URI, or a sqlite file that was replaced since: moved aside, restored, made anew)."""
    state = read_json(root / "mlflow.json") or {}
    target = uri or state.get("tracking_uri")
    if uri and state.get("tracking_uri") and state["tracking_uri"] != uri:
        return True
    if state.get("run_id") and (sid := file_store_id(target)) is not None and state.get("store_id") != sid:
        return True
    size = complete_size(root / "metrics.jsonl")  # a torn last line is never delivered: not pending
    st = (read_json(root / "status.json") or {}).get("status", "")
    return (not state.get("run_id") or int(state.get("metrics_offset", 0)) < size
            or (st in TERMINAL and state.get("status_sent") != st))


def delivered_run_id(root: Path, uri: str) -> str | None:
    """The MLflow run the record (`track/`) was delivered to in the store at `uri`, if it was (the same
    URI and, for a sqlite file, the same file: record_pending's rule); None otherwise."""
    state = read_json(root / "mlflow.json") or {}
    if not state.get("run_id") or state.get("tracking_uri") != uri:
        return None
    sid = file_store_id(uri)
    return state["run_id"] if sid is None or state.get("store_id") == sid else None


SYNC_TIMEOUT_ENV = "GATESWEEP_SYNC_TIMEOUT"


def sync_timeout(environ: Mapping[str, str] | None = None, default: float = 30.0) -> float:
    """Seconds a trainer spends delivering its record at its end ($GATESWEEP_SYNC_TIMEOUT): a finite
    number >= 0 (`nan` made the trainer wait forever, `abc` was a traceback)."""
    raw = (os.environ if environ is None else environ).get(SYNC_TIMEOUT_ENV, "")
    try:
        value = float(raw) if raw.strip() else default
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"environment variable {SYNC_TIMEOUT_ENV}={raw[:40]!r} is not a number of seconds >= 0; "
                          f"set it to e.g. {SYNC_TIMEOUT_ENV}=30 (0: one attempt) or unset it")
    return value
