"""One torch.compile cache for all trials of a sweep.

Inductor's FX-graph cache and AOTAutograd cache are keyed by the graph, torch/triton versions and
the GPU, so trials that differ only in seed or LR (Python floats, not graph constants) hit the cache
the first trial filled. The launchers point every trial at one directory per sweep (on Slurm it is
on the shared filesystem); `gatesweep warmup SPEC` fills it before a sweep starts and also writes
`megacache.bin` there: torch's portable cache of what it compiled, which every trial loads before
compiling (trial.json's compile_cache), so a node whose local caches are empty starts warm too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Trainer keys that leave the compiled graphs alone (numbers the optimizers and the loop read in
# Python, file paths, bookkeeping): trials that differ only in these load one another's graphs.
GRAPH_NEUTRAL = frozenset({
    "seed", "learning_rate", "muon_lr_ratio", "muon_momentum", "adam_beta1", "adam_beta2", "weight_decay",
    "warmup_iters", "warmdown_iters", "num_iterations", "val_every", "val_tokens", "checkpoint_every",
    "save_final", "out_dir", "run_id", "results_csv", "notes", "log_every", "diag_every", "train_files",
    "val_files", "compile_cache", "save_compile_cache",
})


def cache_dir(sweep_dir: Path) -> Path:
    return Path(os.environ.get("GATESWEEP_COMPILE_CACHE", str(sweep_dir / ".compile-cache"))).resolve()


def megacache_path(sweep_dir: Path) -> Path:
    return cache_dir(sweep_dir) / "megacache.bin"


def cache_env(sweep_dir: Path) -> dict[str, str]:
    d = cache_dir(sweep_dir)
    return {
        "TORCHINDUCTOR_CACHE_DIR": str(d / "inductor"),
        "TRITON_CACHE_DIR": str(d / "triton"),
        "TORCHINDUCTOR_FX_GRAPH_CACHE": "1",
        "TORCHINDUCTOR_AUTOGRAD_CACHE": "1",
    }


def cache_is_cold(sweep_dir: Path) -> bool:
    """True until a trial has written compiled graphs into the sweep's cache."""
    inductor = cache_dir(sweep_dir) / "inductor"
    return not inductor.is_dir() or not any(inductor.iterdir())


WARM_FAMILIES = "warm_families.json"  # in the cache dir: the families `gatesweep warmup` compiled


def family_key(cfg: dict[str, Any]) -> str:
    """What decides a trial's compiled graphs: its flat config without the GRAPH_NEUTRAL keys."""
    return json.dumps({k: v for k, v in sorted(cfg.items()) if k not in GRAPH_NEUTRAL}, default=str)


def graph_families(configs: Sequence[dict[str, Any]]) -> list[int]:
    """Indices of the first config of each graph family (configs that differ only in GRAPH_NEUTRAL
    keys): what `gatesweep warmup` compiles, one process per family."""
    seen: dict[str, int] = {}
    for i, cfg in enumerate(configs):
        seen.setdefault(family_key(cfg), i)
    return sorted(seen.values())


def mark_warm(sweep_dir: Path, configs: Sequence[dict[str, Any]]) -> None:
    """Record that the families of `configs` are in the sweep's compile cache (atomically)."""
    path = cache_dir(sweep_dir) / WARM_FAMILIES
    keys = sorted(warm_families(sweep_dir) | {family_key(c) for c in configs})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(keys))
    os.replace(tmp, path)


def warm_families(sweep_dir: Path) -> set[str]:
    """Family keys `gatesweep warmup` compiled into this sweep's cache (empty when it never ran)."""
    try:
        return set(json.loads((cache_dir(sweep_dir) / WARM_FAMILIES).read_text()))
    except (OSError, ValueError):
        return set()
