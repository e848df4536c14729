"""Slurm backend, pure part: spec + command-line options -> submitit executor parameters -> sbatch text.

No I/O here. The text comes from submitit's own builder (`_make_sbatch_string`) with the very
parameters the executor gets, so `--dry-run` prints exactly what `sbatch` receives (a test compares
it with the submitted file). Every value is quoted by that builder (`#SBATCH --partition='a b;x'`) or
by `shlex.quote` in our setup lines; values with control characters are refused, because a newline
inside a quoted `#SBATCH` value would end the comment and start a shell command.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.common.store import LEAKY_ENV
from cluster.errors import BackendError
from sweeps.spec import Resources, SweepSpec
from trainer.overrides import ENV_KEYS

DEFAULT_SIGNAL_DELAY_S = 90
DEFAULT_MAX_REQUEUES = 3
DEFAULT_ARRAY_PARALLELISM = 256  # submitit's default
DEFAULT_MAX_ARRAY_SIZE = 1001  # Slurm's default MaxArraySize, used when the cluster cannot be asked
STRING_OPTS = ("partition", "account", "qos", "constraint")
INT_OPTS = {"timeout_min": 1, "max_requeues": 0, "array_parallelism": 1, "max_array_size": 1, "signal_delay_s": 1}
# sbatch options the backend derives itself; `extra` must not override them (the fix is the named field).
RESERVED_EXTRA = {
    "array": "backend.slurm.array_parallelism", "output": "(the job folder)", "error": "(the job folder)",
    "open-mode": "(the job folder)", "signal": "backend.slurm.signal_delay_s", "job-name": "(spec name)",
    "nodes": "resources.nodes", "ntasks-per-node": "resources.gpus_per_node",
    "gpus-per-node": "resources.gpus_per_node", "cpus-per-task": "resources.cpus_per_task",
    "mem": "resources.mem_gb", "time": "backend.slurm.timeout_min", "partition": "backend.slurm.partition",
    "account": "backend.slurm.account", "qos": "backend.slurm.qos", "constraint": "backend.slurm.constraint",
    "dependency": "(chained job arrays)", "requeue": "(always on)", "wrap": "(the job command)",
}
EXTRA_KEY_RE = re.compile(r"^[a-z][a-z0-9-]*$")
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
# Env vars of the submitting shell (sbatch exports it all) that must not reach the trainer: MLflow
# scope (runs would land in another experiment/run) and the trainer's quick-start overrides (LR=...
# would beat trial.json, so the job would train another config than its trial says).
UNSET_ENV = LEAKY_ENV + tuple(ENV_KEYS)


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


def _where(spec: SweepSpec, key: str, from_cli: bool) -> str:
    return f"--{key.replace('_', '-')}" if from_cli else f"{spec.path}: backend.slurm.{key}"


def _text(value: Any, where: str) -> str:
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise BackendError(f"{where}: expected a string, got {value!r}")
    text = str(value)
    if CONTROL_RE.search(text):
        raise BackendError(f"{where}={text!r} contains a control character (newline, tab, ...); remove it")
    return text


def _int(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise BackendError(f"{where}: expected an integer >= {minimum}, got {value!r}")
    return value


def _extra(value: Any, where: str) -> tuple[tuple[str, Any], ...]:
    if not isinstance(value, Mapping):
        raise BackendError(f"{where}: expected a mapping of sbatch options, e.g. {{mail-type: END, exclusive: true}}")
    out = []
    for key, v in value.items():
        k = str(key).replace("_", "-")
        if not EXTRA_KEY_RE.match(k):
            raise BackendError(f"{where}.{key}: not an sbatch long option name (lowercase letters, digits, '-')")
        if k in RESERVED_EXTRA:
            raise BackendError(f"{where}.{key}: set by gatesweep; use {RESERVED_EXTRA[k]} instead")
        if v is False or v is None:
            continue  # an absent flag
        out.append((k, True if v is True else _text(v, f"{where}.{key}")))
    return tuple(sorted(out))


def _setup(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise BackendError(f"{where}: expected a list of shell lines, e.g. ['module load cuda/12.4']")
    # Setup lines are the spec author's own shell code (module loads): run as written, one per line.
    return tuple(_text(line, f"{where}[{i}]") for i, line in enumerate(value))


def resolve_options(spec: SweepSpec, cli: Mapping[str, Any]) -> SlurmOptions:
    """resources.timeout_min < backend.slurm.* < command-line options; every value checked."""
    cfg = spec.backend_options("slurm")
    merged: dict[str, tuple[Any, bool]] = {k: (v, False) for k, v in cfg.items()}
    merged |= {k: (v, True) for k, v in cli.items() if v is not None}
    kw: dict[str, Any] = {"timeout_min": spec.resources.timeout_min}
    for key, (value, from_cli) in merged.items():
        where = _where(spec, key, from_cli)
        if key in STRING_OPTS:
            kw[key] = _text(value, where)
        elif key in INT_OPTS:
            kw[key] = _int(value, where, INT_OPTS[key])
        elif key == "extra":
            kw[key] = _extra(value, where)
        elif key == "setup":
            kw[key] = _setup(value, where)
        else:
            raise BackendError(f"{where}: unknown Slurm option; valid: {', '.join(STRING_OPTS + tuple(INT_OPTS))}, "
                               "extra, setup")
    opts = SlurmOptions(**kw)
    if opts.signal_delay_s >= opts.timeout_min * 60:
        raise BackendError(f"{_where(spec, 'signal_delay_s', 'signal_delay_s' in cli)}={opts.signal_delay_s} is not "
                           f"below the time limit ({opts.timeout_min} min); lower it or raise timeout_min")
    return opts


def ranks_per_node(res: Resources) -> int:
    """One trainer rank per GPU; one rank on a node without GPUs."""
    return max(res.gpus_per_node, 1)


def setup_lines(snapshot: Path, env: Mapping[str, str], user_setup: tuple[str, ...] = ()) -> list[str]:
    """The job's environment: the code snapshot first on PYTHONPATH, `env` exported, leaky vars unset."""
    # PYTHONSAFEPATH: `python -m ...` would put the job's cwd (usually the checkout) ahead of the snapshot.
    lines = [f'export PYTHONPATH={shlex.quote(str(snapshot))}"${{PYTHONPATH:+:$PYTHONPATH}}"',
             "export PYTHONSAFEPATH=1 PYTHONUNBUFFERED=1"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items())]
    lines.append("unset " + " ".join(UNSET_ENV))
    return lines + list(user_setup)


