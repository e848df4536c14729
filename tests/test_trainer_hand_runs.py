"""Runs started by hand (`gatesweep train ... run_id=X`, issue #24 item 6 and 8): each gets its own
directory runs/manual/<run_id>/ instead of sharing ./track, ./logs and ./checkpoints with every other run
id; a second run id into a record that holds another run's is refused; `gatesweep sync` refuses a record
that two runs wrote into; a resumed run says "resumed from step N" on the console."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from tests.sweep_helpers import PYTHON, cli_env, count_all_runs, gatesweep
from tests.trainer_helpers import data_cfg, single_env, wait_for_line
from trainer import checkpoint
from trainer.loop import train
from trainer.record import read_json
from trainer.tracking import make_tracker


def _args(tmp: Path, run_id: str, **over: object) -> list[str]:
    """A tiny config as key=value words with data under tmp and out_dir/results_csv left at their defaults."""
    cfg = data_cfg(tmp, **over)  # type: ignore[arg-type]
    flat = cfg.flat() | {"run_id": run_id}
    return [f"{k}={v}" for k, v in flat.items() if k not in ("out_dir", "results_csv")]


def _steps(track: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (track / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["key"] == "train_loss"]


def test_each_hand_run_gets_its_own_directory(tmp_path: Path):
    env = cli_env(GATESWEEP_TRACKING="local")
    for run_id, n in (("first", 6), ("second", 3)):
        res = gatesweep(["train", *_args(tmp_path, run_id, num_iterations=n)], tmp_path, env)
        assert res.returncode == 0, res.stderr[-3000:]
    for run_id, n in (("first", 6), ("second", 3)):
        own = tmp_path / "runs" / "manual" / run_id
        assert read_json(own / "track" / "status.json")["status"] == "FINISHED"
        assert _steps(own / "track") == list(range(1, n + 1))  # one run's points, never the other's
        assert (own / "logs" / f"{run_id}.txt").is_file() and (own / "curve.csv").is_file()
    assert not [p.name for p in tmp_path.iterdir() if p.name in ("track", "logs", "checkpoints", "curve.csv")]
    # the study's one results table stays where the reference writes it, one row per run
    assert len((tmp_path / "experiments" / "results.csv").read_text().splitlines()) == 3


def test_a_resumed_hand_run_says_so_on_the_console(tmp_path: Path):
    env = cli_env(GATESWEEP_TRACKING="local")
    args = _args(tmp_path, "long", num_iterations=400, val_every=0, checkpoint_every=0)
    proc = subprocess.Popen([PYTHON, "-m", "gatesweep", "train", *args], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    own = tmp_path / "runs" / "manual" / "long"
    wait_for_line(own / "logs" / "long.txt", "step:3/400 train_loss", proc, timeout=300)
    proc.send_signal(signal.SIGTERM)  # checkpoint at the next step boundary, exit 75
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 75, out[-3000:]
    step = checkpoint.sidecar(own / "checkpoints" / "long")["step"]  # type: ignore[index]
    assert 3 <= step < 400
    res = gatesweep(["train", *args], tmp_path, env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"run long: resumed from step {step} of 400" in res.stderr, res.stderr[-3000:]


def test_a_second_run_id_into_a_chosen_out_dir_is_refused(tmp_path: Path):
    env = cli_env(GATESWEEP_TRACKING="local")
    first = gatesweep(["train", *_args(tmp_path, "a", num_iterations=2), "out_dir=mine"], tmp_path, env)
    assert first.returncode == 0, first.stderr[-3000:]
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "mine").rglob("*"))
    res = gatesweep(["train", *_args(tmp_path, "b", num_iterations=2), "out_dir=mine"], tmp_path, env)
    err = [ln for ln in res.stderr.splitlines() if not ln.startswith("INFO ")]
    assert res.returncode == 2 and len(err) == 1, res.stderr
    assert err[0].startswith("error: out_dir=mine: its record mine/track belongs to run a; run_id=b would merge")
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "mine").rglob("*")) == before


@pytest.mark.mlflow
def test_sync_refuses_a_record_two_runs_wrote_into(tmp_path: Path, mlflow_server, monkeypatch):
    """Two runs of the in-process API given one tracker directory: the record says so, and nothing of
    it reaches MLflow (their train_loss points would interleave in one run)."""
    monkeypatch.setenv("GATESWEEP_TRACKING", "local")
    shared = tmp_path / "shared" / "track"
    for run_id in ("one", "two"):
        cfg = data_cfg(tmp_path, run_id=run_id, num_iterations=3)
        assert train(cfg, make_tracker(shared), env=single_env()).status == "FINISHED"
    before = count_all_runs(mlflow_server.uri)
    res = gatesweep(["sync", str(shared)], tmp_path, cli_env(mlflow_server.uri))
    assert res.returncode == 1, res.stdout + res.stderr
    assert f"failed {shared}: DataError: {shared}: this record holds 2 runs (one, two), not one" in res.stderr
    assert count_all_runs(mlflow_server.uri) == before
