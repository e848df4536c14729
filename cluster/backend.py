"""The launcher interface every backend implements, and the registry of backends.

A backend is a sub-package of `cluster/` whose `__init__` defines `LAUNCHER`, an object with the
`Launcher` interface below: `available()` raises BackendError when it cannot run here (before anything
is written), `run(prep, opts)` runs or submits `prep.trials` (with `opts.dry_run` it prints what it
would do and writes nothing) and returns the exit code. What the backends share - the trials of a
spec, their state, run directories and MLflow runs - is `cluster.common`.

Adding a fourth backend: `cluster/<name>/__init__.py` with a `LAUNCHER`, its name in `BACKENDS`
here, and its options section `backend.<name>` in the spec schema (`sweeps/schema.py`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cluster.errors import BackendError

BACKENDS = ("local", "slurm", "ray")


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """What `gatesweep run` passes every backend (a backend ignores what does not apply to it)."""

    dry_run: bool = False
    check: bool = False
    """Only check that the scheduler would accept the jobs (Slurm: sbatch --test-only); write nothing."""
    wait: bool = False
    max_parallel: int | None = None
    slurm: dict[str, Any] = field(default_factory=dict)
    """--partition, --account, ... (the Slurm options of the command line)."""
    overrides: tuple[str, ...] = ()
    """The command line's key=value (Ray on Slurm passes them on to its driver)."""


class Launcher(Protocol):
    name: str

    def available(self, opts: RunOptions) -> None:
        """Raise BackendError if this backend cannot run here (missing package, no scheduler)."""
        ...

    def run(self, prep: Any, opts: RunOptions) -> int:
        """Run or submit prep.trials (a cluster.common.prepare.Prepared: typed loosely here, so that this
        registry, which cluster.common consults, imports nothing of it); the process exit code (0 ok,
        1 some trials failed, 130 interrupted)."""
        ...

    # optional: job_alive(trials, root) -> Callable[[Path], bool] | None, for a backend whose trials run
    # as scheduler jobs outside any process here (see jobs_alive)


def launcher(name: str) -> Launcher:
    if name not in BACKENDS:
        raise BackendError(f"unknown backend '{name}'; choose {', '.join(BACKENDS)}")
    return importlib.import_module(f"cluster.{name}").LAUNCHER


def jobs_alive(trials: list[Any], root: Path) -> Callable[[Path], bool] | None:
    """Whether a scheduler job of any backend still holds a trial (by its run directory), or None when
    no backend has a job for these trials. Without it a local or Ray launcher would take a trial queued
    in Slurm for stale, mark it KILLED and run it beside the job."""
    checks = [check for name in BACKENDS if (probe := getattr(launcher(name), "job_alive", None)) is not None
              and (check := probe(trials, root)) is not None]
    if not checks:
        return None
    return lambda run_dir: any(check(run_dir) for check in checks)
