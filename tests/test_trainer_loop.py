"""Run outcomes of the training loop: divergence, early stop, exit codes, bad data before any record."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.trainer_helpers import cli_args, data_cfg, run_ranks, tiny_cfg
from trainer.build import Geometry
from trainer.dist import DistEnv, pick_device
from trainer.errors import ConfigError
from trainer.loop import train
from trainer.main import main
from trainer.shards import write_shard
from trainer.signals import StopRequest
from trainer.tracking import NullTracker

# Muon's and AdamW's steps are bounded by the LR, so only an absurd LR overflows the weights:
# 1e30 makes the step-3 forward overflow on CPU (deterministic). The model is not patched.
DIVERGING_LR = "1e30"


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(autouse=True)
def _in_the_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """main() runs where its outputs go: it keeps out_dir and results_csv inside the working directory."""
    monkeypatch.chdir(tmp_path)


def test_nonfinite_loss_fails_the_run_with_exit_1_and_no_result(tmp_path: Path):
    cfg = data_cfg(tmp_path, num_iterations=10, warmdown_iters=2, val_every=5)
    rc = main(cli_args(cfg) + [f"learning_rate={DIVERGING_LR}"])
    assert rc == 1
    status = read_json(tmp_path / "out" / "track" / "status.json")
    assert status["status"] == "FAILED"
    assert status["reason"] == "non-finite loss at step 3"
    assert not (tmp_path / "experiments" / "results.csv").exists()
    log = (tmp_path / "out" / "logs" / "run.txt").read_text().splitlines()
    assert log[-3].startswith("step:3/10 train_loss:") and log[-3].endswith("non-finite loss at step 3")
    assert log[-2] == "non-finite loss at step 3"
    summary = read_json(tmp_path / "out" / "track" / "summary.json")
    assert summary["final_step"] == 2 and np.isnan(summary["final_val_loss"])  # the last step it started


def test_an_update_that_overflows_float32_fails_the_run_as_non_finite(tmp_path: Path):
    """Issue #25: learning_rate=1e38 made AdamW raise "value cannot be converted to type float without
    overflow" (lr / bias correction > float32 max): FAILED with a raw RuntimeError as the reason. Now it
    ends like learning_rate=1e20 does: FAILED, non-finite, exit 1, no result row."""
    cfg = data_cfg(tmp_path, num_iterations=10, warmdown_iters=2, val_every=5)
    rc = main(cli_args(cfg) + ["learning_rate=1e38"])
    assert rc == 1
    status = read_json(tmp_path / "out" / "track" / "status.json")
    assert status["status"] == "FAILED"
    assert status["reason"] == ("non-finite update at step 1: learning_rate=1e+38 overflows the optimizer's "
                                "float32 arithmetic")
    assert not (tmp_path / "experiments" / "results.csv").exists()


def _diverge(rank: int, world: int, cfg) -> tuple[str, str]:
    env = DistEnv(rank=rank, local_rank=rank, world_size=world, device=torch.device("cpu"))
    s = train(cfg, NullTracker(), env=env)
    return s.status, s.reason


def test_nonfinite_loss_stops_every_rank_at_the_same_step(tmp_path: Path):
    """Both ranks stop with FAILED at one step, no rank hangs in a collective. (Weights are identical
    on all ranks, so with real training both ranks' losses turn non-finite at the same step: this
    does not show that the loop's all-reduce of the check is needed - a scan of LRs 1e12-5e19 with a
    rank-local check found no run where the ranks disagreed.)"""
    cfg = data_cfg(tmp_path, num_iterations=10, warmdown_iters=2, learning_rate=float(DIVERGING_LR))
    results = run_ranks(_diverge, cfg, tmp=tmp_path)  # a rank that kept training would hang the other
    assert results == [("FAILED", "non-finite loss at step 3")] * 2


def test_finished_run_exits_0_and_writes_one_result(tmp_path: Path):
    cfg = data_cfg(tmp_path, num_iterations=3, warmdown_iters=1, notes="smoke, 1")
    assert main(cli_args(cfg)) == 0
    lines = (tmp_path / "experiments" / "results.csv").read_text().splitlines()
    assert len(lines) == 2 and lines[1].startswith('"run",') and lines[1].endswith(',"cpu",1,"smoke, 1"')


def test_on_val_callback_stops_early(tmp_path: Path):
    cfg = data_cfg(tmp_path, num_iterations=8, warmdown_iters=2, val_every=2)
    seen: list[int] = []
    s = train(cfg, NullTracker(), on_val=lambda step, loss: seen.append(step) or step == 4,
              env=DistEnv(0, 0, 1, torch.device("cpu")))
    assert (s.status, s.reason, seen) == ("EARLY_STOPPED", "stopped by the scheduler at step 4", [0, 2, 4])
    assert [h[0] for h in s.val_history] == [0, 2, 4] and np.isnan(s.final_val_loss)
    assert not (tmp_path / "experiments" / "results.csv").exists()


@pytest.mark.parametrize("bad", ["vocab", "small"])
def test_bad_data_exits_2_before_any_record(tmp_path: Path, bad: str, capsys: pytest.CaptureFixture):
    cfg = data_cfg(tmp_path, num_iterations=3, warmdown_iters=1)
    shard = Path(sorted(Path(cfg.data.train_files).parent.glob("train_*.bin"))[0])
    write_shard(shard, np.full(3000 if bad == "vocab" else 100, 64 if bad == "vocab" else 1, dtype=np.int64))
    assert main(cli_args(cfg)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {shard}:") and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- stop signals, batch arithmetic, device
def test_stop_request_flags_and_a_second_ctrl_c_interrupts():
    before = signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        env = DistEnv(0, 0, 1, torch.device("cpu"))
        assert not stop.requested(env)
        os.kill(os.getpid(), signal.SIGUSR2)  # Slurm's --signal=USR2@... before the time limit
        assert stop.requested(env) and stop.signal_name == "SIGUSR2"
        os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C only asks for a checkpoint ...
        with pytest.raises(KeyboardInterrupt):  # ... the second one interrupts at once
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored


@pytest.mark.parametrize("over,world,pattern", [
    ({"batch_size": 8, "device_batch_size": 4}, 3, r"batch_size=8 is not divisible by device_batch_size x world "
                                                   r"size = 4 x 3; choose batch_size as a multiple of 12"),
    ({"val_tokens": 300}, 1, r"val_tokens=300 is not divisible by .* = 128; use a multiple of it"),
])
def test_geometry_errors_name_the_fix(over: dict, world: int, pattern: str):
    with pytest.raises(ConfigError, match=pattern):
        Geometry.of(tiny_cfg(**over), world)


def test_geometry_of_the_reference_run():
    from trainer.config import TrainConfig
    assert Geometry.of(TrainConfig(), 8) == Geometry(B=64, T=1024, accum=1, val_steps=20)
    assert Geometry.of(TrainConfig(), 1) == Geometry(B=64, T=1024, accum=8, val_steps=160)


def test_cuda_request_without_cuda_is_a_config_error():
    if torch.cuda.is_available():
        assert pick_device("cuda", 0).type == "cuda"
        return
    with pytest.raises(ConfigError, match="device=cuda but torch.cuda.is_available"):
        pick_device("cuda", 0)
    assert pick_device("auto", 0) == torch.device("cpu")


def test_a_nan_in_an_early_micro_batch_fails_that_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """With gradient accumulation the check covers every micro-batch, not only the last one: a NaN in
    the first micro-batch of step 3 fails step 3 (the model is patched to produce exactly that)."""
    import trainer.loop

    real_build = trainer.loop.build_model
    calls = {"n": 0}

    def build_nan_on_call_5(cfg, device):
        model = real_build(cfg, device)
        forward = model.forward

        def patched(idx, targets):
            calls["n"] += 1
            loss = forward(idx, targets)
            return loss * float("nan") if calls["n"] == 5 else loss  # step 3's first of 2 micro-batches

        model.forward = patched
        return model

    monkeypatch.setattr(trainer.loop, "build_model", build_nan_on_call_5)
    cfg = data_cfg(tmp_path, num_iterations=6, warmdown_iters=2, val_every=0, batch_size=8, device_batch_size=4)
    s = train(cfg, NullTracker(), env=DistEnv(0, 0, 1, torch.device("cpu")))
    assert (s.status, s.reason) == ("FAILED", "non-finite loss at step 3")


def test_runs_started_by_hand_keep_separate_records(tmp_path: Path):
    """Two `python -m trainer` runs in one out_dir (the reference's logs/ and experiments/) get a
    record each under runs/manual/<run_id>/track: nothing merges into one record or one MLflow run."""
    cfg = data_cfg(tmp_path, num_iterations=3, warmdown_iters=1)
    args = cli_args(cfg) + ["run_id="]
    assert main(args) == 0 and main(args) == 0
    records = sorted((tmp_path / "out" / "runs" / "manual").glob("*/track"))
    assert len(records) == 2
    for rec in records:
        assert read_json(rec / "status.json")["status"] == "FINISHED"
        steps = [json.loads(line)["step"] for line in (rec / "metrics.jsonl").read_text().splitlines()
                 if json.loads(line)["key"] == "train_loss"]
        assert steps == [1, 2, 3]  # one run's points only
        assert (tmp_path / "out" / "logs" / f"{rec.parent.name}.txt").is_file()
    assert not (tmp_path / "out" / "track").exists()
