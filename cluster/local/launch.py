"""`gatesweep run SPEC --backend local`: skip finished trials, check the inputs, then run the rest here
(cluster.local.runner) under one MLflow sweep run. Ctrl-C or SIGTERM stops it cleanly (exit 130)."""

from __future__ import annotations

import contextlib
import shlex
import signal
import sys
from typing import Any

from cluster.common.command import trainer_command
from cluster.common.prepare import Prepared, preflight_trials, recover, retire_stale, states_for
from cluster.common.progress import failures, outcome_line
from cluster.common.state import DONE, known_runs, split
from cluster.common.trialdir import RUNS_ROOT, check_runs_writable, trial_dir
from cluster.common.ui_links import ui_lines
from cluster.local.outage import Outage, call_deadline
from cluster.local.packing import default_parallel
from cluster.local.runner import TAKEN, check_local, run_trials, start_warm, visible_gpus
from cluster.local.warm import WarmTrainer
from sweeps.expand import gpu_hours
from sweeps.mlflow_runs import is_server
from trainer.console import note
from trainer.cores import check_cpu_ranks
from trainer.errors import ExitCode


def run_local(prep: Prepared, *, dry_run: bool, max_parallel: int | None) -> int:
    spec = prep.spec
    local = spec.backend_options("local")
    parallel = local.get("max_parallel") if max_parallel is None else max_parallel
    nproc = max(spec.resources.gpus_per_node, 1) * spec.resources.nodes
    per_gpu = local.get("trials_per_gpu")  # a number, "auto" or None (= auto on GPUs)
    gpus = visible_gpus()  # once: on a GPU machine each call runs nvidia-smi
    check_local(nproc, max_parallel=parallel, trials_per_gpu=per_gpu, gpus=gpus)
    if dry_run:
        return _dry_run(prep, nproc, default_parallel(parallel, gpus, nproc, per_gpu))
    if not gpus:
        check_cpu_ranks(nproc)  # what each trial's ranks would say, said once and before anything is written
    check_runs_writable(spec.name)
    states = states_for(prep)
    todo, done, busy = split(states)
    if done:
        note(f"skipping {len(done)} finished trial(s)")
    if busy:
        note(f"{len(busy)} trial(s) are running in another process; leaving them alone")
    store = prep.store
    if not todo:
        recover(states, store, spec.name, search=False)
        for line in ui_lines(store, spec.name):
            note(line)
        print(f"nothing to run: {len(done)}/{len(states)} trials finished")
        return ExitCode.OK
    preflight_trials([s.trial for s in todo], spec.path)  # data and batch arithmetic, before anything is written
    # single-process trials fork from the warm trainer unless switched off (on GPUs too: measured in
    # bench/results/*-h200-sweep; a warm process that cannot fork safely says why and trials start fresh)
    warm = start_warm(RUNS_ROOT / spec.name, cpu=not gpus,
                      enabled=nproc == 1 and len(todo) > 1 and local.get("warm_start") is not False)
    try:
        # every request to a tracking server has a deadline while the sweep runs: a hung server (stopped,
        # overloaded) must not hold up scheduling (cluster/local/outage.py)
        with call_deadline() if is_server(prep.store.uri) else contextlib.nullcontext():
            return _run(prep, todo, done, states, warm, gpus, parallel=parallel, nproc=nproc, per_gpu=per_gpu)
    finally:
        if warm is not None:
            warm.close()


def _run(prep: Prepared, todo: list, done: list, states: list, warm: WarmTrainer | None, gpus: list[int], *,
         parallel: int, nproc: int, per_gpu: int) -> int:
    spec, store = prep.spec, prep.store
    stale = retire_stale(states, store)
    if stale:
        note(f"{stale} trial(s) left RUNNING by a dead process: marked KILLED, running again")
    recover(states, store, spec.name)
    existing = known_runs(states)
    store.start_parent(spec=spec.name, stage=spec.stage, backend="local", n_trials=len(todo), spec_path=spec.path,
                       trial_ids=[t.trial_id for t in prep.trials], record_dir=RUNS_ROOT / spec.name)
    status = "FINISHED"
    outage = Outage()
    # `kill PID` (SIGTERM) stops a sweep like Ctrl-C: trials checkpoint, records and the sweep run say KILLED
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        results = run_trials(todo, store, max_parallel=parallel, nproc=nproc, title=spec.name, existing=existing,
                             gpus=gpus, trials_per_gpu=per_gpu, warm=warm, outage=outage)
    except KeyboardInterrupt:
        status = "KILLED"
        print("interrupted: running trials were stopped and marked KILLED; rerun the same command to resume",
              file=sys.stderr)
        return ExitCode.INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)
        store.finish_parent(status, RUNS_ROOT / spec.name, reachable=not outage.active)
    elsewhere = [k for k, v in results.items() if v == TAKEN]
    if elsewhere:
        print(f"{len(elsewhere)} trial(s) were taken by another launcher meanwhile; leaving them to it")
    bad = {k: v for k, v in results.items() if v not in DONE and k not in elsewhere}
    for line in ui_lines(store, spec.name, store.parent_id):
        note(line)
    print(outcome_line(spec.name, results, failures(states, bad), skipped=len(elsewhere))
          + f"; records in {RUNS_ROOT / spec.name}")
    return ExitCode.OK if not bad else ExitCode.TRIALS_FAILED


def _dry_run(prep: Prepared, nproc: int, parallel: int) -> int:
    """What a real run would start: finished trials skipped and trials running elsewhere left alone, as
    the run itself (and Slurm's dry run) decides from the local records; nothing is written."""
    prep.store.enabled = False  # a dry run creates nothing, not even an empty sqlite store
    todo, done, busy = split(states_for(prep))
    for s in todo:
        t = s.trial
        print(f"# trial {t.index} {t.trial_id} {t.label} seed={t.seed}" + (f" ({s.status}: runs again)" if s.status else ""))
        print(shlex.join(trainer_command(trial_dir(t) / "trial.json", nproc)))  # safe to paste into a shell
    todo_trials = [s.trial for s in todo]
    print(f"{len(todo)} trial(s) to run ({len(done)} finished and {len(busy)} running elsewhere skipped), up to "
          f"{parallel} at a time; {gpu_hours(todo_trials, prep.spec.estimate_ms_per_step):.1f} GPU-hours estimated")
    return ExitCode.OK


def _interrupt(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean stop short
    raise KeyboardInterrupt