def executor_params(res: Resources, opts: SlurmOptions, *, job_name: str, setup: list[str]) -> dict[str, Any]:
    """Parameters for submitit's SlurmExecutor.update_parameters (its sbatch names)."""
    params: dict[str, Any] = {
        "job_name": job_name, "nodes": res.nodes, "ntasks_per_node": ranks_per_node(res),
        "cpus_per_task": res.cpus_per_task, "time": opts.timeout_min, "signal_delay_s": opts.signal_delay_s,
        "array_parallelism": opts.array_parallelism,
        # Slurm >= 22.05: srun no longer inherits --cpus-per-task from sbatch
        "setup": [f"export SRUN_CPUS_PER_TASK={res.cpus_per_task}", *setup],
        # --requeue: `scontrol requeue` (submitit's checkpoint protocol) and preemption need it where
        # the cluster's JobRequeue default is 0.
        "additional_parameters": {"requeue": True, **dict(opts.extra)},
        # submitit adds --wckey=submitit by default; where wckeys are enforced that rejects the job
        # (set one with backend.slurm.extra.wckey)
        "wckey": None,
    }
    if res.gpus_per_node > 0:
        params["gpus_per_node"] = res.gpus_per_node
    if res.mem_gb > 0:
        params["mem"] = f"{res.mem_gb}GB"
    for key in STRING_OPTS:
        if getattr(opts, key) is not None:
            params[key] = getattr(opts, key)
    return params


def submit_command(python: str, folder: Path) -> str:
    """What every task runs (the same string submitit's SlurmExecutor builds from `python`)."""
    return " ".join([shlex.quote(python), "-u -m submitit.core._submit", shlex.quote(str(folder))])


def sbatch_text(params: Mapping[str, Any], *, folder: Path, python: str, array_size: int | None) -> str:
    """The sbatch script submitit writes for these parameters (an array of `array_size` tasks if > 1)."""
    from submitit.slurm.slurm import _make_sbatch_string

    map_count = array_size if array_size and array_size > 1 else None
    return _make_sbatch_string(command=submit_command(python, folder), folder=folder, map_count=map_count, **params)


def chunks(n: int, max_array_size: int) -> list[range]:
    """Split n array tasks into arrays of at most max_array_size (indices 0..size-1 must stay below it)."""
    return [range(i, min(i + max_array_size, n)) for i in range(0, n, max_array_size)]


def parse_max_array_size(scontrol_config: str) -> int | None:
    m = re.search(r"^MaxArraySize\s*=\s*(\d+)", scontrol_config, re.MULTILINE)
    return int(m.group(1)) if m else None
