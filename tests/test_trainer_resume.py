"""Preemption and exact resume: a trainer process stopped by SIGTERM saves a checkpoint at the next
step boundary and exits 75; started again with the same run_id and out_dir it continues and ends
bit for bit where an uninterrupted run ends. Checkpoint writes are atomic."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.trainer_helpers import (
    PYTHON,
    REPO,
    assert_state_equal,
    ckpt_model,
    cli_args,
    data_cfg,
    finish,
    python_trainer,
    single_env,
    torchrun_trainer,
    trainer_env,
    wait_for_line,
)
from trainer import checkpoint
from trainer.errors import ConfigError
from trainer.loop import train
from trainer.tracking import NullTracker

STEP_LINE = re.compile(r"^step:(\d+)/(\d+) (train_loss|val_loss):(\S+) ")


def losses(log: Path) -> list[tuple[int, str, str]]:
    """(step, kind, loss) of every step line: timing varies between runs, losses must not."""
    return [(int(m[1]), m[3], m[4]) for ln in log.read_text().splitlines() if (m := STEP_LINE.match(ln))]


def summary(out_dir: str) -> dict:
    return json.loads((Path(out_dir) / "track" / "summary.json").read_text())


def interrupt_and_resume(cfg, start, kill, at_step: int) -> tuple[int, int, str]:
    """Start, stop after the log shows train step `at_step`, start again. Returns (rc of the
    interrupted attempt, checkpoint step it saved, output of the resumed attempt)."""
    log = Path(cfg.run.out_dir) / "logs" / f"{cfg.run.run_id}.txt"
    proc = start()
    wait_for_line(log, f"step:{at_step}/{cfg.run.num_iterations} train_loss", proc)
    kill(proc)
    rc, out = finish(proc)
    ckpt_dir = Path(cfg.run.out_dir) / "checkpoints" / cfg.run.run_id
    # no temp files left behind; latest.json is the config sidecar a restart checks first
    assert sorted(os.listdir(ckpt_dir)) == ["latest.json", "latest.pt"], os.listdir(ckpt_dir)
    saved = torch.load(ckpt_dir / "latest.pt", weights_only=False)["step"]
    assert at_step <= saved < cfg.run.num_iterations, (saved, out[-2000:])
    status = json.loads((Path(cfg.run.out_dir) / "track" / "status.json").read_text())
    assert status["status"] == "KILLED" and f"at step {saved}" in status["reason"]
    assert not Path(cfg.run.results_csv).exists()  # a killed attempt is not a result
    rc2, out2 = finish(start())
    assert rc2 == 0, out2[-3000:]
    assert f"resumed from step {saved}" in log.read_text()
    return rc, saved, out2


def test_sigterm_then_restart_is_bitwise_an_uninterrupted_run(tmp_path: Path):
    common = dict(num_iterations=40, warmdown_iters=10, val_every=10, save_final=True, attn_gate="headwise")
    ref = data_cfg(tmp_path / "ref", **common)
    cfg = data_cfg(tmp_path / "cut", **common)
    ref_proc = python_trainer(cli_args(ref))  # runs alongside the interrupted one (2 cores)
    rc, saved, _ = interrupt_and_resume(cfg, lambda: python_trainer(cli_args(cfg)),
                                        lambda p: p.send_signal(signal.SIGTERM), at_step=5)
    assert rc == 75
    ref_rc, ref_out = finish(ref_proc)
    assert ref_rc == 0, ref_out[-3000:]
    assert_state_equal(ckpt_model(cfg.run.out_dir, "run"), ckpt_model(ref.run.out_dir, "run"))
    assert summary(cfg.run.out_dir)["final_val_loss"] == summary(ref.run.out_dir)["final_val_loss"]
    # every logged loss, before and after the interruption, is the uninterrupted run's
    assert losses(Path(cfg.run.out_dir) / "logs" / "run.txt") == losses(Path(ref.run.out_dir) / "logs" / "run.txt")
    assert (Path(cfg.run.out_dir) / "curve.csv").read_text() == (Path(ref.run.out_dir) / "curve.csv").read_text()
    assert len(Path(cfg.run.results_csv).read_text().splitlines()) == 2  # header + the finished attempt


def test_hard_kill_resumes_bitwise_from_the_last_periodic_checkpoint(tmp_path: Path):
    """SIGKILL (node failure, OOM killer) gives no chance to save: the restart continues from the
    last checkpoint_every checkpoint, trains the lost steps again with the same losses, and ends
    bitwise where the uninterrupted run ends (checkpoint_every does not change the math)."""
    common = dict(num_iterations=30, warmdown_iters=8, val_every=10, save_final=True)
    ref = data_cfg(tmp_path / "ref", **common)
    cfg = data_cfg(tmp_path / "cut", checkpoint_every=4, **common)
    ref_proc = python_trainer(cli_args(ref))
    log = Path(cfg.run.out_dir) / "logs" / "run.txt"
    proc = python_trainer(cli_args(cfg))
    wait_for_line(log, "step:10/30 train_loss", proc)
    proc.kill()
    proc.wait()
    saved = torch.load(Path(cfg.run.out_dir) / "checkpoints" / "run" / "latest.pt", weights_only=False)["step"]
    assert saved % 4 == 0 and 8 <= saved < 30
    rc, out = finish(python_trainer(cli_args(cfg)))
    assert rc == 0, out[-3000:]
    ref_rc, ref_out = finish(ref_proc)
    assert ref_rc == 0, ref_out[-3000:]
    assert_state_equal(ckpt_model(cfg.run.out_dir, "run"), ckpt_model(ref.run.out_dir, "run"))
    cut, want = losses(log), losses(Path(ref.run.out_dir) / "logs" / "run.txt")
    first = {}
    for step, kind, loss in cut:  # steps after `saved` appear twice: killed attempt and restart
        assert first.setdefault((step, kind), loss) == loss, (step, kind)
    assert sorted(first.items()) == sorted(((s, k), v) for s, k, v in want)
    assert summary(cfg.run.out_dir)["final_val_loss"] == summary(ref.run.out_dir)["final_val_loss"]


def test_two_rank_sigterm_then_restart_is_bitwise_an_uninterrupted_run(tmp_path: Path):
    """Slurm preemption signals every process of the step: SIGTERM to torchrun's process group.
    Muon's momentum buffers live on their owner ranks and go through gather/scatter."""
    common = dict(num_iterations=30, warmdown_iters=8, val_every=10, save_final=True)
    ref = data_cfg(tmp_path / "ref", **common)
    cfg = data_cfg(tmp_path / "cut", **common)
    rc, saved, _ = interrupt_and_resume(
        cfg, lambda: torchrun_trainer(cli_args(cfg), start_new_session=True),
        lambda p: os.killpg(p.pid, signal.SIGTERM), at_step=4)
    ref_rc, ref_out = finish(torchrun_trainer(cli_args(ref)), timeout=240)
    assert ref_rc == 0, ref_out[-3000:]
    assert_state_equal(ckpt_model(cfg.run.out_dir, "run"), ckpt_model(ref.run.out_dir, "run"))
    assert summary(cfg.run.out_dir)["final_val_loss"] == summary(ref.run.out_dir)["final_val_loss"]
    assert losses(Path(cfg.run.out_dir) / "logs" / "run.txt") == losses(Path(ref.run.out_dir) / "logs" / "run.txt")


