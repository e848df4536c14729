"""The GPT and its attention gates, checked against independent functional computations.

`ref_loss` below is written from the description of the ModernArch record (reference-trainer.md and
its train_gpt2.py): rotary tables rounded to bf16, QK RMSNorm after rotary, causal SDPA, ReLU^2 MLP,
final RMSNorm, fp32 logits, mean cross-entropy. It reads our model's weights by their reference names.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from tests.trainer_helpers import tiny_cfg
from trainer.config import GATE_POSITIONS, GATES
from trainer.model import GPT, AttnGate, gate_activation, lm_loss, padded_rows

torch.set_num_threads(1)

B, T = 2, 16


def make_model(**over) -> GPT:
    """A tiny GPT with every weight random (the zero-initialised output projections would hide
    attention and MLP entirely)."""
    cfg = tiny_cfg(**over).model
    torch.manual_seed(0)
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


def batch(vocab: int = 64, seed: int = 1) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (B, T), generator=g), torch.randint(0, vocab, (B, T), generator=g)


# ---------------------------------------------------------------- the independent reference
def rms(x: Tensor) -> Tensor:
    return F.rms_norm(x, (x.size(-1),))


def ref_rotary(x: Tensor) -> Tensor:
    """x: (B, T, nh, hd). Rotate the two halves with bf16-rounded cos/sin tables (the reference
    caches them in bf16 and multiplies them with the fp32 activations)."""
    hd, t = x.size(-1), x.size(1)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
    freqs = torch.outer(torch.arange(t).float(), inv_freq)
    cos, sin = freqs.cos().bfloat16()[None, :, None, :], freqs.sin().bfloat16()[None, :, None, :]
    a, b = x[..., : hd // 2], x[..., hd // 2:]
    return torch.cat([a * cos + b * sin, -a * sin + b * cos], dim=3).type_as(x)


def ref_qkv(x: Tensor, sd: dict, i: int, nh: int) -> tuple[Tensor, Tensor, Tensor]:
    """Normed block input -> q, k (rotary, then RMSNorm) and v, each (B, T, nh, hd)."""
    pre = f"transformer.h.{i}.attn."
    Bx, Tx, C = x.shape
    q, k, v = (F.linear(x, sd[pre + n + ".weight"]).view(Bx, Tx, nh, C // nh) for n in ("c_q", "c_k", "c_v"))
    return rms(ref_rotary(q)), rms(ref_rotary(k)), v


def sdpa(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """(B, T, nh, hd) in and out."""
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                          is_causal=True).transpose(1, 2)


def ref_loss(sd: dict, idx: Tensor, targets: Tensor, n_layer: int, nh: int) -> Tensor:
    x = F.embedding(idx, sd["transformer.wte.weight"])
    for i in range(n_layer):
        q, k, v = ref_qkv(rms(x), sd, i, nh)
        y = sdpa(q, k, v).contiguous().view_as(x)
        x = x + F.linear(y, sd[f"transformer.h.{i}.attn.c_proj.weight"])
        h = F.relu(F.linear(rms(x), sd[f"transformer.h.{i}.mlp.c_fc.weight"])).square()
        x = x + F.linear(h, sd[f"transformer.h.{i}.mlp.c_proj.weight"])
    logits = F.linear(rms(x), sd["lm_head.weight"]).float()
    return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)


# ---------------------------------------------------------------- attn_gate=none is the reference
REFERENCE_NAMES = {"transformer.wte.weight", "lm_head.weight"} | {
    f"transformer.h.{i}.{m}.weight" for i in range(2)
    for m in ("attn.c_q", "attn.c_k", "attn.c_v", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}


def test_none_has_exactly_the_reference_parameters_and_tied_embedding():
    model = make_model(attn_gate="none")
    assert {n for n, _ in model.named_parameters(remove_duplicate=False)} == REFERENCE_NAMES
    assert set(model.state_dict()) == REFERENCE_NAMES  # rotary tables are not persistent state
    assert model.transformer.wte.weight is model.lm_head.weight
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters(remove_duplicate=False)}
    assert shapes["lm_head.weight"] == (64, 32) and shapes["transformer.h.1.mlp.c_fc.weight"] == (128, 32)


def test_fresh_model_zero_inits_output_projections_like_the_reference():
    torch.manual_seed(0)
    model = GPT(tiny_cfg().model)
    for block in model.transformer.h:
        assert torch.count_nonzero(block.attn.c_proj.weight) == 0
        assert torch.count_nonzero(block.mlp.c_proj.weight) == 0


def test_none_forward_and_backward_are_bitwise_the_reference():
    model = make_model(attn_gate="none")
    idx, targets = batch()
    targets[0, :3] = -1  # ignored positions take the same path in both
    sd = {n: p for n, p in model.named_parameters(remove_duplicate=False)}
    ours = model(idx, targets)
    ref = ref_loss(sd, idx, targets, n_layer=2, nh=2)
    assert ours.dtype == torch.float32
    assert torch.equal(ours, ref), (ours.item(), ref.item())
    g_ours = torch.autograd.grad(ours, list(model.parameters()))
    g_ref = torch.autograd.grad(ref, list(model.parameters()))
    for a, b in zip(g_ours, g_ref):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- gate semantics
def test_gate_activations():
    x = torch.cat([torch.linspace(-60, 60, 1001), torch.tensor([float("inf"), float("-inf")])])
    ns = gate_activation(x, "ns_sigmoid")
    assert torch.equal(ns, 0.5 + 0.5 * torch.sigmoid(x))
    assert ns.min() >= 0.5 and ns.max() <= 1.0 and ns.min() == 0.5 and ns.max() == 1.0
    assert torch.equal(gate_activation(x, "sigmoid"), torch.sigmoid(x))


def c_proj_input(model: GPT, x: Tensor) -> tuple[Tensor, Tensor]:
    """(what layer 0's attention feeds its output projection, as (B, T, nh, hd); its output)."""
    seen: list[Tensor] = []
    attn = model.transformer.h[0].attn
    handle = attn.c_proj.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    out = attn(x)
    handle.remove()
    return seen[0].view(B, T, attn.n_head, attn.head_dim), out


def gate_scores(model: GPT, kind: str, act: str, x: Tensor) -> Tensor:
    """The gate computed by hand from the gate weights: broadcastable to (B, T, nh, hd)."""
    gate = model.transformer.h[0].attn.gate
    f = (lambda z: 0.5 + 0.5 * torch.sigmoid(z)) if act == "ns_sigmoid" else torch.sigmoid
    if kind == "headwise":
        return f(x @ gate.c_gate.weight.T)[..., None]  # (B, T, nh, 1): one scalar per head
    if kind == "elementwise":
        return f(x @ gate.c_gate.weight.T).view(B, T, 2, 16)
    return f(gate.logits)  # (nh, hd), the same for every token


@pytest.mark.parametrize("kind,act", list(itertools.product(["headwise", "elementwise", "const"],
                                                            ["sigmoid", "ns_sigmoid"])))
def test_sdpa_gate_multiplies_the_attention_output(kind: str, act: str):
    model = make_model(attn_gate=kind, gate_act=act, gate_pos="sdpa")
    x = torch.randn(B, T, 32, generator=torch.Generator().manual_seed(3))
    sd = dict(model.named_parameters())
    q, k, v = ref_qkv(x, sd, 0, 2)
    y = sdpa(q, k, v)
    g = gate_scores(model, kind, act, x)
    seen, out = c_proj_input(model, x)
    torch.testing.assert_close(seen, y * g, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out, F.linear((y * g).reshape(B, T, 32), sd["transformer.h.0.attn.c_proj.weight"]),
                               rtol=1e-6, atol=1e-6)
    assert not torch.allclose(seen, y, atol=1e-3)  # the gate really changed something
    if act == "ns_sigmoid":
        assert g.min() >= 0.5 and g.max() <= 1.0


def test_headwise_gate_is_one_scalar_per_head():
    model = make_model(attn_gate="headwise")
    gate = model.transformer.h[0].attn.gate
    x = torch.randn(B, T, 32)
    scores = gate(x)
    assert scores.shape == (B, T, 2, 1)
    assert gate.c_gate.weight.shape == (2, 32)
    # the per-head ratio gated/ungated SDPA output is the same across that head's 16 dims
    sd = dict(model.named_parameters())
    y = sdpa(*ref_qkv(x, sd, 0, 2))
    seen, _ = c_proj_input(model, x)
    ratio = seen / y
    torch.testing.assert_close(ratio, ratio[..., :1].expand_as(ratio), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(ratio[:, :, 0], ratio[:, :, 1])  # heads get different gates


def test_elementwise_gate_shape():
    model = make_model(attn_gate="elementwise")
    gate = model.transformer.h[0].attn.gate
    assert gate.c_gate.weight.shape == (32, 32)
    assert gate(torch.randn(B, T, 32)).shape == (B, T, 2, 16)


@pytest.mark.parametrize("act,init", [("sigmoid", 0.5), ("ns_sigmoid", 0.75)])
def test_const_gate_is_input_independent_and_starts_at_half_sigmoid(act: str, init: float):
    torch.manual_seed(0)
    gate = AttnGate(tiny_cfg(attn_gate="const", gate_act=act).model)
    assert gate.logits.shape == (2, 16) and torch.count_nonzero(gate.logits) == 0
    a, b = gate(torch.randn(B, T, 32)), gate(torch.randn(B, T, 32) * 10)
    assert torch.equal(a, b) and a.shape == (2, 16)
    assert torch.all(a == init)  # sigmoid(0) = 0.5; NS-sigmoid(0) = 0.75
    # and inside a fresh model's attention it halves the SDPA output (c_proj made random)
    torch.manual_seed(0)
    model = GPT(tiny_cfg(attn_gate="const", gate_act="sigmoid").model)
    x = torch.randn(B, T, 32)
    y = sdpa(*ref_qkv(x, dict(model.named_parameters()), 0, 2))
    seen, _ = c_proj_input(model, x)
    torch.testing.assert_close(seen, 0.5 * y, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["headwise", "elementwise", "const"])
def test_value_gate_multiplies_v_before_sdpa(kind: str):
    model = make_model(attn_gate=kind, gate_pos="value")
    x = torch.randn(B, T, 32, generator=torch.Generator().manual_seed(4))
    q, k, v = ref_qkv(x, dict(model.named_parameters()), 0, 2)
    g = gate_scores(model, kind, "sigmoid", x)
    seen, _ = c_proj_input(model, x)
    torch.testing.assert_close(seen, sdpa(q, k, v * g), rtol=1e-6, atol=1e-6)
    # gating the output instead is a different function (causal mixing across tokens)
    if kind != "const":
        assert not torch.allclose(seen, sdpa(q, k, v) * g, atol=1e-4)


@pytest.mark.parametrize("kind", ["headwise", "elementwise", "const"])
def test_gate_parameters_are_2d_and_bias_free(kind: str):
    model = make_model(attn_gate=kind)
    extra = {n: p for n, p in model.named_parameters() if n not in REFERENCE_NAMES}
    assert set(extra) == {f"transformer.h.{i}.attn.gate.{'logits' if kind == 'const' else 'c_gate.weight'}"
                          for i in range(2)}
    assert all(p.ndim == 2 for p in extra.values())
    assert not any("bias" in n for n, _ in model.named_parameters())
    expected = {"headwise": (2, 32), "elementwise": (32, 32), "const": (2, 16)}[kind]
    assert all(tuple(p.shape) == expected for p in extra.values())


@pytest.mark.parametrize("kind", GATES[1:])
def test_same_seed_gives_every_variant_the_baselines_weights(kind: str):
    """Common random numbers: a gated model's non-gate weights are exactly the none model's at the same
    seed, so a paired-by-seed comparison differs by the gate alone; gate weights differ per layer and seed."""
    def init(gate: str, seed: int = 0) -> dict[str, Tensor]:
        torch.manual_seed(seed)  # as trainer.build does
        return GPT(tiny_cfg(attn_gate=gate).model).state_dict()

    base, gated = init("none"), init(kind)
    for name, tensor in base.items():
        assert torch.equal(gated[name], tensor), name
    if kind != "const":
        w = [gated[f"transformer.h.{i}.attn.gate.c_gate.weight"] for i in range(2)]
        assert not torch.equal(w[0], w[1])
        assert w[0].abs().max() <= 32 ** -0.5  # nn.Linear's default init, U(-1/sqrt(in), 1/sqrt(in))
        assert not torch.equal(init(kind, seed=1)["transformer.h.0.attn.gate.c_gate.weight"], w[0])


# ---------------------------------------------------------------- fused projection, chunked CE
def loss_and_grads(model: GPT, idx: Tensor, targets: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    loss = model(idx, targets)
    names = [n for n, _ in model.named_parameters()]
    grads = torch.autograd.grad(loss, [p for _, p in model.named_parameters()])
    return loss.detach(), dict(zip(names, grads))


# gate_pos has no effect without a gate, so none is checked once
@pytest.mark.parametrize("kind,pos", [("none", "sdpa")] + list(itertools.product(GATES[1:], GATE_POSITIONS)))
def test_fused_projection_matches_the_plain_path(kind: str, pos: str):
    plain = make_model(attn_gate=kind, gate_pos=pos, fused_proj=False)
    fused = make_model(attn_gate=kind, gate_pos=pos, fused_proj=True)
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), fused.parameters()))
    idx, targets = batch()
    l_plain, g_plain = loss_and_grads(plain, idx, targets)
    l_fused, g_fused = loss_and_grads(fused, idx, targets)
    torch.testing.assert_close(l_fused, l_plain, rtol=1e-6, atol=0)
    assert g_plain.keys() == g_fused.keys()
    for n in g_plain:
        torch.testing.assert_close(g_fused[n], g_plain[n], rtol=1e-5, atol=1e-6, msg=n)


