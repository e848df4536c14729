"""Metric points into MLflow in batches: `log_batch` for any store, and for a sqlite store the same rows
written in bulk.

MLflow's SQLAlchemy store builds an ORM object per point and looks up the run's latest values per
batch: about 10k points/s here, so `gatesweep sync` of a record with 10^6 metric lines took minutes.
For a sqlite file the rows `log_batch` writes - `metrics` (a point already there is kept once: its
primary key is the whole point, as MLflow's own de-duplication) and `latest_metrics` where a point is
newer by (step, timestamp, value), MLflow's rule - are inserted with one statement per batch, in one
transaction. Used only when the store's tables have exactly the columns written here and the run is
active; anything else goes through `log_batch`, which says what is wrong.
"""

from __future__ import annotations

import math
import sqlite3
from typing import Any

from trainer.record import sqlite_path

METRIC_COLUMNS = {"key", "value", "timestamp", "run_uuid", "step", "is_nan"}
LATEST_COLUMNS = {"key", "value", "timestamp", "step", "is_nan", "run_uuid"}
_INSERT = "INSERT OR IGNORE INTO metrics (key, value, timestamp, run_uuid, step, is_nan) VALUES (?, ?, ?, ?, ?, ?)"
_LATEST = ("INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) VALUES (?, ?, ?, ?, ?, ?) "
           "ON CONFLICT (key, run_uuid) DO UPDATE SET value = excluded.value, timestamp = excluded.timestamp, "
           "step = excluded.step, is_nan = excluded.is_nan "
           "WHERE (excluded.step, excluded.timestamp, excluded.value) > (step, timestamp, value)")
BIG = 1.7976931348623157e308  # MLflow stores +-inf as the largest double (SQL has no inf)


LOG_BATCH = 1000  # MLflow's limit of metrics per log_batch call
BULK_BATCH = 20_000  # points per transaction of the bulk path (each commit syncs the file)


class Writer:
    """Delivers batches of at most `batch` metric points (dicts: key, value, step, ts) to one run."""

    batch = LOG_BATCH

    def __init__(self, client: Any, run_id: str):
        self.client, self.run_id = client, run_id

    def __call__(self, points: list[dict]) -> None:
        from mlflow.entities import Metric

        self.client.log_batch(self.run_id, metrics=[Metric(p["key"], p["value"], p["ts"], p["step"]) for p in points])

    def close(self) -> None:
        pass


def metric_writer(client: Any, uri: str | None, run_id: str) -> Writer:
    """The bulk writer for a sqlite store that has MLflow's tables as this module knows them, else log_batch."""
    path = sqlite_path(uri)
    if path is not None and path.exists():
        con = sqlite3.connect(path, timeout=60, isolation_level=None)
        if _usable(con, run_id):
            return _BulkWriter(con, run_id)
        con.close()
    return Writer(client, run_id)


def _usable(con: sqlite3.Connection, run_id: str) -> bool:
    try:
        metrics = {r[1] for r in con.execute("PRAGMA table_info(metrics)")}
        latest = {r[1] for r in con.execute("PRAGMA table_info(latest_metrics)")}
        run = con.execute("SELECT lifecycle_stage FROM runs WHERE run_uuid = ?", (run_id,)).fetchone()
    except sqlite3.Error:
        return False
    return metrics == METRIC_COLUMNS and latest == LATEST_COLUMNS and run == ("active",)


class _BulkWriter(Writer):
    batch = BULK_BATCH

    def __init__(self, con: sqlite3.Connection, run_id: str):
        self.con, self.run_id = con, run_id
        self.keys: set[str] = set()  # names checked by MLflow's own rule once each

    def close(self) -> None:
        self.con.close()

    def __call__(self, points: list[dict]) -> None:
        rows = [self._row(p) for p in points]
        latest: dict[str, tuple] = {}
        for key, value, ts, run, step, is_nan in rows:
            old = latest.get(key)
            if old is None or (step, ts, value) > (old[3], old[2], old[1]):
                latest[key] = (key, value, ts, step, is_nan, run)
        self.con.execute("BEGIN IMMEDIATE")
        try:
            self.con.executemany(_INSERT, rows)
            self.con.executemany(_LATEST, list(latest.values()))
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    def _row(self, p: dict) -> tuple:
        key, value, ts, step = p["key"], p["value"], p["ts"], p["step"]
        if key not in self.keys:
            from mlflow.utils.validation import _validate_metric  # MLflow's rule for names and values

            _validate_metric(key, value, ts, step)
            self.keys.add(key)
        if type(value) not in _NUMBER or type(ts) is not int or type(step) is not int or ts < 0:
            raise ValueError(f"metric point {p!r}: value must be a number, ts and step integers (ts >= 0)")
        if value != value:  # NaN: MLflow keeps 0 and the flag
            return key, 0.0, ts, self.run_id, step, 1
        return key, (value if -BIG <= value <= BIG else math.copysign(BIG, value)), ts, self.run_id, step, 0


_NUMBER = (float, int)
