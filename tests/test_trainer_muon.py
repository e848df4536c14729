"""Muon: Newton-Schulz orthogonalization, the update rule, parameter routing, and the distributed
version (owner rank i % W computes, one bf16 all-reduce shares) against one process.

`ref_ns5` / `ref_muon_step` are written from the description in reference-trainer.md §1(d): the
ModernArch record applies the bf16 update with the scale in the fp32 alpha (`alpha=-lr * scale`), never
multiplied into the bf16 update. Whole training steps against the reference rule:
test_trainer_muon_reference.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import Tensor, nn

from tests.trainer_helpers import run_ranks, tiny_cfg
from trainer.build import split_params
from trainer.errors import ConfigError
from trainer.model import GPT
from trainer.muon import Muon, newton_schulz5

torch.set_num_threads(1)


def ref_ns5(G: Tensor, steps: int = 5) -> Tensor:
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.bfloat16()
    X = X / (X.norm() + 1e-7)
    tall = G.size(0) > G.size(1)
    if tall:
        X = X.T
    for _ in range(steps):
        A = X @ X.T
        Bm = A @ X
        X = a * X + b * Bm + c * A @ Bm
    return X.T if tall else X


def ref_muon_step(params: list[Tensor], grads: list[Tensor | None], bufs: list[Tensor | None], lr: float,
                  momentum: float = 0.95) -> None:
    for i, (p, g) in enumerate(zip(params, grads)):
        if g is None:
            continue
        if bufs[i] is None:
            bufs[i] = torch.zeros_like(g)
        bufs[i].mul_(momentum).add_(g)
        nesterov = g.add(bufs[i], alpha=momentum)
        p.add_(ref_ns5(nesterov), alpha=-lr * max(g.shape) ** 0.5)


# ---------------------------------------------------------------- Newton-Schulz
@pytest.mark.parametrize("shape", [(48, 48), (16, 96), (96, 16), (6, 96)])
def test_newton_schulz_is_approximately_orthogonal(shape: tuple[int, int]):
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        if shape[0] == shape[1]:
            # a square Gaussian matrix has singular values down to ~1e-3 of its norm, which five NS
            # steps cannot lift (also true of the reference); use a conditioned matrix (kappa = 100)
            U, _ = torch.linalg.qr(torch.randn(*shape, generator=g))
            V, _ = torch.linalg.qr(torch.randn(*shape, generator=g))
            G = U @ torch.diag(torch.logspace(0, -2, shape[0])) @ V.T
        else:
            G = torch.randn(*shape, generator=g)
        orth = newton_schulz5(G)
        assert orth.dtype == torch.bfloat16 and orth.shape == G.shape
        sv = torch.linalg.svdvals(orth.float())
        assert sv.min() > 0.5 and sv.max() < 1.5, sv
        # and it is the orthogonal polar factor's direction, not just any orthogonal matrix
        U, _, Vh = torch.linalg.svd(G, full_matrices=False)
        polar = U @ Vh
        cos = (orth.float() * polar).sum() / (orth.float().norm() * polar.norm())
        assert cos > 0.95


def test_newton_schulz_matches_the_reference_iteration_bitwise_and_batches():
    g = torch.Generator().manual_seed(1)
    mats = [torch.randn(32, 32, generator=g), torch.randn(24, 40, generator=g), torch.randn(40, 24, generator=g)]
    for G in mats:
        assert torch.equal(newton_schulz5(G), ref_ns5(G))
    stack = torch.stack([torch.randn(24, 40, generator=g) for _ in range(3)])
    batched = newton_schulz5(stack)
    assert torch.equal(batched, torch.stack([ref_ns5(m) for m in stack]))


@pytest.mark.parametrize("shape,lo,hi", [((96, 96), 0.8, 1.2), ((96, 384), 0.8, 1.2), ((384, 96), 0.8, 1.2),
                                         ((6, 96), 0.9, 1.3), ((1, 96), 0.6, 0.8)])
def test_update_entry_rms_is_about_lr(shape: tuple[int, int], lo: float, hi: float):
    """The notes: entry RMS ~ lr for square/rectangular matrices, ~1.1 lr for a 6 x d headwise gate,
    ~0.7 lr for a 1 x N vector (rank-1 NS gives 0.696 g/|g|)."""
    lr = 0.02
    p = nn.Parameter(torch.zeros(shape))
    p.grad = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    Muon([p], lr=lr).step()
    ratio = (p.detach().pow(2).mean().sqrt() / lr).item()
    assert lo < ratio < hi, ratio


def test_steps_follow_the_reference_update_rule_bitwise():
    g = torch.Generator().manual_seed(3)
    shapes = [(32, 32), (16, 48), (48, 16)]
    ours = [nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    ref = [p.detach().clone() for p in ours]
    bufs: list[Tensor | None] = [None] * len(shapes)
    opt = Muon(ours, lr=0.01, momentum=0.95)
    for _ in range(4):
        grads = [torch.randn(s, generator=g) for s in shapes]
        for p, gr in zip(ours, grads):
            p.grad = gr.clone()
        opt.step()
        ref_muon_step(ref, grads, bufs, lr=0.01)
    for p, r in zip(ours, ref):
        assert torch.equal(p.detach(), r)
    for p, buf in zip(ours, bufs):
        assert torch.equal(opt.state[p]["momentum_buffer"], buf)


# ---------------------------------------------------------------- parameter routing
def test_vector_parameter_is_a_config_error_not_an_assert():
    with pytest.raises(ConfigError, match=r"shape \(5,\).*only 2-D.*AdamW"):
        Muon([nn.Parameter(torch.zeros(4, 4)), nn.Parameter(torch.zeros(5))], lr=0.1)


@pytest.mark.parametrize("gate", ["none", "headwise", "elementwise", "const"])
def test_split_params_routes_every_parameter_once(gate: str):
    model = GPT(tiny_cfg(attn_gate=gate).model)
    adam, muon = split_params(model)
    assert len(adam) == 1 and adam[0] is model.lm_head.weight is model.transformer.wte.weight
    assert {f"transformer.h.{n}" for n, _ in muon} == {n for n, _ in model.named_parameters()} - {
        "transformer.wte.weight"}
    assert all(p.ndim == 2 for _, p in muon)


def test_split_params_rejects_a_non_2d_block_parameter():
    model = GPT(tiny_cfg().model)
    model.transformer.h[1].attn.c_q.bias = nn.Parameter(torch.zeros(32))
    with pytest.raises(ConfigError, match=r"transformer\.h\.1\.attn\.c_q\.bias has shape \(32,\).*2-D"):
        split_params(model)


# ---------------------------------------------------------------- distributed vs one process
SHAPES = [(32, 32), (16, 48), (48, 16), (32, 32), (8, 32), (16, 16)]  # the last one never gets a gradient
K = 3  # steps before and after the state hand-over
LR = 0.02


def init_params() -> list[nn.Parameter]:
    g = torch.Generator().manual_seed(10)
    return [nn.Parameter(torch.randn(s, generator=g)) for s in SHAPES]


def set_grads(params: list[nn.Parameter], step: int) -> None:
    """The same gradients on every rank (DDP has already averaged them when Muon runs)."""
    for i, p in enumerate(params):
        p.grad = None if i == len(params) - 1 else torch.randn(
            p.shape, generator=torch.Generator().manual_seed(1000 * step + i))


def run_steps(opt: Muon, params: list[nn.Parameter], first: int, n: int) -> None:
    for step in range(first, first + n):
        set_grads(params, step)
        opt.step()


def _sum(t: Tensor) -> None:
    dist.all_reduce(t, op=dist.ReduceOp.SUM)


def _muon_ranks(rank: int, world: int, snap_params: list[Tensor], snap_state: dict) -> dict:
    out: dict = {}
    # A: K steps from the common init on two ranks, then gather the owners' buffers
    params = init_params()
    opt = Muon(params, lr=LR, rank=rank, world_size=world, all_reduce=_sum)
    run_steps(opt, params, 0, K)
    out["A_params"] = [p.detach().clone() for p in params]
    out["A_owned"] = sorted(i for i, p in enumerate(params) if "momentum_buffer" in opt.state[p])
    out["A_gathered"] = opt.gather_state(lambda t, src: dist.broadcast(t, src))
    # B: continue from a 1-process snapshot: scatter keeps only this rank's buffers
    params = [nn.Parameter(t.clone()) for t in snap_params]
    opt = Muon(params, lr=LR, rank=rank, world_size=world, all_reduce=_sum)
    opt.scatter_state(snap_state)
    out["B_owned"] = sorted(i for i, p in enumerate(params) if "momentum_buffer" in opt.state[p])
    run_steps(opt, params, K, K)
    out["B_params"] = [p.detach().clone() for p in params]
    # C: batched Newton-Schulz on two ranks
    params = init_params()
    opt = Muon(params, lr=LR, rank=rank, world_size=world, all_reduce=_sum, batched=True)
    run_steps(opt, params, 0, K)
    out["C_params"] = [p.detach().clone() for p in params]
    return out


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One process for 2K steps (snapshot at K) and the 2-rank runs A, B, C."""
    params = init_params()
    opt = Muon(params, lr=LR)
    run_steps(opt, params, 0, K)
    snap_params = [p.detach().clone() for p in params]
    snap_state = opt.gather_state()
    run_steps(opt, params, K, K)
    ranks = run_ranks(_muon_ranks, snap_params, snap_state, tmp=tmp_path_factory.mktemp("muon"))
    return {"snap_params": snap_params, "snap_state": snap_state,
            "final": [p.detach().clone() for p in params], "ranks": ranks}


