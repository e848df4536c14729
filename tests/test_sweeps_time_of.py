"""Budget-matched designs through the CLI: `num_iterations: {time_of: ...}` resolved per design point from
a real sqlite MLflow store holding source-stage runs in the trainer's schema (tags, flat params, summary
metrics), shown by plan and dry runs, refused with the fix when a point has no measured ms/step, and
run for real on the tiny model."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import yaml

from tests.sweep_helpers import cli_env, gatesweep, last_logged_step, trial_dirs, unique
from trainer.synth import write_synth_dataset

SQLITE = "sqlite:///mlflow.db"
BASE = {"preset": "tiny", "n_embd": 32, "sequence_length": 64, "batch_size": 8, "device_batch_size": 8,
        "val_tokens": 2048, "warmdown_iters": 4, "val_every": 0,
        "train_files": "data/synth/synth_train_*.bin", "val_files": "data/synth/synth_val_*.bin"}


def log_source(uri: str, stage: str, runs: list[dict[str, Any]]) -> None:
    """The source stage as a launcher and trainer leave it: a sweep run naming its trial ids, one trial
    run per trial with the flat config as params, the summary metrics and the status tag."""
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    exp = c.create_experiment(unique(f"gs-{stage}"))
    ids = [f"{stage}-t{i}" for i in range(len(runs))]
    sweep = c.create_run(exp, tags={"gatesweep.kind": "sweep", "stage": stage, "spec": stage,
                                    "gatesweep.trial_ids": ",".join(ids)})
    for tid, r in zip(ids, runs):
        n = r["num_iterations"]
        run = c.create_run(exp, tags={"gatesweep.kind": "trial", "stage": stage, "spec": stage, "status": "FINISHED",
                                      "trial_id": tid, "seed": str(r["seed"]),
                                      "mlflow.parentRunId": sweep.info.run_id})
        params = {"attn_gate": r["gate"], "gate_pos": "sdpa", "gate_act": "sigmoid", "num_iterations": n,
                  "learning_rate": 0.02, "seed": r["seed"]}
        for k, v in params.items():
            c.log_param(run.info.run_id, k, v)
        for k, v in {"final_val_loss": 3.3, "train_time_ms": r["ms"] * (n - 10), "ms_per_step": r["ms"]}.items():
            c.log_metric(run.info.run_id, k, v)
        c.set_terminated(run.info.run_id)
    c.set_terminated(sweep.info.run_id)


def write(cwd: Path, gates: list[str], time_of: dict[str, Any], name: str = "budget") -> None:
    spec = {"name": name, "stage": name, "base": BASE | {"num_iterations": {"time_of": time_of}},
            "grid": {"attn_gate": gates}, "seeds": [0],
            "resources": {"nodes": 1, "gpus_per_node": 0, "cpus_per_task": 1, "timeout_min": 10},
            "tracking": {"experiment": f"gs-{name}"}, "backend": {"default": "local", "local": {"max_parallel": 2}}}
    (cwd / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


def test_each_gate_gets_the_baselines_time_and_the_dry_run_says_why(tmp_path: Path):
    stage = unique("src")
    # the baseline ran 210 steps at 20 ms (4 s of train_time); headwise measured 25 ms/step
    log_source(f"sqlite:///{tmp_path}/mlflow.db", stage, [
        {"gate": "none", "seed": 0, "num_iterations": 210, "ms": 20.0},
        {"gate": "none", "seed": 1, "num_iterations": 210, "ms": 20.0},
        {"gate": "headwise", "seed": 0, "num_iterations": 210, "ms": 24.0},
        {"gate": "headwise", "seed": 1, "num_iterations": 210, "ms": 26.0}])
    write(tmp_path, ["none", "headwise", "elementwise"], {"stage": stage, "fallback_ms": 40})
    env = cli_env(SQLITE)
    res = gatesweep(["plan", "spec.yaml", "--json"], tmp_path, env)
    assert res.returncode == 0, res.stderr
    iters = {t["label"]: t["config"]["num_iterations"] for t in json.loads(res.stdout)}
    # 4000 ms of timed steps: / 20 -> 200 (+10 = the source's 210), / 25 -> 160, / 40 (fallback) -> 100
    assert iters == {"attn_gate=none": 210, "attn_gate=headwise": 170, "attn_gate=elementwise": 110}
    dry = gatesweep(["run", "spec.yaml", "--dry-run"], tmp_path, env)
    assert dry.returncode == 0, dry.stderr
    assert (f"# resolved: num_iterations=170 for attn_gate=headwise gate_act=sigmoid gate_pos=sdpa: budget 4.0 s "
            f"(mean train_time_ms of 2 run(s) with attn_gate=none in stage '{stage}') / 25.00 ms/step (mean "
            f"ms_per_step of 2 run(s) with attn_gate=headwise gate_act=sigmoid gate_pos=sdpa) + 10 untimed steps") \
        in dry.stdout
    assert "num_iterations=110 for attn_gate=elementwise gate_act=sigmoid gate_pos=sdpa" in dry.stdout
    assert "ms/step (time_of.fallback_ms)" in dry.stdout
    plan = gatesweep(["plan", "spec.yaml"], tmp_path, env)
    assert "resolved: num_iterations=210 for attn_gate=none" in plan.stdout


def test_a_gate_the_source_never_ran_is_refused_with_the_fix(tmp_path: Path):
    stage = unique("src")
    log_source(f"sqlite:///{tmp_path}/mlflow.db", stage, [{"gate": "none", "seed": 0, "num_iterations": 210,
                                                            "ms": 20.0}])
    write(tmp_path, ["none", "elementwise"], {"stage": stage})
    before = sorted(p.name for p in tmp_path.iterdir())
    res = gatesweep(["run", "spec.yaml"], tmp_path, cli_env(SQLITE))
    assert res.returncode == 2
    assert res.stderr == (f"error: spec.yaml: num_iterations: time_of stage '{stage}' has no finished runs with "
                          f"attn_gate=elementwise gate_act=sigmoid gate_pos=sdpa to measure its ms/step; run that "
                          f"configuration in stage '{stage}', give its measured ms/step as time_of.fallback_ms: <ms>, "
                          "or override num_iterations=...\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_the_trainer_runs_the_resolved_lengths(tmp_path: Path):
    stage = unique("src")
    write_synth_dataset(tmp_path / "data" / "synth", train_tokens=200_000, val_tokens=16_384, num_train_shards=1)
    log_source(f"sqlite:///{tmp_path}/mlflow.db", stage, [
        {"gate": "none", "seed": 0, "num_iterations": 20, "ms": 30.0},
        {"gate": "headwise", "seed": 0, "num_iterations": 20, "ms": 50.0}])
    name = unique("budget")
    write(tmp_path, ["none", "headwise"], {"stage": stage}, name=name)
    res = gatesweep(["run", "spec.yaml"], tmp_path, cli_env(SQLITE))
    assert res.returncode == 0, res.stdout + res.stderr
    steps = {}
    for d in trial_dirs(tmp_path, name):
        trial = json.loads((d / "trial.json").read_text())
        assert json.loads((d / "track" / "status.json").read_text())["status"] == "FINISHED"
        steps[trial["trial"]["label"]] = (trial["config"]["num_iterations"], last_logged_step(d))
    # 300 ms of timed steps: the baseline's 20 again, headwise 300 / 50 + 10 = 16; each trained that long
    assert steps == {"attn_gate=none": (20, 20), "attn_gate=headwise": (16, 16)}
    # the runs say their length is a budget, so the stage table pairs headwise (16) with none (20)
    table = gatesweep(["table", "spec.yaml", "--format", "csv", "--no-time"], tmp_path, cli_env(SQLITE))
    assert table.returncode == 0, table.stderr
    rows = {r["attn_gate"]: r for r in csv.DictReader(io.StringIO(table.stdout))}
    assert rows["none"]["test"] == "baseline" and rows["headwise"]["num_iterations"] == "16"
    assert rows["headwise"]["delta"] != "", rows["headwise"]
