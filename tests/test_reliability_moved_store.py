"""A tracking store that moved (issue #25 item 2): after `mv mlflow.db mlflow.db.broken` (what our own
damaged-store message advises), `run` said "nothing to run: 2/2", `sync` said "2 already up to date" and
`table` exited 66: delivery was remembered in `track/mlflow.json` only, never checked against the store.

Now a record's delivery state names the store it went to (a sqlite file's device, inode and creation
time; a server's experiment and its creation time), so a new store, a restored one and one deleted and
made anew each get every record again - exactly once: one run per trial, each point once.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.sweep_helpers import (
    cli_env,
    experiment_runs,
    gatesweep,
    local_points,
    mlflow_points,
    point_diff,
    trial_dirs,
    unique,
    write_data,
    write_spec,
)


def _sweep(cwd: Path) -> str:
    name = unique("moved")
    write_data(cwd)
    write_spec(cwd / "spec.yaml", name, base={"num_iterations": 6, "val_every": 3}, seeds=[0],
               grid={"attn_gate": ["none", "headwise"]})
    res = gatesweep(["run", "spec.yaml"], cwd, cli_env())
    assert res.returncode == 0, res.stdout + res.stderr
    return name


def _assert_exactly_once(cwd: Path, name: str) -> None:
    """The store at cwd/mlflow.db holds one FINISHED run per trial, each with its record's points once."""
    uri = f"sqlite:///{cwd}/mlflow.db"
    runs = experiment_runs(uri, f"gs-{name}", "trial")
    dirs = trial_dirs(cwd, name)
    assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(d.name for d in dirs) and len(dirs) == 2
    for run in runs:
        track = cwd / "runs" / name / run.data.tags["trial_id"] / "track"
        assert (run.info.status, run.data.tags["status"]) == ("FINISHED", "FINISHED")
        assert point_diff(mlflow_points(uri, run.info.run_id), local_points(track)) == ([], [])
        assert "final_val_loss" in run.data.metrics


def test_a_store_moved_aside_gets_every_record_again_from_run(tmp_path: Path):
    name = _sweep(tmp_path)
    (tmp_path / "mlflow.db").rename(tmp_path / "mlflow.db.broken")
    res = gatesweep(["run", "spec.yaml"], tmp_path, cli_env())
    assert res.returncode == 0, res.stdout + res.stderr
    assert "delivered 2 ended trial record(s)" in res.stdout, res.stdout + res.stderr
    _assert_exactly_once(tmp_path, name)
    table = gatesweep(["table", "spec.yaml", "--no-time"], tmp_path, cli_env())
    assert table.returncode == 0 and "headwise" in table.stdout, table.stdout + table.stderr
    res = gatesweep(["sync"], tmp_path, cli_env())
    assert res.stdout.splitlines()[-1] == "sync: 0 record(s) delivered, 0 failed, 2 already up to date", res.stdout


def test_sync_delivers_to_a_new_a_restored_and_a_remade_store_exactly_once(tmp_path: Path):
    name = _sweep(tmp_path)
    db = tmp_path / "mlflow.db"
    shutil.copy2(db, tmp_path / "backup.db")  # a backup holding every run already

    db.rename(tmp_path / "mlflow.db.broken")  # a new store
    res = gatesweep(["sync"], tmp_path, cli_env())
    assert res.stdout.splitlines()[-1] == "sync: 2 record(s) delivered, 0 failed, 0 already up to date", res.stdout
    _assert_exactly_once(tmp_path, name)

    shutil.copy2(tmp_path / "backup.db", db)  # restored from the backup: the runs are there, found again
    res = gatesweep(["sync"], tmp_path, cli_env())
    assert res.stdout.splitlines()[-1] == "sync: 2 record(s) delivered, 0 failed, 0 already up to date", res.stdout
    _assert_exactly_once(tmp_path, name)

    db.unlink()  # deleted and made anew (its inode number may well be reused)
    res = gatesweep(["sync"], tmp_path, cli_env())
    assert res.stdout.splitlines()[-1] == "sync: 2 record(s) delivered, 0 failed, 0 already up to date", res.stdout
    _assert_exactly_once(tmp_path, name)
    res = gatesweep(["sync"], tmp_path, cli_env())
    assert res.stdout.splitlines()[-1] == "sync: 0 record(s) delivered, 0 failed, 2 already up to date", res.stdout


def test_run_json_names_the_run_of_a_trial_finished_before(tmp_path: Path):
    """Issue #25 item 10: `run --json` / `status --json` gave mlflow_run_id null for finished trials (the
    store is not asked about them; their record names their run in this store)."""
    import json

    name = _sweep(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    ids = {r.data.tags["trial_id"]: r.info.run_id for r in experiment_runs(uri, f"gs-{name}", "trial")}
    for args in (["run", "spec.yaml", "--json"], ["status", "spec.yaml", "--json"]):
        res = gatesweep(args, tmp_path, cli_env())
        assert res.returncode == 0, res.stdout + res.stderr
        got = {tid: t["mlflow_run_id"] for tid, t in json.loads(res.stdout).items()}
        assert got == ids and all(t["status"] == "FINISHED" for t in json.loads(res.stdout).values())
