"""How `--wait` settles a trial whose job ended before the trainer recorded an outcome: a job stopped
from outside (a lost node, cancelled, preempted, out of time) leaves the trial KILLED - resumable, its
checkpoint kept - and anything else FAILED; the reason says which, from sacct's state."""

from __future__ import annotations

from pathlib import Path

import pytest

import cluster.slurm.wait as wait
from cluster.common.state import TrialState
from cluster.common.store import SweepStore
from cluster.common.trialdir import local_status, set_local_status
from sweeps.expand import expand
from sweeps.spec import load_spec
from tests.slurm_helpers import write_spec


@pytest.mark.parametrize(("job_state", "status", "words"), [
    ("NODE_FAIL", "KILLED", "a node of its allocation failed"),
    ("CANCELLED", "KILLED", "cancelled"),
    ("TIMEOUT", "KILLED", "time limit"),
    ("OUT_OF_MEMORY", "FAILED", "ended OUT_OF_MEMORY"),
    ("FAILED", "FAILED", "ended FAILED"),
])
def test_a_job_that_ended_without_a_record_settles_by_its_sacct_state(tmp_path: Path, monkeypatch, job_state,
                                                                      status, words):
    (trial,) = expand(load_spec(write_spec(tmp_path / "s.yaml", "settle", gates=["none"])))
    run_dir = tmp_path / "runs" / trial.trial_id
    set_local_status(run_dir, "RUNNING", "Slurm job 7 on gsnode2, attempt 1")  # the trainer died with its node
    monkeypatch.setattr(wait, "sacct_states", lambda ids: {i: job_state for i in ids})
    store = SweepStore("sqlite:///" + str(tmp_path / "mlflow.db"), "e")
    store.enabled = False
    assert wait._settle(TrialState(trial, run_dir, "RUNNING"), "7", store, ended_at=0.0) == status
    got, reason = local_status(run_dir)
    assert got == status and words in reason and "Slurm job 7" in reason
    assert ("resubmits and resumes it" in reason) == (status == "KILLED")
