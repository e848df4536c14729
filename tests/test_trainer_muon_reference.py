"""Whole training steps of our trainer against an independent implementation of the reference's
optimizer rules (modded-nanogpt 2024-10-14 ModernArch, ../shared/notes/reference-trainer.md §1(d)),
bitwise, at world sizes 1 and 2 on CPU.

The reference side below is written from the notes, not from trainer/: its Muon applies the bf16
Newton-Schulz output with the scale in the fp32 alpha (`p.data.add_(g, alpha=-lr * scale)`,
scale = sqrt(max(rows, cols))), every rank computes every matrix (the record is not yet
distributed), AdamW on the tied lm_head (non-fused: CPU), one torch LambdaLR per optimizer with the
reference's get_lr, its loader (batch 0 drawn before the model is built, then reset), gradient
accumulation with DDP no_sync and `p.grad /= accumulation`. Only the model (GPT, whose forward is
tested against its own reference in test_trainer_model.py) is shared. Our side is `train()` itself.
"""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP

from tests.trainer_helpers import ckpt_model, data_cfg, run_ranks, single_env
from trainer.config import TrainConfig
from trainer.dist import DistEnv
from trainer.loop import train
from trainer.model import GPT
from trainer.tracking import NullTracker

torch.set_num_threads(1)


# ---------------------------------------------------------------- the reference, from the notes
def ref_zeropower(G: Tensor, steps: int) -> Tensor:
    a, b, c = (3.4445, -4.7750, 2.0315)
    X = G.bfloat16()
    X /= X.norm() + 1e-7
    if G.size(0) > G.size(1):
        X = X.T
    for _ in range(steps):
        A = X @ X.T
        B = A @ X
        X = a * X + b * B + c * A @ B
    if G.size(0) > G.size(1):
        X = X.T
    return X


class RefMuon(torch.optim.Optimizer):
    def __init__(self, params, lr: float, momentum: float = 0.95, steps: int = 5):  # noqa: ANN001
        super().__init__(params, dict(lr=lr, momentum=momentum, steps=steps))

    @torch.no_grad()
    def step(self):  # noqa: ANN201
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(g)
                buf = state["momentum_buffer"]
                buf.mul_(momentum).add_(g)
                g = g.add(buf, alpha=momentum)  # Nesterov
                # the record splits a (3d x d) fused QKV matrix; our blocks have none
                assert g.size(0) != 3 * g.size(1), "the QKV-split branch is not modelled here"
                g = ref_zeropower(g, group["steps"])
                scale = max(g.size(0), g.size(1)) ** 0.5
                p.data.add_(g, alpha=-lr * scale)


class RefLoader:
    """DistributedDataLoader: sorted shards (256 int32 header, uint16 tokens); pos = rank*B*T;
    pos += B*T*W; next shard when pos + B*T*W + 1 > len."""

    def __init__(self, pattern: str, B: int, T: int, rank: int, world: int):
        self.files = sorted(glob.glob(pattern))
        self.B, self.T, self.rank, self.world = B, T, rank, world
        self.reset()

    def _load(self) -> None:
        with open(self.files[self.shard], "rb") as f:
            header = np.frombuffer(f.read(256 * 4), dtype=np.int32)
            self.tokens = np.frombuffer(f.read(), dtype=np.uint16)
        assert header[0] == 20240520 and len(self.tokens) == header[2]

    def reset(self) -> None:
        self.shard, self.pos = 0, self.rank * self.B * self.T
        self._load()

    def next_batch(self) -> tuple[Tensor, Tensor]:
        B, T = self.B, self.T
        buf = torch.tensor(self.tokens[self.pos:self.pos + B * T + 1].astype(np.int32), dtype=torch.long)
        self.pos += B * T * self.world
        if self.pos + B * T * self.world + 1 > len(self.tokens):
            self.shard = (self.shard + 1) % len(self.files)
            self.pos = self.rank * B * T
            self._load()
        return buf[:-1].view(B, T), buf[1:].view(B, T)


def reference_train(cfg: TrainConfig, rank: int = 0, world: int = 1) -> dict[str, Tensor]:
    """The record's training section on CPU (no autocast: our CPU runs are fp32 too)."""
    d, o, N = cfg.data, cfg.optim, cfg.run.num_iterations
    B, T = d.device_batch_size, d.sequence_length
    loader = RefLoader(d.train_files, B, T, rank, world)
    x, y = loader.next_batch()  # drawn before the model exists...
    torch.manual_seed(cfg.run.seed)
    raw = GPT(cfg.model)
    model = DDP(raw) if world > 1 else raw
    accum = d.batch_size // (B * world)
    adam = torch.optim.AdamW(raw.lm_head.parameters(), lr=o.learning_rate, betas=(0.9, 0.95),
                             weight_decay=0.0, fused=False)
    muon = RefMuon(raw.transformer["h"].parameters(), lr=0.1 * o.learning_rate, momentum=0.95)

    def get_lr(it: int) -> float:
        assert it <= N
        if it < o.warmup_iters:
            return (it + 1) / o.warmup_iters
        if it < N - o.warmdown_iters:
            return 1.0
        return (N - it) / o.warmdown_iters

    optimizers = [adam, muon]
    schedulers = [torch.optim.lr_scheduler.LambdaLR(opt, get_lr) for opt in optimizers]
    loader.reset()  # ...and the loader reset: batch 0 is trained twice
    for _ in range(N):
        for i in range(1, accum + 1):
            loss = model(x, y)
            x, y = loader.next_batch()
            if i < accum and world > 1:
                with model.no_sync():  # type: ignore[operator]
                    loss.backward()
            else:
                loss.backward()
        for p in model.parameters():
            assert p.grad is not None
            p.grad /= accum
        for opt, sched in zip(optimizers, schedulers):
            opt.step()
            sched.step()
        model.zero_grad(set_to_none=True)
    return {k: v.detach().clone() for k, v in raw.state_dict().items()}


