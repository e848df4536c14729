"""The ModernArch GPT (modded-nanogpt record 2024-10-14) with an optional sigmoid gate on attention.

Architecture only: no distributed code, no files, no tracker. With attn_gate="none" the parameter
set and the forward are the reference's: rotary, QK-norm (weightless RMSNorm, after rotary as in the
record), ReLU^2 MLP, zero-initialised output projections, tied embedding / lm_head, fp32 logits.

The gate (Gated Attention, arXiv 2505.06708) reads the block's normalized input - the tensor that
also produces Q - and multiplies either the SDPA output before the output projection (G1,
gate_pos="sdpa") or V before SDPA (G2, gate_pos="value"). Gate parameters are bias-free and 2-D so
that Muon can take them.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.config import ModelConfig
from trainer.fused_ce import linear_cross_entropy


def rms_norm(x: Tensor) -> Tensor:
    return F.rms_norm(x, (x.size(-1),))


class Rotary(nn.Module):
    """Rotary tables computed per call (no cached attributes: mutating them made torch.compile
    recompile in the reference). Values are rounded to bf16 exactly as the reference caches them."""

    inv_freq: Tensor

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, seq_len: int) -> tuple[Tensor, Tensor]:
        t = torch.arange(seq_len, device=self.inv_freq.device, dtype=self.inv_freq.dtype)
        freqs = torch.outer(t, self.inv_freq)
        return freqs.cos().bfloat16()[None, :, None, :], freqs.sin().bfloat16()[None, :, None, :]


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    d = x.shape[3] // 2
    x1, x2 = x[..., :d], x[..., d:]
    y1 = x1 * cos + x2 * sin
    y2 = x1 * (-sin) + x2 * cos
    return torch.cat([y1, y2], 3).type_as(x)


def gate_activation(logits: Tensor, act: str) -> Tensor:
    if act == "ns_sigmoid":  # Eq. 9 of the paper: non-sparse, range [0.5, 1]
        return 0.5 + 0.5 * torch.sigmoid(logits)
    return torch.sigmoid(logits)


def gate_init_seed(model_seed: int, layer: int) -> int:
    """A seed per (model seed, layer) for the gate's weights, distinct from the model seed's stream."""
    return (model_seed * 1_000_003 + 7_919 * (layer + 1)) % (2**63 - 1)


# gate_gemm modes that pad the gate's GEMM with zero rows to a multiple of this many output columns
GATE_PAD = {"separate_pad8": 8, "fused_pad8": 8, "fused_pad64": 64}


def padded_rows(weights: list[Tensor], multiple: int) -> Tensor:
    """The weights stacked by rows, plus zero rows up to a multiple of `multiple` (zero output
    columns: the GEMM's shape is aligned, the real columns are the same math)."""
    w = torch.cat(weights) if len(weights) > 1 else weights[0]
    pad = -w.size(0) % multiple
    return torch.cat([w, w.new_zeros(pad, w.size(1))]) if pad else w


class AttnGate(nn.Module):
    """Gate scores of shape (B, T, n_head, head_dim) or broadcastable to it."""

    def __init__(self, cfg: ModelConfig, layer: int = 0):
        super().__init__()
        self.kind, self.act = cfg.attn_gate, cfg.gate_act
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        if self.kind in ("headwise", "elementwise"):
            # Initialised from a generator of its own, outside the model's RNG stream: every other
            # weight is then exactly that of the attn_gate=none model at the same seed, so runs paired
            # by seed differ by the gate alone (common random numbers) rather than by a reshuffled init.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(gate_init_seed(torch.initial_seed(), layer))
                self.c_gate = nn.Linear(cfg.n_embd, cfg.n_head if self.kind == "headwise" else cfg.n_embd,
                                        bias=False)
        elif self.kind == "const":
            # Input-independent: zero logits give a gate of 0.5 (sigmoid) at init.
            self.logits = nn.Parameter(torch.zeros(cfg.n_head, cfg.head_dim))
        else:
            raise ValueError(f"AttnGate built for attn_gate={self.kind!r}")

    @property
    def weight(self) -> Tensor | None:
        """The projection weight that may join the fused q/k/v GEMM (None for const)."""
        return self.c_gate.weight if self.kind != "const" else None

    def scores_from_logits(self, logits: Tensor) -> Tensor:
        B, T = logits.shape[:2]
        width = 1 if self.kind == "headwise" else self.head_dim
        return gate_activation(logits.view(B, T, self.n_head, width), self.act)

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "const":
            return gate_activation(self.logits, self.act)  # (n_head, head_dim), broadcasts over B, T
        return self.scores_from_logits(self.c_gate(x))


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int = 0):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.gate_pos, self.fused_proj, self.gate_gemm = cfg.gate_pos, cfg.fused_proj, cfg.gate_gemm
        self.c_q = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.c_k = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.c_v = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.c_proj.weight.data.zero_()
        self.rotary = Rotary(cfg.head_dim)
        self.gate = AttnGate(cfg, layer) if cfg.attn_gate != "none" else None

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """q, k, v as (B, T, nh, hd) and the gate scores (or None)."""
        B, T, C = x.shape
        gate_w = self.gate.weight if self.gate is not None else None
        # fused_proj: one GEMM over the concatenated weights; the parameters stay separate for Muon.
        # gate_gemm=auto keeps a gate whose row count is not a multiple of 64 (headwise: n_head rows)
        # in a GEMM of its own: 3*768+6 output columns measured +6.5% step time on H200.
        mode = self.gate_gemm
        fuse_gate = self.fused_proj and gate_w is not None and (
            gate_w.size(0) % 64 == 0 if mode == "auto" else mode.startswith("fused"))
        pad = GATE_PAD.get(mode, 1)
        g: Tensor | None = None
        if self.fused_proj:
            ws = [self.c_q.weight, self.c_k.weight, self.c_v.weight]
            if fuse_gate and gate_w is not None:
                ws.append(gate_w)
            out = F.linear(x, padded_rows(ws, pad if fuse_gate else 1))
            q, k, v = out[..., :C], out[..., C:2 * C], out[..., 2 * C:3 * C]
            if fuse_gate and self.gate is not None and gate_w is not None:
                g = self.gate.scores_from_logits(out[..., 3 * C:3 * C + gate_w.size(0)])
        else:
            q, k, v = self.c_q(x), self.c_k(x), self.c_v(x)
        if g is None and self.gate is not None:
            if gate_w is not None and mode == "separate_pad8":  # own GEMM, 16-byte aligned output rows
                g = self.gate.scores_from_logits(F.linear(x, padded_rows([gate_w], pad))[..., :gate_w.size(0)])
            else:
                g = self.gate(x)
        shape = (B, T, self.n_head, self.head_dim)
        return q.reshape(shape), k.reshape(shape), v.reshape(shape), g

    def qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Rotary + QK-norm applied, gate applied to V when gate_pos == 'value'."""
        q, k, v, g = self.project(x)
        cos, sin = self.rotary(x.size(1))
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q, k = rms_norm(q), rms_norm(k)
        if g is not None and self.gate_pos == "value":
            v = v * g
        return q, k, v, g

    def forward(self, x: Tensor) -> Tensor:
        q, k, v, g = self.qkv(x)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           is_causal=True).transpose(1, 2)  # (B, T, nh, hd)
        if g is not None and self.gate_pos == "sdpa":
            y = y * g
        return self.c_proj(y.contiguous().view_as(x))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=False)
        self.c_proj.weight.data.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int = 0):
        super().__init__()
        self.attn = CausalSelfAttention(cfg, layer)
        self.mlp = MLP(cfg)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(rms_norm(x))
        return x + self.mlp(rms_norm(x))


def lm_loss(x: Tensor, weight: Tensor, targets: Tensor, chunks: int = 1) -> Tensor:
    """Final RMSNorm, lm_head and mean fp32 cross-entropy. chunks > 1 uses the fused chunked path
    (same math) so the (tokens x vocab) fp32 logits never exist at once."""
    x = rms_norm(x).flatten(0, 1)
    targets = targets.flatten()
    if chunks == 1:
        logits = F.linear(x, weight).float()
        return F.cross_entropy(logits, targets, ignore_index=-1)
    return linear_cross_entropy(x, weight, targets, chunks)


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
            h=nn.ModuleList([Block(cfg, i) for i in range(cfg.n_layer)]),
        ))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight  # tied
        # Set by the training loop when compiling regions; the plain modules otherwise.
        self.loss_fn = lm_loss

    @property
    def wte(self) -> nn.Embedding:
        return cast(nn.Embedding, self.transformer["wte"])

    @property
    def blocks(self) -> list[Block]:
        return cast("list[Block]", list(cast(nn.ModuleList, self.transformer["h"])))

    def hidden(self, idx: Tensor) -> Tensor:
        x = self.wte(idx)
        for block in self.blocks:
            x = block(x)
        return x

    def forward(self, idx: Tensor, targets: Tensor) -> Tensor:
        return self.loss_fn(self.hidden(idx), self.lm_head.weight, targets, self.config.ce_chunks)
