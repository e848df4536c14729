"""What `gatesweep table` and `report` computed, kept between calls and keyed to exactly what it was
computed from, so that a repeated call on an unchanged store reads and computes nothing.

The key (`key`) is a hash of: the command and its inputs (options, target, the content of the side
files it reads - --step-times, a spec's sequential decision log), the code that computes (every
source file of analysis/, sweeps/ and trainer/, the versions of Python and of the libraries that
compute or draw) and the store's exact state (`store_state`). Equal keys mean equal inputs, so a
kept result is never stale: a run logged, finished or deleted, a store replaced by another file, a
changed option or source file each give another key.

The store's state is known cheaply only for a sqlite file in rollback-journal mode, MLflow's
default (analysis.store_sql.state: file identity + SQLite's change counter), and for a server that
runs `mlflow server --app-name gatesweep` over such a file (its state route gives the same token,
analysis.server_reads). A plain MLflow server has none: MLflow keeps no per-run update time and no API
says whether a run's tags, params or metrics changed since a time, so nothing short of reading every
run can prove a copy current - such a server (and a sqlite file in WAL mode) is read and computed
every time.

Where: $XDG_CACHE_HOME/gatesweep (default ~/.cache/gatesweep), one small JSON file per key, written
atomically (readers never see half a file); files unused for `MAX_AGE_DAYS` are removed as new ones
are written. A file that cannot be read or written is treated as absent: the result is computed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from analysis import store_sql
from sweeps.mlflow_runs import is_server
from sweeps.store_file import sqlite_path

log = logging.getLogger(__name__)

MAX_AGE_DAYS = 30
_CODE = ("analysis", "sweeps", "trainer")  # packages whose source computes a table or a report
_LIBRARIES = ("numpy", "pandas", "scipy", "matplotlib")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gatesweep"


def store_state(uri: str) -> str | None:
    """The store's exact state when it can be told without reading the runs, else None."""
    if is_server(uri):
        from analysis import server_reads

        return server_reads.state(uri)
    path = sqlite_path(uri)
    return store_sql.state(path) if path is not None else None


def key(command: str, uri: str, inputs: Callable[[], dict[str, Any]]) -> str | None:
    """The key of a command's result on this store (module docstring), or None when the store's
    state is unknown (nothing is kept then). `inputs()` is called only when there is a key to make."""
    state = store_state(uri)
    if state is None:
        return None
    payload = {"command": command, "uri": uri, "state": state, "code": code_identity(), "inputs": inputs()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=repr).encode()).hexdigest()


def inputs(options: dict[str, Any], target: dict[str, Any], step_times: Path | None,
           decisions: Callable[[], Any] | None, *, render: bool = False) -> dict[str, Any]:
    """What a table or report is computed from besides the store: the command's options and target,
    the --step-times file's bytes, the spec's decision log (`decisions()`), and for printed text the
    console it goes to (`render_context`)."""
    out = {"options": options, "target": target, "step_times": file_digest(step_times),
           "decisions": decisions() if decisions else None}
    return out | ({"render": render_context()} if render else {})


def render_context() -> dict[str, Any]:
    """What console output depends on besides the table: a pipe, or a terminal - its size and what
    rich reads to choose colours and box characters."""
    if not sys.stdout.isatty():
        return {"tty": False}
    env = {k: os.environ.get(k) for k in ("TERM", "COLORTERM", "NO_COLOR", "FORCE_COLOR", "LANG", "LC_ALL")}
    return {"tty": True, "size": tuple(shutil.get_terminal_size()), "encoding": sys.stdout.encoding, "env": env}


def file_digest(path: Path | None) -> str | None:
    """sha256 of a side file's bytes ("missing" when it cannot be read: the command then fails on it)."""
    if path is None:
        return None
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return "missing"


@functools.cache
def code_identity() -> str:
    h = hashlib.sha256(f"{sys.version}\n".encode())
    for lib in _LIBRARIES:
        try:
            h.update(f"{lib}={metadata.version(lib)}\n".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{lib}=none\n".encode())
    root = Path(__file__).resolve().parents[1]
    for package in _CODE:
        for path in sorted((root / package).rglob("*.py")):
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def get(k: str | None) -> dict[str, Any] | None:
    """The result kept under `k`, or None."""
    if k is None:
        return None
    path = cache_dir() / f"{k}.json"
    try:
        value = json.loads(path.read_text())
        os.utime(path)  # used: keep it from pruning
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def put(k: str | None, value: dict[str, Any]) -> None:
    """Keep `value` under `k` (nothing when `k` is None or the cache directory is not writable)."""
    if k is None:
        return
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(folder / f"{k}.json", json.dumps(value).encode())
        _prune(folder)
    except OSError as e:
        log.info("cannot keep the result in %s (%s); it is computed again next time", folder, e)


def write_atomic(path: Path, data: bytes) -> None:
    """Write `path` through a temporary file in its folder and a rename: never half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _prune(folder: Path) -> None:
    old = time.time() - MAX_AGE_DAYS * 86400
    for path in folder.glob("*.json"):
        try:
            if path.stat().st_mtime < old:
                path.unlink()
        except OSError:
            pass
