"""bench/local_overhead.py's arithmetic: amortised and marginal overhead per trial from sweeps of N and
2N trials (medians over repeats), and the spec it times (the start mode is the only difference)."""

from __future__ import annotations

import json

from bench.local_overhead import measure_mode, spec_text
from bench.measure import parse_first_step


def _sweep(wall: float, train_each: float, n: int, rerun: float | None = None) -> dict:
    line = "first step done 0.1s after train() began (0.0s set-up), 0.2s after process start; phases: import torch 0.05s"
    trials = [{"trial_id": str(i), "train_s": train_each, "first_step": parse_first_step(line)} for i in range(n)]
    return {"wall": wall, "train": train_each * n, "trials": trials, "rerun": rerun}


def test_amortised_and_marginal_overhead_use_medians_over_repeats():
    n = 4
    runs = {n: [_sweep(10.0, 0.1, n, 0.5), _sweep(30.0, 0.1, n, 0.7), _sweep(12.0, 0.1, n, 0.6)],
            2 * n: [_sweep(14.0, 0.1, 2 * n), _sweep(13.0, 0.1, 2 * n), _sweep(90.0, 0.1, 2 * n)]}
    m = measure_mode(runs, n)
    assert m["sweep_wall_s"] == 12.0 and m["sweep_wall_2n_s"] == 14.0  # an outlier repeat does not count
    assert m["overhead_per_trial_s"] == round((12.0 - 0.4) / n, 2)
    assert m["marginal_overhead_per_trial_s"] == round(((14.0 - 0.8) - (12.0 - 0.4)) / n, 2)
    assert m["rerun_s"] == 0.6
    assert m["trainer_start_to_first_step_s"] == 0.2
    assert m["trainer_phases_median_s"] == {"import torch": 0.05}


def test_the_two_modes_differ_only_in_warm_start():
    warm, fresh = json.loads(spec_text(8, 3, True)), json.loads(spec_text(8, 3, False))
    assert warm["backend"]["local"].pop("warm_start") is True
    assert fresh["backend"]["local"].pop("warm_start") is False
    assert warm == fresh and len(warm["seeds"]) == 8 and warm["base"]["num_iterations"] == 3
