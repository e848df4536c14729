"""The portable compile cache: torch.compiler.save_cache_artifacts / load_cache_artifacts.

A process that compiled (a cold warm-up trial) serializes what inductor, AOTAutograd and the
autotuner wrote into one file; a later trial whose local caches are empty (another node, a node-local
cache directory) loads it before it compiles, so its graphs are cache hits. A trial whose local
FX-graph cache already holds graphs (the sweep's shared cache) skips the file. Only artifacts this process
created are recorded: a run that hit a warm cache has nothing to save, and then writes nothing.
Versions of torch without the API skip both sides with a note.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch


def load(path: str) -> str:
    """Load the cache at `path` if it exists; returns a line for the console. A file this torch cannot
    read (another version, damaged) only costs the compilation it would have saved."""
    if not path:
        return ""
    p = Path(path)
    fn = getattr(torch.compiler, "load_cache_artifacts", None)
    if fn is None:
        return f"compile cache {p}: this torch ({torch.__version__}) cannot load it; compiling"
    if not p.is_file():
        return f"compile cache {p}: not found; compiling"
    if local_cache_is_warm():  # the second trial of a sweep on this node: loading would only rewrite it
        return f"compile cache {p}: the local compile cache is warm; not loaded"
    try:
        info = fn(p.read_bytes())
    except Exception as e:  # noqa: BLE001 - an optimization: never fail a run over it
        return f"compile cache {p}: not loaded ({type(e).__name__}: {str(e)[:120]}); compiling"
    if info is None:  # torch logs why (e.g. a checksum mismatch)
        return f"compile cache {p}: torch could not read it; compiling"
    return f"compile cache {p}: loaded {_count(info)} artifacts ({p.stat().st_size / 2**20:.1f} MiB)"


def local_cache_is_warm() -> bool:
    """True when inductor's FX-graph cache (TORCHINDUCTOR_CACHE_DIR/fxgraph) already holds graphs."""
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir
    except ImportError:
        return False
    fx = Path(cache_dir()) / "fxgraph"
    return fx.is_dir() and any(fx.iterdir())


def save(path: str) -> str:
    """Write this process's compile artifacts to `path` (atomically), unless there are none."""
    fn = getattr(torch.compiler, "save_cache_artifacts", None)
    if not path or fn is None:
        return f"compile cache {path}: this torch ({torch.__version__}) cannot save it" if path else ""
    out = fn()
    if out is None or not _count(out[1]):
        return f"compile cache {path}: nothing compiled in this run (caches were warm); not written"
    data, info = out
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, p)
    return f"compile cache {p}: saved {_count(info)} artifacts ({len(data) / 2**20:.1f} MiB)"


def _count(info: object) -> int:
    """Number of artifacts in a torch CacheInfo (None counts as 0)."""
    if info is None:
        return 0
    artifacts = getattr(info, "artifacts", None)
    if isinstance(artifacts, dict):
        return sum(len(v) for v in artifacts.values())
    return 1


def hit_counts() -> str:
    """Compile-cache hits and misses so far in this process (FX graphs, AOTAutograd), for the log."""
    from torch._dynamo.utils import counters

    fx, aot = counters["inductor"], counters["aot_autograd"]
    return (f"fx graph cache {fx['fxgraph_cache_hit']} hit / {fx['fxgraph_cache_miss']} miss, "
            f"aot autograd cache {aot['autograd_cache_hit']} hit / {aot['autograd_cache_miss']} miss")


def compile_timers(top: int = 6) -> str:
    """The largest of torch's own compile timers so far (seconds summed per key; the keys nest, e.g.
    backend_compile is part of _compile.compile_inner), for the first-step line."""
    try:
        from torch._dynamo.utils import compilation_time_metrics
    except ImportError:
        return ""
    sums = sorted(((sum(v), k) for k, v in compilation_time_metrics.items() if v), reverse=True)[:top]
    return ", ".join(f"{k} {s:.2f}s" for s, k in sums)
