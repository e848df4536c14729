"""Muon (MomentUm Orthogonalized by Newton-Schulz), distributed as in the DistributedMuon record.

Per parameter i (owner rank i % world_size): buf = m*buf + g; g <- g + m*buf (Nesterov);
O = NS5(g) in bf16; p -= lr * sqrt(max(rows, cols)) * O with the scale in the fp32 `alpha` of the add,
as the ModernArch record applies it (`p.data.add_(g, alpha=-lr * scale)`): multiplying the scale into
the bf16 O first (the DistributedMuon record's way) rounds every update once more and drifts from it.
Owners write their unscaled O into one flat bf16 buffer (zeros elsewhere), one all-reduce(SUM) shares
them (a sum with zeros is exact), and every rank applies all of them.
Momentum buffers live only on the owner rank; `gather_state` / `scatter_state` move them for
checkpoints so a checkpoint does not depend on the world size.

The all-reduce is injected (`all_reduce=`) so this file imports no distributed code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from trainer.errors import ConfigError

NS_COEFFS = (3.4445, -4.7750, 2.0315)


def newton_schulz5(G: Tensor, steps: int = 5, eps: float = 1e-7) -> Tensor:
    """Approximately orthogonalize the last two dims of G (singular values end up ~U(0.5, 1.5)).
    Works on a single matrix or a batch of same-shape matrices."""
    a, b, c = NS_COEFFS
    X = G.bfloat16()
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + eps)
    tall = G.size(-2) > G.size(-1)
    if tall:
        X = X.mT
    for _ in range(steps):
        A = X @ X.mT
        B = A @ X
        X = a * X + b * B + c * A @ B
    return X.mT if tall else X


def apply_update(p: Tensor, update: Tensor, lr: float) -> None:
    """p -= lr * sqrt(max(rows, cols)) * update: the bf16 update is added to the fp32 weight with the
    scale in the add's alpha, never multiplied into the bf16 update (which would round it again)."""
    p.add_(update, alpha=-lr * max(p.shape) ** 0.5)


AllReduce = Callable[[Tensor], None]


class Muon(torch.optim.Optimizer):
    def __init__(self, params: Iterable[Tensor], *, lr: float, momentum: float = 0.95, nesterov: bool = True,
                 ns_steps: int = 5, rank: int = 0, world_size: int = 1, batched: bool = False,
                 all_reduce: AllReduce | None = None, orthogonalize: Callable[..., Tensor] = newton_schulz5):
        params = list(params)
        for i, p in enumerate(params):
            if p.ndim != 2:
                raise ConfigError(
                    f"Muon got parameter #{i} with shape {tuple(p.shape)}: only 2-D matrices are supported; "
                    "route vectors/scalars (biases, norms) to AdamW or make the parameter 2-D")
        if world_size > 1 and all_reduce is None:
            raise ValueError("world_size > 1 needs an all_reduce callable")
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps))
        self.rank, self.world_size, self.batched = rank, world_size, batched
        self._all_reduce = all_reduce
        self._orth = orthogonalize

    def owner(self, index: int) -> int:
        return index % self.world_size

    def _momentum_updates(self, params: list[Tensor], momentum: float, nesterov: bool) -> list[Tensor]:
        """buf = m*buf + g; returns g + m*buf (Nesterov) or g - as foreach ops: a few kernel launches
        for all matrices instead of three per matrix."""
        if not params:
            return []
        bufs, grads = [], []
        for p in params:
            assert p.grad is not None  # callers pass only params with a gradient
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p.grad)
            bufs.append(state["momentum_buffer"])
            grads.append(p.grad)
        torch._foreach_mul_(bufs, momentum)
        torch._foreach_add_(bufs, grads)
        return list(torch._foreach_add(grads, bufs, alpha=momentum)) if nesterov else grads

    def _updates(self, group: dict, owned: list[tuple[int, Tensor]]) -> dict[int, Tensor]:
        """Orthogonalized updates (bf16, unscaled) for the params this rank owns, keyed by index."""
        nest = self._momentum_updates([p for _, p in owned], group["momentum"], group["nesterov"])
        gs = {i: g for (i, _), g in zip(owned, nest)}
        out: dict[int, Tensor] = {}
        if not self.batched:
            for i, g in gs.items():
                out[i] = self._orth(g, steps=group["ns_steps"])
            return out
        # Same math, one batched NS per shape: a transposed shape joins its twin (NS is
        # transpose-equivariant), which puts c_fc and c_proj of the MLPs into one batch.
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, g in gs.items():
            by_shape.setdefault(tuple(sorted(g.shape)), []).append(i)
        for idx in by_shape.values():
            mats = [gs[i] if gs[i].size(0) <= gs[i].size(1) else gs[i].mT for i in idx]
            orth = self._orth(torch.stack(mats), steps=group["ns_steps"])
            for j, i in enumerate(idx):
                out[i] = orth[j] if gs[i].size(0) <= gs[i].size(1) else orth[j].mT
        return out

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch.optim signature
        for group in self.param_groups:
            params: list[Tensor] = group["params"]
            owned = [(i, p) for i, p in enumerate(params)
                     if self.owner(i) == self.rank and p.grad is not None]
            updates = self._updates(group, owned)
            if self.world_size > 1:
                flat = torch.zeros(sum(p.numel() for p in params), device=params[0].device,
                                   dtype=torch.bfloat16)
                offset = 0
                for i, p in enumerate(params):
                    if i in updates:
                        flat[offset:offset + p.numel()] = updates[i].flatten()
                    offset += p.numel()
                assert self._all_reduce is not None
                self._all_reduce(flat)
                offset = 0
                for p in params:
                    apply_update(p, flat[offset:offset + p.numel()].view_as(p), group["lr"])
                    offset += p.numel()
            else:
                for i, p in enumerate(params):
                    if i in updates:
                        apply_update(p, updates[i], group["lr"])

    # ------------------------------------------------------------ checkpoint support
    def gather_state(self, broadcast: Callable[[Tensor, int], None] | None = None) -> dict:
        """World-size independent state: momentum buffers of all params (None if not created yet).
        With world_size > 1 every rank must call it; `broadcast(tensor, src)` shares owner buffers."""
        params = self.param_groups[0]["params"]
        bufs: list[Tensor | None] = []
        for i, p in enumerate(params):
            mine = self.state.get(p, {}).get("momentum_buffer")
            if self.world_size > 1:
                assert broadcast is not None
                has = torch.tensor([1.0 if mine is not None else 0.0], device=p.device)
                broadcast(has, self.owner(i))
                if has.item() == 0:
                    bufs.append(None)
                    continue
                buf = mine if mine is not None else torch.empty_like(p)
                broadcast(buf, self.owner(i))
                bufs.append(buf.detach().cpu().clone())
            else:
                bufs.append(None if mine is None else mine.detach().cpu().clone())
        return {"momentum_buffers": bufs}

    def scatter_state(self, state: dict) -> None:
        """Load a gathered state; each rank keeps only the buffers it owns."""
        params = self.param_groups[0]["params"]
        bufs = state["momentum_buffers"]
        if len(bufs) != len(params):
            raise ValueError(f"checkpoint has {len(bufs)} Muon buffers, model has {len(params)} matrices")
        self.state.clear()
        for i, (p, buf) in enumerate(zip(params, bufs)):
            if buf is not None and self.owner(i) == self.rank:
                self.state[p]["momentum_buffer"] = buf.to(device=p.device, dtype=p.dtype).clone()
