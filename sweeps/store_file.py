"""A sqlite tracking store's file (`sqlite:///mlflow.db`): made once, whole, and named when damaged.

MLflow creates a sqlite store on first use by migrating it in place: two launchers starting at once
both migrate (one crashes with "duplicate column name"), and a kill -9 mid-way leaves a half-migrated
file that every later command fails on. So the first creation happens under a lock beside the file,
into a temporary file in the same directory that is renamed into place once migrated. An existing
file is checked to be a database (with the standard library, before MLflow opens it: MLflow retries
a damaged one for a while); MLflow's errors about a sqlite store name the file and the fix, never
"start the server" (a file has no server).
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sweeps.errors import StoreFileError
from trainer.errors import GatesweepError
from trainer.record import open_store_file, sqlite_path

CREATING = ".creating-"  # <dir>/.<name>.creating-<pid>: a store being migrated (a leftover is a dead creator's)


def ensure_store(uri: str) -> None:
    """Create a sqlite store's file if it is not there (atomically, one creator at a time), else check
    it. Other stores (a server) are left to MLflow."""
    path = sqlite_path(uri)
    if path is None:
        return
    if not path.exists():
        _create(path)
    check_file(path)


def check_file(path: Path) -> None:
    """Raise StoreFileError unless `path` is a sqlite database (MLflow checks its schema); a killed
    writer's hot journal is rolled back, not taken for damage (trainer.record.open_store_file)."""
    try:
        con = open_store_file(path)
        try:
            con.execute("SELECT count(*) FROM sqlite_master").fetchall()
        finally:
            con.close()
    except sqlite3.Error as e:
        if "locked" not in str(e):  # busy is not damaged: MLflow waits for it
            raise damaged(path, str(e)) from None


def damaged(path: Path, why: str) -> StoreFileError:
    return StoreFileError(f"{path}: not a usable MLflow store ({why[:120]}; e.g. its first creation was killed "
                          f"half-way); move it aside (mv {path} {path}.broken) to start a new store here, or "
                          "restore it from a backup, then run again")


@contextmanager
def store_errors(uri: str) -> Iterator[None]:
    """Around a command that only reads the store (`table`, `report`): a sqlite file that is damaged,
    half-migrated or of an older schema is the one line `run` and `sync` give (StoreFileError, exit 2),
    not a sqlalchemy traceback; errors that do not come from the store pass through."""
    path = sqlite_path(uri)
    if path is not None and path.exists():
        check_file(path)  # not a database at all: named before MLflow retries it
    try:
        yield
    except GatesweepError:
        raise
    except Exception as e:
        err = file_error(uri, e) if type(e).__module__.split(".")[0] in _STORE_MODULES else None
        if err is None:
            raise
        raise err from None


_STORE_MODULES = ("sqlalchemy", "sqlite3", "alembic", "mlflow")


def file_error(uri: str, e: BaseException) -> StoreFileError | None:
    """The error to raise when MLflow failed on a sqlite store's file itself (damaged, half-migrated,
    an older schema), or None when `e` is something else."""
    if isinstance(e, StoreFileError):  # named already (ensure_store): wrapping it again repeats it
        return e
    path = sqlite_path(uri)
    text = str(e)
    if path is None or "locked" in text:  # not a file store, or busy (not damaged)
        return None
    if "out-of-date database schema" in text:
        return StoreFileError(f"{path}: MLflow store of an older schema; back it up, then upgrade it with "
                              f"`mlflow db upgrade {uri}` (or move it aside to start a new store), then run again")
    if not path.exists():
        return StoreFileError(f"{path}: cannot create the MLflow store here ({_first_line(e)}); make "
                              f"{path.parent.resolve()} writable or set MLFLOW_TRACKING_URI, then run again")
    return damaged(path, _first_line(e))


def _first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:100]}" if str(e) else type(e).__name__


def _create(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.parent / f".{path.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a second creator waits here, then finds the file made
        if path.exists():
            return
        for leftover in path.parent.glob(f".{path.name}{CREATING}*"):  # a dead creator's (we hold the lock)
            leftover.unlink(missing_ok=True)
        tmp = path.parent / f".{path.name}{CREATING}{os.getpid()}"
        try:
            try:
                _migrate(tmp)
            except Exception as e:
                raise (_quoted_path_error(path, e) or e) from None
            os.replace(tmp, path)
        finally:
            for f in (tmp, tmp.with_name(tmp.name + "-journal")):
                f.unlink(missing_ok=True)
    finally:
        os.close(fd)


def _quoted_path_error(path: Path, e: Exception) -> StoreFileError | None:
    """MLflow writes the default artifact root (./mlruns, made absolute) into an SQL statement with
    Python's repr(): a working directory holding both ' and " gives a syntax error."""
    cwd = os.getcwd()
    if not ("'" in cwd and '"' in cwd and "syntax error" in str(e)):
        return None
    return StoreFileError(f"{path}: MLflow cannot create a sqlite store from this directory: its path ({cwd[:200]}) "
                          "holds both ' and \" and MLflow writes it into SQL unescaped; run from a directory whose "
                          "path lacks one of them, or track to a server (MLFLOW_TRACKING_URI=http://HOST:PORT)")


def _migrate(tmp: Path) -> None:
    """MLflow's own creation of a store (tables, migrations, the Default experiment), into `tmp`."""
    from mlflow.tracking._tracking_service.utils import _get_sqlalchemy_store

    uri = f"sqlite:///{tmp.resolve()}"
    db_log = logging.getLogger("mlflow.store.db.utils")
    db_log.disabled = True  # it logs a failed statement in full; the caller raises one line about it
    try:
        store: Any = _get_sqlalchemy_store(uri, None)
    finally:
        db_log.disabled = False
    store.engine.dispose()  # no connection may outlive the rename
    getattr(type(store), "_engine_map", {}).pop(uri, None)
