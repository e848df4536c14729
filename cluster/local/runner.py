"""Local backend: each trial is a torchrun (or plain python) process on this machine, or a fork of
the sweep's warm trainer (warm.py) for single-process trials.

Pure builders (the packing policy in packing.py; the command is cluster.common.command's) plus a thin executor (`run_trials`).
Trials run up to `max_parallel` at a time on the CPU, or on GPUs through CUDA_VISIBLE_DEVICES: single-GPU
trials packed and staggered per GPU (packing.py), multi-GPU trials on disjoint sets. Each trial holds its lock (inherited fd) and dies with the launcher
(PR_SET_PDEATHSIG -> SIGTERM -> the trainer checkpoints; a forked trial through the warm process,
which dies with the launcher), so a killed launcher never leaves an orphan writing into a trial.
Ctrl-C stops the trials cleanly and marks them KILLED.
"""

from __future__ import annotations

import contextlib
import functools
import os
import select
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cluster.common.command import trainer_command
from cluster.common.compile_cache import cache_env, cache_is_cold, family_key, warm_families
from cluster.common.delivery import deliver
from cluster.common.delivery import undelivered as _undelivered
from cluster.common.process import die_with_parent
from cluster.common.progress import Progress, last_step, last_train_point
from cluster.common.state import TrialState
from cluster.common.store import SweepStore, clean_env
from cluster.common.trialdir import TrialLock, local_status, set_local_status, write_trial_json
from cluster.errors import BackendError
from cluster.local.courier import Courier
from cluster.local.outage import LAUNCHED_SYNC_TIMEOUT_S, OFFLINE_ENV, Outage, answers, trainer_http_env
from cluster.local.packing import (
    GpuPool,
    MemoryReader,
    Packer,
    default_parallel,
    share_of,
    take_gpus,
    visible_gpus,
)
from cluster.local.warm import WarmError, WarmProc, WarmTrainer, first_trial_waits
from sweeps.mlflow_runs import is_server
from trainer.console import detail, note
from trainer.main import EXIT_CODES
from trainer.record import sync_timeout

STATUS_OF_EXIT: dict[int, str] = {int(v): k for k, v in EXIT_CODES.items() if k != "EARLY_STOPPED"}
TAKEN = "TAKEN"  # run_trials' result for a trial another launcher runs, or ran since this one read the records




@dataclass
class _Running:
    state: TrialState
    proc: subprocess.Popen | WarmProc
    gpus: list[int]
    lock: TrialLock
    start: float
    log: object
    key: int = 0  # the packer's handle (single-GPU trials)


def launch_tags(parent_id: str | None, gpus: list[int], trials_per_gpu: int) -> dict[str, str] | None:
    """Tags the launcher adds to a trial's run: its sweep run, and `gatesweep.gpu_shared` when trials are
    packed several to a GPU (then its train time and ms/step are not speed figures)."""
    tags = {"mlflow.parentRunId": parent_id} if parent_id else {}
    if gpus and trials_per_gpu > 1:
        tags[SHARED_TAG] = str(trials_per_gpu)
    return tags or None


SHARED_TAG = "gatesweep.gpu_shared"  # read back by analysis.fetch (analysis.steptimes)