# ---------------------------------------------------------------- our trainer vs the reference
PLAIN = {"fused_proj": False, "ce_chunks": 1, "muon_batched": False}
# 8 steps: 2 of warmup, 2 constant, 4 of warmdown; batch 8 x 32 tokens of 4-sequence micro-batches
# (accumulation 2 on one rank, 1 on two), a headwise gate so the (n_head x d) gate matrix is in Muon.
STEPS = {"num_iterations": 8, "warmup_iters": 2, "warmdown_iters": 4, "val_every": 0, "save_final": True,
         "attn_gate": "headwise", "train_sizes": (8000, 2000)}


def _cfg(tmp: Path, **over: object) -> TrainConfig:
    return data_cfg(tmp, **{**STEPS, **PLAIN, **over})  # type: ignore[arg-type]


def _diff(a: dict[str, Tensor], b: dict[str, Tensor]) -> str:
    worst = max(a, key=lambda k: float((a[k] - b[k]).abs().max()))
    return f"max |diff| {float((a[worst] - b[worst]).abs().max()):.3g} in {worst}"


def assert_bitwise(ours: dict[str, Tensor], ref: dict[str, Tensor], init: dict[str, Tensor]) -> None:
    assert ours.keys() == ref.keys()
    moved = [k for k in ref if not torch.equal(ref[k], init[k])]
    assert len(moved) == len(ref), "a tensor never trained: the comparison would be vacuous"
    assert all(torch.equal(ours[k], ref[k]) for k in ref), _diff(ours, ref)


def _initial(cfg: TrainConfig) -> dict[str, Tensor]:
    torch.manual_seed(cfg.run.seed)
    return GPT(cfg.model).state_dict()


@pytest.mark.parametrize("batched", [False, True], ids=["plain", "muon_batched"])
def test_one_rank_trains_bitwise_like_the_reference_rule(tmp_path: Path, batched: bool):
    """muon_batched stacks same-shape matrices and puts each (4d x d) c_fc, transposed, beside the
    (d x 4d) c_proj in one batched Newton-Schulz: bitwise the per-matrix result on CPU."""
    cfg = _cfg(tmp_path, muon_batched=batched)
    assert train(cfg, NullTracker(), env=single_env()).status == "FINISHED"
    assert_bitwise(ckpt_model(cfg.run.out_dir, "run"), reference_train(cfg), _initial(cfg))


def _both_on_ranks(rank: int, world: int, cfgs: list[TrainConfig]) -> list[dict[str, Tensor]]:
    env = DistEnv(rank=rank, local_rank=rank, world_size=world, device=torch.device("cpu"))
    refs = []
    for cfg in cfgs:
        assert train(cfg, NullTracker(), env=env).status == "FINISHED"
        refs.append(reference_train(cfg, rank, world))
    return refs


def test_two_ranks_train_bitwise_like_the_reference_rule(tmp_path: Path):
    """Our distributed Muon (owner rank i % 2 computes, one bf16 all-reduce of unscaled updates, every
    rank applies each slice with the scale in alpha) against the reference, which computes every
    matrix on every rank, both under DDP on 2 gloo ranks; plain and batched Newton-Schulz."""
    cfgs = [_cfg(tmp_path / name, muon_batched=batched) for name, batched in (("plain", False), ("batched", True))]
    ranks = run_ranks(_both_on_ranks, cfgs, tmp=tmp_path, timeout=240)
    for i, cfg in enumerate(cfgs):
        ours = ckpt_model(cfg.run.out_dir, "run")
        for refs in ranks:  # every rank of the reference ends with the same weights
            assert_bitwise(ours, refs[i], _initial(cfg))


def test_scaling_the_bf16_update_before_applying_it_is_not_the_reference():
    """The rounding this file guards against: sqrt(max(rows, cols)) * O rounded to bf16 and applied
    with alpha=-lr differs from O applied with alpha=-lr*scale (the DistributedMuon record's way vs
    the ModernArch record's), so a test of the rule can tell the two apart."""
    g = torch.Generator().manual_seed(0)
    p = torch.randn(128, 32, generator=g)
    o = ref_zeropower(torch.randn(128, 32, generator=g), 5)
    lr, scale = 0.0036, 128 ** 0.5
    assert not torch.equal(p.clone().add_(o, alpha=-lr * scale), p.clone().add_(o * scale, alpha=-lr))


def test_reference_rule_is_what_our_muon_applies_to_one_matrix():
    """Direct check without a model: one parameter of each shape kind, five steps of fresh gradients."""
    from trainer.muon import Muon

    g = torch.Generator().manual_seed(4)
    shapes = [(32, 32), (128, 32), (32, 128), (2, 32)]
    ours = [nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    ref = [nn.Parameter(p.detach().clone()) for p in ours]
    a, b = Muon(ours, lr=0.01), RefMuon(ref, lr=0.01)
    for _ in range(5):
        for p, r in zip(ours, ref):
            p.grad = torch.randn(p.shape, generator=g)
            r.grad = p.grad.clone()
        a.step()
        b.step()
    for p, r in zip(ours, ref):
        assert torch.equal(p, r), float((p - r).abs().max())
