"""The run table read with SQL from a sqlite store (analysis.store_sql) is MLflow's own run search to
the last digit: the same tidy frame, the same stage and study tables, the same CLI output - on a
sqlite file written by MLflow's client, and on the file behind a real `mlflow server` read as a
file, through the server's gatesweep routes (analysis.server_app), through its MLflow search, and
through a plain `mlflow server` over the same file. Awkward runs included: failed, running, deleted, NaN metrics, missing tags, other
stages, specs and experiments."""

from __future__ import annotations

import math
import subprocess
import sys
import uuid

import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from analysis import fetch, histories, server_reads, store_sql
from analysis.cli import table_main
from analysis.fetch import fetch_histories, fetch_runs
from analysis.table import compat_table, stage_table
from tests.sweep_helpers import REPO

T0 = 1_750_000_000_000


def _run(client: MlflowClient, exp: str, *, tags: dict, params: dict, final: float | None, start: int,
         status: str = "FINISHED", extra: dict | None = None) -> str:
    rid = client.create_run(exp, start_time=start, tags=tags).info.run_id
    points = [Metric("val_loss", 9.0 - s / 10 + (final or 0), start + s, s) for s in range(0, 101, 25)]
    points += [Metric("train_time_ms", 30.0 * s, start + s, s) for s in range(0, 101, 25)]
    summary = {"final_val_loss": final, "best_val_loss": final, "train_time_ms": 3000.0 + start % 7,
               "ms_per_step": 30.0 + start % 3, **(extra or {})}
    points += [Metric(k, v, start + 200, 100) for k, v in summary.items() if v is not None]
    client.log_batch(rid, metrics=points, params=[Param(k, str(v)) for k, v in params.items()])
    if status != "RUNNING":
        client.set_terminated(rid, status, end_time=start + 300)
    return rid


def fill(uri: str, tag: str) -> tuple[list[str], str]:
    """Two experiments of awkward runs; returns (experiment names, stage suffix)."""
    client = MlflowClient(tracking_uri=uri)
    names = [f"paths-{tag}-a", f"paths-{tag}-b"]
    exps = [client.create_experiment(n) for n in names]
    s1, s2 = f"s1-{tag}", f"s2-{tag}"
    client.create_run(exps[0], tags={"gatesweep.kind": "sweep", "spec": "paths", "stage": s1})
    i = 0

    def trial(exp, stage, gate, lr, seed, *, status="FINISHED", status_tag=True, spec="paths", tags=None,
              final: float | None = -1.0, extra=None):
        nonlocal i
        i += 1
        all_tags = {"gatesweep.kind": "trial", "spec": spec, "stage": stage, "trial_id": f"t{i:03d}", "backend": "local",
                    **({"seed": str(seed)} if seed is not None else {}), **({"status": status} if status_tag else {}),
                    **(tags or {})}
        params = {"attn_gate": gate, "learning_rate": lr, "seed": 7 if seed is None else seed, "num_iterations": 100,
                  "gate_act": "sigmoid", "note": "", "flag": "True", "sci": "1e-3"}
        if final == -1.0:
            final = 3.3 + 0.01 * (gate == "none") + 0.001 * (seed or 0)
        return _run(client, exp, tags=all_tags, params=params, final=final, start=T0 + 1000 * i, status=status,
                    extra=extra)

    for lr in ("0.001", "0.002"):
        for gate in ("none", "headwise"):
            for seed in range(3):
                trial(exps[0], s1, gate, lr, seed)
    trial(exps[0], s1, "headwise", "0.001", 3, status="FAILED", final=None)
    trial(exps[0], s1, "headwise", "0.002", 4, status="RUNNING", status_tag=False, final=None)
    trial(exps[0], s1, "none", "0.001", 5, final=math.nan)
    trial(exps[0], s1, "none", "0.002", None)  # no seed tag: the param's seed
    trial(exps[0], s1, "headwise", "0.001", 6, tags={"gatesweep.gpu_shared": "2"})
    trial(exps[0], s1, "headwise", "0.002", 7, tags={"gatesweep.gpu_shared": "yes", "gatesweep.budget_matched": "num_iterations"})
    trial(exps[0], s1, "elementwise", "0.001", 0, extra={"diag/gate_mean/layer_00": 0.5, "diag/gate_mean/layer_01": 0.25})
    trial(exps[0], s1, "elementwise", "0.001", 1, spec="other")
    gone = trial(exps[0], s1, "elementwise", "0.002", 0)
    client.delete_run(gone)
    trial(exps[0], s1, "none", "0.001", 8, status="KILLED", status_tag=False)  # MLflow's status only
    for seed in range(2):
        trial(exps[0], s2, "none", "0.003", seed)
        trial(exps[0], s2, "elementwise", "0.003", seed)
        trial(exps[1], s1, "none", "0.004", seed)
        trial(exps[1], s1, "headwise", "0.004", seed)
    return names, tag