@pytest.mark.parametrize("mode", ["separate", "separate_pad8", "fused", "fused_pad8", "fused_pad64"])
@pytest.mark.parametrize("kind", ["headwise", "elementwise"])
def test_every_gate_gemm_placement_matches_the_plain_path(kind: str, mode: str):
    """gate_gemm only moves the gate's projection between GEMMs (zero rows pad them): same loss and
    gradients as three plain GEMMs plus the gate's own, to rounding; the padding gets no parameter."""
    plain = make_model(attn_gate=kind, fused_proj=False)
    placed = make_model(attn_gate=kind, fused_proj=True, gate_gemm=mode)
    assert [n for n, _ in plain.named_parameters()] == [n for n, _ in placed.named_parameters()]
    idx, targets = batch()
    l_plain, g_plain = loss_and_grads(plain, idx, targets)
    l_placed, g_placed = loss_and_grads(placed, idx, targets)
    torch.testing.assert_close(l_placed, l_plain, rtol=1e-6, atol=0)
    for n in g_plain:
        torch.testing.assert_close(g_placed[n], g_plain[n], rtol=1e-5, atol=1e-6, msg=n)


def test_padded_rows_aligns_the_gemm_and_keeps_the_real_columns():
    ws = [torch.randn(32, 16), torch.randn(2, 16)]
    w = padded_rows(ws, 8)
    assert w.shape == (40, 16) and torch.equal(w[:34], torch.cat(ws)) and not w[34:].any()
    assert padded_rows(ws, 1).shape == (34, 16) and padded_rows([ws[0]], 8) is ws[0]


