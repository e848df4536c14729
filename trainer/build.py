"""Build the model, optimizers, loaders and compiled regions from a TrainConfig and a DistEnv."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from trainer import checkpoint
from trainer.config import TrainConfig
from trainer.dist import DistEnv
from trainer.errors import ConfigError
from trainer.loader import ShardLoader
from trainer.model import GPT, lm_loss
from trainer.muon import Muon, newton_schulz5


@dataclass(frozen=True)
class Geometry:
    """Batch arithmetic of a run on a given world size."""

    B: int
    T: int
    accum: int
    val_steps: int

    @staticmethod
    def of(cfg: TrainConfig, world_size: int) -> Geometry:
        d = cfg.data
        B, T = d.device_batch_size, d.sequence_length
        if d.batch_size % (B * world_size):
            raise ConfigError(
                f"batch_size={d.batch_size} is not divisible by device_batch_size x world size = "
                f"{B} x {world_size}; choose batch_size as a multiple of {B * world_size}")
        if d.val_tokens % (B * T * world_size):
            raise ConfigError(
                f"val_tokens={d.val_tokens} is not divisible by device_batch_size x sequence_length x world "
                f"size = {B * T * world_size}; use a multiple of it (e.g. {B * T * world_size * 8})")
        return Geometry(B, T, d.batch_size // (B * world_size), d.val_tokens // (B * T * world_size))


def build_model(cfg: TrainConfig, device: torch.device) -> GPT:
    # Initialise on the CPU from the seed so every device and world size starts from the same weights.
    torch.manual_seed(cfg.run.seed)
    return GPT(cfg.model).to(device)


def split_params(model: GPT) -> tuple[list[nn.Parameter], list[tuple[str, nn.Parameter]]]:
    """(AdamW params: the tied lm_head/embedding; Muon params: everything in the blocks, named)."""
    adam = list(model.lm_head.parameters())
    muon = list(model.transformer["h"].named_parameters())
    bad = [(n, tuple(p.shape)) for n, p in muon if p.ndim != 2]
    if bad:
        name, shape = bad[0]
        raise ConfigError(f"parameter transformer.h.{name} has shape {shape}: Muon takes only 2-D matrices; "
                          "keep block parameters 2-D (gates are bias-free) or route it to AdamW")
    return adam, muon


def build_optimizers(cfg: TrainConfig, model: GPT, env: DistEnv, *, compiled_ns: bool
                     ) -> tuple[torch.optim.AdamW, Muon]:
    o = cfg.optim
    adam_params, muon_named = split_params(model)
    adam = torch.optim.AdamW(adam_params, lr=o.learning_rate, betas=(o.adam_beta1, o.adam_beta2),
                             weight_decay=o.weight_decay, fused=env.device.type == "cuda")
    orth = torch.compile(newton_schulz5) if compiled_ns else newton_schulz5
    muon = Muon([p for _, p in muon_named], lr=o.muon_lr_ratio * o.learning_rate, momentum=o.muon_momentum,
                ns_steps=o.ns_steps, rank=env.rank, world_size=env.world_size, batched=o.muon_batched,
                all_reduce=env.all_reduce_sum, orthogonalize=orth)
    for opt in (adam, muon):
        for g in opt.param_groups:
            g["initial_lr"] = g["lr"]
    return adam, muon


def build_loaders(cfg: TrainConfig, env: DistEnv, geo: Geometry) -> tuple[ShardLoader, ShardLoader]:
    kw = dict(B=geo.B, T=geo.T, rank=env.rank, world_size=env.world_size, vocab_size=cfg.model.vocab_size)
    return (ShardLoader(cfg.data.train_files, field="train_files", **kw),
            ShardLoader(cfg.data.val_files, field="val_files", **kw))


def preflight(cfg: TrainConfig, env: DistEnv) -> Geometry:
    """Every check that can fail on user input, before anything is written or tracked."""
    geo = Geometry.of(cfg, env.world_size)
    build_loaders(cfg, env, geo)
    if cfg.run.run_id:  # a restart must continue the same trial; refuse before any record is touched
        ckpt_dir = Path(cfg.run.out_dir) / "checkpoints" / cfg.run.run_id
        saved = checkpoint.sidecar(ckpt_dir)
        if saved is not None:
            checkpoint.check_same_trial(cfg, saved["config"], ckpt_dir)
            checkpoint.check_same_world(saved.get("world_size"), env.world_size, ckpt_dir)
    return geo


def use_compile(cfg: TrainConfig, device: torch.device) -> bool:
    return cfg.run.compile == "on" or (cfg.run.compile == "auto" and device.type == "cuda")


def select_sdpa_backend(name: str) -> None:
    """Restrict SDPA to one fused kernel (process-wide, before compiling: the choice is traced)."""
    if name == "auto" or not torch.cuda.is_available():
        return
    b = torch.backends.cuda
    b.enable_flash_sdp(name == "flash")
    b.enable_cudnn_sdp(name == "cudnn")
    b.enable_mem_efficient_sdp(name == "efficient")
    b.enable_math_sdp(False)


def compile_model(cfg: TrainConfig, model: GPT) -> nn.Module:
    """'model': the reference's whole-model torch.compile. 'blocks': compile one block (its code is
    shared by all layers, so it is traced once) and the loss head; much shorter start-up."""
    import torch._inductor.config as inductor_config

    inductor_config.coordinate_descent_tuning = cfg.run.cd_tuning
    if cfg.run.compile_threads:  # before the first compile: that is when inductor starts its worker pool
        inductor_config.compile_threads = cfg.run.compile_threads
    mode = None if cfg.run.inductor_mode == "default" else cfg.run.inductor_mode
    if cfg.run.compile_mode == "model":
        return torch.compile(model, mode=mode)  # type: ignore[return-value]
    for block in model.blocks:
        block.compile(mode=mode)
    model.loss_fn = torch.compile(lm_loss, mode=mode)
    return model
