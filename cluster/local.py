"""Local backend: each trial is a torchrun (or plain python) process on this machine.

Pure builders (`trainer_command`, `GpuPool`) plus a thin executor (`run_trials`). Trials run up to
`max_parallel` at a time, packed onto free GPUs through CUDA_VISIBLE_DEVICES (or on the CPU when
the machine has none). Each child holds the trial's lock (inherited fd) and dies with the launcher
(PR_SET_PDEATHSIG -> SIGTERM -> the trainer checkpoints), so a killed launcher never leaves an
orphan writing into a trial. Ctrl-C stops the children cleanly and marks their trials KILLED.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cluster.compile_cache import cache_env
from cluster.progress import Progress
from cluster.state import TrialState
from cluster.store import SweepStore, clean_env, is_server
from cluster.trialdir import TrialLock, local_status, set_local_status, write_trial_json
from trainer.errors import BackendError
from trainer.main import EXIT_CODES

STATUS_OF_EXIT = {v: k for k, v in EXIT_CODES.items() if k != "EARLY_STOPPED"}


def trainer_command(trial_json: Path, nproc: int, python: str = sys.executable) -> list[str]:
    if nproc <= 1:
        return [python, "-m", "trainer", str(trial_json)]
    return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "trainer", str(trial_json)]


class GpuPool:
    """Hands out disjoint sets of GPU ids; trials wait until enough are free."""

    def __init__(self, gpus: list[int]):
        self.free = list(gpus)
        self.total = len(gpus)

    def take(self, n: int) -> list[int] | None:
        if n > self.total:
            raise ValueError(f"a trial needs {n} GPUs but this machine has {self.total}")
        if len(self.free) < n:
            return None
        taken, self.free = self.free[:n], self.free[n:]
        return taken

    def give(self, gpus: list[int]) -> None:
        self.free = sorted(self.free + gpus)


def visible_gpus() -> list[int]:
    """GPU ids this launcher may use: CUDA_VISIBLE_DEVICES if set, else what nvidia-smi lists."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [int(x) for x in env.split(",") if x.strip().isdigit()]
    if shutil.which("nvidia-smi") is None:
        return []
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout
    return list(range(sum(1 for line in out.splitlines() if line.startswith("GPU "))))


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


@dataclass
class _Running:
    state: TrialState
    proc: subprocess.Popen
    gpus: list[int]
    lock: TrialLock
    start: float
    log: object


def _start(s: TrialState, store: SweepStore, gpus: list[int], *, nproc: int, device: str | None,
           existing: dict) -> _Running | None:
    lock = TrialLock(s.run_dir)
    if not lock.acquire():
        return None  # another launcher runs it right now
    trial_json = write_trial_json(s.trial, s.run_dir, backend="local",
                                  overrides={"device": device} if device else None)
    if store.enabled:
        store.ensure_child(s.trial, s.run_dir, backend="local", existing=existing)
    env = clean_env() | cache_env(Path(s.run_dir).parent)
    env["GATESWEEP_TRACKING"] = "mlflow" if is_server(store.uri) else "local"
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))
    else:
        env.setdefault("OMP_NUM_THREADS", "1")
    log = open(s.run_dir / "stdout.log", "ab")
    assert lock._fd is not None
    proc = subprocess.Popen(trainer_command(trial_json, nproc), stdout=log, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True, pass_fds=(lock._fd,), preexec_fn=_die_with_parent)
    return _Running(s, proc, gpus, lock, time.monotonic(), log)


def _final_status(r: _Running, code: int) -> tuple[str, str]:
    status, reason = local_status(r.state.run_dir)
    if status in ("RUNNING", ""):  # the trainer died before it could write its status
        status = STATUS_OF_EXIT.get(code, "FAILED")
        reason = f"trainer exited with code {code} without a final status; see {r.state.run_dir}/stdout.log"
        set_local_status(r.state.run_dir, status, reason)
    elif code == 2:
        status, reason = "FAILED", f"bad input (exit 2); see {r.state.run_dir}/stdout.log"
    return status, reason


