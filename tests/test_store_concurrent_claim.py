"""Two launchers of one spec starting at the same moment (node jobs: backend.slurm.node_jobs) both
claim the spec's name in the experiment. MLflow's SQL store inserts a new experiment tag without an
upsert, so the second of two simultaneous inserts failed on the unique key and took its launcher down
(seen on the multi-node test cluster); the same value set by both is success."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest

from cluster.common.store import SPEC_TAG, SweepStore
from sweeps.spec import spec_file_id

pytestmark = pytest.mark.mlflow
LAUNCHERS, ROUNDS = 6, 5


def test_simultaneous_claims_of_one_spec_all_succeed(mlflow_server, tmp_path: Path):
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text("name: x\n")
    for k in range(ROUNDS):  # each round a fresh experiment: the tag is new, as at a sweep's first start
        experiment, name = f"gs-claim-{uuid.uuid4().hex[:8]}", f"claim{k}"
        stores = [SweepStore(mlflow_server.uri, experiment) for _ in range(LAUNCHERS)]
        for s in stores:
            s.experiment_id  # noqa: B018 - created before the race: the claim is what is raced
        barrier, errors = threading.Barrier(LAUNCHERS), []
        threads = [threading.Thread(target=_claim, args=(s, name, spec_path, tmp_path / f"r{k}-{i}", barrier, errors))
                   for i, s in enumerate(stores)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert errors == [], errors
        tags = stores[0].client.get_experiment(stores[0].experiment_id).tags
        assert tags[SPEC_TAG + name] == spec_file_id(spec_path)


def _claim(store: SweepStore, name: str, spec_path: Path, record_dir: Path, barrier: threading.Barrier,
           errors: list[str]) -> None:
    try:
        barrier.wait(timeout=30)
        store.check_spec(name, str(spec_path), record_dir, claim=True)
    except Exception as e:  # noqa: BLE001 - every launcher's failure is reported
        errors.append(repr(e))
