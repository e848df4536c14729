"""How every launcher starts the trainer on one node: `python -m trainer trial.json`, or torchrun with
one process per GPU (`--standalone`: the node's own rendezvous). The local backend, Ray's trial actors
and `gatesweep warmup` run it; Slurm starts one rank per task itself (cluster.slurm.job)."""

from __future__ import annotations

import sys
from pathlib import Path


def trainer_command(trial_json: Path, nproc: int, python: str = sys.executable) -> list[str]:
    if nproc <= 1:
        return [python, "-m", "trainer", str(trial_json)]
    return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "trainer", str(trial_json)]
