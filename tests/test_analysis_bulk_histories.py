"""fetch_histories reads many runs' histories in bulk - one SQL query per 500 runs on a sqlite store,
over http the gatesweep routes (`mlflow server --app-name gatesweep`) or else the server's
get-history-bulk endpoint - and returns exactly what MLflow's per-run
`get_metric_history` returns (re-logged steps, NaN, inf, other keys and runs left out), on a real
sqlite store and a real `mlflow server`."""

from __future__ import annotations

import math
import uuid

import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric

from analysis import histories, server_reads, store_sql
from analysis.fetch import call, dedupe_history, fetch_histories

KEYS = ("val_loss", "train_time_ms")


def fill(uri: str, n_runs: int = 7) -> list[str]:
    """Runs with awkward histories: a resumed run re-logging steps, NaN and inf, a key not asked for."""
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment(f"bulk-{uuid.uuid4().hex[:8]}")
    ids = []
    for r in range(n_runs):
        rid = client.create_run(exp).info.run_id
        t = 1_700_000_000_000 + r
        points = [Metric("val_loss", 10.0 - s / 10 - r / 100, t + s, s) for s in range(0, 101, 10)]
        points += [Metric("train_time_ms", 50.0 * s, t + s, s) for s in range(0, 101, 10)]
        points += [Metric("train_loss", 9.0, t + s, s) for s in range(1, 5)]
        if r == 1:  # resumed: steps 50-100 logged again later, with other values
            points += [Metric("val_loss", 4.0 - s / 1000, t + 10_000 + s, s) for s in range(50, 101, 10)]
            points += [Metric("val_loss", 3.0, t + 10_000, 50)]  # two values at one (step, timestamp)
        if r == 2:
            points += [Metric("val_loss", math.nan, t + 200, 200), Metric("val_loss", math.inf, t + 300, 300)]
        client.log_batch(rid, metrics=points)
        ids.append(rid)
    return ids


def per_run(uri: str, run_ids: list[str]) -> pd.DataFrame:
    """The reference: MLflow's own per-run API, as fetch_histories read before."""
    client = MlflowClient(tracking_uri=uri)
    return dedupe_history(pd.DataFrame(histories.per_run_rows(client, uri, run_ids, KEYS, call)))


def same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), check_exact=True)


@pytest.fixture
def no_per_run_calls(monkeypatch):
    """Counts MLflow's per-run history calls; the bulk paths make none."""
    calls = []
    real = MlflowClient.get_metric_history

    def counted(self, run_id, key):
        calls.append((run_id, key))
        return real(self, run_id, key)
    monkeypatch.setattr(MlflowClient, "get_metric_history", counted)
    return calls


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('bulk')}/mlflow.db"
    return uri, fill(uri)


def test_sqlite_bulk_read_equals_the_per_run_api_in_one_query_per_500_runs(sqlite_store, no_per_run_calls, monkeypatch):
    uri, ids = sqlite_store
    wanted = ids[1:6]  # some runs only
    reference = per_run(uri, wanted)
    no_per_run_calls.clear()
    queries = []
    real_connect = store_sql.sqlite3.connect

    def traced(*a, **k):
        con = real_connect(*a, **k)
        con.set_trace_callback(lambda sql: queries.append(sql) if sql.lstrip().upper().startswith("SELECT") else None)
        return con
    monkeypatch.setattr(store_sql.sqlite3, "connect", traced)
    monkeypatch.setattr(store_sql, "SQL_CHUNK", 2)  # 5 runs -> 3 queries
    got = fetch_histories(wanted, KEYS, tracking_uri=uri)
    assert no_per_run_calls == [] and len(queries) == 3
    same(got, reference)
    assert set(got["mlflow_run_id"]) == set(wanted) and set(got["key"]) == set(KEYS)
    resumed = got[(got["mlflow_run_id"] == ids[1]) & (got["key"] == "val_loss")].set_index("step")["value"]
    assert resumed[60] == pytest.approx(4.0 - 0.06)  # the later value of a re-logged step
    odd = got[(got["mlflow_run_id"] == ids[2]) & (got["key"] == "val_loss")].set_index("step")["value"]
    assert math.isnan(odd[200]) and odd[300] == pytest.approx(1.7976931348623157e308)  # as MLflow stores inf


def test_a_failing_fast_path_falls_back_to_the_per_run_api(sqlite_store, no_per_run_calls, monkeypatch):
    uri, ids = sqlite_store

    def broken(*a, **k):
        raise histories.sqlite3.OperationalError("no such table: metrics")
    monkeypatch.setattr(histories, "_sqlite_rows", broken)
    got = fetch_histories(ids, KEYS, tracking_uri=uri)
    assert len(no_per_run_calls) == len(ids) * len(KEYS)
    same(got, per_run(uri, ids))


@pytest.mark.mlflow
def test_http_bulk_read_equals_the_per_run_api(mlflow_server, no_per_run_calls, monkeypatch):
    uri = mlflow_server.uri
    ids = fill(uri)
    reference = per_run(uri, ids)
    no_per_run_calls.clear()
    got = fetch_histories(ids, KEYS, tracking_uri=uri)  # the gatesweep routes (analysis.server_app)
    assert no_per_run_calls == []
    same(got, reference)
    monkeypatch.setattr(server_reads, "histories", lambda *a, **k: None)  # a plain server: MLflow's bulk endpoint
    same(fetch_histories(ids, KEYS, tracking_uri=uri), reference)
    assert no_per_run_calls == []
    # replies cut at the server's limit are asked again in halves, down to one run
    monkeypatch.setattr(histories, "HTTP_MAX_POINTS", 12)
    same(fetch_histories(ids, KEYS, tracking_uri=uri), reference)
    assert no_per_run_calls  # run 1 alone has more than 12 val_loss points: read through the API
    assert {r for r, _ in no_per_run_calls} == {ids[1], ids[2]}
