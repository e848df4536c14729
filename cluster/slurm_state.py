"""Liveness of Slurm-run trials for `status` and the stale check: one batched squeue call.

A trial submitted to Slurm records its job id in `<run_dir>/slurm.json`; it is alive while its job
is pending or running in squeue (a requeued job keeps its id), or while a local process holds its lock.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from cluster.trialdir import RUNS_ROOT, TrialLock, trial_dir
from sweeps.expand import Trial
from trainer.tracking import read_json

LIVE_STATES = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED",
               "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT")


def job_ids(trials: list[Trial], root: Path = RUNS_ROOT) -> dict[Path, str]:
    out = {}
    for t in trials:
        d = trial_dir(t, root)
        info = read_json(d / "slurm.json")
        if info and info.get("job_id"):
            out[d] = str(info["job_id"])
    return out


def squeue_states(ids: list[str]) -> dict[str, str]:
    """{job id: state} for the given ids (array tasks as `<array>_<index>`), in one call."""
    if not ids or shutil.which("squeue") is None:
        return {}
    arrays = sorted({i.split("_")[0] for i in ids})
    res = subprocess.run(["squeue", "-h", "-j", ",".join(arrays), "-o", "%i|%T", "--states=all"],
                         capture_output=True, text=True, timeout=60)
    states = {}
    for line in res.stdout.splitlines():
        jid, _, st = line.partition("|")
        states[jid.strip()] = st.strip()
    return states


def slurm_alive(trials: list[Trial], root: Path = RUNS_ROOT) -> Callable[[Path], bool]:
    ids = job_ids(trials, root)
    states = squeue_states(list(ids.values()))

    def alive(run_dir: Path) -> bool:
        jid = ids.get(run_dir)
        if jid is not None and states.get(jid) in LIVE_STATES:
            return True
        return TrialLock(run_dir).held_elsewhere()

    return alive
