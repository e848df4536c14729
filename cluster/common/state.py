"""Which trials of a spec are finished, running, failed or stale - from the local records and MLflow.

The local record of a trial is the source of truth when it exists; MLflow answers for trials run
elsewhere (another machine, a deleted run directory). A record that says RUNNING while nobody holds
the trial's lock (and no scheduler job is alive) belongs to a dead process: it is stale.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cluster.common.store import RunState, SweepStore
from cluster.common.trialdir import RUNS_ROOT, TrialLock, local_status, trial_dir
from sweeps.expand import Trial
from trainer.record import DONE, delivered_run_id


@dataclass
class TrialState:
    trial: Trial
    run_dir: Path
    status: str  # '' (never run) | QUEUED | RUNNING | FINISHED | EARLY_STOPPED | FAILED | KILLED | STALE
    reason: str = ""
    mlflow_run_id: str | None = None

    @property
    def done(self) -> bool:
        return self.status in DONE


def collect(trials: list[Trial], store: SweepStore | None, *, root: Path = RUNS_ROOT,
            alive: Callable[[Path], bool] | None = None) -> list[TrialState]:
    """`alive(run_dir)` says whether some process (or scheduler job) still runs the trial;
    default: the trial's lock is held."""
    local = {t.trial_id: local_status(trial_dir(t, root)) for t in trials}
    # Every trial finished by its local record: nothing to ask MLflow (a rerun of a finished spec
    # answers without importing mlflow or reaching the server).
    need_store = store is not None and any(st not in DONE for st, _ in local.values())
    runs: dict[str, RunState] = store.trial_runs(trials) if need_store else {}  # type: ignore[union-attr]
    is_alive = alive or _default_alive(trials, local, root)
    states = []
    for t in trials:
        d = trial_dir(t, root)
        status, reason = local[t.trial_id]
        remote = runs.get(t.trial_id)
        if not status and remote is not None:
            status = remote.status if remote.status in ("FINISHED", "EARLY_STOPPED", "FAILED", "KILLED") else ""
        if status in ("RUNNING", "QUEUED") and not is_alive(d):
            status, reason = "STALE", f"left {status} by a process that is gone"
        # a trial finished by its local record is not looked up: its record names its run
        run_id = remote.run_id if remote else delivered_run_id(d / "track", store.uri) if store else None
        states.append(TrialState(t, d, status, reason, run_id))
    return states


def _default_alive(trials: list[Trial], local: dict[str, tuple[str, str]], root: Path) -> Callable[[Path], bool]:
    """A trial is alive while a process holds its lock or a scheduler's job runs it (asked through the
    backend registry: this package knows no backend)."""
    from cluster.backend import jobs_alive

    def locked(d: Path) -> bool:
        return TrialLock(d).held_elsewhere()

    queued = [t for t in trials if local[t.trial_id][0] in ("RUNNING", "QUEUED")]
    jobs = jobs_alive(queued, root) if queued else None
    return locked if jobs is None else (lambda d: jobs(d) or locked(d))


def known_runs(states: list[TrialState]) -> dict[str, RunState]:
    """The MLflow runs `collect` found, by trial id: what a launcher passes to SweepStore.ensure_child
    instead of searching the store a second time."""
    return {s.trial.trial_id: RunState(s.mlflow_run_id, s.status) for s in states if s.mlflow_run_id}


def split(states: list[TrialState]) -> tuple[list[TrialState], list[TrialState], list[TrialState]]:
    """(to run, finished - skipped, running elsewhere). Failed, killed and stale trials run again."""
    todo = [s for s in states if not s.done and s.status not in ("RUNNING", "QUEUED")]
    done = [s for s in states if s.done]
    busy = [s for s in states if s.status in ("RUNNING", "QUEUED")]
    return todo, done, busy


def counts(states: list[TrialState]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in states:
        out[s.status or "PENDING"] = out.get(s.status or "PENDING", 0) + 1
    return out