@pytest.mark.parametrize("chunks", [2, 3, 7])
def test_chunked_cross_entropy_matches(chunks: int):
    model = make_model()
    idx, targets = batch()
    chunked = make_model(ce_chunks=chunks)
    l1, g1 = loss_and_grads(model, idx, targets)
    l2, g2 = loss_and_grads(chunked, idx, targets)
    torch.testing.assert_close(l2, l1, rtol=1e-6, atol=0)
    for n in g1:
        torch.testing.assert_close(g2[n], g1[n], rtol=1e-5, atol=1e-7, msg=n)


@pytest.mark.parametrize("chunks", [1, 3])
def test_lm_loss_against_cross_entropy_with_scaled_gradient(chunks: int):
    """lm_loss is final RMSNorm + lm_head + mean fp32 CE, also when the loss is scaled before backward."""
    g = torch.Generator().manual_seed(5)
    h = torch.randn(B, T, 32, generator=g, requires_grad=True)
    w = torch.randn(64, 32, generator=g, requires_grad=True)
    targets = torch.randint(0, 64, (B, T), generator=g)
    loss = lm_loss(h, w, targets, chunks)
    (3.0 * loss).backward()
    h2, w2 = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    expected = F.cross_entropy(F.linear(rms(h2), w2).float().view(-1, 64), targets.flatten())
    (3.0 * expected).backward()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(h.grad, h2.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(w.grad, w2.grad, rtol=1e-5, atol=1e-7)


def test_chunked_cross_entropy_matches_under_bf16_autocast():
    """The CUDA path runs the lm_head in bf16 under autocast; CPU autocast exercises the same branch."""
    idx, targets = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        l1, g1 = loss_and_grads(make_model(), idx, targets)
        l2, g2 = loss_and_grads(make_model(ce_chunks=4), idx, targets)
    assert l1.dtype == l2.dtype == torch.float32
    torch.testing.assert_close(l2, l1, rtol=1e-3, atol=0)
    for n in g1:
        assert g2[n].dtype == g1[n].dtype, n
        torch.testing.assert_close(g2[n], g1[n], rtol=2e-2, atol=2e-3, msg=n)
