"""GPU packing of the local launcher: disjoint GPU sets per trial, waiting when none are free, and
`trials_per_gpu` sharing one GPU between several single-GPU trials. Pure (no GPUs needed)."""

from __future__ import annotations

import pytest

from cluster.errors import BackendError
from cluster.local.runner import GpuPool, check_local, visible_gpus


def test_trials_get_disjoint_gpu_sets_and_wait_when_none_are_free():
    pool = GpuPool([0, 1, 2, 3])
    a, b = pool.take(2), pool.take(2)
    assert a == [0, 1] and b == [2, 3]
    assert pool.take(1) is None  # all taken: the trial waits
    pool.give(a)
    assert pool.take(2) == [0, 1]
    with pytest.raises(ValueError, match="needs 8 GPUs but this machine has 4"):
        pool.take(8)


def test_trials_per_gpu_shares_each_gpu():
    # run_trials builds the pool with each GPU listed trials_per_gpu times
    pool = GpuPool([g for g in [0, 1] for _ in range(2)])
    taken = [pool.take(1) for _ in range(4)]
    assert sorted(t[0] for t in taken if t) == [0, 0, 1, 1] and pool.take(1) is None


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert visible_gpus() == [2, 5]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []


@pytest.mark.parametrize("kw,msg", [
    ({"nproc": 4, "max_parallel": 1, "trials_per_gpu": 1, "gpus": [0, 1]}, "a trial needs 4 GPUs"),
    ({"nproc": 2, "max_parallel": 1, "trials_per_gpu": 2, "gpus": [0, 1]}, "trials_per_gpu=2 needs single-GPU"),
    ({"nproc": 1, "max_parallel": 0, "trials_per_gpu": 1, "gpus": []}, "max_parallel=0"),
])
def test_launch_options_the_machine_cannot_honour(kw, msg):
    with pytest.raises(BackendError, match=msg):
        check_local(**kw)


def test_packed_trials_are_tagged_as_sharing_their_gpu():
    from cluster.local.runner import SHARED_TAG, launch_tags

    assert launch_tags("p1", [0], 3) == {"mlflow.parentRunId": "p1", SHARED_TAG: "3"}
    assert launch_tags("p1", [0], 1) == {"mlflow.parentRunId": "p1"}
    assert launch_tags(None, [], 4) is None  # CPU trials share no GPU
