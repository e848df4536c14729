"""Direct SQL on a sqlite tracking store (`sqlite:///...`): the one place that reads MLflow's tables
without MLflow.

Why. MLflow's own reads are slow at scale: its run search builds an ORM object per param, tag and
latest metric of every run (710,000 at 10,000 runs: 15-60 s, most of it Python's garbage collector
walking them), and its per-run history call scans every row of a key. Here the same rows come back
read-only, in one query per table (per 500 runs for histories), as plain tuples.

What is read: MLflow's `experiments` (experiment_id, name, lifecycle_stage, workspace), `runs`
(run_uuid, experiment_id, status, start_time, lifecycle_stage), `tags` / `params` (run_uuid, key,
value), `latest_metrics` (run_uuid, key, value, is_nan) and `metrics` (run_uuid, key, step, value,
timestamp, is_nan) - columns unchanged since MLflow 1.x. Any sqlite3.Error (another schema, a
damaged file, a locked one) is the caller's cue to read through MLflow's API instead.

The store's state (`state`): SQLite's file change counter (header offset 24), which every committed
write increments in rollback-journal mode (MLflow's default), read while holding a shared lock - no
write is half done then - together with the file's identity (device, inode, size, mtime). Equal
states mean equal contents; a store in WAL mode has none (its counter is not kept), nor has a file
that is swapped while being read.
"""

from __future__ import annotations

import math
import os
import sqlite3
import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.record import open_store_file

SQL_CHUNK = 500  # run ids per history query: far below sqlite's bound on query parameters
MAX_EXPERIMENTS = 1000  # what MlflowClient.search_experiments returns in one call (analysis.fetch)
KIND_TAG = "gatesweep.kind"  # trial or sweep (sweeps.expand)
_HEADER = 100  # bytes of the sqlite file header
_DEFAULT_WORKSPACE = "default"


@dataclass
class StoredRun:
    """One run as MLflow's search returns it: info (id, status, start time) and data (tags, params as
    text, latest metrics with NaN for is_nan)."""

    run_id: str
    status: str | None
    start_time: int | None
    tags: dict[str, str | None] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


@contextmanager
def connect(path: str | Path) -> Iterator[sqlite3.Connection]:
    """A connection for reads that waits for writers (MLflow's busy timeout is 20 s); a killed writer's
    hot journal is rolled back (trainer.record.open_store_file)."""
    con = open_store_file(path, timeout=30, isolation_level=None)
    try:
        yield con
    finally:
        con.close()


def state(path: str | Path) -> str | None:
    """The store's state (module docstring), or None when it cannot be told cheaply and exactly."""
    try:
        before = os.stat(path)
        with connect(path) as con:
            con.execute("BEGIN")
            con.execute("SELECT count(*) FROM sqlite_master").fetchall()  # takes the shared lock
            with open(path, "rb") as f:
                st, header = os.fstat(f.fileno()), f.read(_HEADER)
            con.execute("COMMIT")
        journal = Path(f"{path}-journal").exists() or Path(f"{path}-wal").exists()
    except (OSError, sqlite3.Error):
        return None
    rollback_mode = len(header) == _HEADER and header[18] == 1 and header[19] == 1
    if not rollback_mode or journal or (before.st_dev, before.st_ino) != (st.st_dev, st.st_ino):
        return None
    counter, valid_for = header[24:28].hex(), header[92:96].hex()
    return f"sqlite:{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{counter}:{valid_for}"


def experiment_ids(con: sqlite3.Connection, names: Sequence[str] | None) -> dict[str, str | None]:
    """name -> experiment id (None when there is no such experiment), as MlflowClient's
    get_experiment_by_name (any lifecycle stage); names None: every active experiment, as its
    search_experiments (one page), keyed by id. Raises sqlite3.Error where MLflow would look
    elsewhere (workspaces in use, more experiments than one page)."""
    if con.execute("SELECT 1 FROM experiments WHERE workspace IS NOT NULL AND workspace != ? LIMIT 1",
                   (_DEFAULT_WORKSPACE,)).fetchall():
        raise sqlite3.NotSupportedError("experiments in workspaces other than the default")
    if names is None:
        rows = con.execute("SELECT experiment_id FROM experiments WHERE lifecycle_stage = 'active'").fetchall()
        if len(rows) > MAX_EXPERIMENTS:
            raise sqlite3.NotSupportedError(f"more than {MAX_EXPERIMENTS} experiments")
        return {str(r[0]): str(r[0]) for r in rows}
    found: dict[str, str | None] = {}
    for name in names:
        rows = con.execute("SELECT experiment_id FROM experiments WHERE name = ?", (name,)).fetchall()
        if len(rows) > 1:
            raise sqlite3.NotSupportedError(f"{len(rows)} experiments named {name!r}")
        found[name] = str(rows[0][0]) if rows else None
    return found


def selection(kind: str, stages: Sequence[str | None], spec: str | None) -> list[dict[str, str]]:
    """The tags a run of one kind must have, one set per stage (None: any stage), in stage order."""
    return [{KIND_TAG: kind} | ({"stage": st} if st is not None else {}) | ({"spec": spec} if spec else {})
            for st in stages]


