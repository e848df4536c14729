"""MLflow -> tidy run table and long metric histories (the read edge of `analysis`).

Tidy run table: one row per trial run - `TIDY_COLUMNS` (bookkeeping from tags), every param as a
column (numbers converted back from MLflow's strings), and every latest metric; the summary metrics
`SUMMARY_METRICS` are always present (NaN when a run never logged them). `status` is the run's
`status` tag (FINISHED / FAILED / KILLED / EARLY_STOPPED), else MLflow's own run status.
Histories: `mlflow_run_id, key, step, value`, one point per (run, key, step).
"""

from __future__ import annotations

import math
import re
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, cast

import pandas as pd

from analysis.histories import read_histories
from analysis.legacy import coerce
from analysis.steptimes import SHARED_COLUMN
from sweeps.errors import NoRunsError, TrackingError
from sweeps.mlflow_runs import is_server, resolve_uri, search_all

TIDY_COLUMNS = ("mlflow_run_id", "trial_id", "spec", "stage", "seed", "status", "backend")
SUMMARY_METRICS = ("final_val_loss", "best_val_loss", "train_time_ms", "ms_per_step")
HISTORY_COLUMNS = ("mlflow_run_id", "key", "step", "value")
KIND_TAG = "gatesweep.kind"
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
    tags, params = run.data.tags, {k: coerce(v) for k, v in run.data.params.items()}
    seed = coerce(tags.get("seed")) if tags.get("seed") is not None else params.get("seed")
    row: dict[str, object] = {
        "mlflow_run_id": run.info.run_id, "trial_id": tags.get("trial_id"), "spec": tags.get("spec"),
        "stage": tags.get("stage"), "seed": seed, "status": tags.get("status") or run.info.status,
        "backend": tags.get("backend"), "_start_time": run.info.start_time or 0,
    }
    if tags.get(SHARED_TAG):  # trials packed several to a GPU (cluster.local.runner): times are not speed figures
        row[SHARED_COLUMN] = int(tags[SHARED_TAG]) if tags[SHARED_TAG].isdigit() else 2
    if tags.get(BUDGET_TAG):  # keys a time_of budget set (sweeps.expand): baselines may differ in them
        row[BUDGET_COLUMN] = tags[BUDGET_TAG]
    row.update({k: v for k, v in params.items() if k not in row})
    row.update({k: math.nan for k in SUMMARY_METRICS})
    row.update(run.data.metrics)
    return row


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
    """Trial runs (tag gatesweep.kind=trial) of the experiments (all when None) as a tidy table."""
    client, uri = open_client(tracking_uri)
    exp_ids = _experiment_ids(client, uri, experiment_names)
    stages: list[str | None] = [stage] if stage is None or isinstance(stage, str) else list(stage)
    records = []
    for st in stages:
        found = search(client, uri, exp_ids, tag_filter("trial", stage=st, spec=spec))
        records += [record_from_run(r) for r in found]
    if not records:
        where = ", ".join(experiment_names) if experiment_names else "any experiment"
        which = ", ".join(s for s in stages if s) or "any"
        raise NoRunsError(f"no trial runs in {where} at {uri} (stage {which}, spec {spec or 'any'}); "
                            "check --experiment/--stage, or import/run them first")
    return runs_frame(records)


def fetch_histories(
    run_ids: Iterable[str],
    keys: Sequence[str] = ("val_loss", "train_loss"),
    *,
    tracking_uri: str | None = None,
) -> pd.DataFrame:
    """Long table of metric histories: mlflow_run_id, key, step, value (read in bulk: analysis.histories)."""
    client, uri = open_client(tracking_uri)
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
            raise NoRunsError(f"experiment {name!r} not found at {uri}; check --experiment "
                                "(the spec's tracking.experiment, default gatesweep-<spec name>)")
        ids.append(exp.experiment_id)
    return ids


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
