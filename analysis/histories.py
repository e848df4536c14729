"""Metric histories of many runs at once: the bulk read behind `analysis.fetch.fetch_histories`.

MLflow's client reads one (run, key) history per call, and on a sqlite store each of those calls
scans every row of that key (without ANALYZE sqlite's planner picks the primary key, which starts
with the key, over the run index): a report of 5,000 runs spent 83 s there. So:

- sqlite stores (`sqlite:///...`): a documented fast path, one read-only SQL query per 500 runs on
  MLflow's own `metrics` table through the (run_uuid, key, step) index (analysis.store_sql). NaN is
  read back as NaN, as MLflow's store does (it keeps NaN as is_nan=1).
- http(s) stores: the server's own SQL read when it runs `mlflow server --app-name gatesweep`
  (analysis.server_reads: the sqlite path's rows, 200 runs a request); else the MLflow server's bulk
  endpoint (`/ajax-api/2.0/mlflow/metrics/get-history-bulk`, what its UI uses: up to 100 runs and
  25,000 points per request); a full reply is split and asked again, so nothing is cut.
- anything else, or a fast path that fails (another schema, an endpoint the server does not serve,
  a proxy that wants credentials): the client's per-run `get_metric_history`, as before.

Rows come back in the order `get_metric_history` gives (by run, key, then timestamp, step, value),
so `fetch.dedupe_history` keeps the same point when a resumed run logged one step twice.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence

from analysis import store_sql
from sweeps.store_file import sqlite_path

log = logging.getLogger(__name__)

Row = dict[str, object]
COLUMNS = ("mlflow_run_id", "key", "step", "value", "timestamp")  # of a Row
HTTP_RUNS = 100  # the server's limit of run ids per get-history-bulk request
HTTP_MAX_POINTS = 25_000  # the server's limit of points per reply
_BULK_PATH = "/ajax-api/2.0/mlflow/metrics/get-history-bulk"


def read_histories(client: Callable, uri: str, run_ids: Sequence[str], keys: Sequence[str], call: Callable):
    """Rows (mlflow_run_id, key, step, value, timestamp) of every run's `keys` histories: a list of
    Row dicts, or (sqlite) a DataFrame of these columns.
    `client()`: the MlflowClient, made only when a run is read through MLflow's API.
    `call(uri, fn, *args)`: analysis.fetch.call, which turns MLflow errors into TrackingError."""
    run_ids, keys = list(dict.fromkeys(run_ids)), list(dict.fromkeys(keys))
    if not run_ids or not keys:
        return []
    try:
        if (path := sqlite_path(uri)) is not None:
            return _sqlite_rows(str(path), run_ids, keys)
        if uri.startswith(("http://", "https://")):
            from analysis import server_reads

            if (served := server_reads.histories(uri, run_ids, keys)) is not None:
                return _frame(served, run_ids, keys)
            return _http_rows(uri, run_ids, keys, lambda r, k: per_run_rows(client(), uri, [r], [k], call))
    except (sqlite3.Error, OSError, ValueError, KeyError, TypeError) as e:
        log.info("bulk history read from %s failed (%s: %s); reading run by run", uri, type(e).__name__, e)
    return per_run_rows(client(), uri, run_ids, keys, call)


def per_run_rows(client, uri: str, run_ids: Sequence[str], keys: Sequence[str], call: Callable) -> list[Row]:
    """The client's own API, one request per (run, key): the reference the fast paths must match."""
    rows: list[Row] = []
    for run_id in run_ids:
        for key in keys:
            for m in call(uri, client.get_metric_history, run_id, key):
                rows.append(_row(run_id, key, m.step, m.value, m.timestamp))
    return rows


def _row(run_id: str, key: str, step, value, timestamp) -> Row:
    return {"mlflow_run_id": run_id, "key": key, "step": int(step), "value": float(value),
            "timestamp": int(timestamp)}


def _sqlite_rows(path: str, run_ids: list[str], keys: list[str]):
    return _frame(store_sql.metric_rows(path, run_ids, keys), run_ids, keys)


def _frame(rows: list[tuple], run_ids: list[str], keys: list[str]):
    """store_sql.metric_rows' tuples as a DataFrame (COLUMNS), runs and keys in the order asked: a dict
    per point would double the memory of a 10,000-run report."""
    import pandas as pd

    run_pos = {r: i for i, r in enumerate(run_ids)}
    key_pos = {k: i for i, k in enumerate(keys)}
    rows.sort(key=lambda r: (run_pos[r[0]], key_pos[r[1]]))  # as _in_order: stable, the store's order inside
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _http_rows(uri: str, run_ids: list[str], keys: list[str], one: Callable[[str, str], list[Row]]) -> list[Row]:
    """`one(run_id, key)`: the per-run read, for a run with more points than one reply holds."""
    rows: list[Row] = []
    for key in keys:
        for i in range(0, len(run_ids), HTTP_RUNS):
            rows += _http_chunk(uri, run_ids[i:i + HTTP_RUNS], key, one)
    return _in_order(rows, run_ids, keys)


def _http_chunk(uri: str, run_ids: list[str], key: str, one: Callable[[str, str], list[Row]]) -> list[Row]:
    query = urllib.parse.urlencode([*(("run_id", r) for r in run_ids), ("metric_key", key),
                                    ("max_results", HTTP_MAX_POINTS)])
    with urllib.request.urlopen(f"{uri.rstrip('/')}{_BULK_PATH}?{query}", timeout=60) as reply:
        points = json.loads(reply.read()).get("metrics", [])
    if len(points) >= HTTP_MAX_POINTS:  # the reply may be cut at the limit: ask again in halves
        if len(run_ids) == 1:
            return one(run_ids[0], key)  # the per-run API pages through any length
        half = len(run_ids) // 2
        return _http_chunk(uri, run_ids[:half], key, one) + _http_chunk(uri, run_ids[half:], key, one)
    return [_row(p["run_id"], p["key"], p.get("step", 0), p.get("value", math.nan), p.get("timestamp", 0))
            for p in points]


def _in_order(rows: list[Row], run_ids: list[str], keys: list[str]) -> list[Row]:
    """Runs and keys in the order asked. A stable sort: each history keeps the store's order
    (timestamp, step, value), which both fast paths ask for."""
    run_pos = {r: i for i, r in enumerate(run_ids)}
    key_pos = {k: i for i, k in enumerate(keys)}
    return sorted(rows, key=lambda r: (run_pos[str(r["mlflow_run_id"])], key_pos[str(r["key"])]))
