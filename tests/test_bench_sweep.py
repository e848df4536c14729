"""bench/sweep_stats.py, the arithmetic of the sweep-throughput bench (bench/sweep_throughput.py): trial
timelines read from a launcher's records, the time some trial was training, throughput per concurrency
level, and the sweep's tokens/s against one trial alone. Pure: no GPU, no processes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bench.sweep_stats import (
    TrialTimes,
    concurrency,
    covered,
    step_ms_by_regime,
    summarize_sweep,
    table,
    throughput,
    trial_times,
)


def _t(first: float, end: float, steps: int = 100, launched: float | None = None, status: str = "FINISHED"
       ) -> TrialTimes:
    return TrialTimes("id", "x", first - 5 if launched is None else launched, first, end, steps, steps * 1000, status,
                      None, 5.0, None, None)


def test_covered_counts_overlaps_once_and_gaps_not_at_all():
    trials = [_t(10, 30), _t(20, 40), _t(50, 60)]  # training 10-40 and 50-60 of 0-100
    assert covered(trials, 0, 100) == pytest.approx(0.4)
    assert covered([], 0, 100) == 0.0


def test_concurrency_gives_seconds_and_joint_step_rate_per_level():
    # one trial alone 0-10 s at 10 steps/s, then two together 10-20 s at 5 steps/s each
    a = _t(0, 20, steps=150)  # 150 steps in 20 s: 7.5 steps/s on average (spread evenly)
    b = _t(10, 20, steps=50)
    c = concurrency([a, b], 0, 20, step_s=0.5)
    assert c[1]["seconds"] == pytest.approx(10) and c[2]["seconds"] == pytest.approx(10)
    assert c[1]["steps_per_s"] == pytest.approx(7.5) and c[2]["steps_per_s"] == pytest.approx(12.5)


def test_throughput_counts_finished_trials_tokens_against_the_single_runs_step_time():
    trials = [_t(0, 10), _t(0, 10), _t(0, 10, status="FAILED")]
    single = {"tokens_per_step": 1000, "ms_per_step": 10.0, "tokens": 100_000, "wall_s": 20.0}
    s = throughput(trials, 40.0, single)
    assert s["tokens"] == 200_000 and s["finished"] == 2 and s["trials"] == 3
    assert s["sweep_tokens_per_s"] == 5000 and s["single_tokens_per_s"] == 100_000
    assert s["sweep_throughput_ratio"] == pytest.approx(0.05)
    assert s["ratio_vs_single_wall"] == pytest.approx(1.0)  # the single run's own wall: 5000 tokens/s
    full = summarize_sweep(trials, 0.0, 40.0, single, {"util_mean": 0.9})
    assert full["head_s"] == 0.0 and full["tail_s"] == 30.0 and full["training_covered"] == pytest.approx(0.25)
    assert "**sweep_throughput_ratio** | 0.05" in table(full)
    # once the card trains: first step at 0 here, so the same; a head of 10 s of 50 leaves 40 s of tokens
    assert full["after_head"]["sweep_throughput_ratio"] == pytest.approx(0.05)
    late = summarize_sweep([_t(10, 20), _t(10, 20)], 0.0, 50.0, single)
    assert late["head_s"] == 10.0 and late["sweep_throughput_ratio"] == pytest.approx(200_000 / 50 / 100_000)
    assert late["after_head"]["sweep_throughput_ratio"] == pytest.approx(200_000 / 40 / 100_000)


def test_trial_times_reads_a_launchers_records(tmp_path: Path):
    d = tmp_path / "abc"
    (d / "track").mkdir(parents=True)
    (d / "trial.json").write_text(json.dumps({"config": {"batch_size": 32, "sequence_length": 1024},
                                              "trial": {"label": "attn_gate=none"}}))
    os.utime(d / "trial.json", (1000.0, 1000.0))
    points = [{"key": "val_loss", "value": 9.0, "step": 0, "ts": 1_004_000},
              {"key": "train_loss", "value": 9.0, "step": 1, "ts": 1_008_500},
              {"key": "train_loss", "value": 8.0, "step": 2, "ts": 1_008_600}]
    (d / "track" / "metrics.jsonl").write_text("".join(json.dumps(p) + "\n" for p in points))
    (d / "track" / "status.json").write_text(json.dumps({"status": "FINISHED", "time": 1020.0}))
    (d / "track" / "summary.json").write_text(json.dumps({"ms_per_step": 75.5}))
    (d / "stdout.log").write_text("INFO trainer.loop: first step done 4.0s after train() began (1.0s set-up), "
                                  "8.4s after process start; phases: python 0.01s, import torch 0.00s, dist 0.3s\n")
    t = trial_times(d)
    assert (t.launched, t.first_step, t.ended, t.steps, t.tokens) == (1000.0, 1008.5, 1020.0, 2, 2 * 32 * 1024)
    assert t.startup_s == 8.5 and t.own_startup_s == 8.4 and t.forked is True and t.ms_per_step == 75.5


def test_summary_files_a_sweep_call_and_adds_its_ratio(tmp_path: Path):
    from bench.summary import main

    trials = [_t(10, 50), _t(20, 60)]
    trials[0].forked, trials[0].own_startup_s = True, 8.5
    single = {"tokens_per_step": 1000, "ms_per_step": 10.0, "tokens": 100_000, "wall_s": 20.0, "startup_s": 9.0}
    sweep = summarize_sweep(trials, 0.0, 80.0, single, {"util_mean": 0.93, "mem_used_max": 40000})
    res = {"meta": {"card": "NVIDIA H200", "torch": "2.11.0+cu130", "date": "2026-12-05 10:00 UTC", "spec": "s.yaml",
                    "overrides": []}, "single": single, "warmup": {"wall_s": 60.0}, "sweep": sweep | {"exit_code": 0}}
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "sweep_results.json").write_text(json.dumps(res))
    call = tmp_path / "call"
    call.mkdir()
    (call / "results.json").write_text(json.dumps({"meta": {"card": "NVIDIA H200", "torch": "2.11.0+cu130",
                                                            "date": "2026-12-05 10:00 UTC", "plan": "targets"},
                                                   "results": []}))
    results = tmp_path / "results"
    results.mkdir()
    (results / "summary.json").write_text(json.dumps({"scaling_efficiency": {"2": 0.9}, "sources": {"scaling": "old"}}))
    assert main([str(call), "--name", "h200", "--sweep", str(tmp_path / "sweep"), "--sweep-name", "h200-sweep",
                 "--results", str(results)]) == 0
    s = json.loads((results / "summary.json").read_text())
    assert s["sweep_throughput_ratio"] == sweep["sweep_throughput_ratio"] == round((200_000 / 80) / 100_000, 4)
    assert s["sweep"]["forked_startup_s_median"] == 8.5 and s["sweep"]["gpu_busy"] == 0.93
    assert s["targets_met"]["sweep>=0.9"] is False and s["scaling_efficiency"] == {"2": 0.9}
    assert (results / "2026-12-05-h200-sweep" / "sweep_results.json").is_file()
    # a sweep call alone: the step and start figures of the summary stay as they were
    before = json.loads((results / "summary.json").read_text())
    assert main(["--sweep", str(tmp_path / "sweep"), "--sweep-name", "h200-sweep2", "--results", str(results)]) == 0
    after = json.loads((results / "summary.json").read_text())
    assert {k: v for k, v in after.items() if k != "sources"} == {k: v for k, v in before.items() if k != "sources"}
    assert after["sources"]["sweep"].startswith(str(results / "2026-12-05-h200-sweep2"))


def test_step_times_by_what_shares_the_card():
    # a: launched 0, steps from 10 to 40; b: launched 20, first step 30, ends 50
    a = TrialTimes("a", "", 0.0, 10.0, 40.0, 0, 0, "FINISHED", None, 10.0, None, None)
    b = TrialTimes("b", "", 20.0, 30.0, 50.0, 0, 0, "FINISHED", None, 10.0, None, None)
    points = {"a": [(10.0 + i, i + 1) for i in range(10)]  # 1 s steps alone, 10-20 s
              + [(21.0 + 2 * i, 12 + i) for i in range(5)]  # 2 s steps beside b's start-up, 21-29 s
              + [(31.0 + 3 * i, 17 + i) for i in range(3)],  # 3 s steps with b training, 31-37 s
              "b": [(30.5 + 3 * i, i + 1) for i in range(3)]}
    r = step_ms_by_regime([a, b], points, val_every=0)
    assert r["1 training, 0 starting"] == {"steps": 9, "median_ms": 1000.0}
    assert r["1 training, 1 starting"]["median_ms"] == 2000.0
    assert r["2 training, 0 starting"]["median_ms"] == 3000.0
    # a validation between two steps (step % val_every == 0) is no step time
    assert step_ms_by_regime([a], {"a": [(11.0, 49), (12.0, 50), (20.0, 51)]}, 50) == \
        {"1 training, 0 starting": {"steps": 1, "median_ms": 1000.0}}
