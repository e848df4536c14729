"""Ray Tune backend: a spec's `search:` block (or its own trials) as Tune trials under ASHA.

Owns the options and dry-run text (plan.py; the search space is cluster.common.search), the
driver (launch.py), the trainable and its engines (trainable.py, child.py), the driver's callbacks
(callbacks.py), the best value per design point (summary.py) and Ray on a Slurm allocation
(on_slurm.py). Imports no Ray until a search runs.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from cluster.backend import RunOptions
from cluster.errors import BackendUnavailable


class RayLauncher:
    name = "ray"

    def available(self, opts: RunOptions) -> None:
        if importlib.util.find_spec("ray") is None:
            raise BackendUnavailable("backend 'ray' needs Ray Tune: pip install 'gatesweep[ray]' (or make setup)")

    def run(self, prep: Any, opts: RunOptions) -> int:
        from cluster.ray.launch import run_ray

        return run_ray(prep, dry_run=opts.dry_run, max_parallel=opts.max_parallel, overrides=opts.overrides,
                       slurm_opts=opts.slurm)


LAUNCHER = RayLauncher()