def read_runs(con: sqlite3.Connection, names: Sequence[str] | None,
              tag_sets: Sequence[dict[str, str]]) -> tuple[str | None, list[StoredRun]]:
    """The runs of the experiments (`names`; None: every active one) with each tag set in turn, in the
    caller's snapshot (its BEGIN): (None, runs), or (a name that has no experiment, []). The one read
    behind both a sqlite file's table (analysis.fetch) and the server's routes (analysis.server_app)."""
    ids = experiment_ids(con, names)
    missing = [name for name, exp_id in ids.items() if exp_id is None]
    if missing:
        return missing[0], []
    exp_ids = [i for i in ids.values() if i is not None]
    return None, [run for tags in tag_sets for run in runs_with_tags(con, exp_ids, tags)]


def runs_with_tags(con: sqlite3.Connection, exp_ids: Sequence[str], tags: dict[str, str]) -> list[StoredRun]:
    """The active runs of the experiments whose tags equal `tags` (MLflow's `tags.k = 'v'` filter),
    with all their tags, params and latest metrics: one query per table."""
    where, args = _runs_where(exp_ids, tags)
    if where is None:
        return []
    chosen = f"SELECT r.run_uuid FROM runs r WHERE {where}"
    runs = {rid: StoredRun(rid, status, start) for rid, status, start in
            con.execute(f"SELECT r.run_uuid, r.status, r.start_time FROM runs r WHERE {where}", args)}
    # Runs share most keys and values: one string object each, not one per row (a third of the memory).
    one: dict[Any, Any] = {}
    for rid, key, value in con.execute(f"SELECT t.run_uuid, t.key, t.value FROM tags t WHERE t.run_uuid IN ({chosen})", args):
        if rid in runs:
            runs[rid].tags[one.setdefault(key, key)] = one.setdefault(value, value)
    for rid, key, value in con.execute(f"SELECT p.run_uuid, p.key, p.value FROM params p WHERE p.run_uuid IN ({chosen})",
                                       args):
        if rid in runs:
            runs[rid].params[one.setdefault(key, key)] = one.setdefault(value, value)
    for rid, key, value, is_nan in con.execute(
            f"SELECT m.run_uuid, m.key, m.value, m.is_nan FROM latest_metrics m WHERE m.run_uuid IN ({chosen})", args):
        if rid in runs:
            runs[rid].metrics[one.setdefault(key, key)] = math.nan if is_nan else value
    return list(runs.values())


def metric_rows(path: str | Path, run_ids: list[str], keys: list[str]) -> list[tuple]:
    """(run_id, key, step, value, timestamp) of the runs' `keys` histories, NaN where MLflow keeps
    is_nan, in the order MLflow's per-run history call gives (by run, key, then timestamp, step,
    value). One query per SQL_CHUNK runs; `+m.key` keeps the planner off the key-first primary key, so
    it seeks each run in the run index instead of scanning every row of the key."""
    rows: list[tuple] = []
    one = {k: k for k in [*run_ids, *keys]}  # one string object per run id and key, not one per point
    with connect(path) as con:
        for i in range(0, len(run_ids), SQL_CHUNK):
            chunk = run_ids[i:i + SQL_CHUNK]
            query = (f"SELECT m.run_uuid, m.key, m.step, m.value, m.timestamp, m.is_nan FROM metrics m "
                     f"WHERE m.run_uuid IN ({','.join('?' * len(chunk))}) AND +m.key IN ({','.join('?' * len(keys))}) "
                     "ORDER BY m.run_uuid, m.key, m.timestamp, m.step, m.value")
            rows += [(one[r], one[k], int(s), math.nan if nan else float(v), int(t))
                     for r, k, s, v, t, nan in con.execute(query, [*chunk, *keys])]
    return rows


def newest_run(con: sqlite3.Connection, exp_ids: Sequence[str], tags: dict[str, str]) -> tuple[str, str | None] | None:
    """(run id, artifact URI) of the active run of the experiments with these tags that started last,
    in MLflow's order for `start_time DESC` (a missing start time last, then by run id); or None."""
    where, args = _runs_where(exp_ids, tags)
    if where is None:
        return None
    row = con.execute(f"SELECT r.run_uuid, r.artifact_uri FROM runs r WHERE {where} "
                      "ORDER BY r.start_time IS NULL, r.start_time DESC, r.run_uuid LIMIT 1",
                      args).fetchone()
    return (row[0], row[1]) if row else None


def local_artifact(artifact_uri: str | None, name: str) -> Path | None:
    """The file of a run's artifact when its artifact store is this filesystem (a path or file: URI)."""
    if not artifact_uri:
        return None
    parsed = urllib.parse.urlparse(artifact_uri)
    if parsed.scheme == "file" and parsed.netloc in ("", "localhost"):
        return Path(urllib.parse.unquote(parsed.path)) / name
    if parsed.scheme == "" and artifact_uri.startswith("/"):
        return Path(artifact_uri) / name
    return None


def _runs_where(exp_ids: Sequence[str], tags: dict[str, str]) -> tuple[str | None, list]:
    """SQL condition (on `runs r`) and its arguments for MLflow's search: active runs of the
    experiments whose tags equal `tags`; (None, []) for no experiment."""
    ids = [int(e) for e in exp_ids]
    if not ids:
        return None, []
    where = (f"r.experiment_id IN ({','.join('?' * len(ids))}) AND r.lifecycle_stage = 'active'"
             + "".join(" AND EXISTS (SELECT 1 FROM tags f WHERE f.run_uuid = r.run_uuid AND f.key = ? AND f.value = ?)"
                       for _ in tags))
    return where, [*ids, *(x for kv in tags.items() for x in kv)]