# ---------------------------------------------------------------- atomic checkpoint writes
WRITER = """
import sys, torch
from trainer import checkpoint
for i in range(1, 10_000):
    checkpoint.save(sys.argv[1], {"step": i, "x": torch.full((4_000_000,), float(i))})
"""


def test_killed_writer_never_leaves_a_partial_latest(tmp_path: Path):
    """SIGKILL a process that rewrites a 16 MB checkpoint in a loop until a kill lands mid-write
    (a temp file is left); latest.pt is then still a complete earlier checkpoint, and the next load
    removes the dead writer's temp file."""
    for attempt in range(6):
        d = tmp_path / f"try{attempt}"
        proc = subprocess.Popen([PYTHON, "-c", WRITER, str(d)], cwd=REPO, env=trainer_env())
        deadline = time.monotonic() + 60
        while not (d / "latest.pt").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3 + 0.07 * attempt)
        proc.kill()
        proc.wait()
        orphan = any(p.name.startswith(".latest.pt.tmp") for p in d.iterdir())
        state = checkpoint.load_latest(d)
        assert state is not None
        assert torch.equal(state["x"], torch.full((4_000_000,), float(state["step"])))
        if orphan:  # the kill interrupted a write, latest.pt survived it, and loading removed the orphan
            assert not any(p.name.startswith(".latest.pt.tmp") for p in d.iterdir())
            return
    raise AssertionError("no kill landed during a write in 6 attempts")