def _start(s: TrialState, store: SweepStore, gpus: list[int], *, nproc: int, device: str | None,
           existing: dict, outage: Outage, trials_per_gpu: int = 1, warm: WarmTrainer | None = None,
           compiled: set[str] | None = None) -> _Running | None:
    lock = TrialLock(s.run_dir)
    if not lock.acquire():
        return None  # another launcher runs it right now
    now = local_status(s.run_dir)[0]
    if now and now != s.status:  # another launcher ran it since this one read the records
        lock.release()
        return None
    overrides: dict = {"device": device} if device else {}
    if compiled and family_key(s.trial.config.flat()) in compiled:
        overrides["compile_threads"] = 1  # its graphs are cached: no compile worker pool next to training trials
    trial_json = write_trial_json(s.trial, s.run_dir, backend="local", overrides=overrides or None,
                                  tags=launch_tags(store.parent_id, gpus, trials_per_gpu))
    if store.enabled:
        why = "found unreachable moments ago"
        if is_server(store.uri) and not outage.active and not answers(store.uri):
            outage.seen()  # hung or gone: found in PROBE_TIMEOUT_S, not in a request's CALL_DEADLINE_S
        failed = outage.active
        if outage.active:
            store.note_uri(s.run_dir)
        else:
            try:
                store.ensure_child(s.trial, s.run_dir, backend="local", existing=existing)
            except Exception as e:  # noqa: BLE001 - a tracking outage must not stop the sweep
                failed, why = True, f"{type(e).__name__}: {str(e)[:150]}"
                if is_server(store.uri):  # a file store is no server that went away: it says what failed
                    outage.seen()
        if failed:
            what = "unreachable" if is_server(store.uri) else f"store {store.uri} failed"
            print(f"warning: MLflow {what} while starting trial {s.trial.trial_id} ({why}); it trains anyway "
                  f"and its record is delivered later (or by `gatesweep sync {s.run_dir}`)", file=sys.stderr)
    env = base_env(Path(s.run_dir).parent, cpu=not gpus) | trainer_http_env() | (OFFLINE_ENV if outage.active else {})
    env["GATESWEEP_TRACKING"] = "mlflow" if is_server(store.uri) else "local"
    if is_server(store.uri):  # what a trainer cannot deliver at its end, the courier does: it need not wait long
        env["GATESWEEP_SYNC_TIMEOUT"] = str(min(sync_timeout(env), LAUNCHED_SYNC_TIMEOUT_S))
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))
    log = open(s.run_dir / "stdout.log", "ab")
    assert lock._fd is not None
    proc: subprocess.Popen | WarmProc | None = None
    if warm is not None and nproc == 1 and warm.accepts(env):
        try:
            proc = warm.start([str(trial_json)], env, os.getcwd(), (log.fileno(), lock._fd))
        except WarmError as e:
            note(f"note: trial {s.trial.trial_id} starts as a fresh process ({e})", err=True)
    how = f"forked from the warm trainer (pid {warm.proc.pid if warm else '?'})" if proc is not None else "fresh process"
    if proc is None:
        proc = subprocess.Popen(trainer_command(trial_json, nproc), stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, pass_fds=(lock._fd,),
                                preexec_fn=functools.partial(die_with_parent, os.getpid()))
    detail(f"start trial {s.trial.trial_id} ({_label(s)}): pid {proc.pid}, {how}: "
           f"{shlex.join(trainer_command(trial_json, nproc))} > {s.run_dir / 'stdout.log'}")
    return _Running(s, proc, gpus, lock, time.monotonic(), log)


def base_env(sweep_dir: Path, *, cpu: bool) -> dict[str, str]:
    """A trial's environment before its per-trial part (tracking mode, GPUs, outage settings): the
    warm trainer is started with it, so the two must stay one function."""
    env = clean_env() | cache_env(sweep_dir)
    if cpu:
        env.setdefault("OMP_NUM_THREADS", "1")
    return env


def start_warm(sweep_dir: Path, *, cpu: bool, enabled: bool) -> WarmTrainer | None:
    """The sweep's warm trainer (cluster/local/warm.py), started now so that its imports overlap the
    launcher's own set-up; None when switched off (backend.local.warm_start: false)."""
    return WarmTrainer(base_env(sweep_dir, cpu=cpu)) if enabled else None


def _final_status(r: _Running, code: int) -> tuple[str, str]:
    status, reason = local_status(r.state.run_dir)
    if status in ("RUNNING", ""):  # the trainer died before it could write its status
        status = STATUS_OF_EXIT.get(code, "FAILED")
        reason = f"trainer exited with code {code} without a final status; see {r.state.run_dir}/stdout.log"
        set_local_status(r.state.run_dir, status, reason)
    elif code == 2:
        status, reason = "FAILED", f"bad input (exit 2); see {r.state.run_dir}/stdout.log"
    return status, reason


def _deliver(s: TrialState, store: SweepStore, *, ended: bool, quiet: bool = False) -> bool:
    """With a file store (sqlite) the launcher is the single writer: it delivers the trial's record.
    With a server the trainer delivers its own record; the launcher takes over only for a trial that
    ended with part of it undelivered (the server was away when its trainer gave up: the courier's
    work during a sweep). False: failed (then _redeliver tries)."""
    if not store.enabled or (is_server(store.uri) and not ended):
        return True
    if is_server(store.uri) and not _undelivered(s.run_dir, store.uri):
        return True
    return deliver(s.run_dir, store, quiet=quiet)


