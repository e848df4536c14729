"""Slurm backend, thin executor: `gatesweep run SPEC --backend slurm [--dry-run] [--wait]`.

Non-blocking by default: check the inputs, snapshot the code, create the MLflow runs, write each
trial's trial.json, submit the trials as job arrays (one per chunk of at most MaxArraySize tasks,
chained with afterany so that `%K` caps the whole sweep), record each trial's job id in
`<run_dir>/slurm.json`, print the ids and return. `--wait` then follows the jobs (cluster.slurm.wait).
A rerun skips finished, queued and running trials and resubmits failed, killed and stale ones.
The pure parts (options, executor parameters, sbatch text) are in cluster.slurm.sbatch; what runs
inside the job is cluster.slurm.job.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.common.compile_cache import cache_env
from cluster.common.prepare import Prepared, preflight_trials, recover, retire_stale, states_for
from cluster.common.sbatch_options import DEFAULT_MAX_ARRAY_SIZE, SlurmOptions, resolve_options
from cluster.common.state import TrialState, known_runs, split
from cluster.common.trialdir import (
    RUNS_ROOT,
    check_runs_writable,
    set_local_status,
    submission_lock,
    trial_dir,
    write_trial_json,
)
from cluster.errors import BackendError, BackendUnavailable
from cluster.slurm.sbatch import (
    chunks,
    executor_params,
    parse_max_array_size,
    ranks_per_node,
    sbatch_text,
    setup_lines,
)
from cluster.slurm.snapshot import content_hash, git_sha, snapshot_dir, source_root, take_snapshot
from cluster.slurm.state import controller_down, sbatch_refusal
from sweeps.expand import Trial, gpu_hours
from sweeps.mlflow_runs import is_server
from sweeps.text_table import text_table
from trainer.record import read_json, write_json

DEPENDENCY_PLACEHOLDER = "afterany:<job id of the previous array>"


@dataclass
class ArrayPlan:
    trials: list[Trial]  # in array-task order
    params: dict[str, Any]  # submitit SlurmExecutor parameters
    text: str  # the sbatch script (what --dry-run prints)


def run_slurm(prep: Prepared, *, dry_run: bool, wait: bool, opts: dict[str, Any], check: bool = False) -> int:
    spec = prep.spec
    options = resolve_options(spec, opts)
    sweep_dir = (RUNS_ROOT / spec.name).resolve()
    # With a server the trainers forward their records themselves; a sqlite file takes one writer only
    # (this launcher, with --wait or `gatesweep sync`), so the jobs then track locally.
    tracking = "mlflow" if prep.store.enabled and is_server(prep.store.uri) else "local"
    if options.node_jobs:
        return _node_jobs(prep, options, sweep_dir, tracking, dry_run=dry_run, check=check, wait=wait)
    if check:  # `--check`: ask sbatch, write nothing
        prep.store.enabled = False
        _, todo, _, _ = _split(prep)
        n = test_only(prep, [s.trial for s in todo], options, sweep_dir, tracking)
        print(f"sbatch --test-only: {n} job array(s) for {len(todo)} trial(s) would be accepted; nothing was submitted")
        return 0
    if dry_run:
        if importlib.util.find_spec("submitit") is None:
            raise BackendUnavailable("--dry-run of backend 'slurm' needs submitit (its sbatch builder): "
                                     "pip install 'gatesweep[slurm]' (or make setup)")
        prep.store.enabled = False  # a dry run creates nothing: no MLflow store, no files
        _, todo, done, busy = _split(prep)
        return dry_run_report(prep, [s.trial for s in todo], len(done) + len(busy), options, sweep_dir, tracking)
    # a refused partition or account must fail here, before any record, MLflow run or snapshot exists
    check_runs_writable(spec.name, sweep_dir.parent)
    todo_now = _split(prep, use_store=False)[1]  # the store is read once, under the lock below
    if todo_now:
        test_only(prep, [s.trial for s in todo_now], options, sweep_dir, tracking)
    with submission_lock(sweep_dir):
        states, todo, done, busy = _split(prep)
        if done:
            print(f"skipping {len(done)} finished trial(s)")
        if busy:
            print(f"{len(busy)} trial(s) already queued or running in Slurm; not submitting them again")
        submitted: list[tuple[TrialState, str]] = []
        if todo:
            preflight_trials([s.trial for s in todo])  # data and batch arithmetic, before anything is written
            stale = retire_stale(states, prep.store)
            if stale:
                print(f"{stale} trial(s) whose job is gone without a final status: marked KILLED, submitting again")
        # records of ended jobs that no launcher delivered (no --wait, or it was killed); dead launchers' sweep runs
        live = {s.trial.trial_id for s in busy}
        recover([s for s in states if s.trial.trial_id not in live], prep.store, spec.name, root=sweep_dir.parent,
                search=bool(todo))
        if todo:
            submitted = submit(prep, todo, options, sweep_dir, tracking)
    if not todo and (not wait or not busy):
        print(f"nothing to submit: {len(done)}/{len(states)} trials finished, {len(busy)} queued or running")
        return 0
    if not wait:
        prep.store.finish_parent("FINISHED")  # this invocation's work (submission) is complete
        follow = shlex.join(["gatesweep", "status", spec.path, *prep.overrides])
        print(f"follow with: {follow}   (or rerun with --wait)")
        return 0
    from cluster.slurm.wait import wait_for

    followed = submitted + [(s, str((read_json(s.run_dir / "slurm.json") or {}).get("job_id", ""))) for s in busy]
    try:
        ok = wait_for([(s, j) for s, j in followed if j], prep.store, title=spec.name,
                      parallel=min(options.array_parallelism, max(len(followed), 1)))
    except KeyboardInterrupt:
        prep.store.finish_parent("FINISHED")  # submitted; the jobs go on without this launcher
        return 130
    prep.store.finish_parent("FINISHED" if ok else "FAILED")
    return 0 if ok else 1


def _node_jobs(prep: Prepared, options: SlurmOptions, sweep_dir: Path, tracking: str, *, dry_run: bool, check: bool,
               wait: bool) -> int:
    from cluster.slurm.node_jobs import check_node_jobs, run_node_jobs

    check_node_jobs(prep, options)
    if dry_run or check:
        prep.store.enabled = False  # creates nothing
    states, todo, _, _ = _split(prep)
    root = source_root()
    return run_node_jobs(prep, options, todo, states, sweep_dir=sweep_dir, dry_run=dry_run, check=check, wait=wait,
                         setup_env=job_env(tracking, sweep_dir, git_sha(root)),
                         snapshot_for=lambda: take_snapshot(sweep_dir, root))


def _split(prep: Prepared, *, use_store: bool = True
           ) -> tuple[list[TrialState], list[TrialState], list[TrialState], list[TrialState]]:
    """(states, to submit, finished, queued/running). A trial whose job Slurm still lists as live is
    never submitted again, whatever its record says (e.g. KILLED for the seconds between the trainer's
    stop and the requeue)."""
    from cluster.slurm.state import SlurmView

    view = SlurmView(prep.trials)
    states = states_for(prep, alive=view.alive, use_store=use_store)
    todo, done, busy = split(states)
    live = {s.trial.trial_id for s in todo if view.job_live(s.run_dir)}
    return (states, [s for s in todo if s.trial.trial_id not in live], done,
            busy + [s for s in todo if s.trial.trial_id in live])


# ---------------------------------------------------------------- planning (no side effects)
def job_env(tracking: str, sweep_dir: Path, sha: str) -> dict[str, str]:
    """Exported in the sbatch script: provenance, where the trainer tracks, the sweep's compile cache."""
    return {"GATESWEEP_GIT_SHA": sha, "GATESWEEP_TRACKING": tracking, **cache_env(sweep_dir)}


