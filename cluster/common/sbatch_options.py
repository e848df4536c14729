"""The sbatch options of a spec, shared by the Slurm backend and Ray on Slurm: partition, account, qos,
constraint, limits, `extra` directives and setup lines (resources.timeout_min < backend.slurm.* <
command-line options, checked by the spec schema), and the one rule for writing an `#SBATCH` line
(submitit's quoting). Pure: no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cluster.errors import BackendError
from sweeps.schema import check_section
from sweeps.spec import SweepSpec

DEFAULT_SIGNAL_DELAY_S = 90
DEFAULT_MAX_REQUEUES = 3
DEFAULT_ARRAY_PARALLELISM = 256  # submitit's default
DEFAULT_MAX_ARRAY_SIZE = 1001  # Slurm's default MaxArraySize, used when the cluster cannot be asked
STRING_OPTS = ("partition", "account", "qos", "constraint")


@dataclass(frozen=True, kw_only=True)
class SlurmOptions:
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    timeout_min: int = 240
    max_requeues: int = DEFAULT_MAX_REQUEUES
    array_parallelism: int = DEFAULT_ARRAY_PARALLELISM
    max_array_size: int | None = None
    """None: the cluster's MaxArraySize (scontrol show config)."""
    signal_delay_s: int = DEFAULT_SIGNAL_DELAY_S
    """SIGUSR2 this many seconds before the time limit: the trainer checkpoints, the job requeues."""
    extra: tuple[tuple[str, Any], ...] = ()
    setup: tuple[str, ...] = ()
    node_jobs: int = 0
    """0: an array task per trial; N: N whole-node jobs, each the local launcher over the spec's trials."""
    node_gpus: int = 8
    """GPUs of each node job (gres)."""


def resolve_options(spec: SweepSpec, cli: Mapping[str, Any]) -> SlurmOptions:
    """resources.timeout_min < backend.slurm.* < command-line options, checked by the spec schema."""
    given = {k: v for k, v in cli.items() if v is not None}
    where = f"{spec.path} with {', '.join('--' + k.replace('_', '-') for k in given)}" if given else spec.path
    section = check_section("backend.slurm", spec.backend_options("slurm") | given, where)
    kw: dict[str, Any] = {"timeout_min": spec.resources.timeout_min}
    kw |= {k: v for k, v in section.model_dump().items() if v is not None}
    kw["extra"] = tuple(sorted(kw.get("extra", {}).items()))
    kw["setup"] = tuple(kw.get("setup", ()))
    opts = SlurmOptions(**kw)
    if opts.signal_delay_s >= opts.timeout_min * 60:
        src = "--timeout-min" if "timeout_min" in given else "backend.slurm.timeout_min"
        raise BackendError(f"{where}: backend.slurm.signal_delay_s={opts.signal_delay_s} is not below the time limit "
                           f"({opts.timeout_min} min); lower it or raise {src}")
    return opts


def sbatch_directive(key: str, value: Any) -> str:
    """One `#SBATCH --key=value` line, quoted by submitit's own rule (True: a bare flag), for scripts
    that gatesweep writes beside submitit's (Ray on Slurm)."""
    from submitit.slurm.slurm import _as_sbatch_flag

    return _as_sbatch_flag(key, value)
