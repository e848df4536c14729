"""Run outcomes of the training loop: divergence, early stop, exit codes, bad data before any record."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.trainer_helpers import cli_args, data_cfg, run_ranks
from trainer.dist import DistEnv
from trainer.loop import train
from trainer.main import main
from trainer.shards import write_shard
from trainer.tracking import NullTracker

# Muon's and AdamW's steps are bounded by the LR, so only an absurd LR overflows the weights:
# 1e30 makes the step-3 forward overflow on CPU (deterministic). The model is not patched.
DIVERGING_LR = "1e30"


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_nonfinite_loss_fails_the_run_with_exit_1_and_no_result(tmp_path: Path):
    cfg = data_cfg(tmp_path, num_iterations=10, warmdown_iters=2, val_every=5)
    rc = main(cli_args(cfg) + [f"learning_rate={DIVERGING_LR}"])
    assert rc == 1
    status = read_json(tmp_path / "out" / "track" / "status.json")
    assert status["status"] == "FAILED"
    assert status["reason"] == "non-finite loss at step 3"
    assert not (tmp_path / "out" / "results.csv").exists()
    log = (tmp_path / "out" / "logs" / "run.txt").read_text().splitlines()
    assert log[-3].startswith("step:3/10 train_loss:") and log[-3].endswith("non-finite loss at step 3")
    assert log[-2] == "non-finite loss at step 3"
    summary = read_json(tmp_path / "out" / "track" / "summary.json")
    assert summary["final_step"] == 2 and np.isnan(summary["final_val_loss"])  # the last step it started


def _diverge(rank: int, world: int, cfg) -> tuple[str, str]:
    env = DistEnv(rank=rank, local_rank=rank, world_size=world, device=torch.device("cpu"))
    s = train(cfg, NullTracker(), env=env)
    return s.status, s.reason


def test_nonfinite_loss_stops_every_rank_at_the_same_step(tmp_path: Path):
    cfg = data_cfg(tmp_path, num_iterations=10, warmdown_iters=2, learning_rate=float(DIVERGING_LR))
    results = run_ranks(_diverge, cfg, tmp=tmp_path)  # a rank that kept training would hang the other
    assert results == [("FAILED", "non-finite loss at step 3")] * 2


def test_finished_run_exits_0_and_writes_one_result(tmp_path: Path):
    cfg = data_cfg(tmp_path, num_iterations=3, warmdown_iters=1, notes="smoke, 1")
    assert main(cli_args(cfg)) == 0
    lines = (tmp_path / "out" / "results.csv").read_text().splitlines()
    assert len(lines) == 2 and lines[1].startswith("run,") and lines[1].endswith(',cpu,1,"smoke, 1"')


def test_on_val_callback_stops_early(tmp_path: Path):
    cfg = data_cfg(tmp_path, num_iterations=8, warmdown_iters=2, val_every=2)
    seen: list[int] = []
    s = train(cfg, NullTracker(), on_val=lambda step, loss: seen.append(step) or step == 4,
              env=DistEnv(0, 0, 1, torch.device("cpu")))
    assert (s.status, s.reason, seen) == ("EARLY_STOPPED", "stopped by the scheduler at step 4", [0, 2, 4])
    assert [h[0] for h in s.val_history] == [0, 2, 4] and np.isnan(s.final_val_loss)
    assert not (tmp_path / "out" / "results.csv").exists()


@pytest.mark.parametrize("bad", ["vocab", "small"])
def test_bad_data_exits_2_before_any_record(tmp_path: Path, bad: str, capsys: pytest.CaptureFixture):
    cfg = data_cfg(tmp_path, num_iterations=3, warmdown_iters=1)
    shard = Path(sorted(Path(cfg.data.train_files).parent.glob("train_*.bin"))[0])
    write_shard(shard, np.full(3000 if bad == "vocab" else 100, 64 if bad == "vocab" else 1, dtype=np.int64))
    assert main(cli_args(cfg)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {shard}:") and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()
