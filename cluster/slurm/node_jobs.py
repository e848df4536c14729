"""Slurm backend, node jobs (`backend.slurm.node_jobs: N`): many short trials on whole nodes.

An array task per trial pays the trainer's start-up (imports, data, compile cache) on its GPU once per
trial. With node_jobs, `gatesweep run SPEC --backend slurm` submits N single-node jobs instead; each
runs the local launcher over the spec's trials inside its allocation, so the local policy (trials
forked from one warm trainer, the next launched just in time, packing by memory) serves the node's
GPUs, and the per-trial locks on the shared filesystem split the trials between the jobs: none runs
twice, a job that finds nothing left ends. A requeued job (a lost node) runs the launcher again,
which resumes the trials it had from their checkpoints.

The submitter pins the trials: the jobs expand the spec again, and one whose trial ids differ from
the submitted ones (a chained value changed in between) refuses to run (GATESWEEP_EXPECT_TRIALS,
checked by cluster.common.prepare.check_pinned). The script is pure text (`node_script`); the rest
is the edge (sbatch, squeue).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from cluster.common.prepare import PINNED_ENV, Prepared, preflight_trials, recover, retire_stale
from cluster.common.sbatch_options import SlurmOptions, sbatch_directive
from cluster.common.state import collect, counts
from cluster.common.trialdir import check_runs_writable, submission_lock
from cluster.errors import BackendError
from cluster.slurm.sbatch import setup_lines
from cluster.slurm.state import LIVE_STATES, controller_down, sbatch_refusal, squeue_states
from sweeps.mlflow_runs import is_server
from trainer.record import read_json, write_json

RECORD = "node_jobs.json"  # under runs/<spec>/.slurm/: every node job submitted for the spec
POLL_S = 5.0


def node_script(*, job_name: str, options: SlurmOptions, log: Path, setup: list[str], workdir: Path,
                python: str, spec_path: str, overrides: tuple[str, ...]) -> str:
    """The sbatch script of one node job: one whole node (--exclusive) with `options.node_gpus` GPUs,
    the job's environment, then the local launcher over the spec (exec: it gets Slurm's signals)."""
    directives: dict[str, object] = {"job-name": job_name, "nodes": 1, "ntasks": 1, "exclusive": True,
                                     "time": options.timeout_min, "output": str(log), "requeue": True}
    if options.node_gpus > 0:
        directives["gpus-per-node"] = options.node_gpus
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(options, key) is not None:
            directives[key] = getattr(options, key)
    directives |= {k.replace("_", "-"): v for k, v in options.extra}
    run = [python, "-m", "gatesweep", "run", spec_path, *overrides, "--backend", "local"]
    return "\n".join(["#!/bin/bash", *(sbatch_directive(k, v) for k, v in directives.items()), "",
                      *setup, f"cd {shlex.quote(str(workdir))}", "exec " + shlex.join(run)]) + "\n"


def check_node_jobs(prep: Prepared, options: SlurmOptions) -> None:
    """What node jobs cannot do, refused before anything is written."""
    spec = prep.spec
    if spec.resources.nodes != 1:
        raise BackendError(f"{spec.path}: backend.slurm.node_jobs runs single-node trials, but resources.nodes is "
                           f"{spec.resources.nodes}; set resources.nodes: 1 or drop node_jobs (an array task per trial)")
    if options.node_gpus and spec.resources.gpus_per_node > options.node_gpus:
        raise BackendError(f"{spec.path}: a trial takes {spec.resources.gpus_per_node} GPUs (resources.gpus_per_node) "
                           f"but a node job has {options.node_gpus} (backend.slurm.node_gpus); raise node_gpus")
    if spec.sequential is not None:
        raise BackendError(f"{spec.path}: backend.slurm.node_jobs does not run sequential seeds (seeds.sequential): each "
                           "look's trials are decided after the last one ended; drop node_jobs (an array task per trial)")
    if prep.store.enabled and not is_server(prep.store.uri):
        raise BackendError(f"{spec.path}: backend.slurm.node_jobs needs an MLflow server: {options.node_jobs} launchers "
                           f"write at once and the store {prep.store.uri} is a single-writer file; start one "
                           "(make mlflow-up) and set MLFLOW_TRACKING_URI=http://HOST:PORT, or drop node_jobs")


def live_node_jobs(sweep_dir: Path) -> list[str]:
    """The spec's node jobs that Slurm still lists as pending or running."""
    return _live([str(j["job_id"]) for j in (read_json(sweep_dir / ".slurm" / RECORD) or {}).get("jobs", [])])


def _live(jobs: list[str]) -> list[str]:
    states = squeue_states(jobs)  # one call; none without job ids
    return [j for j in jobs if states.get(j) in LIVE_STATES]


