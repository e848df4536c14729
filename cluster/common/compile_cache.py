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


def graph_families(configs: Sequence[dict[str, Any]]) -> list[int]:
    """Indices of the first config of each graph family (configs that differ only in GRAPH_NEUTRAL
    keys): what `gatesweep warmup` compiles, one process per family."""
    seen: dict[str, int] = {}
    for i, cfg in enumerate(configs):
        key = json.dumps({k: v for k, v in sorted(cfg.items()) if k not in GRAPH_NEUTRAL}, default=str)
        seen.setdefault(key, i)
    return sorted(seen.values())