def _redeliver(undelivered: list[TrialState], store: SweepStore) -> list[TrialState]:
    """Retry ended trials' records; the first failure ends the pass (the store still refuses)."""
    for i, s in enumerate(undelivered):
        if not _deliver(s, store, ended=True, quiet=True):
            return undelivered[i:]
    return []


def _wait(running: list[_Running], timeout: float) -> None:
    """Sleep up to `timeout`, woken as soon as a trial's process exits (a pidfd turns readable, or the
    warm trainer reports the exit of a trial it forked)."""
    owned, fds = [], set()
    try:
        for r in running:
            if isinstance(r.proc, WarmProc):
                if (fd := r.proc.wait_fd()) is not None:
                    fds.add(fd)
                continue
            with contextlib.suppress(OSError):  # gone already: the next poll() reaps it
                owned.append(os.pidfd_open(r.proc.pid))
        fds.update(owned)
        if fds:
            select.select(list(fds), [], [], timeout)
        else:
            time.sleep(timeout)
    finally:
        for fd in owned:
            os.close(fd)


def check_local(nproc: int, *, max_parallel: int | None, trials_per_gpu: int | str | None, gpus: list[int]
                ) -> None:
    """Launch options this machine cannot honour: raised before any run or record is created."""
    if max_parallel is not None and max_parallel < 1:
        raise BackendError(f"max_parallel={max_parallel}: a sweep runs at least 1 trial at a time; "
                           "pass --max-parallel N with N >= 1")
    if isinstance(trials_per_gpu, int) and trials_per_gpu > 1 and nproc > 1:
        raise BackendError(f"trials_per_gpu={trials_per_gpu} needs single-GPU trials (this spec uses {nproc} "
                           "GPUs per trial); set backend.local.trials_per_gpu=1")
    if gpus and nproc > len(gpus):
        raise BackendError(f"a trial needs {nproc} GPUs (resources.nodes x resources.gpus_per_node) but this "
                           f"machine has {len(gpus)} visible (CUDA_VISIBLE_DEVICES / nvidia-smi); lower "
                           "resources.gpus_per_node or use --backend slurm")


