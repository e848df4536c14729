"""Data parallelism: 2 gloo ranks (DDP + distributed Muon) against 1 rank with gradient accumulation,
and the torchrun entry point end to end."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from tests.trainer_helpers import (
    assert_state_equal,
    ckpt_model,
    data_cfg,
    finish,
    run_ranks,
    single_env,
    torchrun_trainer,
)
from trainer.dist import DistEnv
from trainer.loop import train
from trainer.tracking import NullTracker

GATES = ("none", "elementwise")


def _train_ranks(rank: int, world: int, cfgs: list) -> list[str]:
    env = DistEnv(rank=rank, local_rank=rank, world_size=world, device=torch.device("cpu"))
    return [train(c, NullTracker(), env=env).status for c in cfgs]


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Final weights of 6 steps at global batch 8 x 32 tokens: W=2 x accumulation 1 (DDP) and W=1 x
    accumulation 2, plain token order (replay_first_batch=False) so both see the same tokens."""
    tmp = tmp_path_factory.mktemp("ddp")
    cfgs = {g: data_cfg(tmp / g, attn_gate=g, replay_first_batch=False, num_iterations=6, warmdown_iters=3,
                        save_final=True) for g in GATES}
    out: dict = {}
    for g, cfg in cfgs.items():
        one = cfg.override({"out_dir": str(tmp / g / "w1")})
        assert train(one, NullTracker(), env=single_env()).status == "FINISHED"
        out[1, g] = ckpt_model(one.run.out_dir, "run")
    two = [cfg.override({"out_dir": str(tmp / g / "w2")}) for g, cfg in cfgs.items()]
    assert run_ranks(_train_ranks, two, tmp=tmp) == [["FINISHED"] * len(GATES)] * 2
    for g, cfg in zip(GATES, two):
        out[2, g] = ckpt_model(cfg.run.out_dir, "run")
        out["init", g] = _initial(cfg)
    return out


def _initial(cfg) -> dict[str, torch.Tensor]:
    from trainer.build import build_model
    return build_model(cfg, torch.device("cpu")).state_dict()


@pytest.mark.parametrize("gate", GATES)
def test_two_rank_ddp_equals_one_rank_with_accumulation_bitwise(weights: dict, gate: str):
    """DDP averages the two ranks' gradients as (g0 + g1) / 2 exactly like accumulation does (halving
    is exact in fp32), distributed Muon shares bf16 updates through a sum with zeros (exact), so on
    CPU the two setups agree bit for bit."""
    assert_state_equal(weights[2, gate], weights[1, gate])
    moved = [k for k in weights[1, gate] if not torch.equal(weights[1, gate][k], weights["init", gate][k])]
    assert len(moved) == len(weights[1, gate])  # every tensor trained (no vacuous equality)


def test_torchrun_two_ranks_end_to_end(tmp_path: Path):
    cfg = data_cfg(tmp_path)  # writes the shards
    args = ["preset=tiny", "vocab_size=64", "n_embd=32", "sequence_length=32", "batch_size=8", "device_batch_size=4",
            "val_tokens=256", "num_iterations=4", "warmdown_iters=2", "val_every=2",
            f"train_files={cfg.data.train_files}", f"val_files={cfg.data.val_files}",
            f"out_dir={cfg.run.out_dir}", f"results_csv={cfg.run.results_csv}"]
    rc, out = finish(torchrun_trainer(args), timeout=240)
    assert rc == 0, out[-3000:]
    logs = list((tmp_path / "out" / "logs").glob("*.txt"))
    assert len(logs) == 1, logs
    text = logs[0].read_text()
    assert [ln for ln in text.splitlines() if ln.startswith("step:")][-1].startswith("step:4/4 val_loss:")
    with open(tmp_path / "out" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1
    assert rows[0]["n_gpus"] == "2" and rows[0]["run_id"] == logs[0].stem and rows[0]["num_iterations"] == "4"
    assert out.count("FINISHED: final_val_loss=") == 1  # printed by rank 0 only
