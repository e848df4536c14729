"""With GPUs and a cold compile cache, the local launcher starts one trial alone and the others only
after its first optimizer step, so they reuse its compiled graphs. On this CPU machine two fake GPU
ids (CUDA_VISIBLE_DEVICES=0,1) make the launcher take its GPU path; the trainers run on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

from tests.sweep_helpers import cli_env, gatesweep, trial_dirs, unique, write_data, write_spec


def _first_ts(run_dir: Path, min_step: int) -> float:
    for line in (run_dir / "track" / "metrics.jsonl").read_text().splitlines():
        p = json.loads(line)
        if p["step"] >= min_step:
            return p["ts"] / 1000
    raise AssertionError(f"{run_dir}: no metric at step >= {min_step}")


def test_cold_cache_holds_the_others_until_the_first_trial_steps(tmp_path: Path):
    name = unique("warm")
    write_data(tmp_path)
    spec = write_spec(tmp_path / "spec.yaml", name, seeds=[0], base={"num_iterations": 10, "warmdown_iters": 2},
                      resources={"nodes": 1, "gpus_per_node": 1, "cpus_per_task": 1, "timeout_min": 10})
    env = cli_env(None, CUDA_VISIBLE_DEVICES="0,1", MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/m.db")
    res = gatesweep(["run", str(spec), "--backend", "local"], tmp_path, env)
    assert res.returncode == 0, res.stdout + res.stderr
    dirs = {json.loads((d / "trial.json").read_text())["trial"]["label"]: d for d in trial_dirs(tmp_path, name)}
    first, second = dirs["attn_gate=none"], dirs["attn_gate=headwise"]  # seed-major order: none starts first
    started_second = (second / "trial.json").stat().st_mtime  # written by the launcher as it starts the trial
    assert started_second >= _first_ts(first, 1) - 0.05, "the second trial started before the first one stepped"
    for d in (first, second):
        assert json.loads((d / "track" / "status.json").read_text())["status"] == "FINISHED"


def test_warmup_compiles_each_family_and_their_trials_start_no_compile_pool(tmp_path: Path):
    """`gatesweep warmup` runs one warm-up per graph family (here: two gates, two seeds -> 2 families) and
    records them; the launcher then gives those trials compile_threads=1 (no inductor worker pool next
    to training trials). A trial of a family nobody compiled keeps inductor's default."""
    name = unique("fam")
    write_data(tmp_path)
    spec = write_spec(tmp_path / "spec.yaml", name, seeds=[0, 1], base={"num_iterations": 4, "warmdown_iters": 1},
                      resources={"nodes": 1, "gpus_per_node": 1, "cpus_per_task": 1, "timeout_min": 10})
    env = cli_env(None, CUDA_VISIBLE_DEVICES="0", MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/m.db")
    res = gatesweep(["warmup", str(spec), "grid.attn_gate=none"], tmp_path, env)
    assert res.returncode == 0 and "1 graph family (attn_gate=none)" in res.stdout, res.stdout + res.stderr
    res = gatesweep(["warmup", str(spec)], tmp_path, env)
    assert res.returncode == 0 and "2 graph families" in res.stdout, res.stdout + res.stderr
    sweep = tmp_path / "runs" / name
    assert (sweep / ".warmup" / "trial.json").is_file() and (sweep / ".warmup-2" / "trial.json").is_file()
    res = gatesweep(["run", str(spec), "--backend", "local"], tmp_path, env)
    assert res.returncode == 0, res.stdout + res.stderr
    configs = [json.loads((d / "trial.json").read_text())["config"] for d in trial_dirs(tmp_path, name)]
    assert len(configs) == 4 and all(c["compile_threads"] == 1 for c in configs)
    other = unique("cold")  # no warmup for this one: inductor's default
    spec2 = write_spec(tmp_path / "cold.yaml", other, seeds=[0, 1], grid={"attn_gate": ["none"]},
                       base={"num_iterations": 4, "warmdown_iters": 1},
                       resources={"nodes": 1, "gpus_per_node": 1, "cpus_per_task": 1, "timeout_min": 10})
    res = gatesweep(["run", str(spec2), "--backend", "local"], tmp_path, env)
    assert res.returncode == 0, res.stdout + res.stderr
    first, second = sorted((json.loads((d / "trial.json").read_text()) for d in trial_dirs(tmp_path, other)),
                           key=lambda m: m["trial"]["seed"])
    assert first["config"]["compile_threads"] == 0  # nothing compiled yet when it started
    assert second["config"]["compile_threads"] == 1  # started after the first one had stepped
