"""Liveness of Slurm-run trials for `status` and the stale check: one batched squeue call (+ one sacct
call for jobs squeue no longer lists, for display).

A trial submitted to Slurm records its job id in `<run_dir>/slurm.json`; it is alive while its job
is pending or running in squeue (a requeued job keeps its id), or while a local process holds its lock.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from cluster.common.trialdir import RUNS_ROOT, TrialLock, trial_dir
from cluster.errors import BackendError, BackendUnavailable
from sweeps.expand import Trial
from trainer.record import read_json

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


# What Slurm's client commands print when slurmctld does not answer (after their own retries, ~10 s).
CONTROLLER_DOWN = ("Unable to contact slurm controller", "Socket timed out on send/recv")


def controller_down(command: str, stderr: str, *, written: str = "") -> BackendUnavailable | None:
    """The error to raise (exit 69) when `stderr` of a Slurm client says the controller is unreachable,
    else None: a down slurmctld is not a partition or account typo, and waiting or restarting it fixes it."""
    line = next((ln.strip() for ln in stderr.splitlines() if any(m in ln for m in CONTROLLER_DOWN)), "")
    if not line:
        return None
    conf = os.environ.get("SLURM_CONF", "the default slurm.conf")
    return BackendUnavailable(f"the Slurm controller is unreachable ({command}: {line}); check that slurmctld runs "
                              f"(`scontrol ping`, SLURM_CONF={conf}) and run again" + (f"; {written}" if written else ""))


def sbatch_refusal(script: str) -> str | None:
    """sbatch's reason for refusing this script (`sbatch --test-only`), None if it would be accepted.
    A controller that does not answer is BackendUnavailable (exit 69), not a refusal."""
    with tempfile.NamedTemporaryFile("w", suffix=".sh", prefix="gs-test-only-") as f:
        f.write(script)
        f.flush()
        try:
            res = subprocess.run(["sbatch", "--test-only", f.name], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise BackendUnavailable(f"sbatch --test-only did not answer ({e}); is slurmctld reachable "
                                     "(scontrol ping)?") from None
    if res.returncode == 0:
        return None
    down = controller_down("sbatch --test-only", res.stderr, written="nothing was written or submitted")
    if down is not None:
        raise down
    return next((ln.split("error:", 1)[1].strip() for ln in res.stderr.splitlines() if "error:" in ln),
                res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.returncode}")


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise BackendError(f"`{cmd[0]}` did not answer in 60 s; is slurmctld reachable (scontrol ping)?") from None


def squeue_states(ids: list[str]) -> dict[str, str]:
    """{job id: state} for the given ids (array tasks as `<array>_<index>`), in one call.

    Raises when squeue fails: an empty answer would make every queued trial look dead, and a rerun
    would then submit all of them a second time."""
    if not ids or shutil.which("squeue") is None:
        return {}
    arrays = sorted({i.split("_")[0] for i in ids})
    # -r: one line per array task; without it pending tasks collapse into `123_[2-9%2]`
    res = _run(["squeue", "-h", "-r", "-j", ",".join(arrays), "-o", "%i|%T", "--states=all"])
    if res.returncode != 0:
        if "Invalid job id" in res.stderr:  # every id is gone from the controller (MinJobAge passed)
            return {}
        down = controller_down("squeue", res.stderr)
        if down is not None:
            raise down
        raise BackendError(f"squeue failed ({res.stderr.strip()[:200]}); is slurmctld reachable (scontrol ping)?")
    states = {}
    for line in res.stdout.splitlines():
        jid, _, st = line.partition("|")
        states[jid.strip()] = st.strip()
    return states


def sacct_states(ids: list[str]) -> dict[str, str]:
    """{job id: final state} from accounting (one call); {} where accounting is unavailable."""
    if not ids or shutil.which("sacct") is None:
        return {}
    arrays = sorted({i.split("_")[0] for i in ids})
    res = _run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(arrays)])
    if res.returncode != 0:
        return {}
    states = {}
    for line in res.stdout.splitlines():  # a requeued job has one line per attempt: the last one wins
        jid, _, st = line.partition("|")
        states[jid.strip()] = st.split()[0] if st.strip() else ""  # "CANCELLED by 0" -> CANCELLED
    return states


class SlurmView:
    """The Slurm side of a spec's trials, read once: job ids, live states, final states."""

    def __init__(self, trials: list[Trial], root: Path = RUNS_ROOT, *, with_sacct: bool = False):
        self.ids = job_ids(trials, root)
        self.states = squeue_states(list(self.ids.values()))
        gone = [j for j in self.ids.values() if j not in self.states]
        if with_sacct and gone:
            self.states |= {j: s for j, s in sacct_states(gone).items() if j in gone}

    def job_live(self, run_dir: Path) -> bool:
        """The trial's recorded job is pending, running or being requeued."""
        jid = self.ids.get(run_dir)
        return jid is not None and self.states.get(jid) in LIVE_STATES

    def alive(self, run_dir: Path) -> bool:
        return self.job_live(run_dir) or TrialLock(run_dir).held_elsewhere()

    def note(self, run_dir: Path) -> str:
        jid = self.ids.get(run_dir)
        return f"job {jid} {self.states.get(jid, '?')}" if jid else ""

