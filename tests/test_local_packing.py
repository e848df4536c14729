"""The local launcher's GPU policy (cluster/local/packing.py), pure: single-GPU trials start one at a time
per GPU (the next once the last has stepped), up to `share` per GPU; under `auto` the next one is
launched just in time (when the training one has about a start-up left) and only while the GPU's free
memory holds the largest footprint seen; multi-GPU trials keep disjoint sets."""

from __future__ import annotations

from cluster.local.packing import (
    AUTO_SHARE,
    DEFAULT_STARTUP_S,
    JIT_MARGIN_S,
    MEMORY_MARGIN,
    STARTING_MAX_S,
    GpuLoad,
    Packer,
    default_parallel,
    pick_gpu,
    remaining_s,
    share_of,
)


def test_a_gpu_with_a_trial_still_starting_takes_no_other():
    loads = [GpuLoad(0, running=1, starting=1), GpuLoad(1, running=2, starting=0)]
    assert pick_gpu(loads, share=4, footprint_mib=None, check_memory=False) == 1  # GPU 0 waits for its step
    loads[1].starting = 1
    assert pick_gpu(loads, share=4, footprint_mib=None, check_memory=False) is None


def test_least_loaded_gpu_first_and_share_caps_each_gpu():
    loads = [GpuLoad(0, running=2), GpuLoad(1, running=1), GpuLoad(2, running=3)]
    assert pick_gpu(loads, share=3, footprint_mib=None, check_memory=False) == 1
    full = [GpuLoad(0, running=3), GpuLoad(1, running=3)]
    assert pick_gpu(full, share=3, footprint_mib=None, check_memory=False) is None


def test_auto_packs_a_second_trial_only_where_its_footprint_fits():
    # a 139 GiB card with one 16 GiB trial (GPU 0); GPU 1 has 17 GiB free, less than 16 GiB x the margin
    loads = [GpuLoad(0, running=1, free_mib=123_000), GpuLoad(1, running=1, free_mib=17_000)]
    assert pick_gpu(loads, share=4, footprint_mib=16_000, check_memory=True) == 0
    loads[0].free_mib = 16_000 * MEMORY_MARGIN - 1  # not with the margin
    assert pick_gpu(loads, share=4, footprint_mib=16_000, check_memory=True) is None
    # footprint not known yet: an idle GPU takes a trial, a busy one waits
    assert pick_gpu([GpuLoad(0, running=1, free_mib=1e6), GpuLoad(1)], share=4, footprint_mib=None,
                    check_memory=True) == 1
    assert pick_gpu([GpuLoad(0, running=1, free_mib=1e6)], share=4, footprint_mib=None, check_memory=True) is None
    # a fixed trials_per_gpu reads no memory
    assert pick_gpu([GpuLoad(0, running=1, free_mib=10)], share=4, footprint_mib=16_000, check_memory=False) == 0


def test_packer_staggers_starts_and_learns_the_footprint_from_stepped_trials():
    p = Packer([0, 1], share=2, check_memory=True)
    assert p.pick(0.0, {}) == 0
    p.add(1, 0, now=0.0)
    assert p.pick(1.0, {}) == 1  # GPU 0's trial is still starting
    p.add(2, 1, now=1.0)
    assert p.pick(2.0, {}) is None  # both starting
    p.stepped(1)
    mem = {0: (16_500.0, 143_000.0), 1: (9_000.0, 143_000.0)}
    p.observe(mem)
    assert p.footprint_mib == 16_500.0  # GPU 1's trial has not stepped: its memory is not counted yet
    assert p.pick(3.0, mem) == 0
    p.add(3, 0, now=3.0)
    p.stepped(2), p.stepped(3)
    assert p.pick(4.0, mem) == 1  # GPU 0 is full (share 2)
    p.remove(1)
    assert sorted(p.trials) == [2, 3]
    # a trial that never steps stops holding its GPU back after STARTING_MAX_S
    q = Packer([0], share=2, check_memory=False)
    q.add(1, 0, now=0.0)
    assert q.pick(10.0, {}) is None and q.pick(STARTING_MAX_S + 1, {}) == 0


def test_trials_per_gpu_and_max_parallel_defaults():
    assert share_of(None) == share_of("auto") == (AUTO_SHARE, True)
    assert share_of(3) == (3, False)
    assert default_parallel(None, [0, 1], 1, "auto") == 2 * AUTO_SHARE
    assert default_parallel(None, [0, 1, 2, 3], 2, None) == 2  # multi-GPU trials: disjoint sets
    assert default_parallel(None, [], 1, None) == 1  # CPU machine: one at a time, as before
    assert default_parallel(5, [0], 1, None) == 5


def test_remaining_time_from_a_trials_pace():
    # 100 steps in 10 s (validations included), 300 of 400 done, last point 1 s ago: 10 s - 1 s left
    assert remaining_s((0.0, 100), (20.0, 300), 400, now=21.0) == 9.0
    assert remaining_s((0.0, 1), (0.5, 4), 400, now=1.0) is None  # too few steps for a pace


def test_just_in_time_launches_the_next_trial_about_a_start_up_before_the_end():
    p = Packer([0], share=AUTO_SHARE, check_memory=False, jit=True)
    assert p.pick(0.0, {}) == 0  # an idle GPU takes a trial at once
    p.add(1, 0, now=0.0, total_steps=400)
    p.stepped(1, now=12.0)  # a 12 s start-up: the estimate once one is seen
    assert p.startup_s() == 12.0
    p.progress(1, (12.0, 1))
    p.progress(1, (22.0, 101))  # 10 s per 100 steps: 30 s left at t=22
    assert p.pick(22.0, {}) is None  # not due: it would share the card for ~16 s
    p.progress(1, (37.5, 256))  # 14.4 s left: within 12 s + the margin? no
    assert p.pick(37.5, {}) is None
    p.progress(1, (39.0, 271))  # 12.9 s left <= 12 + 2
    assert 12.9 <= p.startup_s() + JIT_MARGIN_S and p.pick(39.0, {}) == 0
    p.add(2, 0, now=39.0, total_steps=400)
    assert p.pick(40.0, {}) is None  # two on the GPU (share 2), one of them starting
    fresh = Packer([0], share=AUTO_SHARE, check_memory=False, jit=True)
    assert fresh.startup_s() == DEFAULT_STARTUP_S  # before any trial has stepped
