"""A full disk under the tracking record, and torn metric lines (issue #16, item 4).

- The trainer's track/ sits on a real 24 KiB tmpfs (a private mount namespace, tests/fs_helpers.py):
  the kernel's ENOSPC arrives part-way through a metrics write. The run must end with one line on
  stderr (exit 2), status FAILED (not RUNNING), no torn line and no temp file; once space is back it
  resumes from its checkpoint and finishes, and the real `gatesweep sync` delivers every point.
- A record damaged by such a write (a torn line, a line merged into it, a torn tail) is synced anyway:
  every whole point reaches the real MLflow server, the fragment is reported, nothing blocks.
- A tracker opened on a record with a torn tail cuts it, so the next line does not merge into it.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.fs_helpers import in_namespace
from tests.sweep_helpers import (
    METRIC_KEYS,
    PYTHON,
    cli_env,
    gatesweep,
    local_points,
    mlflow_points,
    point_diff,
    trainer_cli,
    write_data,
)
from trainer.tracking import LocalTracker

TINY = ["preset=tiny", "vocab_size=64", "n_embd=32", "n_head=2", "sequence_length=32", "batch_size=4",
        "device_batch_size=4", "val_tokens=256", "warmdown_iters=20", "train_files=data/train_*.bin",
        "val_files=data/val_*.bin", "out_dir=out", "device=cpu", "compile=off"]


def _env() -> dict[str, str]:
    return cli_env(GATESWEEP_TRACKING="local")


@pytest.mark.mlflow
def test_full_disk_is_one_line_then_the_run_resumes_and_syncs(tmp_path: Path, mlflow_server):
    write_data(tmp_path)
    run_id = f"disk-{uuid.uuid4().hex[:8]}"
    cmd = " ".join([PYTHON, "-m", "trainer", *TINY, "num_iterations=300", "val_every=50", "checkpoint_every=20",
                    f"run_id={run_id}"])
    script = f"""
small_fs out/track 24k
{cmd} > first.out 2> first.err; echo $? > first.rc
cp -a out/track full
mount -o remount,size=8m out/track
{cmd} > second.out 2> second.err; echo $? > second.rc
cp -a out/track track
"""
    res = in_namespace(script, cwd=tmp_path, env=_env())
    assert res.returncode == 0, res.stderr
    # the trainer's INFO log lines (first step, ...) go to stderr too; the failure itself is one line
    err = [line for line in (tmp_path / "first.err").read_text().splitlines() if not line.startswith("INFO ")]
    assert (tmp_path / "first.rc").read_text().strip() == "2", err
    assert len(err) == 1 and err[0].startswith("error: out/track/metrics.jsonl: No space left on device"), err
    assert "run again: the run resumes from its last checkpoint" in err[0]
    full = tmp_path / "full"
    status = json.loads((full / "status.json").read_text())
    assert status["status"] == "FAILED" and "No space left on device" in status["reason"]
    data = (full / "metrics.jsonl").read_bytes()
    assert data.endswith(b"\n") and all(json.loads(line) for line in data.splitlines())  # no torn line
    assert not [p.name for p in full.rglob("*.tmp")]
    # space is back: the same command resumes from the last checkpoint and finishes
    assert (tmp_path / "second.rc").read_text().strip() == "0", (tmp_path / "second.err").read_text()
    track = tmp_path / "track"
    assert json.loads((track / "status.json").read_text())["status"] == "FINISHED"
    assert "resumed from step" in (tmp_path / "out" / "logs" / f"{run_id}.txt").read_text()
    sync = gatesweep(["sync", "track"], tmp_path, cli_env(mlflow_server.uri))
    assert sync.returncode == 0, sync.stdout + sync.stderr
    mlflow_run = json.loads((track / "mlflow.json").read_text())["run_id"]
    assert point_diff(mlflow_points(mlflow_server.uri, mlflow_run), local_points(track)) == ([], [])


def _finished_record(cwd: Path, run_id: str) -> Path:
    write_data(cwd)
    res = trainer_cli([*TINY, "num_iterations=20", "val_every=5", f"run_id={run_id}"], cwd, _env())
    assert res.returncode == 0, res.stderr
    return cwd / "out" / "track"


@pytest.mark.mlflow
def test_torn_metric_lines_are_synced_around(tmp_path: Path, mlflow_server):
    """The record of the issue: a point cut short by a full disk (`{"key": "tr`), the next point appended
    right after it on one line, and a torn last line. `gatesweep sync` used to fail with JSONDecodeError
    on every attempt, leaving the MLflow run with a part of its points."""
    track = _finished_record(tmp_path, f"torn-{uuid.uuid4().hex[:8]}")
    lines = (track / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    m = len(lines) // 3
    torn = lines[m][: len(lines[m]) // 2]
    damaged = b"".join(lines[:m]) + torn + b"".join(lines[m + 1:]) + lines[-1][:10]
    (track / "metrics.jsonl").write_bytes(damaged)
    want = [(p["key"], p["step"], p["value"], p["ts"]) for p in map(json.loads, lines[:m] + lines[m + 1:])
            if p["key"] in METRIC_KEYS]

    sync = gatesweep(["sync", str(track)], tmp_path, cli_env(mlflow_server.uri))
    assert sync.returncode == 0, sync.stdout + sync.stderr
    assert "1 damaged line(s)" in sync.stderr and "every whole point is delivered" in sync.stderr
    mlflow_run = json.loads((track / "mlflow.json").read_text())["run_id"]
    assert point_diff(mlflow_points(mlflow_server.uri, mlflow_run), want) == ([], [])
    from tests.sweep_helpers import client

    assert client(mlflow_server.uri).get_run(mlflow_run).info.status == "FINISHED"
    again = gatesweep(["sync", str(track)], tmp_path, cli_env(mlflow_server.uri))  # the torn tail is not "pending"
    assert again.returncode == 0 and "0 record(s) delivered, 0 failed, 1 already up to date" in again.stdout


def test_a_tracker_cuts_a_torn_tail_before_appending(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """A run resumed on a record whose last write was cut short (a full disk, a crash) used to append
    its next point to the fragment: `{"key": "lr", "va{"key": "val_loss", ...}`."""
    whole = json.dumps({"key": "lr", "value": 0.1, "step": 1, "ts": 1}) + "\n"
    (tmp_path / "metrics.jsonl").write_text(whole + '{"key": "lr", "va')
    tracker = LocalTracker(tmp_path)
    tracker.log_metrics({"val_loss": 3.5}, 2)
    tracker.finish("FINISHED")
    points = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(p["key"], p["step"]) for p in points] == [("lr", 1), ("val_loss", 2)]
    assert "dropped a torn last line (17 bytes)" in caplog.text