def test_two_ranks_give_bitwise_the_one_process_update(two_ranks: dict):
    for r in two_ranks["ranks"]:
        for a, b in zip(r["A_params"], two_ranks["snap_params"]):
            assert torch.equal(a, b)
    # momentum buffers live only on the owner rank (index % 2); the gradient-less matrix has none
    assert two_ranks["ranks"][0]["A_owned"] == [0, 2, 4]
    assert two_ranks["ranks"][1]["A_owned"] == [1, 3]


def test_gather_on_two_ranks_equals_one_process_state(two_ranks: dict):
    want = two_ranks["snap_state"]["momentum_buffers"]
    assert want[5] is None and all(b is not None for b in want[:5])
    for r in two_ranks["ranks"]:
        got = r["A_gathered"]["momentum_buffers"]
        assert [b is None for b in got] == [b is None for b in want]
        assert all(torch.equal(a, b) for a, b in zip(got[:5], want[:5]))


def test_one_process_state_scattered_on_two_ranks_continues_bitwise(two_ranks: dict):
    assert two_ranks["ranks"][0]["B_owned"] == [0, 2, 4]
    assert two_ranks["ranks"][1]["B_owned"] == [1, 3]
    for r in two_ranks["ranks"]:
        for a, b in zip(r["B_params"], two_ranks["final"]):
            assert torch.equal(a, b)


