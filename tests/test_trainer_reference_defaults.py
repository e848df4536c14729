"""The defaults are the reference run's (modded-nanogpt 2024-10-14 ModernArch, ../shared/notes/
reference-trainer.md): model shape, hyperparameters, and the two optimizers exactly as it builds them."""

from __future__ import annotations

import torch

from trainer.build import build_model, build_optimizers
from trainer.config import TrainConfig
from trainer.dist import DistEnv
from trainer.schedule import lr_factor


def test_config_defaults_are_the_reference_hyperparameters():
    c = TrainConfig()
    m, o, d, r = c.model, c.optim, c.data, c.run
    assert (m.vocab_size, m.n_layer, m.n_head, m.n_embd) == (50304, 12, 6, 768)
    assert (m.attn_gate, m.gate_pos, m.gate_act) == ("none", "sdpa", "sigmoid")
    assert (d.batch_size, d.device_batch_size, d.sequence_length) == (512, 64, 1024)
    assert (d.train_files, d.val_files) == ("data/fineweb10B/fineweb_train_*.bin", "data/fineweb10B/fineweb_val_*.bin")
    assert d.val_tokens == 10_485_760 and r.val_every == 125 and r.num_iterations == 5100
    assert (o.learning_rate, o.warmup_iters, o.warmdown_iters, o.weight_decay) == (0.0036, 0, 1450, 0.0)
    assert (o.muon_lr_ratio, o.muon_momentum, o.ns_steps) == (0.1, 0.95, 5)


def test_optimizers_are_built_like_the_reference():
    cfg = TrainConfig().override({"n_layer": 2, "n_embd": 64, "n_head": 2, "vocab_size": 128})
    model = build_model(cfg, torch.device("cpu"))
    adam, muon = build_optimizers(cfg, model, DistEnv(0, 0, 1, torch.device("cpu")), compiled_ns=False)
    (ag,) = adam.param_groups
    # AdamW on the tied lm_head/embedding only, betas (0.9, 0.95), no weight decay
    assert [p is model.lm_head.weight for p in ag["params"]] == [True]
    assert ag["lr"] == 0.0036 and ag["betas"] == (0.9, 0.95) and ag["weight_decay"] == 0.0
    # Muon on every 2-D block matrix, at 0.1 x LR, Nesterov momentum 0.95, 5 Newton-Schulz steps
    (mg,) = muon.param_groups
    blocks = [p for p in model.transformer["h"].parameters()]
    assert {id(p) for p in mg["params"]} == {id(p) for p in blocks} and all(p.ndim == 2 for p in blocks)
    assert mg["lr"] == 0.1 * 0.0036 and mg["momentum"] == 0.95 and mg["nesterov"] and mg["ns_steps"] == 5
    # both follow the same trapezoid: constant, then linear warmdown over the last 1450 steps to 0
    assert lr_factor(0, num_iterations=5100, warmup_iters=0, warmdown_iters=1450) == 1.0
    assert lr_factor(5100 - 725, num_iterations=5100, warmup_iters=0, warmdown_iters=1450) == 0.5
    assert lr_factor(5100, num_iterations=5100, warmup_iters=0, warmdown_iters=1450) == 0.0