def test_failed_save_keeps_the_previous_checkpoint_and_no_temp_file(tmp_path: Path):
    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    checkpoint.save(tmp_path, {"step": 1, "x": torch.ones(3)})
    try:
        checkpoint.save(tmp_path, {"step": 2, "x": torch.zeros(3), "bad": Unpicklable()})
    except RuntimeError:
        pass
    else:
        raise AssertionError("save should have raised")
    assert checkpoint.load_latest(tmp_path)["step"] == 1
    assert checkpoint.sidecar(tmp_path)["step"] == 1  # the sidecar still describes the kept checkpoint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.json", "latest.pt"]


# ---------------------------------------------------------------- what a checkpoint may continue
def _stop_at(step: int):
    """An on_val callback that delivers SIGTERM to this process after validation at `step`."""
    def on_val(s: int, _loss: float) -> bool:
        if s == step:
            os.kill(os.getpid(), signal.SIGTERM)
        return False
    return on_val


def test_checkpoint_resumes_only_the_config_that_wrote_it(tmp_path: Path):
    cfg = data_cfg(tmp_path, num_iterations=8, warmdown_iters=2, val_every=2)
    first = train(cfg, NullTracker(), on_val=_stop_at(2), env=single_env())
    assert (first.status, first.step) == ("KILLED", 2)
    with pytest.raises(ConfigError, match=r"latest\.pt was written with learning_rate=0\.02; now learning_rate=0\.03"):
        train(cfg.override({"learning_rate": 0.03}), NullTracker(), env=single_env())
    # keys that do not change the math (logging, fused kernels) may differ
    again = train(cfg.override({"log_every": 2, "fused_proj": True}), NullTracker(), env=single_env())
    assert (again.status, [s for s, _ in again.val_history]) == ("FINISHED", [0, 2, 4, 6, 8])


def test_restart_with_another_config_is_refused_before_the_record_changes(tmp_path: Path):
    """The CLI refuses a mismatched resume in its preflight (exit 2): the KILLED record of the
    interrupted attempt stays KILLED instead of being rewritten as FAILED."""
    cfg = data_cfg(tmp_path, num_iterations=8, warmdown_iters=2, val_every=2)
    first = train(cfg, NullTracker(), on_val=_stop_at(2), env=single_env())
    assert first.status == "KILLED"
    track = Path(cfg.run.out_dir) / "track"
    track.mkdir(parents=True, exist_ok=True)
    (track / "status.json").write_text(json.dumps({"status": "KILLED", "reason": "stopped", "time": 0}))
    proc = subprocess.run([PYTHON, "-m", "trainer", *cli_args(cfg.override({"learning_rate": 0.03}))],
                          cwd=REPO, env=trainer_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "was written with learning_rate=0.02; now learning_rate=0.03" in proc.stderr
    assert json.loads((track / "status.json").read_text())["status"] == "KILLED"


def test_restart_on_another_world_size_is_refused(tmp_path: Path):
    """The checkpoint's loader position counts micro-batches per rank: another world size cannot
    continue it exactly, so the preflight refuses before anything is written."""
    from trainer.build import preflight
    from trainer.dist import DistEnv

    cfg = data_cfg(tmp_path, num_iterations=8, warmdown_iters=2, val_every=2)
    assert train(cfg, NullTracker(), on_val=_stop_at(2), env=single_env()).status == "KILLED"
    ckpt_dir = Path(cfg.run.out_dir) / "checkpoints" / cfg.run.run_id
    assert checkpoint.sidecar(ckpt_dir)["world_size"] == 1
    with pytest.raises(ConfigError, match=r"written by 1 rank\(s\); this run has 2"):
        preflight(cfg, DistEnv(0, 0, 2, torch.device("cpu")))


def test_restarting_a_finished_run_adds_no_second_results_row(tmp_path: Path):
    cfg = data_cfg(tmp_path, num_iterations=6, warmdown_iters=2, val_every=3, save_final=True)
    assert train(cfg, NullTracker(), env=single_env()).status == "FINISHED"
    again = train(cfg, NullTracker(), env=single_env())
    assert again.status == "FINISHED" and again.final_val_loss == again.val_history[-1][1]
    rows = Path(cfg.run.results_csv).read_text().splitlines()
    assert len(rows) == 2, rows  # header + the one row of the first (and only) training