def test_two_rank_state_scattered_on_one_process_continues_bitwise(two_ranks: dict):
    r0 = two_ranks["ranks"][0]
    params = [nn.Parameter(t.clone()) for t in r0["A_params"]]
    opt = Muon(params, lr=LR)
    opt.scatter_state(r0["A_gathered"])
    assert sorted(i for i, p in enumerate(params) if "momentum_buffer" in opt.state[p]) == [0, 1, 2, 3, 4]
    run_steps(opt, params, K, K)
    for a, b in zip(params, two_ranks["final"]):
        assert torch.equal(a.detach(), b)


def test_batched_matches_unbatched(two_ranks: dict):
    """One process, and two ranks: batching stacks same-shape matrices (c_fc with the transposed
    c_proj) into one NS call; the result is bitwise the per-matrix one on CPU."""
    params = init_params()
    opt = Muon(params, lr=LR, batched=True)
    run_steps(opt, params, 0, K)
    for a, b in zip(params, two_ranks["snap_params"]):
        assert torch.equal(a.detach(), b)
    for r in two_ranks["ranks"]:
        for a, b in zip(r["C_params"], two_ranks["snap_params"]):
            assert torch.equal(a, b)


def test_scatter_state_rejects_a_state_of_another_model():
    opt = Muon(init_params(), lr=LR)
    with pytest.raises(ValueError, match="checkpoint has 2 Muon buffers, model has 6"):
        opt.scatter_state({"momentum_buffers": [None, None]})
