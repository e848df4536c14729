"""MLflow -> tidy run table and long metric histories (the read edge of `analysis`).

Tidy run table: one row per trial run - `TIDY_COLUMNS` (bookkeeping from tags), every param as a
column (numbers converted back from MLflow's strings), and every latest metric; the summary metrics
`SUMMARY_METRICS` are always present (NaN when a run never logged them). `status` is the run's
`status` tag (FINISHED / FAILED / KILLED / EARLY_STOPPED), else MLflow's own run status.
Histories: `mlflow_run_id, key, step, value`, one point per (run, key, step).
"""

from __future__ import annotations

import functools
import gc
import logging
import math
import re
import sqlite3
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, cast

import pandas as pd

from analysis import store_sql
from analysis.histories import read_histories
from analysis.legacy import coerce
from analysis.steptimes import SHARED_COLUMN
from analysis.store_sql import StoredRun
from sweeps.errors import NoRunsError, TrackingError
from sweeps.mlflow_runs import is_server, resolve_uri, search_all
from sweeps.store_file import sqlite_path

log = logging.getLogger(__name__)

TIDY_COLUMNS = ("mlflow_run_id", "trial_id", "spec", "stage", "seed", "status", "backend")
SUMMARY_METRICS = ("final_val_loss", "best_val_loss", "train_time_ms", "ms_per_step")
HISTORY_COLUMNS = ("mlflow_run_id", "key", "step", "value")
KIND_TAG = store_sql.KIND_TAG
BUDGET_TAG = "gatesweep.budget_matched"  # sweeps.expand.BUDGET_TAG (analysis does not import sweeps)
BUDGET_COLUMN = "budget_matched"
SHARED_TAG = "gatesweep.gpu_shared"
_SAFE_VALUE = re.compile(r"^[\w.:/+\- ]+$")
_PAGE = 1000


def tag_filter(kind: str, *, stage: str | None = None, spec: str | None = None) -> str:
    """The search_runs filter for runs of one kind, optionally one stage and one spec."""
    clauses = [f"tags.\"{KIND_TAG}\" = '{_quoted(kind, 'kind')}'"]
    if stage is not None:
        clauses.append(f"tags.stage = '{_quoted(stage, 'stage')}'")
    if spec is not None:
        clauses.append(f"tags.spec = '{_quoted(spec, 'spec')}'")
    return " and ".join(clauses)


def record_from_run(run: Any) -> dict[str, object]:
    """An mlflow Run -> one tidy row (a dict). Pure: reads only the run object."""
    return record(StoredRun(run.info.run_id, run.info.status, run.info.start_time, run.data.tags, run.data.params,
                            run.data.metrics))


def record(run: StoredRun, typed: Callable[[str | None], object] = coerce) -> dict[str, object]:
    """One run as its search returns it -> one tidy row (a dict). Pure. `typed`: coerce, or a
    memoised coerce for many runs that share their param values."""
    tags, params = run.tags, {k: typed(v) for k, v in run.params.items()}
    seed = typed(tags.get("seed")) if tags.get("seed") is not None else params.get("seed")
    row: dict[str, object] = {
        "mlflow_run_id": run.run_id, "trial_id": tags.get("trial_id"), "spec": tags.get("spec"),
        "stage": tags.get("stage"), "seed": seed, "status": tags.get("status") or run.status,
        "backend": tags.get("backend"), "_start_time": run.start_time or 0,
    }
    shared = tags.get(SHARED_TAG)
    if shared:  # trials packed several to a GPU (cluster.local.runner): times are not speed figures
        row[SHARED_COLUMN] = int(shared) if shared.isdigit() else 2
    if tags.get(BUDGET_TAG):  # keys a time_of budget set (sweeps.expand): baselines may differ in them
        row[BUDGET_COLUMN] = tags[BUDGET_TAG]
    row.update({k: v for k, v in params.items() if k not in row})
    row.update({k: math.nan for k in SUMMARY_METRICS})
    row.update(run.metrics)
    return row


def records(runs: Iterable[StoredRun]) -> list[dict[str, object]]:
    """Tidy rows of many runs; each distinct param text is converted once (10,000 runs share most)."""
    memo: dict[str | None, object] = {}

    def typed(text: str | None) -> object:
        if text not in memo:
            memo[text] = coerce(text)
        return memo[text]
    return [record(r, typed) for r in runs]