def queries(names: list[str], tag: str) -> list[dict]:
    s1, s2 = f"s1-{tag}", f"s2-{tag}"
    return [dict(experiment_names=names[:1], stage=s1), dict(experiment_names=names[:1], stage=[s1, s2], spec="paths"),
            dict(experiment_names=None, stage=s1), dict(experiment_names=names, stage=[s2, s1])]


def by_api(monkeypatch):
    """Force MLflow's run search and history endpoints (the read path before SQL and the server's routes)."""
    monkeypatch.setattr(fetch, "_sql_runs", lambda *a, **k: None)
    monkeypatch.setattr(fetch, "_served_runs", lambda *a, **k: None)
    monkeypatch.setattr(server_reads, "histories", lambda *a, **k: None)


def by_routes(monkeypatch):
    """Fail if a server is read any other way than through its gatesweep routes (analysis.server_app)."""
    def refuse(*a, **k):
        raise AssertionError("read through MLflow's API, not the gatesweep routes")
    for module, name in ((fetch, "_api_runs"), (histories, "_http_rows"), (histories, "per_run_rows")):
        monkeypatch.setattr(module, name, refuse)


READS = {"as is": lambda m: None, "search": by_api, "routes": by_routes}


def same_everything(paths: list[tuple[str, str]], names: list[str], tag: str, monkeypatch) -> None:
    """Every read path (how: READS, uri) gives the first one's frame, stage table and study table."""
    for q in queries(names, tag):
        stages = [q["stage"]] if isinstance(q["stage"], str) else q["stage"]
        got = []
        for how, uri in paths:
            with monkeypatch.context() as m:
                READS[how](m)
                runs = fetch_runs(**q, tracking_uri=uri)
                finished = runs[runs["status"] == "FINISHED"]["mlflow_run_id"].tolist()
                hist = fetch_histories(finished, ("val_loss", "train_time_ms"), tracking_uri=uri)
            got.append((runs, stage_table(runs, stages=stages, histories=hist), compat_table(runs, stages=stages)))
        for other in got[1:]:
            for a, b in zip(got[0], other, strict=True):
                pd.testing.assert_frame_equal(a, b, check_exact=True)
    sql_uri = paths[0][1]
    one = fetch_runs(names[:1], stage=f"s1-{tag}", tracking_uri=sql_uri)
    assert len(one) == 21 and "elementwise" in set(one["attn_gate"])  # the deleted run aside
    assert len(fetch_runs(names[:1], stage=f"s1-{tag}", spec="paths", tracking_uri=sql_uri)) == 20
    assert set(one["status"]) == {"FINISHED", "FAILED", "RUNNING", "KILLED"}
    assert int(one["final_val_loss"].isna().sum()) == 3 and int(one["diag/gate_mean/layer_01"].notna().sum()) == 1
    assert set(one["gpu_shared"].dropna()) == {2} and bool(one["note"].isna().all()) and set(one["sci"]) == {0.001}


