"""Multi-GPU trials on Ray: the trial's actor runs `torchrun -m trainer trial.json` as a child process.

Why a torchrun child and not Ray Train's TorchTrainer: the trainer's distributed contract is
torchrun's environment (RANK/LOCAL_RANK/WORLD_SIZE, read by trainer.dist), the same on the local
and Slurm backends, so the multi-GPU code path is the one every backend runs. TorchTrainer would
start its own worker group and process group inside the Tune trial, with its own report/checkpoint
API and a nested placement group, i.e. a second launcher to keep equal to the others. A trial here
is one node (resources.nodes=1); its GPUs are the ones Ray gave the actor (CUDA_VISIBLE_DEVICES).

The child's val losses reach Tune by tailing its local record (track/metrics.jsonl). The child
does not wait for Tune's decisions (it cannot: `python -m trainer` has no hook), so when ASHA stops
it, it may have run past the judged step; it gets SIGTERM (checkpoint, KILLED) and the trial then
rewrites the status to EARLY_STOPPED.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import deque
from pathlib import Path

from cluster.common.command import trainer_command
from cluster.common.process import die_with_parent
from cluster.common.store import clean_env
from cluster.common.trialdir import local_status, set_local_status

POLL_S = 0.2
STOP_GRACE_S = 120.0  # SIGTERM -> the trainer checkpoints at its next step boundary and exits


class TorchrunRun:
    def __init__(self, trial_json: Path, run_dir: Path, nproc: int, num_iterations: int, *, forward: bool):
        self.run_dir, self.num_iterations, self.forward = run_dir, num_iterations, forward
        self.metrics = run_dir / "track" / "metrics.jsonl"
        self.offset = self.metrics.stat().st_size if self.metrics.exists() else 0  # earlier attempts' points
        self.pending: deque[tuple[int, float]] = deque()
        self.last_reported = -1
        env = clean_env()
        env["GATESWEEP_TRACKING"] = "mlflow" if forward else "local"  # sqlite: the driver delivers
        env.setdefault("OMP_NUM_THREADS", "1")
        self.log = open(run_dir / "stdout.log", "ab")
        self.proc = subprocess.Popen(trainer_command(trial_json, nproc), stdout=self.log, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True, preexec_fn=die_with_parent)

    def _read_new(self) -> None:
        try:
            with open(self.metrics, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1  # a trailing line still being written waits for the next poll
        self.offset += end
        for line in data[:end].splitlines():
            point = json.loads(line)
            if point.get("key") == "val_loss":
                self.pending.append((int(point["step"]), float(point["value"])))

    def next_val(self) -> tuple[int, float, bool] | None:
        while not self.pending:
            exited = self.proc.poll() is not None
            self._read_new()
            if not self.pending and exited:
                return None
            if not self.pending:
                time.sleep(POLL_S)
        step, loss = self.pending.popleft()
        self.last_reported = step
        return step, loss, step >= self.num_iterations

    def proceed(self) -> None:
        pass  # the child never waited

    def finish(self, verdict: str) -> tuple[str, str]:
        if verdict != "end" and self.proc.poll() is None:
            self._stop()
        code = self.proc.wait()
        self.log.close()
        status, reason = local_status(self.run_dir)
        if verdict == "early" and status in ("KILLED", "RUNNING", ""):
            status = "EARLY_STOPPED"
            reason = f"stopped by the scheduler at step {self.last_reported} (the child was stopped by SIGTERM)"
            set_local_status(self.run_dir, status, reason)
            self._deliver_status()
        elif status in ("RUNNING", ""):
            status = "KILLED" if verdict == "interrupt" else "FAILED"
            reason = f"torchrun exited with code {code} without a final status; see {self.run_dir}/stdout.log"
            set_local_status(self.run_dir, status, reason)
            self._deliver_status()
        return status, reason

    def _stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)

    def _deliver_status(self) -> None:
        """With an MLflow server the child delivered its own record; the status changed after it exited
        (so this process is the only writer now). With sqlite the driver delivers everything."""
        if not self.forward:
            return
        from trainer.mlflow_sync import sync_record

        try:
            sync_record(self.run_dir / "track")
        except Exception:  # noqa: BLE001 - the driver's final delivery retries
            pass