def runs_frame(records: Sequence[dict[str, object]]) -> pd.DataFrame:
    """Tidy rows -> DataFrame ordered by start time; bookkeeping, params, then metrics columns."""
    df = pd.DataFrame(list(records))
    if df.empty:
        return pd.DataFrame(columns=[*TIDY_COLUMNS, *SUMMARY_METRICS])
    df = df.sort_values(["_start_time", "mlflow_run_id"], kind="stable").drop(columns="_start_time")
    rest = [c for c in df.columns if c not in TIDY_COLUMNS and c not in SUMMARY_METRICS]
    return cast(pd.DataFrame, df[[*TIDY_COLUMNS, *sorted(rest), *SUMMARY_METRICS]]).reset_index(drop=True)


def dedupe_history(points: pd.DataFrame) -> pd.DataFrame:
    """Keep the latest-timestamp value per (run, key, step): a resumed run may re-log a step."""
    if points.empty:
        return pd.DataFrame(columns=list(HISTORY_COLUMNS))
    ordered = points.sort_values("timestamp", kind="stable")
    latest = ordered.drop_duplicates(["mlflow_run_id", "key", "step"], keep="last")
    latest = latest.sort_values(["mlflow_run_id", "key", "step"], kind="stable")
    return cast(pd.DataFrame, latest[list(HISTORY_COLUMNS)]).reset_index(drop=True)


def fetch_runs(
    experiment_names: Sequence[str] | None = None,
    *,
    stage: str | Sequence[str] | None = None,
    spec: str | None = None,
    tracking_uri: str | None = None,
) -> pd.DataFrame:
    """Trial runs (tag gatesweep.kind=trial) of the experiments (all when None) as a tidy table.
    A sqlite store is read with SQL (analysis.store_sql), a server with the gatesweep routes by the
    server with the same SQL (analysis.server_reads), any other store - or one SQL cannot read -
    through MLflow's run search; all give the same table."""
    uri = resolve_uri(tracking_uri)
    check_reachable(uri)
    stages: list[str | None] = [stage] if stage is None or isinstance(stage, str) else list(stage)
    filters = [(st, tag_filter("trial", stage=st, spec=spec)) for st in stages]  # validates the values
    found = _sql_runs(uri, experiment_names, [st for st, _ in filters], spec)
    if found is None and is_server(uri):
        found = _served_runs(uri, experiment_names, [st for st, _ in filters], spec)
    if found is None:
        found = _api_runs(uri, experiment_names, [f for _, f in filters])
    if not found:
        where = ", ".join(experiment_names) if experiment_names else "any experiment"
        which = ", ".join(s for s in stages if s) or "any"
        raise NoRunsError(f"no trial runs in {where} at {uri} (stage {which}, spec {spec or 'any'}); "
                            "check --experiment/--stage, or import/run them first")
    return runs_frame(records(found))


def _sql_runs(uri: str, names: Sequence[str] | None, stages: list[str | None], spec: str | None) -> list[StoredRun] | None:
    """The runs read with SQL from a sqlite store, in one snapshot; None when SQL cannot read it."""
    path = sqlite_path(uri)
    if path is None:
        return None
    try:
        with store_sql.connect(path) as con:
            con.execute("BEGIN")  # one snapshot for every query
            missing, found = store_sql.read_runs(con, names, store_sql.selection("trial", stages, spec))
    except sqlite3.Error as e:
        log.info("SQL read of %s failed (%s: %s); reading through MLflow", uri, type(e).__name__, e)
        return None
    if missing is not None:
        raise _no_experiment(missing, uri)
    return found


def _served_runs(uri: str, names: Sequence[str] | None, stages: list[str | None], spec: str | None) -> list[StoredRun] | None:
    """The runs as `mlflow server --app-name gatesweep` reads them with SQL; None without its routes."""
    from analysis import server_reads

    answer = server_reads.runs(uri, names, stages, spec)
    if answer is None:
        return None
    missing, found = answer
    if missing is not None:
        raise _no_experiment(missing, uri)
    return found