def run_node_jobs(prep: Prepared, options: SlurmOptions, todo: list, states: list, *, sweep_dir: Path, dry_run: bool,
                  check: bool, wait: bool, setup_env: dict[str, str], snapshot_for) -> int:
    """Submit (or print, or test) the node jobs of a spec whose trials `todo` are left to run (check_node_jobs
    has passed). `snapshot_for()` takes the code snapshot the jobs import."""
    from cluster.slurm.snapshot import content_hash, snapshot_dir, source_root

    spec = prep.spec
    n = min(options.node_jobs, max(len(todo), 1))

    def script(snapshot: Path, pinned: Path) -> str:
        env = setup_env | {PINNED_ENV: str(pinned)}
        return node_script(job_name=f"gs-{spec.name}-node", options=options,
                           log=sweep_dir / ".slurm" / "node-%j.out", setup=setup_lines(snapshot, env, options.setup),
                           workdir=Path.cwd(), python=sys.executable, spec_path=spec.path, overrides=prep.overrides)

    stamp = time.strftime("%Y%m%d-%H%M%S")
    pinned = sweep_dir / ".slurm" / f"trials-{stamp}.json"
    if dry_run or check:
        text = script(snapshot_dir(sweep_dir, content_hash(source_root())), pinned)
        if check:
            _test_only(spec.path, text)
            print(f"sbatch --test-only: {n} node job(s) for {len(todo)} trial(s) would be accepted; nothing was submitted")
            return 0
        print(f"# spec {spec.name} ({spec.path}): {len(todo)} trial(s) to run ({len(states) - len(todo)} finished or "
              f"running skipped) in {n} node job(s) (backend.slurm.node_jobs={options.node_jobs}), each the local "
              f"launcher over the spec's trials on one whole node with {options.node_gpus} GPU(s)")
        print(text, end="")
        print("dry run: nothing was submitted or written")
        return 0
    if todo:
        check_runs_writable(spec.name, sweep_dir.parent)
        _test_only(spec.path, script(snapshot_dir(sweep_dir, content_hash(source_root())), pinned))
    with submission_lock(sweep_dir):  # one submitter at a time: the live check and the record agree
        live = live_node_jobs(sweep_dir)
        if live:
            print(f"{len(live)} node job(s) of this spec are still queued or running ({', '.join(live)}); they take "
                  "the trials left: no job added")
        elif not todo:
            print(f"nothing to submit: {len(states)}/{len(states)} trials finished or running")
            return 0
        else:
            jobs = _submit(prep, todo, states, n, sweep_dir=sweep_dir, pinned=pinned, stamp=stamp, script=script,
                           snapshot_for=snapshot_for)
    if live:
        return _wait(prep, live, sweep_dir) if wait else 0
    print(f"submitted {n} node job(s) for {len(todo)} trial(s): {', '.join(jobs)} (logs {sweep_dir / '.slurm'}/"
          "node-<job>.out)")
    if not wait:
        print(f"follow with: {shlex.join(['gatesweep', 'status', spec.path, *prep.overrides])}   (or rerun with --wait)")
        return 0
    return _wait(prep, jobs, sweep_dir)


def _submit(prep: Prepared, todo: list, states: list, n: int, *, sweep_dir: Path, pinned: Path, stamp: str, script,
            snapshot_for) -> list[str]:
    """Under the submission lock: records of dead runs settled, the snapshot, the pin, the script, n jobs
    (each recorded as soon as sbatch answers: a refusal midway loses none)."""
    spec = prep.spec
    preflight_trials([s.trial for s in todo])
    stale = retire_stale(states, prep.store)
    if stale:
        print(f"{stale} trial(s) whose process is gone without a final status: marked KILLED, running again")
    recover(states, prep.store, spec.name, root=sweep_dir.parent)
    snapshot = snapshot_for()
    (sweep_dir / ".slurm").mkdir(parents=True, exist_ok=True)
    write_json(pinned, {"trial_ids": sorted(t.trial_id for t in prep.trials)})
    path = sweep_dir / ".slurm" / f"node-{stamp}.sbatch"
    path.write_text(script(snapshot, pinned))
    # the launchers in the jobs track to this store: the URI reaches them through sbatch's environment,
    # never the script on disk (it may hold a password)
    env = dict(os.environ) | ({"MLFLOW_TRACKING_URI": prep.store.uri} if is_server(prep.store.uri) else {})
    jobs: list[str] = []
    for k in range(n):
        jobs.append(_sbatch(path, env, done=k))
        record = read_json(sweep_dir / ".slurm" / RECORD) or {"jobs": []}
        record["jobs"].append({"job_id": jobs[-1], "submitted": time.time(), "script": str(path),
                               "snapshot": str(snapshot)})
        write_json(sweep_dir / ".slurm" / RECORD, record)
    return jobs


def _sbatch(path: Path, env: dict[str, str], *, done: int) -> str:
    res = subprocess.run(["sbatch", "--parsable", "--export=ALL", str(path)], capture_output=True, text=True,
                         timeout=60, env=env)
    if res.returncode != 0:
        written = f"{done} node job(s) were submitted; rerun to submit the rest"
        down = controller_down("sbatch", res.stderr, written=written)
        if down is not None:
            raise down
        raise BackendError(f"sbatch refused the node job ({res.stderr.strip()[:300]}); check backend.slurm.partition/"
                           f"account/qos/constraint; {written}")
    return res.stdout.strip().split(";")[0]


def _test_only(spec_path: str, text: str) -> None:
    why = sbatch_refusal(text)
    if why is not None:
        raise BackendError(f"{spec_path}: sbatch --test-only refused the node job ({why}); check backend.slurm."
                           "partition/account/qos/constraint/node_gpus; nothing was written or submitted")


def _wait(prep: Prepared, jobs: list[str], sweep_dir: Path) -> int:
    """Until Slurm lists none of `jobs`; then the trials' outcome from their records (0: all ended well)."""
    print(f"waiting for node job(s) {', '.join(jobs)} ...")
    while _live(jobs):
        time.sleep(POLL_S)
    states = collect(prep.trials, None, root=sweep_dir.parent)  # the local records: a trial a dead job left is STALE
    print("node jobs ended: " + ", ".join(f"{v} {k}" for k, v in sorted(counts(states).items())))
    return 0 if all(s.done for s in states) else 1