def max_array_size(options: SlurmOptions) -> tuple[int, str]:
    """(size, where it came from): the cluster's MaxArraySize, lowered by backend.slurm.max_array_size."""
    cluster = None
    if shutil.which("scontrol"):
        res = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=60)
        cluster = parse_max_array_size(res.stdout) if res.returncode == 0 else None
    size = cluster or DEFAULT_MAX_ARRAY_SIZE
    where = "cluster MaxArraySize" if cluster else "Slurm's default MaxArraySize; scontrol unavailable"
    if options.max_array_size is not None and options.max_array_size < size:
        return options.max_array_size, "backend.slurm.max_array_size"
    return size, where


def plan_arrays(trials: list[Trial], options: SlurmOptions, *, job_name: str, setup: list[str], folder: Path,
                python: str, array_size: int) -> list[ArrayPlan]:
    plans: list[ArrayPlan] = []
    by_resources: dict[Any, list[Trial]] = {}
    for t in trials:  # one array needs one set of sbatch parameters
        by_resources.setdefault(t.resources, []).append(t)
    for res, group in by_resources.items():
        params = executor_params(res, options, job_name=job_name, setup=setup)
        for rng in chunks(len(group), array_size):
            p = dict(params) | ({"dependency": DEPENDENCY_PLACEHOLDER} if plans else {})
            text = sbatch_text(p, folder=folder, python=python, array_size=len(rng))
            plans.append(ArrayPlan([group[i] for i in rng], p, text))
    return plans


