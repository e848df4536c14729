"""Slurm backend: a spec's trials as submitit job arrays.

Owns the pure sbatch builder (sbatch.py: options -> executor parameters -> script text), the
executor (launch.py: check, snapshot, records, submit), what runs inside a job (job.py), the
scheduler's view of the trials (state.py: squeue/sacct), `--wait` (wait.py) and the code snapshot
queued jobs run (snapshot.py).
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cluster.backend import RunOptions
from cluster.common.trialdir import trial_dir
from cluster.errors import BackendUnavailable


class SlurmLauncher:
    name = "slurm"

    def available(self, opts: RunOptions) -> None:
        if importlib.util.find_spec("submitit") is None:
            raise BackendUnavailable("backend 'slurm' needs submitit: pip install 'gatesweep[slurm]' (or make setup)")
        if opts.dry_run:  # a dry run prints its sbatch scripts on any machine
            return
        if shutil.which("sbatch") is None:
            raise BackendUnavailable("backend 'slurm' is not available here: `sbatch` not found on PATH; on a "
                                     "cluster login node load Slurm, for a local dev cluster run `make slurm-up`, "
                                     "or use --backend local")

    def run(self, prep: Any, opts: RunOptions) -> int:
        from cluster.slurm.launch import run_slurm

        return run_slurm(prep, dry_run=opts.dry_run, wait=opts.wait, opts=opts.slurm, check=opts.check)

    def job_alive(self, trials: list[Any], root: Path) -> Callable[[Path], bool] | None:
        """Trials submitted to Slurm (a slurm.json in the run directory): alive while squeue lists their
        job as pending or running (one squeue call); None when none of them was submitted."""
        submitted = [t for t in trials if (trial_dir(t, root) / "slurm.json").exists()]
        if not submitted:
            return None
        from cluster.slurm.state import SlurmView

        return SlurmView(submitted, root).job_live


LAUNCHER = SlurmLauncher()
