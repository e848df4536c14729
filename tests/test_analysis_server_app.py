"""`mlflow server --app-name gatesweep` (analysis.server_app) and its client (analysis.server_reads):
a repeated table or report through the routes reads nothing when nothing changed, and any write
through the server gives a fresh result; a plain server is read through MLflow's search, says so in
one line and still gives the table; the routes only read, and refuse bad queries with a 400 that says
what to give."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient

from analysis import cache, fetch, server_app, server_reads
from analysis.cli import report_main, table_main
from tests.sweep_helpers import REPO
from tests.test_analysis_read_paths import fill


@pytest.fixture(autouse=True)
def _no_refusals(monkeypatch):
    monkeypatch.setattr(server_reads, "_REFUSED", set())  # a refusal is said once per process


def table(argv: list[str], capsys) -> str:
    capsys.readouterr()
    assert table_main(argv) == 0
    return capsys.readouterr().out


def counted(monkeypatch) -> list[int]:
    """fetch_runs calls: one per table computed (a kept result calls it none)."""
    calls: list[int] = []
    real = fetch.fetch_runs
    monkeypatch.setattr(fetch, "fetch_runs", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def fresh(argv: list[str], capsys, monkeypatch, where: Path) -> str:
    """The table computed from scratch (an empty cache of its own)."""
    with monkeypatch.context() as m:
        m.setenv("XDG_CACHE_HOME", str(where))
        shutil.rmtree(where, ignore_errors=True)
        return table(argv, capsys)


@pytest.mark.mlflow
def test_a_repeated_call_through_the_routes_is_kept_and_any_write_gives_a_fresh_result(
        mlflow_server, tmp_path, capsys, monkeypatch):
    uri = mlflow_server.uri
    names, tag = fill(uri, uuid.uuid4().hex[:8])
    run_ids = fetch.fetch_runs(names[:1], stage=f"s1-{tag}", tracking_uri=uri)["mlflow_run_id"].tolist()
    argv = ["--stage", f"s1-{tag}", "--experiment", names[0], "--format", "csv", "--tracking-uri", uri]
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert cache.store_state(uri) is not None
    calls = counted(monkeypatch)
    first = table(argv, capsys)
    assert table(argv, capsys) == first and len(calls) == 1  # kept: the server was asked its state only
    client = MlflowClient(tracking_uri=uri)
    outputs = [first]
    for i, write in enumerate((lambda: client.log_metric(run_ids[0], "final_val_loss", 2.5, step=10**6),
                               lambda: client.set_tag(run_ids[1], "note", "a tag no table shows"),
                               lambda: client.delete_run(run_ids[2]))):
        write()
        outputs.append(table(argv, capsys))
        assert len(calls) == 2 + i, "a write through the server was served from the cache"
        assert outputs[-1] == fresh(argv, capsys, monkeypatch, tmp_path / f"fresh{i}")
        calls.pop()  # fresh() computed once more
    assert outputs[1] != outputs[0] and outputs[2] == outputs[1] and outputs[3] != outputs[2]
    assert table(argv, capsys) == outputs[-1] and len(calls) == 4  # and kept in turn
    out = tmp_path / "reports"
    report = ["--stage", f"s1-{tag}", "--experiment", names[0], "--tracking-uri", uri, "--out", str(out), "--no-attach"]
    assert report_main(report) == 0
    written = {p.name: p.stat().st_mtime_ns for p in (out / f"s1-{tag}").iterdir()}
    with monkeypatch.context() as m:
        m.setattr(fetch, "fetch_runs", lambda *a, **k: pytest.fail("the store was read"))
        m.setattr(fetch, "fetch_histories", lambda *a, **k: pytest.fail("the store was read"))
        assert report_main(report) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / f"s1-{tag}").iterdir()} == written


@pytest.mark.mlflow
def test_a_plain_server_is_read_through_mlflow_with_one_line_naming_the_fix(
        mlflow_server, plain_mlflow_server, tmp_path, capsys, monkeypatch):
    names, tag = fill(mlflow_server.uri, uuid.uuid4().hex[:8])
    argv = ["--stage", f"s1-{tag}", "--experiment", names[0], "--format", "csv", "--tracking-uri"]
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    expect = table([*argv, mlflow_server.backend_uri], capsys)
    calls = counted(monkeypatch)
    capsys.readouterr()
    assert table_main([*argv, plain_mlflow_server.uri]) == 0
    out, err = capsys.readouterr()
    notes = [line for line in err.splitlines() if line.strip()]
    assert out == expect and len(notes) == 1, err
    assert notes[0].startswith(f"note: {plain_mlflow_server.uri} is a plain `mlflow server`")
    assert "`mlflow server --app-name gatesweep ...`" in notes[0]
    assert table([*argv, plain_mlflow_server.uri], capsys) == expect and len(calls) == 2  # no state: no cache claims
    assert cache.store_state(plain_mlflow_server.uri) is None


def _status(url: str, method: str = "GET") -> tuple[int, dict | str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method, data=b"{}" if method != "GET" else None,
                                                           headers={"Content-Type": "application/json"}),
                                    timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        body = e.read().decode()
        return e.code, json.loads(body) if body.startswith("{") else body


@pytest.mark.mlflow
def test_the_routes_only_read_and_refuse_bad_queries_with_a_400(mlflow_server):
    api = f"{mlflow_server.uri}{server_app.PREFIX}"
    names, tag = fill(mlflow_server.uri, uuid.uuid4().hex[:8])
    before = _status(f"{api}/state")
    assert before[0] == 200 and isinstance(before[1], dict) and before[1]["state"].startswith("sqlite:")
    for route in ("state", "runs", "histories"):
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            assert _status(f"{api}/{route}", method)[0] == 405, (route, method)
    ok = _status(f"{api}/runs?experiment={names[0]}&stage=s1-{tag}")
    assert ok[0] == 200 and isinstance(ok[1], dict) and len(ok[1]["runs"]) == 21 and ok[1]["missing_experiment"] is None
    assert _status(f"{api}/runs?experiment=no-such-{tag}")[1] == {"state": before[1]["state"],
                                                               "missing_experiment": f"no-such-{tag}", "strings": [],
                                                               "runs": []}
    run = ok[1]["runs"][0][0]
    bad = {f"runs?experiment={names[0]}&bogus=1": "unknown parameter 'bogus'",
           "runs?kind=everything": "kind='everything': use one of trial, sweep",
           "runs?stage=": "stage is empty",
           "runs?spec=a&spec=b": "spec given twice",
           f"histories?run_id={run}": "give run_id=ID (repeatable) and key=METRIC",
           "histories?run_id=../etc&key=val_loss": "is not an MLflow run id",
           "histories?" + "&".join(f"run_id=r{i}" for i in range(server_app.HISTORY_RUNS + 1)) + "&key=k": "split the request",
           "state?x=1": "unknown parameter 'x'; valid: none"}
    for query, says in bad.items():
        status, body = _status(f"{api}/{query}")
        assert status == 400 and isinstance(body, dict) and says in body["message"], (query, body)
        assert body["error_code"] == "INVALID_PARAMETER_VALUE"
    assert _status(f"{api}/state") == before  # nothing above wrote


def test_a_backend_that_is_not_a_sqlite_file_answers_501(monkeypatch, capsys):
    from flask import Flask

    client = server_app.create_app(Flask("t")).test_client()
    monkeypatch.setenv(server_app.BACKEND_ENV, "postgresql://db.example/mlflow")
    reply = client.get(f"{server_app.PREFIX}/state")
    assert reply.status_code == 501 and "sqlite backend store only" in reply.get_json()["message"]
    assert client.post(f"{server_app.PREFIX}/state").status_code == 405


def test_the_app_module_imports_nothing_heavy():
    code = "import sys, analysis.server_app, analysis.server_reads; print(sorted({'flask', 'mlflow', 'pandas'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.split() == ["[]"], out.stderr


def test_runs_survive_the_wire_exactly():
    from analysis.store_sql import StoredRun

    runs = [StoredRun("a" * 32, "FINISHED", 5, {"k": "v", "none": None}, {"lr": "1e-3", "note": ""},
                      {"loss": float("nan"), "big": 1e308, "inf": float("inf"), "tiny": 5e-324, "third": 1 / 3}),
            StoredRun("b" * 32, None, None, {"k": "v"}, {}, {})]
    back = server_app.unpack_runs(json.loads(json.dumps(server_app.pack_runs(runs))))
    assert [r.run_id for r in back] == [r.run_id for r in runs] and back[1] == runs[1]
    assert back[0].tags == runs[0].tags and back[0].params == runs[0].params
    assert repr(back[0].metrics) == repr(runs[0].metrics)  # NaN != NaN: compare the digits
