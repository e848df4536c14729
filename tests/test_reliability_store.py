"""The launcher's files under kill -9 and damage (issue #16, items 5 and 6, launcher side): the sqlite
tracking store's first creation, a damaged store, a read-only runs/.

- `gatesweep run` SIGKILLed while MLflow migrates a new mlflow.db (a real SIGKILL, sent by the launcher
  to itself from inside MLflow's migration step): no half-migrated mlflow.db is left, the rerun works.
- A damaged or half-migrated mlflow.db (garbage; one whose creation by MLflow itself was killed): one
  line naming the file and the fix (move it aside / restore it), exit 2 - not "start the server".
- A read-only runs/: one line naming it, exit 2, before any MLflow run exists.
- `gatesweep sync` into a directory without mlflow.db makes the store the same way (killed mid-migration:
  no half store; the next sync delivers).
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from tests.fs_helpers import in_namespace
from tests.sweep_helpers import (
    PYTHON,
    cli_env,
    client,
    experiment_runs,
    gatesweep,
    trainer_cli,
    unique,
    write_data,
    write_spec,
)
from trainer.errors import ExitCode

# `python -c KILL_IN_MIGRATION CODE`: runs CODE (a gatesweep command, or MLflow's own client) and
# SIGKILLs itself in the middle of MLflow's schema migrations of a new store (after the 4th step).
KILL_IN_MIGRATION = """
import os, signal, sys
import alembic.runtime.migration as migration
step = migration.HeadMaintainer.update_to_step
done = []
def die_at_fifth(self, s):
    done.append(s)
    if len(done) == 5:
        os.kill(os.getpid(), signal.SIGKILL)
    return step(self, s)
migration.HeadMaintainer.update_to_step = die_at_fifth
exec(sys.argv[1])
"""
RUN = "from gatesweep.cli import main; sys.exit(main(['run', 'spec.yaml']))"
SYNC = "from gatesweep.cli import main; sys.exit(main(['sync', 'out/track']))"
MLFLOW_ALONE = "from mlflow.tracking import MlflowClient; MlflowClient('sqlite:///mlflow.db').search_experiments()"


def _spec(cwd: Path) -> str:
    name = unique("store")
    write_data(cwd)
    write_spec(cwd / "spec.yaml", name, base={"num_iterations": 4}, grid={"attn_gate": ["none"]}, seeds=[0])
    return name


def _killed(cwd: Path, code: str) -> None:
    res = subprocess.run([PYTHON, "-c", KILL_IN_MIGRATION, code], cwd=cwd, env=cli_env(), capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == -signal.SIGKILL, res.stdout + res.stderr


def test_a_launcher_killed_while_creating_the_store_leaves_no_half_store(tmp_path: Path):
    name = _spec(tmp_path)
    _killed(tmp_path, RUN)
    assert not (tmp_path / "mlflow.db").exists()  # the half-migrated file was a temporary one
    res = gatesweep(["run", "spec.yaml"], tmp_path, cli_env())
    assert res.returncode == 0, res.stdout + res.stderr
    assert not list(tmp_path.glob(".mlflow.db.creating-*"))  # the dead creator's leftover is gone
    (run,) = experiment_runs(f"sqlite:///{tmp_path}/mlflow.db", f"gs-{name}", "trial")
    assert run.info.status == "FINISHED" and "final_val_loss" in run.data.metrics


def test_sync_killed_while_creating_the_store_leaves_no_half_store(tmp_path: Path):
    write_data(tmp_path)
    tiny = ["preset=tiny", "vocab_size=64", "n_embd=32", "n_head=2", "sequence_length=32", "batch_size=4",
            "device_batch_size=4", "val_tokens=256", "warmdown_iters=2", "train_files=data/train_*.bin",
            "val_files=data/val_*.bin", "out_dir=out", "device=cpu", "compile=off", "num_iterations=4",
            "run_id=offline"]
    res = trainer_cli(tiny, tmp_path, cli_env(GATESWEEP_TRACKING="local"))  # a record made without MLflow
    assert res.returncode == 0, res.stdout + res.stderr
    assert not (tmp_path / "mlflow.db").exists()
    _killed(tmp_path, SYNC)
    assert not (tmp_path / "mlflow.db").exists()  # the half-migrated file was a temporary one
    res = gatesweep(["sync", "out/track"], tmp_path, cli_env())
    assert res.returncode == 0, res.stdout + res.stderr
    assert not list(tmp_path.glob(".mlflow.db.creating-*"))
    store = client(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = store.search_runs([e.experiment_id for e in store.search_experiments()])
    assert run.info.status == "FINISHED" and "final_val_loss" in run.data.metrics


@pytest.mark.parametrize("damage", ["half-migrated", "garbage", "empty-tables"])
def test_a_damaged_store_is_one_line_naming_the_file(tmp_path: Path, damage: str):
    _spec(tmp_path)
    db = tmp_path / "mlflow.db"
    if damage == "half-migrated":
        _killed(tmp_path, MLFLOW_ALONE)  # what MLflow's own in-place creation leaves when killed
        assert db.stat().st_size > 0
    elif damage == "garbage":
        db.write_bytes(b"this is not a database\n" * 100)
    else:
        import sqlite3

        sqlite3.connect(db).execute("CREATE TABLE experiments (x)").connection.commit()
    # table and report (issue #25 item 5) gave a sqlalchemy traceback, exit 1; the message was wrapped twice
    for args in (["run", "spec.yaml"], ["status", "spec.yaml"], ["table", "spec.yaml"], ["report", "spec.yaml"]):
        res = gatesweep(args, tmp_path, cli_env())
        err = res.stderr.splitlines()
        assert res.returncode == ExitCode.BAD_INPUT and len(err) == 1, res.stdout + res.stderr
        assert err[0].startswith("error: mlflow.db: not a usable MLflow store ("), err
        assert err[0].count("not a usable MLflow store") == 1 and "StoreFileError" not in err[0], err
        assert len(err[0]) < 400, err
        assert "move it aside (mv mlflow.db mlflow.db.broken)" in err[0] and "restore it" in err[0]
        assert "make mlflow-up" not in err[0]
    assert not (tmp_path / "runs").exists()  # refused before any record


def test_a_read_only_runs_directory_is_one_line_before_any_run(tmp_path: Path):
    name = _spec(tmp_path)
    py = f"{PYTHON} -m gatesweep run spec.yaml"
    res = in_namespace(f"read_only runs\n{py} > out.txt 2> err.txt; echo $? > rc", cwd=tmp_path, env=cli_env())
    assert res.returncode == 0, res.stderr
    err = (tmp_path / "err.txt").read_text().splitlines()
    assert int((tmp_path / "rc").read_text()) == ExitCode.BAD_INPUT and len(err) == 1, err
    assert err[0].startswith(f"error: runs/{name}: runs is on a read-only filesystem; make it writable"), err
    assert experiment_runs(f"sqlite:///{tmp_path}/mlflow.db", f"gs-{name}") == [] if (tmp_path / "mlflow.db").exists() else True
