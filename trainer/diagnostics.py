"""Gated Attention paper diagnostics on a small fixed batch, at validation time only.

Per layer: the gate score mean and the share of gate values below 0.1 (sparsity); the first-token
attention share (the attention sink: mean attention weight on position 0 over heads and query
positions 1..T-1), from an explicit softmax(QK^T) path since fused SDPA never forms the weights;
and the largest |hidden state| of the layer's output (massive activations).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from trainer.model import GPT, rms_norm

SPARSE_BELOW = 0.1


def attention_weights(q: Tensor, k: Tensor) -> Tensor:
    """Causal softmax(QK^T/sqrt(d)) in fp32. q, k: (B, T, nh, hd) -> (B, nh, T, T)."""
    q, k = q.float().transpose(1, 2), k.float().transpose(1, 2)
    T = q.size(2)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    return scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)


def first_token_share(weights: Tensor) -> float:
    """Mean attention on position 0 over batch, heads and query positions 1..T-1."""
    if weights.size(-1) < 2:
        return float("nan")
    return weights[..., 1:, 0].mean().item()


@torch.no_grad()
def diagnose(model: GPT, idx: Tensor) -> dict[str, float]:
    """Per-layer metrics keyed `diag/<metric>/layer_NN`, plus layer means `diag/<metric>`."""
    out: dict[str, float] = {}
    x = model.wte(idx)
    for i, block in enumerate(model.blocks):
        attn = block.attn
        q, k, _, g = attn.qkv(rms_norm(x))
        out[f"diag/first_token_attn/layer_{i:02d}"] = first_token_share(attention_weights(q, k))
        if g is not None:
            gf = g.float()
            out[f"diag/gate_mean/layer_{i:02d}"] = gf.mean().item()
            out[f"diag/gate_sparsity/layer_{i:02d}"] = (gf < SPARSE_BELOW).float().mean().item()
        x = block.forward(x)  # eager: a compiled block would compile once more for this batch shape
        out[f"diag/max_act/layer_{i:02d}"] = x.float().abs().amax(dim=(-2, -1)).mean().item()
    for metric in ("first_token_attn", "gate_mean", "gate_sparsity", "max_act"):
        vals = [v for k, v in out.items() if k.startswith(f"diag/{metric}/")]
        if vals:
            out[f"diag/{metric}"] = sum(vals) / len(vals)
    return out