def run_trials(todo: list[TrialState], store: SweepStore, *, max_parallel: int | None, nproc: int,
               title: str, existing: dict, device: str | None = None, gpus: list[int] | None = None,
               trials_per_gpu: int | str | None = 1, warm: WarmTrainer | None = None,
               outage: Outage | None = None) -> dict[str, str]:
    """Run `todo` and return {trial_id: final status}. Single-GPU trials are packed per GPU by
    packing.Packer: up to `trials_per_gpu` at a time (`auto`: as many as memory holds, at most
    packing.AUTO_SHARE), a new one only once the GPU's last started trial has taken its first step.
    `max_parallel` caps the trials running at once (None: every GPU slot; on the CPU, 1). `warm`: once
    it has imported (waited for on small machines: it started before the store's set-up; on a GPU machine
    with cores to spare the first trial starts fresh meanwhile, warm.first_trial_waits), single-process
    trials are forked from it (see warm.py); if it cannot fork, they start fresh. `outage`: the caller's view of a
    tracking server that stopped answering (cluster/local/outage.py), kept up to date here."""
    gpus = visible_gpus() if gpus is None else gpus
    check_local(nproc, max_parallel=max_parallel, trials_per_gpu=trials_per_gpu,
                gpus=[] if device == "cpu" else gpus)
    use_gpus = bool(gpus) and device != "cpu"
    share, check_memory = share_of(trials_per_gpu)
    packer = Packer(list(gpus), share, check_memory, jit=check_memory) if use_gpus and nproc == 1 else None
    pool = GpuPool(list(gpus)) if use_gpus and packer is None else None
    max_parallel = default_parallel(max_parallel, list(gpus) if use_gpus else [], nproc, trials_per_gpu)
    queue = list(todo)
    running: list[_Running] = []
    results: dict[str, str] = {}
    undelivered: list[TrialState] = []
    outage = outage or Outage()
    # a server's records go by the courier, off this loop's path; a file store's by this loop (single writer)
    courier = Courier(store, outage) if store.enabled and is_server(store.uri) else None
    memory = MemoryReader()
    # GPU trials compile: with a cold cache, start one trial alone and the rest once it has taken its
    # first step, so they load its graphs from the sweep's shared cache instead of all compiling.
    warming = use_gpus and len(todo) > 1 and cache_is_cold(Path(todo[0].run_dir).parent)
    last_delivery = last_retry = 0.0
    keys = iter(range(1, 1 << 62))
    # graph families in the compile cache: warmed by `gatesweep warmup`, or a trial of theirs has stepped
    compiled = warm_families(Path(todo[0].run_dir).parent) if todo else set()
    if warm is not None and first_trial_waits(use_gpus, os.cpu_count()):
        warm.wait_ready()
    with Progress(title, len(todo), parallel=max_parallel) as progress:
        try:
            while queue or running:
                if warming and running:  # released once the first trial has stepped (or ended)
                    first = running[0]
                    warming = first.proc.poll() is None and (last_step(first.state.run_dir) or 0) < 1
                if packer is not None:
                    for r in running:
                        if r.key in packer.starting and (last_step(r.state.run_dir) or 0) >= 1:
                            packer.stepped(r.key, time.time())
                            compiled.add(family_key(r.state.trial.config.flat()))
                        elif r.key not in packer.starting and packer.jit:
                            packer.progress(r.key, last_train_point(r.state.run_dir))
                while queue and len(running) < max_parallel and not (warming and running):
                    taken = take_gpus(packer, pool, memory, nproc) if use_gpus else []
                    if taken is None:
                        break
                    s = queue.pop(0)
                    r = _start(s, store, taken, nproc=nproc, device=device, existing=existing, outage=outage,
                               trials_per_gpu=share if packer is not None else 1, warm=warm, compiled=compiled)
                    if r is None:  # another launcher runs it, or ran it meanwhile
                        if pool is not None:
                            pool.give(taken)
                        results[s.trial.trial_id] = TAKEN
                        continue
                    if packer is not None:
                        r.key = next(keys)
                        packer.add(r.key, taken[0], time.time(), s.trial.config.run.num_iterations)
                    running.append(r)
                    progress.started(_label(r.state), r.state.run_dir, r.state.trial.config.run.num_iterations)
                ended = False
                for r in list(running):
                    code = r.proc.poll()
                    if code is None:
                        continue
                    ended = True
                    running.remove(r)
                    status, _ = _final_status(r, code)
                    r.log.close()  # type: ignore[attr-defined]
                    if (last_step(r.state.run_dir) or 0) >= 1:  # it stepped (maybe between two looks): graphs cached
                        compiled.add(family_key(r.state.trial.config.flat()))
                    if packer is not None:
                        packer.remove(r.key)
                    elif pool is not None:
                        pool.give(r.gpus)
                    if courier is not None and _undelivered(r.state.run_dir, store.uri):
                        courier.hand(r.state, r.lock)  # delivered under the trial's lock, which it then releases
                    else:
                        if courier is None and not _deliver(r.state, store, ended=True):  # under the lock
                            undelivered.append(r.state)
                        r.lock.release()
                    results[r.state.trial.trial_id] = status
                    progress.ended(_label(r.state), status)
                if time.monotonic() - last_delivery > 5:
                    for r in running:
                        _deliver(r.state, store, ended=False)
                    last_delivery = time.monotonic()
                if undelivered and time.monotonic() - last_retry > 30:
                    undelivered, last_retry = _redeliver(undelivered, store), time.monotonic()
                progress.tick()
                if not (ended and queue):  # a trial just ended: start the next one at once
                    _wait(running, 0.2)
        except KeyboardInterrupt:
            _stop_all(running, store, results)
            raise
        finally:
            undelivered += courier.close() if courier is not None else []
    undelivered = _redeliver(undelivered, store) if courier is None else undelivered
    if undelivered:
        why = "tracking server unreachable" if is_server(store.uri) else f"the store {store.uri} refused them"
        print(f"warning: {len(undelivered)} trial record(s) are not in MLflow yet ({why}); deliver them with "
              f"`gatesweep sync {undelivered[0].run_dir.parent}` once it is back", file=sys.stderr)
    return results


def _label(s: TrialState) -> str:
    return f"{s.trial.label or s.trial.trial_id} seed={s.trial.seed}"


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
        if status not in ("FINISHED", "FAILED", "KILLED", "EARLY_STOPPED"):  # keep the trainer's own reason
            set_local_status(r.state.run_dir, "KILLED", "stopped with the sweep before it could save; reruns")
        _deliver(r.state, store, ended=True)
        r.lock.release()
        results[r.state.trial.trial_id] = local_status(r.state.run_dir)[0]
