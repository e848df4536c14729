"""One torch.compile cache for all trials of a sweep.

Inductor's FX-graph cache and AOTAutograd cache are keyed by the graph, torch/triton versions and
the GPU, so trials that differ only in seed or LR (Python floats, not graph constants) hit the cache
the first trial filled. The launchers point every trial at one directory per sweep (on Slurm it is
on the shared filesystem); `gatesweep warmup SPEC` fills it before a sweep starts and also writes
`megacache.bin` there: torch's portable cache of what it compiled, which every trial loads before
compiling (trial.json's compile_cache), so a node whose local caches are empty starts warm too.
"""

from __future__ import annotations

import os
from pathlib import Path


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