def test_sqlite_store_both_read_paths_agree(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    names, tag = fill(uri, "f")
    same_everything([("as is", uri), ("search", uri)], names, tag, monkeypatch)


@pytest.mark.mlflow
def test_every_read_path_of_one_server_store_agrees(mlflow_server, plain_mlflow_server, monkeypatch, capsys):
    """One store, four reads: its file with SQL, the server's gatesweep routes, the same server's MLflow
    search, and a plain `mlflow server` over the same file (the fallback, which says so once)."""
    monkeypatch.setattr(server_reads, "_REFUSED", set())
    names, tag = fill(mlflow_server.uri, uuid.uuid4().hex[:8])
    capsys.readouterr()
    same_everything([("as is", mlflow_server.backend_uri), ("routes", mlflow_server.uri), ("search", mlflow_server.uri),
                     ("as is", plain_mlflow_server.uri)], names, tag, monkeypatch)
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and plain_mlflow_server.uri in notes[0] and "--app-name gatesweep" in notes[0]


def test_the_cli_prints_the_same_table_on_both_paths(tmp_path, monkeypatch, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    names, tag = fill(uri, "c")
    outputs = []
    for path in ("sql", "api"):
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / f"cache-{path}"))
        with monkeypatch.context() as m:
            if path == "api":
                by_api(m)
            for fmt in ("csv", "md"):
                assert table_main(["--stage", f"s1-{tag}", "--experiment", names[0], "--format", fmt,
                                   "--tracking-uri", uri]) == 0
                outputs.append(capsys.readouterr().out)
            assert table_main(["--stage", f"s1-{tag}", "--compat", "--format", "csv", "--tracking-uri", uri]) == 0
            outputs.append(capsys.readouterr().out)
    assert outputs[:3] == outputs[3:] and "headwise" in outputs[0] and len(outputs[0].splitlines()) > 4


def test_the_sql_path_reads_each_table_once_and_never_imports_mlflow(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    names, tag = fill(uri, "q")
    code = f"""
import sys
from analysis import store_sql
queries = []
real = store_sql.sqlite3.connect
def traced(*a, **k):
    con = real(*a, **k)
    con.set_trace_callback(lambda sql: queries.append(sql) if sql.lstrip().upper().startswith("SELECT") else None)
    return con
store_sql.sqlite3.connect = traced
from analysis.fetch import fetch_runs
runs = fetch_runs({names[:1]!r}, stage="s1-{tag}", tracking_uri="{uri}")
print(len(runs), "mlflow" in sys.modules, sum(" FROM params " in q for q in queries),
      sum(" FROM tags t " in q for q in queries), sum(" FROM latest_metrics " in q for q in queries))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["21", "False", "1", "1", "1"]


def test_a_store_sql_cannot_read_falls_back_to_mlflow(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    names, tag = fill(uri, "b")
    expect = fetch_runs(names[:1], stage=f"s1-{tag}", tracking_uri=uri)

    def broken(*a, **k):
        raise store_sql.sqlite3.OperationalError("no such column: r.lifecycle_stage")
    monkeypatch.setattr(store_sql, "runs_with_tags", broken)
    pd.testing.assert_frame_equal(fetch_runs(names[:1], stage=f"s1-{tag}", tracking_uri=uri), expect)


def test_a_sequential_sweeps_log_is_read_from_its_artifact_file_as_mlflow_downloads_it(tmp_path, monkeypatch):
    import json

    from analysis import decision_log

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("seq-log", artifact_location=str(tmp_path / "art"))
    tags = {"gatesweep.kind": "sweep", "spec": "seqspec", "gatesweep.sequential": "true"}
    for i, start in enumerate((T0 + 5, T0 + 9, T0 + 1)):  # the second started last: its log is the one
        rid = client.create_run(exp, start_time=start, tags=tags).info.run_id
        log = tmp_path / f"log{i}" / "sequential.json"
        log.parent.mkdir()
        log.write_text(json.dumps({"comparisons": [], "looks_done": i}))
        client.log_artifact(rid, str(log))
    client.create_run(exp, start_time=T0 + 99, tags={**tags, "spec": "another"})
    with monkeypatch.context() as m:  # read with SQL and from the file: MLflow's download is never asked
        m.setattr(MlflowClient, "download_artifacts", lambda *a, **k: pytest.fail("downloaded through MLflow"))
        fast = decision_log.decisions_for_spec("seqspec", runs_root=tmp_path / "none", tracking_uri=uri)
    assert fast == {"comparisons": [], "looks_done": 1}
    monkeypatch.setattr(decision_log, "_log_from_sqlite", lambda *a: (False, None))
    assert decision_log.decisions_for_spec("seqspec", runs_root=tmp_path / "none", tracking_uri=uri) == fast
    assert decision_log.decisions_for_spec("unknown", runs_root=tmp_path / "none", tracking_uri=uri) is None
