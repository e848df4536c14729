"""How many CPU ranks this machine can run: checked by the trainer (dist.setup) and, before anything
is written, by the local launcher. Free of torch so that the launcher need not import it (~1.5 s)."""

from __future__ import annotations

import os

from trainer.errors import ConfigError


def check_cpu_ranks(local_ranks: int, cores: int | None = None) -> None:
    """CPU ranks beyond the cores this process may use are refused: the ranks would time-share cores
    and every collective would wait for a descheduled rank."""
    cores = len(os.sched_getaffinity(0)) if cores is None else cores
    if local_ranks > cores:
        raise ConfigError(f"{local_ranks} CPU ranks on this machine but only {cores} CPU core(s) available: run "
                          f"with --nproc_per_node={cores} or fewer (resources.gpus_per_node for a spec), or on GPUs")
