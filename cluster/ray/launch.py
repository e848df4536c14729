"""Ray Tune backend: a spec's `search:` as Tune trials under ASHA (thin executor over ray_* builders).

run_ray: sample the search's trials (cluster.common.search) -> the same checks, stale cleanup and MLflow parent
and child runs as the local backend (one child run per trial id, reused) -> one Tuner over the
trials (ray_trainable runs each in its actor) -> the best value per design point, printed and
logged to the parent run.

Resuming: a rerun of the same spec draws the same trials (same ids). Trials whose record is
FINISHED/EARLY_STOPPED are not trained again: they replay their recorded val losses to Tune, so
ASHA's rungs hold the same values as before (Tuner.restore would not do that: Tune 2.60 does not
save the scheduler's state with the experiment); the others run, resuming from their checkpoint.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cluster.common.delivery import deliver, deliver_pending
from cluster.common.prepare import Prepared, preflight_trials, recover, retire_stale, states_for
from cluster.common.search import METRIC, MODE, SearchPlan, parse_search, search_trials
from cluster.common.state import DONE, TrialState, known_runs, split
from cluster.common.store import LEAKY_ENV, SweepStore
from cluster.common.trialdir import RUNS_ROOT, check_runs_writable, local_status, trial_dir, write_trial_json
from cluster.errors import BackendError
from cluster.ray.on_slurm import sbatch_text, slurm_job
from cluster.ray.plan import (
    RayOptions,
    check_fits,
    check_trials,
    describe,
    nproc,
    ray_options,
    trial_resources,
)
from cluster.ray.summary import log_search, report
from sweeps.errors import SpecError
from sweeps.mlflow_runs import is_server
from trainer.record import write_json

NODE_WAIT_S = 300.0
# A trial whose actor died (its node lost, its process killed) is started again, up to this many times, on
# any node with room: it resumes from its trainer checkpoint in the run dir (a shared filesystem), ASHA
# keeps its rungs (the scheduler lives in this driver). A trial whose trainer failed is not retried.
MAX_TRIAL_RESTARTS = 3
ASHA_RUNGS = "asha_rungs.json"


def run_ray(prep: Prepared, *, dry_run: bool, max_parallel: int | None, overrides: list[str] | tuple[str, ...] = (),
            slurm_opts: dict[str, Any] | None = None) -> int:
    spec, store = prep.spec, prep.store
    plan = parse_search(spec)
    searched = [o.partition("=")[0].strip() for o in overrides if o.partition("=")[0].strip() in plan.keys]
    if searched:  # the search would silently replace the value with its draws
        raise SpecError(f"{spec.path}: search.space: {', '.join(searched)} is searched by this spec, so an override "
                        f"has no effect; remove it, or edit search.space (or run --backend local for one value)")
    trials = search_trials(plan, prep.trials)
    check_trials(trials)
    workdir = Path.cwd()
    opts = ray_options(spec, workdir)
    concurrent = max_parallel or plan.max_concurrent_trials
    if dry_run:
        done = {t.trial_id for t in trials if local_status(trial_dir(t))[0] in DONE}
        print(describe(spec, plan, trials, opts, max_concurrent=concurrent, done=done))
        print("\n# ---- Ray on Slurm: save as a file and `sbatch` it from the project directory ----")
        job = slurm_job(spec, num_trials=len(trials), workdir=workdir, concurrent=concurrent,
                        default_concurrent=plan.max_concurrent_trials, overrides=overrides,
                        slurm_opts=slurm_opts or {})
        print(sbatch_text(job), end="")
        return 0
    check_runs_writable(spec.name)  # every launcher, before anything is written (recover writes records too)
    search = Prepared(spec, trials, store)
    states = states_for(search)
    todo, done, busy = split(states)
    if busy:
        print(f"{len(busy)} trial(s) are running in another process; leaving them out of this search")
    replayed = " and replayed to the scheduler" if done and todo else ""
    print(f"ray search {spec.name}: {len(trials)} trials ({len(done)} recorded earlier{replayed}, {len(todo)} to run), "
          f"up to {concurrent} at a time")
    if not todo:  # answered from the local records: no torch, no Ray, no server unless a record waits
        print(f"nothing to run: {len(done)}/{len(states)} trials recorded")
        recover(states, store, spec.name, search=False)
        return 0 if report(plan, trials, store, RUNS_ROOT / spec.name) == "FINISHED" else 1
    preflight_trials([s.trial for s in todo], spec.path)  # data and batch arithmetic, before anything is written
    if retire_stale(states, store):
        print("trial(s) left RUNNING by a dead process: marked KILLED, running again")
    recover(states, store, spec.name)
    existing = known_runs(states)
    store.start_parent(spec=spec.name, stage=spec.stage, backend="ray", n_trials=len(todo), spec_path=spec.path,
                       trial_ids=[t.trial_id for t in trials], record_dir=RUNS_ROOT / spec.name)
    status = "FAILED"
    try:
        log_search(store, plan, concurrent)
        # finished trials with a local record replay it to ASHA; one known only to MLflow has nothing to replay
        replay = [s for s in done if local_status(s.run_dir)[0] in DONE]
        ended = _fit(spec.name, plan, replay + todo, store, opts, concurrent, workdir, existing)
        status = report(plan, trials, store, RUNS_ROOT / spec.name)
        if any(s.trial.trial_id not in ended or local_status(s.run_dir)[0] == "KILLED" for s in todo):
            # Tune took the Ctrl-C (or SIGTERM), stopped the running trials (they recorded KILLED), never
            # started the rest, and returned normally
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        status = "KILLED"
        print("interrupted: rerun the same command to resume (finished trials are not run again)", file=sys.stderr)
        return 130
    finally:
        deliver_pending(states, store, current=True)  # whatever a trial process left undelivered
        store.finish_parent(status, RUNS_ROOT / spec.name)
    return 0 if status == "FINISHED" else 1


def _create_run(s: TrialState, store: SweepStore, existing: dict) -> None:
    """trial.json and the trial's one MLflow child run, when Tune starts the trial (as the local backend
    does). A tracking outage does not stop the search: the record is delivered when the server is back
    (the tags in trial.json let the trainer create its run itself)."""
    write_trial_json(s.trial, s.run_dir, backend="ray",
                     tags={"mlflow.parentRunId": store.parent_id} if store.parent_id else None)
    if not store.enabled:
        return
    try:
        store.ensure_child(s.trial, s.run_dir, backend="ray", existing=existing)
    except Exception as e:  # noqa: BLE001 - connection errors come in many types
        print(f"warning: MLflow unreachable while starting trial {s.trial.trial_id} ({type(e).__name__}); "
              f"its record is delivered when the server is back (or by `gatesweep sync {s.run_dir}`)",
              file=sys.stderr)


# ---------------------------------------------------------------- the Tune run
def _fit(name: str, plan: SearchPlan, states: list[TrialState], store: SweepStore, opts: RayOptions,
         concurrent: int, workdir: Path, existing: dict) -> set[str]:
    """Run the Tune experiment; returns the trial ids Tune completed or failed (not the interrupted)."""
    ray_environment(opts)  # before Ray is imported: it reads some of these at import time
    from ray import tune

    tune_log = logging.getLogger("ray.tune.tune")
    if not any(isinstance(f, _NoTunerRestoreHint) for f in tune_log.filters):
        tune_log.addFilter(_NoTunerRestoreHint())

    from cluster.ray.callbacks import EarlyStopASHA, SearchCallback
    from cluster.ray.trainable import TrialTrainable, trial_payload

    forward = store.enabled and is_server(store.uri)
    replayed = {s.trial.trial_id for s in states if s.status in DONE}
    by_id = {s.trial.trial_id: s for s in states}
    payloads = [trial_payload(s.trial.trial_id, s.trial.label, s.run_dir, workdir=workdir, nproc=nproc(s.trial),
                              forward=forward, num_iterations=s.trial.config.run.num_iterations) for s in states]
    callback = SearchCallback({s.trial.trial_id: s.run_dir for s in states},
                              {s.trial.trial_id: f"{s.trial.label or 'base'} s{s.trial.seed} {s.trial.trial_id}"
                               for s in states},
                              start=lambda tid: _create_run(by_id[tid], store, existing),
                              deliver=lambda d: deliver(d, store), driver_writes=store.enabled and not forward,
                              replayed=replayed)
    a = plan.scheduler
    scheduler = EarlyStopASHA(time_attr="step", max_t=a.max_t, grace_period=a.grace_period,
                              reduction_factor=a.reduction_factor) if a else None
    with ray_session(opts) as cluster:
        resources = trial_resources(states[0].trial, cluster_gpus=cluster.get("GPU", 0),
                                    cpus_per_trial=opts.cpus_per_trial)
        check_fits(resources, cluster)
        if states[0].trial.resources.gpus_per_node and not resources["gpu"]:
            print("the Ray cluster has no GPUs: trials run on CPUs")
        tuner = tune.Tuner(
            tune.with_resources(TrialTrainable, resources),
            param_space={"trial": tune.grid_search(payloads)},
            tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, scheduler=scheduler, num_samples=1,
                                        max_concurrent_trials=concurrent, reuse_actors=True,
                                        trial_name_creator=lambda t: str(t.config["trial"]["trial_id"]),
                                        trial_dirname_creator=lambda t: str(t.config["trial"]["trial_id"])),
            run_config=tune.RunConfig(name=f"{name}-{time.strftime('%Y%m%d-%H%M%S')}",
                                      storage_path=str(opts.storage_path), verbose=0, callbacks=[callback],
                                      failure_config=tune.FailureConfig(max_failures=MAX_TRIAL_RESTARTS),
                                      checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False)))
        # `kill PID` stops a search like Ctrl-C: Tune stops the trials, they record KILLED and resume on
        # rerun. Set after ray.init, whose own SIGTERM handler aborts the process.
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: signal.raise_signal(signal.SIGINT))
        try:
            tuner.fit()
        finally:
            signal.signal(signal.SIGTERM, previous)
            if scheduler is not None:  # what ASHA judged each trial by: see EarlyStopASHA.rungs
                write_json(opts.storage_path / ASHA_RUNGS, {"rungs": scheduler.rungs()})
        callback.settle(wait_s=60.0)
    return set(callback.ended)


class _NoTunerRestoreHint(logging.Filter):
    """After a Ctrl-C Tune suggests `Tuner.restore(...)`; a gatesweep search resumes by running the same
    command again (see the module doc), so that hint would mislead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore(" not in record.getMessage()


def ray_environment(opts: RayOptions) -> None:
    """The environment Ray and its workers start with (workers inherit this process's)."""
    for k in LEAKY_ENV:  # an inherited experiment/run id would redirect the trials' runs
        os.environ.pop(k, None)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no experiment box on stdout: we print progress
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no telemetry calls from the search's machines
    if opts.address is None or _is_loopback(opts.address):
        # Ray's single-machine mode: every Ray server binds 127.0.0.1. Without it they listen on all
        # interfaces and Ray rewrites _node_ip_address=127.0.0.1 to the machine's address.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        constants = sys.modules.get("ray._private.ray_constants")
        if constants is not None and os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0":
            # Ray was imported before this ran (a notebook, a test) and read the variable already; the
            # driver is the process that picks the node address, so its copy is the one that counts.
            setattr(constants, "ENABLE_RAY_CLUSTER", False)  # noqa: B010
    if opts.address is None:
        # A loopback-only cluster of this process; Ray 2.60's default token auth would also write a
        # world-readable ~/.ray/auth_token. An explicit RAY_AUTH_MODE wins.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@contextmanager
def ray_session(opts: RayOptions) -> Iterator[dict[str, float]]:
    """Ray for one search; yields the cluster's resources. Reuses a Ray this process already started
    (tests, notebooks); else joins backend.ray.address, or starts a local Ray on 127.0.0.1."""
    ray_environment(opts)
    import ray

    if ray.is_initialized():
        yield {k: float(v) for k, v in ray.cluster_resources().items()}
        return
    temp_dir = None
    if opts.address:
        ray.init(address=opts.address, log_to_driver=False)
        _wait_for_nodes(ray, opts.nodes or 1)
    else:
        temp_dir = tempfile.mkdtemp(prefix="gsray-", dir="/tmp")  # unix socket paths: at most 107 bytes
        ray.init(num_cpus=opts.num_cpus, num_gpus=opts.num_gpus, include_dashboard=False, _temp_dir=temp_dir,
                 _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        yield {k: float(v) for k, v in ray.cluster_resources().items()}
    finally:
        ray.shutdown()
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)


def _is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0]
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _wait_for_nodes(ray: Any, n: int) -> None:
    deadline = time.monotonic() + NODE_WAIT_S
    while sum(1 for node in ray.nodes() if node.get("Alive")) < n:
        if time.monotonic() > deadline:
            raise BackendError(f"only {sum(1 for x in ray.nodes() if x.get('Alive'))} of backend.ray.nodes={n} Ray "
                               f"nodes joined in {NODE_WAIT_S:.0f}s; check the workers' `ray start` output")
        time.sleep(2.0)
