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
from pathlib import Path
from typing import Any

from cluster.common.sbatch_options import STRING_OPTS, SlurmOptions
from cluster.common.store import LEAKY_ENV
from sweeps.spec import Resources
from trainer.overrides import ENV_KEYS

# Env vars of the submitting shell (sbatch exports it all) that must not reach the trainer: MLflow
# scope (runs would land in another experiment/run) and the trainer's quick-start overrides (LR=...
# would beat trial.json, so the job would train another config than its trial says).
UNSET_ENV = LEAKY_ENV + tuple(ENV_KEYS)


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