def _api_runs(uri: str, names: Sequence[str] | None, filters: list[str]) -> list[StoredRun]:
    """The runs through MLflow's run search (any store), kept page by page as plain dicts that share
    one string per distinct key and value (MLflow's objects of 10,000 runs would hold 150 MiB more).
    The collector is paused meanwhile: it otherwise walks the growing heap of MLflow's objects again
    and again (3/4 of an in-process search's time at 10,000 runs); it runs again once the search is done."""
    client, uri = open_client(uri)
    exp_ids = _experiment_ids(client, uri, names)
    one: dict[Any, Any] = {}

    def stored(r: Any) -> StoredRun:
        return StoredRun(r.info.run_id, r.info.status, r.info.start_time,
                         {one.setdefault(k, k): one.setdefault(v, v) for k, v in r.data.tags.items()},
                         {one.setdefault(k, k): one.setdefault(v, v) for k, v in r.data.params.items()},
                         {one.setdefault(k, k): v for k, v in r.data.metrics.items()})
    found: list[StoredRun] = []
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for flt in filters:
            found += call(uri, lambda f=flt: [stored(r) for r in search_all(client, exp_ids, f)])
    finally:
        if was_enabled:
            gc.enable()
    return found


def fetch_histories(
    run_ids: Iterable[str],
    keys: Sequence[str] = ("val_loss", "train_loss"),
    *,
    tracking_uri: str | None = None,
) -> pd.DataFrame:
    """Long table of metric histories: mlflow_run_id, key, step, value (read in bulk: analysis.histories)."""
    uri = resolve_uri(tracking_uri)
    check_reachable(uri)
    client = functools.cache(lambda: open_client(uri)[0])  # MLflow only when a run is read through it
    return dedupe_history(pd.DataFrame(read_histories(client, uri, list(run_ids), keys, call)))


def find_sweep_run(
    experiment_names: Sequence[str] | None = None,
    *,
    spec: str | None = None,
    stage: str | None = None,
    tracking_uri: str | None = None,
) -> str | None:
    """The newest sweep (parent) run with these spec/stage tags, or None."""
    client, uri = open_client(tracking_uri)
    exp_ids = _experiment_ids(client, uri, experiment_names)
    found = list(search(client, uri, exp_ids, tag_filter("sweep", stage=stage, spec=spec)))
    if not found:
        return None
    return max(found, key=lambda r: r.info.start_time or 0).info.run_id


def open_client(tracking_uri: str | None = None, *, must_exist: bool = True):
    """(MlflowClient, uri) after checking the store answers; a new sqlite file is allowed to
    be created only when `must_exist` is False (imports)."""
    from mlflow import MlflowClient

    uri = resolve_uri(tracking_uri)
    check_reachable(uri, must_exist=must_exist)
    return MlflowClient(tracking_uri=uri), uri


def check_reachable(uri: str, *, must_exist: bool = True) -> None:
    """Fail in seconds with a clear message instead of MLflow's minutes of HTTP retries."""
    if is_server(uri):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5):
                pass
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise TrackingError(f"MLflow server {uri} is unreachable ({reason}); start it or set "
                                "MLFLOW_TRACKING_URI / --tracking-uri") from None
    elif must_exist and uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if not path.exists():
            raise NoRunsError(f"no MLflow database at {path}; set MLFLOW_TRACKING_URI or "
                                "--tracking-uri, or import/run something first")


def _experiment_ids(client, uri: str, names: Sequence[str] | None) -> list[str]:
    if names is None:
        exps = call(uri, client.search_experiments)
        return [e.experiment_id for e in exps]
    ids = []
    for name in names:
        exp = call(uri, client.get_experiment_by_name, name)
        if exp is None:
            raise _no_experiment(name, uri)
        ids.append(exp.experiment_id)
    return ids


def _no_experiment(name: str, uri: str) -> NoRunsError:
    return NoRunsError(f"experiment {name!r} not found at {uri}; check --experiment "
                       "(the spec's tracking.experiment, default gatesweep-<spec name>)")


def search(client, uri: str, exp_ids: list[str], filter_string: str):
    return call(uri, lambda: list(search_all(client, exp_ids, filter_string)))


def call(uri: str, fn, *args):
    from mlflow.exceptions import MlflowException

    try:
        return fn(*args)
    except (MlflowException, OSError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TrackingError(f"MLflow at {uri}: {first}") from None


def _quoted(value: str, what: str) -> str:
    if not _SAFE_VALUE.fullmatch(value):
        raise TrackingError(f"{what} {value!r} has characters MLflow filters cannot quote; "
                            "use letters, digits and . _ - : / +")
    return value
