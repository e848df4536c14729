"""lm_head + cross-entropy without materialising the (tokens x vocab) fp32 logits.

The reference computes bf16 logits, casts them to fp32 (13 GB for 64x1024 tokens x 50304) and
takes the cross-entropy. Here the tokens are processed in chunks: each chunk's logits exist only
while its loss and its gradients w.r.t. the hidden states and the weight are computed, in the
forward pass; backward just scales the stored gradients. Same math: bf16 matmuls (under autocast),
fp32 softmax, mean over tokens; the weight gradient is accumulated in fp32.
"""

from __future__ import annotations

import torch
from torch import Tensor


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, targets: Tensor, chunks: int, dtype: torch.dtype) -> Tensor:  # noqa: ANN001
        xw, w = x.to(dtype), weight.to(dtype)
        n = x.shape[0]
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        total = torch.zeros((), device=x.device, dtype=torch.float32)
        grad_x = torch.empty_like(xw)  # only filled (and saved) when a gradient is needed
        grad_w = torch.zeros(weight.shape if need_grad else (0,), device=weight.device, dtype=torch.float32)
        size = -(-n // chunks)
        for start in range(0, n, size):  # contiguous slices: views, no gather copies
            sl = slice(start, start + size)
            xc, tc = xw[sl], targets[sl]
            logits = (xc @ w.t()).float()  # (n_chunk, vocab) fp32, as the reference's .float()
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, tc[:, None]).squeeze(1)).sum()
            if need_grad:
                probs = torch.exp(logits - lse[:, None])
                probs.scatter_add_(1, tc[:, None], torch.full_like(lse[:, None], -1.0))
                g = (probs / n).to(dtype)
                grad_x[sl] = g @ w
                grad_w += (g.t() @ xc).float()
        if need_grad:
            ctx.save_for_backward(grad_x, grad_w)
        return total / n

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # noqa: ANN205
        grad_x, grad_w = ctx.saved_tensors
        return grad_x * grad_out.to(grad_x.dtype), grad_w * grad_out, None, None, None


def linear_cross_entropy(x: Tensor, weight: Tensor, targets: Tensor, chunks: int) -> Tensor:
    """Mean cross-entropy of `x @ weight.T` against `targets` (x: (N, d), weight: (V, d), targets: (N,))."""
    dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
    with torch.autocast(device_type=x.device.type, enabled=False):
        return _LinearCrossEntropy.apply(x, weight, targets, chunks, dtype)
