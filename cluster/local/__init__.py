"""Local backend: each trial is a `python -m trainer` (or torchrun) process on this machine.

Owns the trainer command, the GPU pool and the process runner (runner.py), the warm trainer that
forks single-process trials (warm.py) and the `run` entry point (launch.py): trials up to max_parallel
at a time, packed onto free GPUs.
"""

from __future__ import annotations

from typing import Any

from cluster.backend import RunOptions


class LocalLauncher:
    name = "local"

    def available(self, opts: RunOptions) -> None:
        """Always: the trainer runs wherever gatesweep does."""

    def run(self, prep: Any, opts: RunOptions) -> int:
        from cluster.local.launch import run_local

        return run_local(prep, dry_run=opts.dry_run, max_parallel=opts.max_parallel)


LAUNCHER = LocalLauncher()
