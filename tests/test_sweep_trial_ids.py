"""A sweep run names every trial id of its spec's expansion however many there are (MLflow caps a tag
value at a few thousand characters): a stage chained from it can still tell that it did not finish.
The real sqlite store, written through the launcher's SweepStore and read back by the chain's reader."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from cluster.common.store import SweepStore
from sweeps.chain import TRIAL_IDS_TAG, check_complete, stage_runs, trial_ids_of
from sweeps.errors import SpecError


def ids(n: int) -> list[str]:
    return [hashlib.sha1(str(i).encode()).hexdigest()[:12] for i in range(n)]


def test_600_trial_ids_survive_the_store_and_an_unfinished_one_is_caught(tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    expected = ids(600)  # 7,800 characters as one comma-separated tag
    store = SweepStore(uri, "big")
    store.start_parent(spec="big", stage="big", backend="local", n_trials=600, spec_path="big.yaml",
                       trial_ids=expected)
    store.finish_parent("FINISHED")
    _, known = stage_runs(MlflowClient(uri), "big")
    assert known == set(expected)
    ended = [{"trial_id": t, "status": "FINISHED"} for t in expected[:-1]]
    with pytest.raises(SpecError, match=r"incomplete \(1 of 600 trials of its last sweep have no finished run\)"):
        check_complete(ended, "big", "learning_rate", known)


def test_a_later_step_of_one_sweep_rewrites_every_chunk(tmp_path: Path):
    """Sequential seeds update the ids look after look; a shorter list leaves no stale chunk behind."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store = SweepStore(uri, "seq")
    with store.one_parent():
        store.start_parent(spec="seq", stage="seq", backend="local", n_trials=2, spec_path="s.yaml",
                           trial_ids=ids(1000))
        store.start_parent(spec="seq", stage="seq", backend="local", n_trials=2, spec_path="s.yaml",
                           trial_ids=ids(5))
    tags = MlflowClient(uri).get_run(store.parent_id).data.tags
    assert trial_ids_of(tags) == set(ids(5))
    assert tags[TRIAL_IDS_TAG] == ",".join(ids(5))  # one chunk: the tag older readers know


def test_the_old_single_tag_is_still_read():
    assert trial_ids_of({TRIAL_IDS_TAG: "a,b"}) == {"a", "b"}
    assert trial_ids_of({}) is None
