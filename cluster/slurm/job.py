"""What runs inside a Slurm job: one submitit task per trainer rank, the trainer as its child process.

submitit starts every task with `python -m submitit.core._submit`, which unpickles a `TrialJob` and
installs its own signal handlers: SIGUSR2 (sbatch `--signal=USR2@<delay>` before the time limit, or a
preemption warning) -> on rank 0, `TrialJob.checkpoint()` then `scontrol requeue` and exit; SIGTERM
is only logged. The trainer's own handler (trainer.signals) would replace submitit's if both lived
in one process, and then nothing would requeue - so the trainer runs as a child process:

  * the child inherits the stop signal from Slurm (it is in the step's process tree), and rank 0's
    `checkpoint()` forwards SIGUSR2 too, then waits until the trainer has saved its checkpoint and
    exited (75) before handing submitit the DelayedSubmission to requeue with;
  * the child starts with SIGUSR2 ignored, so a signal that lands while torch is still importing
    does not kill it; `checkpoint()` re-sends it until the trainer's handler is installed;
  * the main thread never blocks in Popen.wait (a waiter thread does): submitit's handler runs on
    the main thread, and re-entering Popen's wait lock from a handler would deadlock.

All ranks' trainers agree on stopping through one all-reduce per step, so one signalled rank is enough.
The requeued job runs the same pickled TrialJob (requeues + 1): the trainer resumes from its checkpoint
(run_id = trial_id) and forwards to the same MLflow run (track/mlflow.json).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from submitit.helpers import Checkpointable, DelayedSubmission

from cluster.common.process import die_with_parent
from cluster.common.trialdir import local_status, set_local_status
from cluster.slurm.sbatch import UNSET_ENV
from trainer.errors import ExitCode
from trainer.record import DONE

EXIT_STOPPED = ExitCode.RESUMABLE  # trainer.main: stopped by a signal after saving a checkpoint


def torch_env() -> dict[str, str]:
    """The torch.distributed contract of this task, from Slurm through submitit's helper: rank 0's host
    as MASTER_ADDR, a port derived from the job id, and one GPU of the allocation per task."""
    from submitit.helpers import TorchDistributedEnvironment

    d = TorchDistributedEnvironment()
    env = {"MASTER_ADDR": d.master_addr, "MASTER_PORT": str(d.master_port), "RANK": str(d.rank),
           "WORLD_SIZE": str(d.world_size), "LOCAL_RANK": str(d.local_rank),
           "LOCAL_WORLD_SIZE": str(d.local_world_size)}
    # Slurm lists the node's allocated GPUs for every task (without cgroups: the real ids, e.g. "4,5");
    # pick this task's entry instead of assuming 0..n-1 as submitit's export() does.
    visible = [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    if len(visible) >= d.local_world_size:
        env["CUDA_VISIBLE_DEVICES"] = visible[d.local_rank]
    return env


def _child_setup() -> None:
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)  # until the trainer installs its handler
    die_with_parent()


@dataclass
class TrialJob(Checkpointable):
    trial_id: str
    run_dir: str
    """Absolute; trial.json, the record and the checkpoints live there."""
    workdir: str
    """The launcher's cwd: relative paths in trial.json (data globs, out_dir) are relative to it."""
    command: list[str]
    max_requeues: int
    grace_s: float
    """How long checkpoint() waits for the trainer to save (below sbatch's signal delay)."""
    requeues: int = 0

    # ------------------------------------------------------------------ the task
    def __call__(self) -> dict[str, Any]:
        from submitit import JobEnvironment

        job = JobEnvironment()
        run_dir = Path(self.run_dir)
        if local_status(run_dir)[0] in DONE:  # a requeue that raced the trainer's end: nothing to do
            return {"trial_id": self.trial_id, "rank": job.global_rank, "status": local_status(run_dir)[0]}
        # Slurm's own requeues (a lost node, `scontrol requeue`) restart this same pickled job without
        # checkpoint(): SLURM_RESTART_COUNT counts them with the signal requeues, under one max_requeues
        restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
        if restarts > self.max_requeues:
            return self._refuse_restart(job.global_rank, job.job_id, restarts)
        env = self._env()
        # one line per rank in the job's log: where each rank runs and whom it rendezvouses with
        print(f"gatesweep: trial {self.trial_id} rank {env['RANK']}/{env['WORLD_SIZE']} on {socket.gethostname()}, "
              f"MASTER_ADDR={env['MASTER_ADDR']} MASTER_PORT={env['MASTER_PORT']}, attempt {restarts + 1}", flush=True)
        if job.global_rank == 0:
            hosts = ",".join(job.hostnames) if len(job.hostnames) > 1 else socket.gethostname()
            set_local_status(run_dir, "RUNNING", f"Slurm job {job.job_id} on {hosts}, attempt {restarts + 1}")
        code = self._run_trainer(env)
        return self._outcome(code, job.global_rank, job.job_id)

    def _refuse_restart(self, rank: int, job_id: str, restarts: int) -> dict[str, Any]:
        """Slurm requeued the job more often than max_requeues allows (a node that keeps failing it):
        end here with the trial KILLED and its checkpoint kept; `gatesweep run` resubmits it."""
        reason = (f"Slurm requeued job {job_id} {restarts} time(s) (a lost node, `scontrol requeue` or a stop "
                  f"signal), more than max_requeues={self.max_requeues}; not run again here, its last checkpoint is "
                  "kept: `gatesweep run` resubmits and resumes it")
        if rank == 0:
            set_local_status(Path(self.run_dir), "KILLED", reason)
        print(f"gatesweep: {reason}", flush=True)
        return {"trial_id": self.trial_id, "rank": rank, "status": "KILLED"}

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in UNSET_ENV}
        env.update(torch_env())
        return env

    def _run_trainer(self, env: dict[str, str]) -> int:
        self._code: int | None = None
        self._proc = subprocess.Popen(self.command, cwd=self.workdir, env=env, preexec_fn=_child_setup)
        proc = self._proc

        def wait() -> None:
            self._code = proc.wait()

        threading.Thread(target=wait, name="trainer-waiter", daemon=True).start()
        while self._code is None:
            time.sleep(0.2)  # interruptible: submitit's SIGUSR2 handler runs here
        return self._code

    def _outcome(self, code: int, rank: int, job_id: str) -> dict[str, Any]:
        run_dir = Path(self.run_dir)
        status, reason = local_status(run_dir)
        if code == 0 or (code == EXIT_STOPPED and rank != 0):
            # rank 0 decides what a stop means; other ranks end quietly (a non-zero exit could make
            # srun kill rank 0 in the middle of its requeue where KillOnBadExit=1)
            return {"trial_id": self.trial_id, "rank": rank, "status": status, "exit_code": code}
        if rank == 0 and status in ("RUNNING", "QUEUED", ""):  # died before it could record an end
            status = "KILLED" if code == EXIT_STOPPED or code < 0 else "FAILED"
            reason = f"trainer exited with code {code} in Slurm job {job_id}; see the job's log"
            set_local_status(run_dir, status, reason)
        if code == EXIT_STOPPED:
            raise RuntimeError(f"trial {self.trial_id}: trainer stopped by SIGTERM (cancelled or time limit without "
                               "the warning signal); checkpoint saved; `gatesweep run` resubmits and resumes it")
        raise RuntimeError(f"trial {self.trial_id}: trainer exited with code {code} ({status}: {reason})")

    # ------------------------------------------------------------------ submitit's checkpoint protocol
    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission | None:
        """Called by submitit on rank 0 when SIGUSR2 arrives: let the trainer save, then requeue."""
        code = self._stop_trainer()
        run_dir = Path(self.run_dir)
        status = local_status(run_dir)[0]
        if code == 0 or status in DONE:
            return None  # finished before the signal: nothing to resume
        if self.requeues >= self.max_requeues:
            set_local_status(run_dir, "KILLED", f"stopped by SIGUSR2; not requeued (max_requeues={self.max_requeues} "
                                                "reached); `gatesweep run` resubmits and resumes it")
            return None
        # QUEUED while the requeued job waits: a rerun of `gatesweep run` sees a live job, not a
        # KILLED trial to submit a second time.
        set_local_status(run_dir, "QUEUED", f"requeued by Slurm after a stop signal (requeue "
                                            f"{self.requeues + 1} of {self.max_requeues})")
        return DelayedSubmission(replace(self, requeues=self.requeues + 1))

    def _stop_trainer(self) -> int | None:
        proc = getattr(self, "_proc", None)
        if proc is None:
            return None  # the signal came before the trainer started
        deadline = time.monotonic() + self.grace_s
        while self._code is None and time.monotonic() < deadline:
            try:
                proc.send_signal(signal.SIGUSR2)  # again and again: it is ignored until the handler exists
            except ProcessLookupError:
                pass
            for _ in range(10):
                if self._code is not None:
                    break
                time.sleep(0.2)
        return self._code
