"""`gatesweep run ... --backend slurm --wait`: follow submitted trials until their jobs end.

One squeue call per poll for all jobs. A trial has ended when its job is no longer pending or running
(a requeued job stays live under its id); its outcome is the trainer's record (track/status.json).
A job that ended before the trainer recorded an outcome (cancelled while pending, node failure, out
of memory) gets one here, from sacct's state. With a sqlite MLflow store the jobs track locally and
this launcher, the single writer, delivers their records.
"""

from __future__ import annotations

import sys
import time

from cluster.common.delivery import deliver_locked
from cluster.common.progress import Progress, outcome_line
from cluster.common.progress import failures as why_not_finished
from cluster.common.state import DONE, TrialState
from cluster.common.store import SweepStore
from cluster.common.trialdir import local_status, set_local_status
from cluster.errors import BackendError
from cluster.slurm.state import LIVE_STATES, sacct_states, squeue_states
from sweeps.mlflow_runs import is_server
from trainer.record import TERMINAL, read_json

POLL_S = 5.0
DELIVER_EVERY_S = 15.0
ACCOUNTING_GRACE_S = 15.0  # sacct records of a just-ended job lag a few seconds
MAX_SQUEUE_FAILURES = 10
# job ends that stop a trial from outside (sacct states): the trial is KILLED (resumable), not FAILED
RESUMABLE_ENDS = {"CANCELLED": "cancelled", "TIMEOUT": "time limit", "PREEMPTED": "preempted",
                  "DEADLINE": "deadline", "NODE_FAIL": "a node of its allocation failed"}


def _deliver(s: TrialState, store: SweepStore) -> None:
    """The jobs track locally with a file store: this launcher, the single writer, delivers."""
    if not is_server(store.uri):
        deliver_locked(s.run_dir, store)  # never beside another launcher's delivery of the record


def _settle(s: TrialState, job_id: str, store: SweepStore, ended_at: float) -> str | None:
    """The trial's final status once its job is gone, or None to look again at the next poll."""
    status, _ = local_status(s.run_dir)
    if status in TERMINAL:
        return status
    job_state = sacct_states([job_id]).get(job_id, "")
    if not job_state and time.monotonic() - ended_at < ACCOUNTING_GRACE_S:
        return None
    log = (read_json(s.run_dir / "slurm.json") or {}).get("log", "the job's log")
    if job_state in RESUMABLE_ENDS:  # not the trial's fault: its last checkpoint is kept
        status = "KILLED"
        reason = (f"Slurm job {job_id} ended {job_state} ({RESUMABLE_ENDS[job_state]}) before the trainer recorded "
                  f"an outcome; its last checkpoint is kept: `gatesweep run` resubmits and resumes it; see {log}")
    else:
        status = "FAILED"
        reason = f"Slurm job {job_id} ended {job_state or '(state unknown)'} before the trainer recorded an outcome; see {log}"
    set_local_status(s.run_dir, status, reason)
    if store.enabled and s.mlflow_run_id and is_server(store.uri):
        store.mark(s.mlflow_run_id, status, reason)
    return status


def wait_for(followed: list[tuple[TrialState, str]], store: SweepStore, *, title: str, parallel: int) -> bool:
    """Block until every job has ended; True if every trial finished."""
    pending = dict((s.trial.trial_id, (s, j)) for s, j in followed)
    started: set[str] = set()
    ended_at: dict[str, float] = {}
    results: dict[str, str] = {}
    last_delivery = time.monotonic()
    with Progress(title, len(pending), parallel=parallel) as progress:
        try:
            failures = 0
            while pending:
                try:
                    states = squeue_states([j for _, j in pending.values()])
                    failures = 0
                except BackendError as e:  # a controller hiccup must not end a long wait
                    failures += 1
                    if failures >= MAX_SQUEUE_FAILURES:
                        raise
                    print(f"warning: {e} (retrying)", file=sys.stderr)
                    time.sleep(POLL_S)
                    continue
                for tid, (s, job_id) in list(pending.items()):
                    state = states.get(job_id, "")
                    label = s.trial.label or tid
                    if state == "RUNNING" and tid not in started:
                        started.add(tid)
                        progress.started(label, s.run_dir, s.trial.config.run.num_iterations)
                    if state in LIVE_STATES:
                        continue
                    final = _settle(s, job_id, store, ended_at.setdefault(tid, time.monotonic()))
                    if final is None:
                        continue
                    del pending[tid]
                    _deliver(s, store)
                    results[tid] = final
                    if tid not in started:
                        progress.started(label, s.run_dir, s.trial.config.run.num_iterations)
                    progress.ended(label, final)
                if time.monotonic() - last_delivery > DELIVER_EVERY_S:
                    for s, _ in pending.values():
                        _deliver(s, store)
                    last_delivery = time.monotonic()
                progress.tick()
                if pending:
                    time.sleep(POLL_S)
        except KeyboardInterrupt:
            print(f"\nstopped waiting; {len(pending)} job(s) keep running in Slurm: `gatesweep status` shows them, "
                  "a rerun with --wait follows them again", file=sys.stderr)
            raise
    bad = {k: v for k, v in results.items() if v not in DONE}
    print(outcome_line(title, results, why_not_finished([s for s, _ in followed], bad)))
    return not bad
