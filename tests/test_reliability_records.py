"""A run's files under kill -9, read-only directories and damage (issue #16, items 3 and 6).

- results.csv holds one row per finished run, exactly once: a trainer SIGKILLed right after its row
  was appended (before its FINISHED status) adds no second row when it runs again; one SIGKILLed right
  before the append (after its final checkpoint) writes the row when it runs again. The kills are real
  SIGKILLs, sent by the trainer process to itself at that point (a wrapper around append_result).
- A last line without its newline does not swallow the next row.
- A read-only experiments/ or runs/ (a real read-only bind mount, tests/fs_helpers.py) is one line
  before any training; a truncated latest.pt is one line (or the newest history checkpoint).
- A corrupt status.json or mlflow.json of one trial: the launcher reports it and goes on with the
  others; `gatesweep sync` still delivers to the trial's one MLflow run.
"""

from __future__ import annotations

import csv
import json
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from tests.fs_helpers import in_namespace
from tests.sweep_helpers import (
    PYTHON,
    cli_env,
    experiment_runs,
    gatesweep,
    local_points,
    mlflow_points,
    point_diff,
    trainer_cli,
    trial_dirs,
    unique,
    write_data,
    write_spec,
)
from trainer import checkpoint
from trainer.runlog import RESULTS_COLUMNS, append_result
from trainer.tracking import LocalTracker, make_tracker

TINY = ["preset=tiny", "vocab_size=64", "n_embd=32", "n_head=2", "sequence_length=32", "batch_size=4",
        "device_batch_size=4", "val_tokens=256", "warmdown_iters=2", "train_files=data/train_*.bin",
        "val_files=data/val_*.bin", "out_dir=out", "device=cpu", "compile=off", "num_iterations=8", "val_every=4"]

# `python -c KILL_AT before|after ARGS...`: the trainer, SIGKILLed by itself just before or just after
# it appends its results.csv row.
KILL_AT = """
import os, signal, sys
import trainer.loop as loop
when, argv = sys.argv[1], sys.argv[2:]
append = loop.append_result
def append_then_die(*args, **kwargs):
    if when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    append(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
loop.append_result = append_then_die
from trainer.main import main
sys.exit(main(argv))
"""


def _env() -> dict[str, str]:
    return cli_env(GATESWEEP_TRACKING="local")


def _rows(cwd: Path) -> list[dict[str, str]]:
    path = cwd / "experiments" / "results.csv"
    return list(csv.DictReader(path.open(newline=""))) if path.exists() else []


def _status(cwd: Path) -> str:
    return json.loads((cwd / "out" / "track" / "status.json").read_text())["status"]


def _killed_run(cwd: Path, when: str, args: list[str]) -> None:
    write_data(cwd)
    res = subprocess.run([PYTHON, "-c", KILL_AT, when, *args], cwd=cwd, env=_env(), capture_output=True,
                         text=True, timeout=180)
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    assert _status(cwd) == "RUNNING"  # what a kill -9 leaves: the launcher takes it for stale and reruns it


# ---------------------------------------------------------------- results.csv: exactly once
def test_killed_after_the_append_adds_no_second_row(tmp_path: Path):
    args = [*TINY, "run_id=after"]
    _killed_run(tmp_path, "after", args)
    assert [r["run_id"] for r in _rows(tmp_path)] == ["after"]
    again = trainer_cli(args, tmp_path, _env())  # no checkpoint: the run trains again from step 0
    assert again.returncode == 0, again.stderr
    assert _status(tmp_path) == "FINISHED"
    assert [r["run_id"] for r in _rows(tmp_path)] == ["after"]


def test_killed_before_the_append_writes_the_row_on_restart(tmp_path: Path):
    args = [*TINY, "run_id=before", "save_final=true"]
    _killed_run(tmp_path, "before", args)
    assert _rows(tmp_path) == []
    assert torch.load(tmp_path / "out" / "checkpoints" / "before" / "latest.pt", weights_only=False)["step"] == 8
    again = trainer_cli(args, tmp_path, _env())  # resumes at the last step: nothing left to train
    assert again.returncode == 0, again.stderr
    assert _status(tmp_path) == "FINISHED"
    (row,) = _rows(tmp_path)
    summary = json.loads((tmp_path / "out" / "track" / "summary.json").read_text())
    assert row["run_id"] == "before" and float(row["final_val_loss"]) == round(summary["final_val_loss"], 6)


def test_a_last_line_without_newline_keeps_its_row(tmp_path: Path):
    path = tmp_path / "results.csv"
    path.write_text(",".join(RESULTS_COLUMNS) + "\nold-run,2026-01-01,abc,0")  # a hand edit, no newline
    append_result(path, {"run_id": "new-run", "seed": 1, "notes": "n"})
    rows = list(csv.DictReader(path.open(newline="")))
    assert [(r["run_id"], r["seed"]) for r in rows] == [("old-run", "0"), ("new-run", "1")]
    append_result(path, {"run_id": "new-run", "seed": 1, "notes": "n"})  # once per run_id
    assert len(list(csv.DictReader(path.open(newline="")))) == 2


# ---------------------------------------------------------------- read-only directories
def _read_only_run(cwd: Path, directory: str, args: list[str]) -> tuple[int, list[str]]:
    write_data(cwd)
    cmd = " ".join([PYTHON, "-m", "trainer", *args])
    res = in_namespace(f"read_only {directory}\n{cmd} > out.txt 2> err.txt; echo $? > rc", cwd=cwd, env=_env())
    assert res.returncode == 0, res.stderr
    return int((cwd / "rc").read_text()), (cwd / "err.txt").read_text().splitlines()