def _plans(prep: Prepared, trials: list[Trial], options: SlurmOptions, sweep_dir: Path, snapshot: Path,
           sha: str, tracking: str) -> tuple[list[ArrayPlan], str]:
    size, where = max_array_size(options)
    setup = setup_lines(snapshot, job_env(tracking, sweep_dir, sha), options.setup)
    plans = plan_arrays(trials, options, job_name=f"gs-{prep.spec.name}", setup=setup,
                        folder=sweep_dir / ".slurm" / "%j", python=sys.executable, array_size=size)
    return plans, f"at most {size} tasks per array ({where})"


def estimate_line(trials: list[Trial], ms_per_step: float) -> str:
    """GPU-hours = sum over trials of nodes x GPUs per node x num_iterations x ms/step (estimate.ms_per_step)."""
    gpu_h = gpu_hours(trials, ms_per_step)
    shapes = {(t.resources.nodes, max(t.resources.gpus_per_node, 1), t.config.run.num_iterations) for t in trials}
    if len(shapes) == 1:
        nodes, gpus, iters = shapes.pop()
        hours = iters * ms_per_step / 3.6e6
        return (f"estimate: {len(trials)} trials x {nodes} node(s) x {gpus} GPU(s) x {hours:.3g} h ({iters} iterations x "
                f"{ms_per_step:g} ms/step, estimate.ms_per_step) = {gpu_h:.1f} GPU-hours")
    return (f"estimate: {gpu_h:.1f} GPU-hours = sum over {len(trials)} trials of nodes x GPUs x num_iterations x "
            f"{ms_per_step:g} ms/step (estimate.ms_per_step)")


def dry_run_report(prep: Prepared, trials: list[Trial], n_skipped: int, options: SlurmOptions,
                   sweep_dir: Path, tracking: str) -> int:
    spec = prep.spec
    res = spec.resources
    root = source_root()
    snapshot = snapshot_dir(sweep_dir, content_hash(root))  # the path only: nothing is copied
    plans, limit = _plans(prep, trials, options, sweep_dir, snapshot, git_sha(root), tracking)
    print(f"# spec {spec.name} ({spec.path}): {len(trials)} trial(s) to submit ({n_skipped} finished or queued "
          f"skipped), {res.nodes} node(s) x {res.gpus_per_node} GPU(s) each, {ranks_per_node(res)} rank(s) per "
          f"node; {len(plans)} job array(s), {limit}")
    for k, plan in enumerate(plans, 1):
        n = len(plan.trials)
        print(f"\n# ---- job {k}/{len(plans)}: " + (f"array of {n} tasks, at most {min(n, options.array_parallelism)} "
                                                      "running at once" if n > 1 else "1 trial"))
        for i, t in enumerate(plan.trials):
            print(f"#   task {i:>3}  trial {t.trial_id}  {t.label or '-'}  seed={t.seed}  -> every rank runs "
                  f"python -m trainer {trial_dir(t) / 'trial.json'}")
        print(plan.text)
    print(estimate_line(trials, spec.estimate_ms_per_step))
    print("dry run: nothing was submitted or written")
    return 0


def test_only(prep: Prepared, trials: list[Trial], options: SlurmOptions, sweep_dir: Path, tracking: str) -> int:
    """`sbatch --test-only` of every job array that would be submitted (the dependency on the previous
    array left out: that job does not exist yet). BackendError, naming the array and sbatch's reason, if
    one is refused; the number of arrays otherwise. Writes nothing but a temporary script."""
    root = source_root()
    plans, _ = _plans(prep, trials, options, sweep_dir, snapshot_dir(sweep_dir, content_hash(root)), git_sha(root),
                      tracking)
    for k, plan in enumerate(plans, 1):
        text = "\n".join(ln for ln in plan.text.splitlines() if not ln.startswith("#SBATCH --dependency"))
        why = sbatch_refusal(text + "\n")
        if why is not None:
            raise BackendError(f"{prep.spec.path}: sbatch --test-only refused job array {k}/{len(plans)} ({why}); "
                               "check backend.slurm.partition/account/qos/constraint (or --partition ...); nothing "
                               "was written or submitted")
    return len(plans)


