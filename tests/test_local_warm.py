"""The local launcher's warm trainer (cluster/local/warm.py): single-process trials forked from one
process that has imported torch. A forked trial must compute exactly what a fresh process computes,
skip the imports, and stay as killable as before; when the warm process dies mid-sweep, the trial it
ran stops cleanly (resumable) and the rest start as fresh processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.measure import parse_first_step
from cluster.local.warm import PER_TRIAL_ENV, first_trial_waits, same_start_env
from tests.sweep_helpers import (
    cli_env,
    gatesweep,
    gatesweep_popen,
    last_logged_step,
    local_status,
    trainers,
    trial_dirs,
    unique,
    wait_until,
    write_data,
    write_spec,
)


def _import_torch_s(run_dir: Path) -> float:
    line = next(ln for ln in (run_dir / "stdout.log").read_text().splitlines() if "first step done" in ln)
    return parse_first_step(line)["phases"]["import torch"]


def _final(run_dir: Path) -> dict:
    return json.loads((run_dir / "track" / "summary.json").read_text())


def test_only_variables_read_after_start_may_differ_between_warm_process_and_trial():
    base = {"PATH": "/usr/bin", "OMP_NUM_THREADS": "1", "TORCHINDUCTOR_CACHE_DIR": "/c/inductor"}
    per_trial = {"CUDA_VISIBLE_DEVICES": "3", "GATESWEEP_TRACKING": "mlflow", "GATESWEEP_SYNC_TIMEOUT": "0"}
    assert set(per_trial) <= PER_TRIAL_ENV
    assert same_start_env(base, base | per_trial)
    assert not same_start_env(base, base | {"TORCHINDUCTOR_CACHE_DIR": "/other"})  # read at import
    assert not same_start_env(base, {k: v for k, v in base.items() if k != "OMP_NUM_THREADS"})
    assert not same_start_env(base, base | {"TORCH_LOGS": "dynamo"})


def test_forked_trials_skip_the_imports_and_match_fresh_processes_bit_for_bit(tmp_path: Path):
    write_data(tmp_path)
    base = {"num_iterations": 12, "val_every": 6, "warmdown_iters": 4}
    warm, fresh = unique("warm"), unique("fresh")
    write_spec(tmp_path / "warm.yaml", warm, base=base, max_parallel=2)
    write_spec(tmp_path / "fresh.yaml", fresh, base=base, max_parallel=2)
    spec = (tmp_path / "fresh.yaml").read_text().replace("max_parallel: 2", "max_parallel: 2\n    warm_start: false")
    (tmp_path / "fresh.yaml").write_text(spec)
    for name in ("warm", "fresh"):
        res = gatesweep(["run", f"{name}.yaml"], tmp_path, cli_env())
        assert res.returncode == 0, res.stdout + res.stderr
    warm_dirs, fresh_dirs = trial_dirs(tmp_path, warm), trial_dirs(tmp_path, fresh)
    assert [d.name for d in warm_dirs] == [d.name for d in fresh_dirs] and len(warm_dirs) == 4
    for w, f in zip(warm_dirs, fresh_dirs):
        assert local_status(w)["status"] == local_status(f)["status"] == "FINISHED"
        assert _final(w)["final_val_loss"] == _final(f)["final_val_loss"]  # the same bits
        points = [json.loads(ln) for ln in (w / "track" / "metrics.jsonl").read_text().splitlines()]
        assert sorted(p["step"] for p in points if p["key"] == "train_loss") == list(range(1, 13))
        assert _import_torch_s(f) > 0.3  # a fresh process imports torch ...
        assert _import_torch_s(w) < 0.05  # ... a forked one found it imported (the launcher waits for the warm one)


def test_a_dead_warm_process_stops_its_trial_cleanly_and_the_rest_start_fresh(tmp_path: Path):
    name = unique("warmdies")
    write_data(tmp_path)
    write_spec(tmp_path / "spec.yaml", name, base={"num_iterations": 400, "val_every": 0, "checkpoint_every": 5},
               grid={"attn_gate": ["none"]}, seeds=[0, 1, 2, 3], max_parallel=1)
    proc = gatesweep_popen(["run", "spec.yaml"], tmp_path, cli_env())

    def forked_and_training() -> tuple[int, str, int] | None:  # (trainer pid, trial id, its parent)
        for pid, trial in trainers(proc.pid).items():
            parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            if parent != proc.pid and last_logged_step(tmp_path / "runs" / name / trial) >= 10:
                return pid, trial, parent
        return None

    try:
        _, trial, warm = wait_until(forked_and_training, 180, "a forked trial to train 10 steps")
        os.kill(warm, signal.SIGKILL)
        killed_at = time.time()
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out + err  # one trial did not finish ...
    st = local_status(tmp_path / "runs" / name / trial)
    assert st["status"] == "KILLED" and "checkpoint saved" in st["reason"], st  # ... it stopped on SIGTERM
    others = [d for d in trial_dirs(tmp_path, name) if d.name != trial]
    assert len(others) == 3 and all(local_status(d)["status"] == "FINISHED" for d in others)
    later = [d for d in others if (d / "trial.json").stat().st_mtime > killed_at]
    assert later and all(_import_torch_s(d) > 0.3 for d in later)  # started as fresh processes
    res = gatesweep(["run", "spec.yaml"], tmp_path, cli_env())  # and a rerun resumes the stopped one
    assert res.returncode == 0, res.stdout + res.stderr
    log = (tmp_path / "runs" / name / trial / "logs" / f"{trial}.txt").read_text()
    assert "resumed from step" in log
    assert local_status(tmp_path / "runs" / name / trial)["status"] == "FINISHED"


def test_the_first_trial_starts_fresh_at_once_only_on_a_gpu_machine_with_cores_to_spare():
    # an H200 machine (16 cores): the first trial's imports overlap the warm process's instead of waiting ~14 s
    assert first_trial_waits(use_gpus=True, cpus=16) is False
    # CPU trials, or a GPU machine with few cores: the two would share the cores, so the launcher waits
    assert first_trial_waits(use_gpus=False, cpus=16) is True
    assert first_trial_waits(use_gpus=True, cpus=2) is True
    assert first_trial_waits(use_gpus=True, cpus=None) is True


def test_a_process_with_threads_is_unsafe_to_fork_and_the_reason_names_its_threads():
    code = ("import threading, time\n"
            "from cluster.local.warm import _unsafe_to_fork\n"
            "assert _unsafe_to_fork() == '', _unsafe_to_fork()\n"
            "ev = threading.Event(); t = threading.Thread(target=ev.wait); t.start()\n"
            "print(_unsafe_to_fork()); ev.set(); t.join()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    why = out.stdout.strip()
    assert why.startswith("2 threads after imports (")
    names = why[why.index("(") + 1:why.rindex(")")].split(", ")
    assert len(names) == 2 and all(names)