def test_read_only_experiments_is_one_line_before_training(tmp_path: Path):
    rc, err = _read_only_run(tmp_path, "experiments", [*TINY, "run_id=ro"])
    assert rc == 2 and len(err) == 1, err
    assert err[0] == ("error: results_csv='experiments/results.csv': experiments is on a read-only filesystem; make "
                      "it writable or point results_csv elsewhere inside the project, then run again")
    assert not (tmp_path / "out").exists()  # refused before any record, log or checkpoint


def test_read_only_runs_is_one_line(tmp_path: Path):
    rc, err = _read_only_run(tmp_path, "runs", [*TINY, "run_id=ro", "out_dir=runs/spec/trial"])
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("error: out_dir='runs/spec/trial': runs is on a read-only filesystem; make it writable")


# ---------------------------------------------------------------- damaged checkpoints and records
def test_truncated_latest_is_one_line_and_the_trial_is_not_left_running(tmp_path: Path):
    write_data(tmp_path)
    args = [*TINY, "run_id=cut", "num_iterations=10", "checkpoint_every=4"]
    assert trainer_cli(args, tmp_path, _env()).returncode == 0
    latest = tmp_path / "out" / "checkpoints" / "cut" / "latest.pt"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])  # an interrupted copy
    res = trainer_cli(args, tmp_path, _env())
    err = res.stderr.splitlines()
    assert res.returncode == 2 and len(err) == 1, res.stderr[-3000:]
    assert err[0].startswith("error: out/checkpoints/cut/latest.pt: unreadable checkpoint (latest.pt: ")
    assert err[0].endswith("restore it, or delete out/checkpoints/cut to start run_id cut over")
    assert _status(tmp_path) == "FAILED"


def test_a_truncated_latest_falls_back_to_the_history(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    for step in (2, 4):
        checkpoint.save(tmp_path, {"step": step, "x": torch.full((1000,), float(step))}, keep_history=True)
    (tmp_path / "latest.pt").write_bytes((tmp_path / "latest.pt").read_bytes()[:100])
    state = checkpoint.load_latest(tmp_path)
    assert state is not None and state["step"] == 4 and torch.equal(state["x"], torch.full((1000,), 4.0))
    assert "latest.pt is unreadable" in caplog.text and "resuming from state_step000004.pt (step 4)" in caplog.text


@pytest.mark.parametrize("content", ["", '{"status": "RUNN', "[1, 2]"])
def test_a_tracker_starts_on_a_corrupt_status_file(tmp_path: Path, content: str, caplog: pytest.LogCaptureFixture):
    (tmp_path / "status.json").write_text(content)
    tracker = LocalTracker(tmp_path)
    assert tracker.status() == "RUNNING"
    tracker.finish("FINISHED")
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "FINISHED"
    assert f"{tmp_path / 'status.json'} is corrupt" in caplog.text


def test_a_trainer_starts_on_an_empty_mlflow_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture):
    """track/mlflow.json (the delivery state) emptied: the trainer starts; its run is found again by
    `gatesweep sync` (see below), so nothing is lost."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "mlflow.json").write_text("")
    tracker = make_tracker(tmp_path)
    tracker.log_metrics({"val_loss": 3.0}, 0)
    tracker.finish("FINISHED")
    assert f"{tmp_path / 'mlflow.json'} is corrupt" in caplog.text


@pytest.mark.mlflow
def test_a_corrupt_record_affects_only_its_trial(tmp_path: Path, mlflow_server):
    """One trial's status.json cut short and its mlflow.json emptied; another trial to rerun. The rerun
    used to stop at the first trial with JSONDecodeError, for the whole spec."""
    write_data(tmp_path)
    name = unique("corrupt")
    write_spec(tmp_path / "spec.yaml", name, base={"num_iterations": 10}, seeds=[0])
    env = cli_env(mlflow_server.uri)
    assert gatesweep(["run", "spec.yaml"], tmp_path, env).returncode == 0
    a, b = trial_dirs(tmp_path, name)
    (a / "track" / "status.json").write_text('{"status": "FINI')
    (a / "track" / "mlflow.json").write_text("")
    (b / "track" / "status.json").write_text(json.dumps({"status": "FAILED", "reason": "test", "time": 0}))

    rerun = gatesweep(["run", "spec.yaml"], tmp_path, env)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"{Path('runs') / name / a.name / 'track' / 'status.json'} is corrupt" in rerun.stderr
    assert json.loads((b / "track" / "status.json").read_text())["status"] == "FINISHED"
    status = gatesweep(["status", "spec.yaml"], tmp_path, env)
    assert status.returncode == 0 and "FINISHED: 2" in status.stdout, status.stdout + status.stderr
    sync = gatesweep(["sync", "runs"], tmp_path, env)
    assert sync.returncode == 0, sync.stdout + sync.stderr
    runs = experiment_runs(mlflow_server.uri, f"gs-{name}", "trial")
    assert len(runs) == 2  # the emptied mlflow.json found its run again: no duplicate
    run_a = json.loads((a / "track" / "mlflow.json").read_text())["run_id"]
    assert run_a in {r.info.run_id for r in runs}
    assert point_diff(mlflow_points(mlflow_server.uri, run_a), local_points(a / "track")) == ([], [])
