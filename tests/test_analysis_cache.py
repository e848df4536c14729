"""`gatesweep table` / `report` keep their results keyed to the store's exact state (analysis.cache):
a repeated call on an unchanged sqlite store reads nothing, and a kept result is never stale - a run
finished or deleted, a metric changed, the store replaced by another file each give what a fresh
computation gives. The report writes only what changed."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

from mlflow import MlflowClient

from analysis import cache, fetch, plots, store_sql
from analysis.cli import report_main, table_main
from analysis.table import stage_table
from bench.store_scale import EXPERIMENT, STAGE, T0, fill_store, trials

TABLE = ["--stage", STAGE, "--experiment", EXPERIMENT, "--format", "csv"]


def store(path: Path, n_runs: int = 24) -> str:
    uri = f"sqlite:///{path}"
    fill_store(uri, path.parent / "art", trials(n_runs, seeds=2, points=4))
    return uri


def table(uri: str, capsys) -> str:
    capsys.readouterr()
    assert table_main([*TABLE, "--tracking-uri", uri]) == 0
    return capsys.readouterr().out


def fresh(uri: str, capsys, monkeypatch, where: Path) -> str:
    """The table computed from scratch (an empty cache of its own)."""
    with monkeypatch.context() as m:
        m.setenv("XDG_CACHE_HOME", str(where))
        shutil.rmtree(where, ignore_errors=True)
        return table(uri, capsys)


def no_reads(monkeypatch) -> None:
    def refuse(*a, **k):
        raise AssertionError("the store was read")
    monkeypatch.setattr(fetch, "fetch_runs", refuse)
    monkeypatch.setattr(fetch, "fetch_histories", refuse)


def finish_run(uri: str, final: float) -> str:
    """A new trial run, as the trainer logs it, in the first configuration."""
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(EXPERIMENT)
    assert found is not None
    exp = found.experiment_id
    first = fetch.fetch_runs([EXPERIMENT], stage=STAGE, tracking_uri=uri).iloc[0]
    tags = {"gatesweep.kind": "trial", "spec": "scale", "stage": STAGE, "seed": "9", "status": "FINISHED"}
    rid = client.create_run(exp, start_time=T0 + 10**8, tags=tags).info.run_id
    for k in ("attn_gate", "learning_rate", "num_iterations", "seed"):
        client.log_param(rid, k, str(first[k]) if k != "seed" else "9")
    for k in ("final_val_loss", "best_val_loss"):
        client.log_metric(rid, k, final)
    client.log_metric(rid, "train_time_ms", 1000.0)
    client.set_terminated(rid, "FINISHED")
    return rid


def test_state_is_exact_and_cheap(tmp_path):
    uri = store(tmp_path / "a.db", 4)
    path = tmp_path / "a.db"
    states = [store_sql.state(path), store_sql.state(path)]
    assert states[0] is not None and states[0] == states[1]  # nothing written: the same state
    client = MlflowClient(tracking_uri=uri)
    rid = fetch.fetch_runs([EXPERIMENT], stage=STAGE, tracking_uri=uri)["mlflow_run_id"].iloc[0]
    for write in (lambda: client.set_tag(rid, "note", "x"), lambda: client.log_metric(rid, "final_val_loss", 1.0),
                  lambda: client.delete_run(rid)):
        write()
        states.append(store_sql.state(path))
    assert len(set(states[1:])) == 4  # every write, even a tag on a finished run
    other = tmp_path / "b.db"
    store(other, 4)
    shutil.copyfile(other, path)  # the same file (inode), other bytes
    assert store_sql.state(path) not in states
    os.replace(other, path)  # another file at the path
    assert store_sql.state(path) not in states and store_sql.state(path) is not None
    wal = tmp_path / "wal.db"
    store(wal, 4)
    con = sqlite3.connect(wal)
    con.execute("PRAGMA journal_mode=WAL")
    con.close()
    assert store_sql.state(wal) is None  # its counter is not kept: no cheap state
    assert cache.store_state("http://127.0.0.1:5000") is None and cache.key("table", "http://x", dict) is None


def test_a_repeated_table_reads_nothing_and_a_changed_store_is_never_served_stale(tmp_path, capsys, monkeypatch):
    uri = store(tmp_path / "mlflow.db")
    first = table(uri, capsys)
    with monkeypatch.context() as m:
        no_reads(m)
        assert table(uri, capsys) == first
    finish_run(uri, 3.1)  # a run finished after the table was kept
    second = table(uri, capsys)
    assert second != first and second == fresh(uri, capsys, monkeypatch, tmp_path / "c1")
    client = MlflowClient(tracking_uri=uri)
    runs = fetch.fetch_runs([EXPERIMENT], stage=STAGE, tracking_uri=uri)
    client.delete_run(runs["mlflow_run_id"].iloc[-1])  # the new run deleted: back to the first table
    assert table(uri, capsys) == first
    client.delete_run(runs["mlflow_run_id"].iloc[0])  # a deleted run disappears
    third = table(uri, capsys)
    assert third not in (first, second) and third == fresh(uri, capsys, monkeypatch, tmp_path / "c2")
    client.log_metric(runs["mlflow_run_id"].iloc[1], "final_val_loss", 2.5, step=10**6)  # a finished run's number
    fourth = table(uri, capsys)
    assert fourth != third and fourth == fresh(uri, capsys, monkeypatch, tmp_path / "c3")
    other = tmp_path / "other.db"
    store(other, 12)
    os.replace(other, tmp_path / "mlflow.db")  # another store at the same path
    fifth = table(uri, capsys)
    assert fifth == fresh(uri, capsys, monkeypatch, tmp_path / "c4") and fifth.count("\n") < fourth.count("\n")
    with monkeypatch.context() as m:  # and it is kept in turn
        no_reads(m)
        assert table(uri, capsys) == fifth


def test_options_and_output_context_are_part_of_the_key(tmp_path, capsys):
    uri = store(tmp_path / "mlflow.db")
    csv = table(uri, capsys)
    assert table_main([*TABLE[:-1], "md", "--tracking-uri", uri]) == 0
    md = capsys.readouterr().out
    assert table_main([*TABLE, "--adjust", "bh", "--tracking-uri", uri]) == 0
    bh = capsys.readouterr().out
    assert md.startswith("|") and not csv.startswith("|") and bh != csv
    assert table(uri, capsys) == csv


def test_stores_without_a_cheap_state_are_read_every_time(tmp_path, capsys, monkeypatch):
    uri = store(tmp_path / "wal.db")
    con = sqlite3.connect(tmp_path / "wal.db")
    con.execute("PRAGMA journal_mode=WAL")
    con.close()
    calls = []
    real = fetch.fetch_runs
    monkeypatch.setattr(fetch, "fetch_runs", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert table(uri, capsys) == table(uri, capsys) and len(calls) == 2


def test_an_unwritable_cache_still_gives_the_table(tmp_path, capsys, monkeypatch):
    uri = store(tmp_path / "mlflow.db")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    assert table(uri, capsys) == table(uri, capsys) != ""


def report(uri: str, out: Path) -> dict[str, int]:
    assert report_main(["--stage", STAGE, "--experiment", EXPERIMENT, "--tracking-uri", uri, "--out", str(out),
                        "--no-attach"]) == 0
    return {p.name: p.stat().st_mtime_ns for p in (out / STAGE).iterdir()}


def test_the_report_writes_only_what_changed(tmp_path, capsys, monkeypatch):
    uri = store(tmp_path / "mlflow.db", 80)  # 40 configurations: the best 12 and their baselines drawn
    out = tmp_path / "reports"
    first = report(uri, out)
    with monkeypatch.context() as m:
        no_reads(m)
        assert report(uri, out) == first  # nothing read, nothing written
    runs = fetch.fetch_runs([EXPERIMENT], stage=STAGE, tracking_uri=uri)
    numeric = stage_table(runs)
    drawn = set(plots.runs_of(runs, numeric, plots.pick_configs(numeric)[0])["mlflow_run_id"])
    other = runs[~runs["mlflow_run_id"].isin(sorted(drawn))].iloc[0]  # a run of a configuration no figure draws
    client = MlflowClient(tracking_uri=uri)
    client.log_metric(other["mlflow_run_id"], "final_val_loss", float(other["final_val_loss"]) + 0.01, step=10**6)
    second = report(uri, out)
    changed = {n for n in first if second[n] != first[n]}
    assert {"table.csv", "table.md", "README.md", "compat.csv", "lr_sweep.png"} <= changed  # its numbers
    assert not changed & {"val_loss.png", "val_loss_time.png", "final_loss.png"}  # figures not drawn again
    (out / STAGE / "val_loss.png").unlink()
    third = report(uri, out)
    assert third["val_loss.png"] != second["val_loss.png"] and third["final_loss.png"] == second["final_loss.png"]
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "fresh-cache"))
    report(uri, tmp_path / "fresh")  # from scratch: the same bytes in every file
    for name in first:
        if name != ".gatesweep-report.json":
            assert (out / STAGE / name).read_bytes() == (tmp_path / "fresh" / STAGE / name).read_bytes(), name


def test_a_specs_decision_log_is_an_input(tmp_path, capsys, monkeypatch):
    uri = store(tmp_path / "mlflow.db")
    spec = tmp_path / "scale.yaml"
    spec.write_text(f"name: scale\nstage: {STAGE}\ntracking:\n  experiment: {EXPERIMENT}\n")
    monkeypatch.chdir(tmp_path)  # runs/<spec>/sequential.json is read from here
    calls = []
    real = fetch.fetch_runs
    monkeypatch.setattr(fetch, "fetch_runs", lambda *a, **k: calls.append(1) or real(*a, **k))
    argv = [str(spec), "--format", "csv", "--tracking-uri", uri]
    texts = []
    for log in (None, None, {"comparisons": []}, {"comparisons": [], "looks_done": 1}, {"comparisons": []}):
        if log is not None:
            (tmp_path / "runs" / "scale").mkdir(parents=True, exist_ok=True)
            (tmp_path / "runs" / "scale" / "sequential.json").write_text(json.dumps(log))
        assert table_main(argv) == 0
        texts.append(capsys.readouterr().out)
    assert len(calls) == 3  # computed for the first call and each new log; the repeats were kept
    assert texts[0] == texts[1] != texts[2] == texts[3] == texts[4] and "seq_verdict" in texts[2]
