"""A disk that fills up while a sweep runs and a checkpoint is written (issue #25 item 9): the trial
ended FAILED with torch's raw "RuntimeError: ... unexpected pos" as its reason, and because the full disk
also refused the delivery's progress file (track/mlflow.json), the launcher took the sqlite store for an
unreachable server: its MLflow run stayed QUEUED/RUNNING with a misleading "MLflow unreachable" warning.

Now: the reason says what is full and what to do; a delivery whose progress file cannot be written
still delivers (the run ends FAILED in MLflow, with that reason); a file store is never "unreachable".
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.fs_helpers import in_namespace
from tests.sweep_helpers import (
    PYTHON,
    cli_env,
    experiment_runs,
    trainer_cli,
    unique,
    write_data,
    write_spec,
)

TINY = ["preset=tiny", "vocab_size=64", "n_embd=32", "n_head=2", "sequence_length=32", "batch_size=4",
        "device_batch_size=4", "val_tokens=256", "warmdown_iters=2", "train_files=data/train_*.bin",
        "val_files=data/val_*.bin", "out_dir=out", "device=cpu", "compile=off"]


def test_a_disk_full_at_a_checkpoint_fails_the_trial_with_its_reason_and_mlflow_says_so(tmp_path: Path):
    name = unique("fullckpt")
    write_data(tmp_path)
    # no metric line or log line between the first step and the checkpoint at step 1000: the checkpoint is
    # the first write to meet the full disk
    write_spec(tmp_path / "spec.yaml", name, base={"num_iterations": 3000, "warmdown_iters": 20, "val_every": 0,
                                                   "log_every": 100_000, "checkpoint_every": 1000},
               grid={"attn_gate": ["none"]}, seeds=[0])
    script = f"""
small_fs runs 4m
{PYTHON} -m gatesweep run spec.yaml > out.txt 2> err.txt & pid=$!
for i in $(seq 1500); do grep -qs "first step done" runs/{name}/*/stdout.log && break; sleep 0.2; done
dd if=/dev/zero of=runs/filler bs=16k 2> /dev/null || true
wait $pid; echo $? > rc
rm runs/filler; cp -a runs/{name} saved
"""
    res = in_namespace(script, cwd=tmp_path, env=cli_env(), timeout=600)
    assert res.returncode == 0, res.stderr
    out, err = (tmp_path / "out.txt").read_text(), (tmp_path / "err.txt").read_text()
    assert int((tmp_path / "rc").read_text()) == 1, out + err  # a failed trial
    (trial,) = [p for p in (tmp_path / "saved").iterdir() if p.is_dir() and not p.name.startswith(".")]
    status = json.loads((trial / "track" / "status.json").read_text())
    assert status["status"] == "FAILED", status
    assert "No space left on device; free space or make it writable" in status["reason"], status
    assert "checkpoints" in status["reason"] and "RuntimeError" not in status["reason"], status
    assert "unreachable" not in err, err
    (run,) = experiment_runs(f"sqlite:///{tmp_path}/mlflow.db", f"gs-{name}", "trial")
    assert (run.info.status, run.data.tags["status"]) == ("FAILED", "FAILED"), (run.info.status, run.data.tags)
    assert run.data.tags["failure_reason"] == status["reason"]


def test_a_delivery_whose_progress_cannot_be_saved_still_delivers(tmp_path: Path):
    """track/ read-only (EROFS: the delivery's progress file cannot be written): `gatesweep sync` delivers
    every point and the end status anyway, says what could not be saved, and a second sync (progress
    unsaved) sends it again without a second copy in MLflow."""
    write_data(tmp_path)
    res = trainer_cli([*TINY, "num_iterations=20", "val_every=10", "run_id=ro"], tmp_path,
                      cli_env(GATESWEEP_TRACKING="local"))
    assert res.returncode == 0, res.stdout + res.stderr
    sync = f"{PYTHON} -m gatesweep sync out/track"
    script = f"read_only out/track\n{sync} > s1.out 2> s1.err; echo $? > s1.rc\n{sync} > s2.out 2> s2.err; echo $? > s2.rc\n"
    res = in_namespace(script, cwd=tmp_path, env=cli_env(), timeout=300)
    assert res.returncode == 0, res.stderr
    for n in ("s1", "s2"):
        assert int((tmp_path / f"{n}.rc").read_text()) == 0, (tmp_path / f"{n}.err").read_text()
        assert "sync: 1 record(s) delivered" in (tmp_path / f"{n}.out").read_text()
        assert "the delivery's progress could not be saved" in (tmp_path / f"{n}.err").read_text()
    assert not (tmp_path / "out" / "track" / "mlflow.json").exists()
    from tests.sweep_helpers import client, local_points, mlflow_points, point_diff

    store = client(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = store.search_runs([e.experiment_id for e in store.search_experiments()])
    assert (run.info.status, run.data.tags["status"]) == ("FINISHED", "FINISHED")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert point_diff(mlflow_points(uri, run.info.run_id), local_points(tmp_path / "out" / "track")) == ([], [])
