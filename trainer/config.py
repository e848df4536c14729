"""Typed trainer configuration: one frozen dataclass per component, addressed by flat keys.

Every field name is unique across sections, so a flat key (`learning_rate`, `attn_gate`) names one
field; `section.key` works too. Defaults are the reference ModernArch run (modded-nanogpt record
2024-10-14): 5100 iterations, LR 0.0036, warmdown 1450, global batch 8x64x1024, val every 125 steps
over 10,485,760 tokens, data in data/fineweb10B/.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import re
import reprlib
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, get_type_hints

from trainer.errors import ConfigError

GATES = ("none", "headwise", "elementwise", "const")
GATE_POSITIONS = ("sdpa", "value")
GATE_ACTIVATIONS = ("sigmoid", "ns_sigmoid")
COMPILE_MODES = ("auto", "on", "off")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    vocab_size: int = 50304
    """Token ids are below this (GPT-2's 50257 padded to a multiple of 128)."""
    n_layer: int = 12
    """Transformer blocks."""
    n_head: int = 6
    """Attention heads; n_embd must be a multiple of it (head_dim = n_embd / n_head, even for rotary)."""
    n_embd: int = 768
    """Model width."""
    attn_gate: str = "none"
    """none | headwise (Linear(d, n_head)) | elementwise (Linear(d, d)) | const (zero-init (n_head, head_dim))."""
    gate_pos: str = "sdpa"
    """sdpa: gate the SDPA output before the output projection (paper G1); value: gate V (G2)."""
    gate_act: str = "sigmoid"
    """sigmoid | ns_sigmoid (0.5 + 0.5*sigmoid: keeps the non-linearity, removes sparsity)."""
    fused_proj: bool = True
    """Compute q, k, v (and the gate) with one GEMM on concatenated weights; parameters stay separate.
    Same math, other rounding; false (or fast=false) = the reference's three GEMMs."""
    ce_chunks: int = 8
    """Split the lm_head + fp32 cross-entropy into this many chunks of tokens (1 = the reference path;
    a token count that does not divide evenly gets a shorter last chunk)."""
    gate_gemm: str = "auto"
    """With fused_proj, where the gate's projection runs: auto (in the fused q/k/v GEMM when its row count
    is a multiple of 64, else separate) | separate (a GEMM of its own) | separate_pad8 (its own GEMM, rows
    zero-padded to a multiple of 8) | fused | fused_pad8 | fused_pad64 (in the fused GEMM, its output
    columns zero-padded to a multiple of 8 / 64). Same math; a speed choice."""

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    learning_rate: float = 0.0036
    """AdamW LR of lm_head; Muon gets muon_lr_ratio * learning_rate."""
    muon_lr_ratio: float = 0.1
    """Muon's learning rate = muon_lr_ratio x learning_rate."""
    muon_momentum: float = 0.95
    """Muon's Nesterov momentum, in [0, 1)."""
    ns_steps: int = 5
    """Newton-Schulz iterations that orthogonalize each Muon update."""
    muon_batched: bool = True
    """Run Newton-Schulz on same-shape matrices as one batch (same math, fewer kernel launches)."""
    adam_beta1: float = 0.9
    """AdamW beta1 (lm_head)."""
    adam_beta2: float = 0.95
    """AdamW beta2 (lm_head)."""
    weight_decay: float = 0.0
    """AdamW weight decay (lm_head)."""
    warmup_iters: int = 0
    """Steps of linear LR warmup from 0."""
    warmdown_iters: int = 1450
    """Steps of linear LR decay to 0 at the end (more than num_iterations: the decay starts below 1)."""


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    train_files: str = "data/fineweb10B/fineweb_train_*.bin"
    """Glob of the training shards (relative to the project directory)."""
    val_files: str = "data/fineweb10B/fineweb_val_*.bin"
    """Glob of the validation shards."""
    batch_size: int = 512
    """Global batch in sequences, across all ranks and accumulation steps."""
    device_batch_size: int = 64
    """Sequences per rank per micro-step; batch_size / (device_batch_size x ranks) micro-steps per step."""
    sequence_length: int = 1024
    """Tokens per sequence."""
    val_tokens: int = 10_485_760
    """Tokens of the validation set read at each evaluation."""
    replay_first_batch: bool = True
    """Reproduce the reference's token order: it draws batch 0 before model build, then resets the
    loader, so batch 0 is trained twice. False gives the plain order."""


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    num_iterations: int = 5100
    """Training steps."""
    val_every: int = 125
    """Evaluate every N steps (and at step 0 and the last step); 0 = only at the end."""
    seed: int = 0
    """Seeds the model's initial weights and the data order (a spec sets it per trial from `seeds`)."""
    device: str = "auto"
    """auto (CUDA if available, else CPU) | cpu | cuda."""
    compile: str = "auto"
    """auto = on for CUDA, off for CPU."""
    compile_mode: str = "blocks"
    """model: torch.compile the whole model (the reference); blocks: compile one block (reused by all
    layers) and the loss head separately, which compiles far faster."""
    inductor_mode: str = "default"
    """torch.compile mode: default | max-autotune-no-cudagraphs (autotuned GEMMs, longer compile) |
    max-autotune | reduce-overhead (both with CUDA graphs)."""
    compile_cache: str = ""
    """A portable compile cache (torch.compiler.save_cache_artifacts) loaded at start when the file
    exists; `gatesweep warmup` writes one into the sweep's compile cache. Empty: none."""
    save_compile_cache: str = ""
    """Write the portable compile cache (what this run compiled) to this file at the end of the run;
    `gatesweep warmup` sets it. Nothing is written when every graph came from a warm cache."""
    compile_threads: int = 0
    """Inductor's compile worker processes (0: inductor's default, about one per core). 1 compiles in this
    process and starts no worker pool (a fresh Python per worker at the first compile, even when every
    graph is a cache hit): the local launcher sets it for trials whose graphs its sweep has compiled."""
    cd_tuning: bool = False
    """Inductor coordinate-descent tuning of kernel configs (the reference turns it on). Costs compile
    time once; the sweep's shared compile cache keeps the tuned configs for later trials."""
    sdpa_backend: str = "auto"
    """auto | flash | cudnn | efficient: which fused attention kernel SDPA may use (same math)."""
    checkpoint_every: int = 0
    """Save a checkpoint every N steps (0 = only on SIGTERM/SIGUSR2 and, if save_final, at the end)."""
    save_final: bool = False
    """Also save a checkpoint when the run ends."""
    out_dir: str = "."
    """Run logs go to out_dir/logs/<run_id>.txt, checkpoints to out_dir/checkpoints/."""
    run_id: str = ""
    """Empty: a fresh uuid4. A run started again with the same run_id resumes from its checkpoint."""
    results_csv: str = "experiments/results.csv"
    """One row per finished run is appended here (the study's columns)."""
    notes: str = ""
    """Free text recorded with the run (params, results.csv)."""
    diag_every: int = 0
    """Gate/attention-sink/activation diagnostics every N steps at validation time (0 = off)."""
    diag_batch: int = 2
    """Sequences in the fixed val batch the diagnostics read."""
    log_every: int = 1
    """Write a train step line to the log and tracker every N steps."""
    fast: bool = True
    """The same-math fast paths: fused_proj, ce_chunks=8, muon_batched. false = the plain reference
    path (3 q/k/v GEMMs, one cross-entropy, one Newton-Schulz per matrix). Setting `fast` sets those
    three keys, except any given beside it in the same config layer, which win."""


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=RunConfig)

    # ---------------------------------------------------------------- flat view
    def flat(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for section in SECTIONS:
            out.update(dataclasses.asdict(getattr(self, section)))
        return out

    def override(self, values: dict[str, Any], *, source: str = "override") -> TrainConfig:
        """Return a copy with flat (or `section.key`) overrides applied and validated."""
        changes: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
        for raw_key, raw_value in values.items():
            section, key = locate(raw_key, source=source)
            changes[section][key] = coerce(section, key, raw_value, source=source)
        if "fast" in changes["run"]:
            fast = changes["run"]["fast"]
            for key, (on, off) in FAST_PATHS.items():
                changes[FIELD_SECTION[key]].setdefault(key, on if fast else off)
        cfg = replace(self, **{s: replace(getattr(self, s), **c) for s, c in changes.items() if c})
        validate(cfg, source=source)
        return cfg

    @classmethod
    def from_flat(cls, values: dict[str, Any], *, source: str = "config") -> TrainConfig:
        values = dict(values)
        preset = values.pop("preset", "reference")
        return preset_config(str(preset), source=source).override(values, source=source)


SECTIONS = ("model", "optim", "data", "run")
_SECTION_TYPES = {"model": ModelConfig, "optim": OptimConfig, "data": DataConfig, "run": RunConfig}
FIELD_SECTION: dict[str, str] = {f.name: s for s, t in _SECTION_TYPES.items() for f in fields(t)}
_TYPES: dict[str, dict[str, Any]] = {s: get_type_hints(t) for s, t in _SECTION_TYPES.items()}
CHOICES: dict[str, tuple[str, ...]] = {
    "attn_gate": GATES,
    "gate_pos": GATE_POSITIONS,
    "gate_act": GATE_ACTIVATIONS,
    "compile": COMPILE_MODES,
    "compile_mode": ("model", "blocks"),
    "inductor_mode": ("default", "max-autotune-no-cudagraphs", "max-autotune", "reduce-overhead"),
    "gate_gemm": ("auto", "separate", "separate_pad8", "fused", "fused_pad8", "fused_pad64"),
    "device": DEVICES,
    "sdpa_backend": ("auto", "flash", "cudnn", "efficient"),
}
ALL_KEYS = tuple(FIELD_SECTION) + ("preset",)

# Upper bounds of integer keys: a typo such as num_iterations=1e30 fails here with the bound, not
# later as an overflow or an allocation. Seeds must fit torch/numpy generators (int64).
SEED_MAX = 2**63 - 1
INT_MAX = 10**9
INT_LIMITS: dict[str, int] = {
    "seed": SEED_MAX, "num_iterations": 10**7, "warmup_iters": 10**7, "warmdown_iters": 10**7,
    "val_every": 10**7, "checkpoint_every": 10**7, "diag_every": 10**7, "log_every": 10**7,
    "val_tokens": 10**12, "vocab_size": 2**20, "n_layer": 1024, "n_head": 1024, "n_embd": 2**16,
    "sequence_length": 2**20, "batch_size": 2**20, "device_batch_size": 2**20, "ns_steps": 100,
    "ce_chunks": 2**16, "diag_batch": 2**16,
}
RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_short = reprlib.Repr()
_short.maxstring = _short.maxother = 60

# Keys that change where or how fast a run executes but not what it computes: excluded from the
# trial identity so that e.g. turning on compile or moving out_dir does not make a "new" trial.
NON_IDENTITY_KEYS = frozenset({
    "device", "compile", "compile_mode", "checkpoint_every", "save_final", "out_dir", "run_id",
    "results_csv", "notes", "log_every", "diag_every", "diag_batch", "fused_proj", "ce_chunks",
    "muon_batched", "cd_tuning", "sdpa_backend", "fast", "gate_gemm", "inductor_mode", "compile_cache",
    "save_compile_cache", "compile_threads",
})
# What `fast` sets: key -> (value when true, value when false = the reference's path).
FAST_PATHS: dict[str, tuple[Any, Any]] = {"fused_proj": (True, False), "ce_chunks": (8, 1),
                                          "muon_batched": (True, False)}


def locate(raw_key: str, *, source: str) -> tuple[str, str]:
    """Map a flat or dotted key to (section, field); unknown keys get suggestions."""
    key = raw_key
    if "." in raw_key:
        section, key = raw_key.split(".", 1)
        if section not in SECTIONS or FIELD_SECTION.get(key) != section:
            raise ConfigError(f"{source}: unknown key '{raw_key}'{_suggest(key)}")
        return section, key
    if key not in FIELD_SECTION:
        raise ConfigError(f"{source}: unknown key '{raw_key}'{_suggest(key)}")
    return FIELD_SECTION[key], key


def close_matches(word: str, options: Sequence[str], n: int = 3, cutoff: float = 0.6) -> list[str]:
    """The options a typo most likely meant (for "did you mean ...?" hints everywhere)."""
    return difflib.get_close_matches(word, list(options), n=n, cutoff=cutoff)


def did_you_mean(word: str, options: Sequence[str], n: int = 2, cutoff: float = 0.6) -> str:
    """` (did you mean 'a' or 'b'?)`, or '' when nothing is close (spec, schema and search messages)."""
    close = close_matches(word, options, n=n, cutoff=cutoff)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def _suggest(key: str) -> str:
    close = close_matches(key, ALL_KEYS)
    if close:
        return f"; did you mean {' or '.join(repr(c) for c in close)}?"
    return "; run `gatesweep train --help-config` for the list of keys"


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def coerce(section: str, key: str, value: Any, *, source: str) -> Any:
    """Convert a YAML/CLI/env value to the field's type, or raise naming the key and the fix."""
    typ = _TYPES[section][key]
    where = f"{source}: {key}={_short.repr(value)}"  # bounded: a YAML value may be huge
    if typ is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in _TRUE:
            return True
        if str(value).lower() in _FALSE:
            return False
        raise ConfigError(f"{where} is not a boolean; use true or false")
    if typ is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be an integer, not a boolean")
        if not isinstance(value, int):
            try:
                as_float = float(str(value).replace("_", ""))
            except ValueError:
                raise ConfigError(f"{where} is not an integer; use e.g. {key}=100") from None
            if not as_float.is_integer():
                raise ConfigError(f"{where} must be a whole number")
            value = int(as_float)
        limit = INT_LIMITS.get(key, INT_MAX)
        if value > limit:
            raise ConfigError(f"{where} is out of range; use a value <= {limit:_}")
        return value
    if typ is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be a number, not a boolean")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} is not a number; use e.g. {key}=0.0036") from None
        if not math.isfinite(number):  # nan passes every `<= 0` check and reaches the optimizer
            raise ConfigError(f"{where} must be a finite number, not {_short.repr(value)}")
        return number
    if typ is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where} must be a string")
        if key == "compile" and (isinstance(value, bool) or str(value).lower() in _TRUE | _FALSE):
            value = "on" if value is True or str(value).lower() in _TRUE else "off"  # compile=true works
        value = str(value)
        if key in CHOICES and value not in CHOICES[key]:
            raise ConfigError(
                f"{where} is not one of {', '.join(CHOICES[key])}{_suggest_choice(value, CHOICES[key])}")
        return value
    raise AssertionError(f"unhandled type {typ} for {key}")