# ---------------------------------------------------------------- submission
def submit(prep: Prepared, todo: list[TrialState], options: SlurmOptions, sweep_dir: Path, tracking: str
           ) -> list[tuple[TrialState, str]]:
    from cluster.slurm.job import TrialJob

    spec, store = prep.spec, prep.store
    root = source_root()
    sha = git_sha(root)
    snapshot = take_snapshot(sweep_dir, root)
    plans, _ = _plans(prep, [s.trial for s in todo], options, sweep_dir, snapshot, sha, tracking)
    if store.enabled and not is_server(store.uri):
        print(f"warning: MLflow store {store.uri} is a single-writer file, so the jobs keep their records in "
              f"{RUNS_ROOT / spec.name}/ and this launcher delivers them with --wait (else run `gatesweep sync` "
              "once they end); for live tracking from parallel jobs start a server (make mlflow-up) and set "
              "MLFLOW_TRACKING_URI=http://HOST:PORT", file=sys.stderr)
    store.start_parent(spec=spec.name, stage=spec.stage, backend="slurm", n_trials=len(todo), spec_path=spec.path,
                       trial_ids=[t.trial_id for t in prep.trials], record_dir=sweep_dir)
    existing = known_runs(todo)
    by_id = {s.trial.trial_id: s for s in todo}
    workdir = os.getcwd()
    grace = max(options.signal_delay_s * 0.8, 5.0)
    for s in todo:
        write_trial_json(s.trial, s.run_dir, backend="slurm")
        store.ensure_child(s.trial, s.run_dir, backend="slurm", existing=existing)
        # QUEUED before sbatch: a job that starts at once writes RUNNING, which must not be overwritten
        set_local_status(s.run_dir, "QUEUED", "submitted to Slurm")

    def job(s: TrialState) -> TrialJob:
        run_dir = Path(workdir) / s.run_dir
        return TrialJob(trial_id=s.trial.trial_id, run_dir=str(run_dir), workdir=workdir,
                        command=[sys.executable, "-m", "trainer", str(run_dir / "trial.json")],
                        max_requeues=options.max_requeues, grace_s=grace)

    import submitit
    from submitit.core.utils import FailedJobError

    ex = submitit.SlurmExecutor(folder=sweep_dir / ".slurm" / "%j", max_num_timeout=options.max_requeues,
                                python=shlex.quote(sys.executable))
    out: list[tuple[TrialState, str]] = []
    previous = ""
    for k, plan in enumerate(plans):
        states = [by_id[t.trial_id] for t in plan.trials]
        params = dict(plan.params) | ({"dependency": f"afterany:{previous}"} if previous else {})
        ex.update_parameters(**params)
        try:
            jobs = ex.submit_array([job(s) for s in states])
        except FailedJobError as e:
            failed = [s for p in plans[k:] for s in (by_id[t.trial_id] for t in p.trials)]
            down = controller_down("sbatch", str(e), written=f"{len(out)} trial(s) were submitted, rerun to submit the rest")
            for s in failed:
                set_local_status(s.run_dir, "FAILED", f"sbatch refused the job: {str(e).strip()[:300]}")
            if down is not None:
                raise down from None
            raise BackendError(f"sbatch refused the job ({str(e).strip().splitlines()[-1][:300] if str(e).strip() else e}); "
                               f"check partition/account/qos/constraint (backend.slurm.* or --partition ...); "
                               f"{len(out)} trial(s) were submitted, rerun to submit the rest") from None
        previous = jobs[0].job_id.split("_")[0]
        script = submission_file(ex.folder, previous)
        for s, j in zip(states, jobs):
            _record(s, j, sha, snapshot, script)
            out.append((s, j.job_id))
        store.log_parent_artifact(script)
    _print_submitted(out, plans)
    return out


def submission_file(folder: Path, array_id: str) -> Path:
    """Where submitit keeps the script it submitted (one per array, in the array's own folder)."""
    from submitit.core.utils import JobPaths

    return JobPaths(folder, job_id=array_id).submission_file


def _record(s: TrialState, job: Any, sha: str, snapshot: Path, script: Path) -> None:
    old = read_json(s.run_dir / "slurm.json") or {}
    history = old.get("previous", []) + ([old["job_id"]] if old.get("job_id") else [])
    write_json(s.run_dir / "slurm.json", {
        "job_id": job.job_id, "submitted": time.time(), "log": str(job.paths.stdout),
        "submission_file": str(script), "git_sha": sha, "snapshot": str(snapshot),
        "previous": history})


def _print_submitted(out: list[tuple[TrialState, str]], plans: list[ArrayPlan]) -> None:
    print(text_table(["job", "trial_id", "design", "seed"],
                     [[j, s.trial.trial_id, s.trial.label or "-", s.trial.seed] for s, j in out]))
    arrays = sorted({j.split("_")[0] for _, j in out})
    print(f"submitted {len(out)} trial(s) as {len(plans)} Slurm job(s): {', '.join(arrays)}")
