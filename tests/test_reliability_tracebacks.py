"""Tracebacks turned into one-line errors (issue #25): a dangling symlink where a trial's run directory
goes, a bad GATESWEEP_SYNC_TIMEOUT (`abc`; `nan` made the trainer wait forever), a project path holding
both ' and " (MLflow writes it into SQL with repr()), a full disk while `report` writes its figures.
Each: one line naming the thing and the fix, exit 2, nothing half-done."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.fs_helpers import in_namespace
from tests.sweep_helpers import PYTHON, cli_env, gatesweep, trial_dirs, unique, write_data, write_spec
from trainer.errors import ExitCode

TINY = ["preset=tiny", "vocab_size=64", "n_embd=32", "n_head=2", "sequence_length=32", "batch_size=4",
        "device_batch_size=4", "val_tokens=256", "num_iterations=3", "warmdown_iters=1", "val_every=0",
        "train_files=data/train_*.bin", "val_files=data/val_*.bin", "device=cpu", "compile=off"]


def _one_line(res: subprocess.CompletedProcess, start: str) -> str:
    err = res.stderr.splitlines()
    assert res.returncode == ExitCode.BAD_INPUT and len(err) == 1, res.stdout + res.stderr
    assert err[0].startswith(start), err[0]
    return err[0]


def _spec(cwd: Path, **base) -> str:
    name = unique("tb")
    write_data(cwd)
    write_spec(cwd / "spec.yaml", name, base={"num_iterations": 4} | base, grid={"attn_gate": ["none"]}, seeds=[0])
    return name


def test_a_dangling_symlink_as_a_trial_directory(tmp_path: Path):
    name = _spec(tmp_path)
    res = gatesweep(["plan", "spec.yaml", "--json"], tmp_path, cli_env())
    tid = __import__("json").loads(res.stdout)[0]["trial_id"]
    link = tmp_path / "runs" / name / tid
    link.parent.mkdir(parents=True)
    link.symlink_to(tmp_path / "scratch" / "gone")
    res = gatesweep(["run", "spec.yaml"], tmp_path, cli_env())
    line = _one_line(res, f"error: runs/{name}/{tid}: a symlink to {tmp_path}/scratch/gone, which does not exist")
    assert f"rm runs/{name}/{tid}" in line
    assert [p.name for p in (tmp_path / "runs" / name).iterdir()] == [tid]  # nothing else written
    link.unlink()
    res = gatesweep(["run", "spec.yaml"], tmp_path, cli_env())
    assert res.returncode == 0 and [d.name for d in trial_dirs(tmp_path, name)] == [tid], res.stdout + res.stderr


@pytest.mark.parametrize("value", ["abc", "nan", "-1"])
def test_a_bad_sync_timeout_is_one_line_before_anything_runs(tmp_path: Path, value: str):
    """`nan` made a trainer's final delivery wait forever (its deadline never passed)."""
    name = _spec(tmp_path)
    env = cli_env(f"sqlite:///{tmp_path}/mlflow.db", GATESWEEP_SYNC_TIMEOUT=value)
    expect = f"error: environment variable GATESWEEP_SYNC_TIMEOUT='{value}' is not a number of seconds >= 0"
    _one_line(gatesweep(["run", "spec.yaml"], tmp_path, env, timeout=120), expect)
    res = subprocess.run([PYTHON, "-m", "trainer", *TINY, "out_dir=out"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)  # before: `nan` never returned
    _one_line(res, expect)
    assert not (tmp_path / "runs" / name).exists() and not (tmp_path / "out").exists()


def test_a_project_path_with_both_quotes(tmp_path: Path):
    project = tmp_path / "it's \"quoted\""
    project.mkdir()
    _spec(project)
    for args in (["run", "spec.yaml"], ["sync"]):
        res = gatesweep(args, project, cli_env())
        if args == ["sync"]:  # nothing to deliver, so no store is made: fine either way
            assert res.returncode == 0, res.stdout + res.stderr
            continue
        line = _one_line(res, "error: mlflow.db: MLflow cannot create a sqlite store from this directory")
        assert "holds both ' and \"" in line and "MLFLOW_TRACKING_URI" in line
    assert not (project / "mlflow.db").exists() and not (project / "runs").exists()


def test_a_full_disk_while_report_writes_its_figures(tmp_path: Path):
    _spec(tmp_path)
    res = gatesweep(["run", "spec.yaml"], tmp_path, cli_env())
    assert res.returncode == 0, res.stdout + res.stderr
    py = f"{PYTHON} -m gatesweep report spec.yaml --no-attach"
    res = in_namespace(f"small_fs reports 12k\n{py} > out.txt 2> err.txt; echo $? > rc", cwd=tmp_path, env=cli_env())
    assert res.returncode == 0, res.stderr
    err = (tmp_path / "err.txt").read_text().splitlines()
    assert int((tmp_path / "rc").read_text()) == ExitCode.BAD_INPUT and len(err) == 1, err
    assert err[0].startswith("error: reports/") and "No space left on device; free space or make reports/" in err[0]
    assert "or write elsewhere with --out DIR, then run the command again" in err[0], err