def _suggest_choice(value: str, choices: tuple[str, ...]) -> str:
    close = close_matches(value, choices, n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else ""


def validate(cfg: TrainConfig, *, source: str = "config") -> None:
    """Checks that need several fields; world-size-dependent checks live in loop.check_world."""
    m, o, d, r = cfg.model, cfg.optim, cfg.data, cfg.run
    positive = {"vocab_size": m.vocab_size, "n_layer": m.n_layer, "n_head": m.n_head, "n_embd": m.n_embd,
                "batch_size": d.batch_size, "device_batch_size": d.device_batch_size,
                "sequence_length": d.sequence_length, "val_tokens": d.val_tokens,
                "num_iterations": r.num_iterations, "ns_steps": o.ns_steps, "ce_chunks": m.ce_chunks,
                "log_every": r.log_every, "diag_batch": r.diag_batch}
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{source}: {key}={value} must be > 0")
    if not 0 <= r.seed <= SEED_MAX:
        raise ConfigError(f"{source}: seed={r.seed} must be in [0, 2**63 - 1] (what torch's generator takes)")
    if r.run_id and not RUN_ID_RE.fullmatch(r.run_id):
        raise ConfigError(f"{source}: run_id={_short.repr(r.run_id)} must be a plain name (letters, digits, "
                          "'_', '.', '-'; at most 128): it names files under out_dir")
    if o.learning_rate <= 0:
        raise ConfigError(f"{source}: learning_rate={o.learning_rate} must be > 0 (the study uses 0.0036)")
    for key in ("warmup_iters", "warmdown_iters", "val_every", "checkpoint_every", "diag_every", "compile_threads"):
        value = getattr(getattr(cfg, FIELD_SECTION[key]), key)
        if value < 0:
            raise ConfigError(f"{source}: {key}={value} must be >= 0")
    if m.n_embd % m.n_head:
        raise ConfigError(f"{source}: n_embd={m.n_embd} is not divisible by n_head={m.n_head}; "
                          "choose n_embd as a multiple of n_head")
    if m.head_dim % 2:
        raise ConfigError(f"{source}: head_dim=n_embd/n_head={m.head_dim} must be even for rotary")
    if o.warmup_iters > r.num_iterations:
        raise ConfigError(f"{source}: warmup_iters={o.warmup_iters} exceeds num_iterations={r.num_iterations}")
    # warmdown_iters > num_iterations is allowed, as in the reference: the decay then starts below 1
    # (the study ran 800 and 1500 iterations with warmdown_iters=1450).
    if d.batch_size % d.device_batch_size:
        raise ConfigError(f"{source}: batch_size={d.batch_size} is not a multiple of "
                          f"device_batch_size={d.device_batch_size}")
    if not 0 <= o.muon_momentum < 1:
        raise ConfigError(f"{source}: muon_momentum={o.muon_momentum} must be in [0, 1)")


# ---------------------------------------------------------------- presets
PRESETS: dict[str, dict[str, Any]] = {
    "reference": {},
    # A CPU-sized model for tests, the demo and synthetic data (vocab 512 matches `data synth`).
    "tiny": {
        "vocab_size": 512, "n_layer": 2, "n_head": 2, "n_embd": 128,
        "batch_size": 16, "device_batch_size": 8, "sequence_length": 256, "val_tokens": 32768,
        "num_iterations": 200, "warmdown_iters": 60, "val_every": 50, "learning_rate": 0.02,
        "train_files": "data/synth/synth_train_*.bin", "val_files": "data/synth/synth_val_*.bin",
    },
}


def preset_config(name: str, *, source: str = "config") -> TrainConfig:
    if name not in PRESETS:
        raise ConfigError(f"{source}: preset={name!r} is not one of {', '.join(PRESETS)}"
                          f"{_suggest_choice(name, tuple(PRESETS))}")
    base = TrainConfig()
    return base.override(PRESETS[name], source=f"preset {name}") if PRESETS[name] else base


# ---------------------------------------------------------------- identity
def trial_identity(cfg: TrainConfig) -> dict[str, Any]:
    return {k: v for k, v in sorted(cfg.flat().items()) if k not in NON_IDENTITY_KEYS}


def config_hash(cfg: TrainConfig, length: int = 12) -> str:
    blob = json.dumps(trial_identity(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(blob.encode()).hexdigest()[:length]