def _deliver(s: TrialState, store: SweepStore) -> None:
    """With a file store (sqlite) the launcher is the single writer: it delivers the trial's record."""
    if store.enabled and not is_server(store.uri):
        from trainer.mlflow_sync import sync_record

        try:
            sync_record(s.run_dir / "track", store.uri)
        except Exception as e:  # noqa: BLE001 - delivery is retried by `gatesweep sync`
            print(f"warning: MLflow delivery of {s.run_dir} failed ({e}); run `gatesweep sync`", file=sys.stderr)


def run_trials(todo: list[TrialState], store: SweepStore, *, max_parallel: int, nproc: int,
               title: str, existing: dict, device: str | None = None, gpus: list[int] | None = None,
               trials_per_gpu: int = 1) -> dict[str, str]:
    """Run `todo` and return {trial_id: final status}. `trials_per_gpu` > 1 shares each GPU between
    that many single-GPU trials (small models that leave a GPU mostly idle)."""
    if trials_per_gpu > 1 and nproc > 1:
        raise BackendError(f"trials_per_gpu={trials_per_gpu} needs single-GPU trials (this spec uses {nproc} "
                           "GPUs per trial); set backend.local.trials_per_gpu=1")
    pool = GpuPool([g for g in (visible_gpus() if gpus is None else gpus) for _ in range(trials_per_gpu)])
    use_gpus = pool.total > 0 and device != "cpu"
    queue = list(todo)
    running: list[_Running] = []
    results: dict[str, str] = {}
    last_delivery = 0.0
    with Progress(title, len(todo), parallel=max_parallel) as progress:
        try:
            while queue or running:
                while queue and len(running) < max_parallel:
                    taken = pool.take(nproc) if use_gpus else []
                    if taken is None:
                        break
                    s = queue.pop(0)
                    r = _start(s, store, taken, nproc=nproc, device=device, existing=existing)
                    if r is None:  # another launcher holds the trial
                        pool.give(taken)
                        results[s.trial.trial_id] = "RUNNING"
                        continue
                    running.append(r)
                    progress.started(r.state.trial.label or r.state.trial.trial_id, r.state.run_dir,
                                     r.state.trial.config.run.num_iterations)
                for r in list(running):
                    code = r.proc.poll()
                    if code is None:
                        continue
                    running.remove(r)
                    status, _ = _final_status(r, code)
                    r.lock.release()
                    r.log.close()  # type: ignore[attr-defined]
                    pool.give(r.gpus)
                    _deliver(r.state, store)
                    results[r.state.trial.trial_id] = status
                    progress.ended(r.state.trial.label or r.state.trial.trial_id, status)
                if time.monotonic() - last_delivery > 5:
                    for r in running:
                        _deliver(r.state, store)
                    last_delivery = time.monotonic()
                progress.tick()
                time.sleep(0.2)
        except KeyboardInterrupt:
            _stop_all(running, store, results)
            raise
    return results


def _stop_all(running: list[_Running], store: SweepStore, results: dict[str, str], grace: float = 60.0) -> None:
    """Ctrl-C: SIGTERM every trial's process group (trainers checkpoint and exit), then mark KILLED."""
    for r in running:
        try:
            os.killpg(r.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    for r in running:
        try:
            r.proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            os.killpg(r.proc.pid, signal.SIGKILL)
            r.proc.wait()
        status, reason = local_status(r.state.run_dir)
        if status not in ("FINISHED", "FAILED", "EARLY_STOPPED"):
            set_local_status(r.state.run_dir, "KILLED", "stopped by Ctrl-C; resumes from its checkpoint on rerun")
        r.lock.release()
        _deliver(r.state, store)
        results[r.state.trial.trial_id] = local_status(r.state.run_dir)[0]
