"""A sequential-seeds sweep end to end on the local backend: the tiny CPU model on the synthetic source,
the real CLI in a fresh directory, a real sqlite MLflow store.

The design makes the outcome certain without depending on luck: two comparisons, each with its own
baseline. At learning rate 1e-50 no parameter ever moves (every update underflows float32; proved in
tests/test_trainer_frozen_lr.py), so the attention output projection stays at its zero init, the gate
cannot act, and const and none end bitwise equal on any CPU: no spread, never decided, seeds go on to max.
(At 1e-6 the tie depended on the CPU's float32 rounding: AVX-512 and AVX2 kernels differed.) At 0.1
the const gate is worse by ~0.014 nats at every seed (sd ~0.003): p = 0.002 at the first look's 4 seeds
against a Pocock level of 0.019, decided there, and neither it nor its baseline gets another seed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from tests.sweep_helpers import cli_env, experiment_runs, gatesweep, trial_dirs, unique
from trainer.synth import write_synth_dataset

SQLITE = "sqlite:///mlflow.db"
BASE = {"preset": "tiny", "n_embd": 32, "sequence_length": 64, "batch_size": 8, "device_batch_size": 8,
        "val_tokens": 2048, "num_iterations": 2, "warmdown_iters": 1, "val_every": 0, "fast": False,
        "train_files": "data/synth/synth_train_*.bin", "val_files": "data/synth/synth_val_*.bin"}
SEEDS = {"initial": [0, 1, 2, 3], "add": [4, 5], "max": 6, "stop": {"p_adj": 0.05, "spending": "pocock"}}
FLAT, STEEP = "attn_gate=const learning_rate=1e-50", "attn_gate=const learning_rate=0.1"


def write_workdir(root: Path, name: str, **extra) -> Path:
    write_synth_dataset(root / "data" / "synth", train_tokens=200_000, val_tokens=16_384, num_train_shards=1)
    spec = {"name": name, "stage": name, "base": BASE, "grid": {"attn_gate": ["none", "const"],
                                                                 "learning_rate": [1e-50, 0.1]},
            "seeds": SEEDS, "resources": {"nodes": 1, "gpus_per_node": 0, "cpus_per_task": 1, "timeout_min": 10},
            "tracking": {"experiment": f"gs-{name}"},
            "backend": {"default": "local", "local": {"max_parallel": 2}}} | extra
    (root / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return root / "spec.yaml"


def seeds_run(cwd: Path, name: str) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for d in trial_dirs(cwd, name):
        trial = json.loads((d / "trial.json").read_text())["trial"]
        out.setdefault(trial["label"], []).append(trial["seed"])
    return {k: sorted(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory):
    cwd = tmp_path_factory.mktemp("seq")
    name = unique("seq")
    write_workdir(cwd, name)
    res = gatesweep(["run", "spec.yaml"], cwd, cli_env(SQLITE), timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    return cwd, name, res


def test_seeds_are_added_only_where_undecided_and_the_sweep_stops(sweep):
    cwd, name, res = sweep
    assert seeds_run(cwd, name) == {
        "attn_gate=none learning_rate=1e-50": [0, 1, 2, 3, 4, 5], FLAT: [0, 1, 2, 3, 4, 5],
        "attn_gate=none learning_rate=0.1": [0, 1, 2, 3], STEEP: [0, 1, 2, 3]}
    out = res.stdout
    assert "look 1: 16 trial(s) needed by now" in out and "look 2: 20 trial(s) needed by now" in out
    assert f"{STEEP} vs attn_gate=none learning_rate=0.1: decided at look 1 (n=4): p=" in out
    assert f"{FLAT} vs attn_gate=none learning_rate=1e-50: undecided at max n=6: p undefined" in out
    assert "every comparison stopped; 20 of 24 planned trials were needed" in out


def test_the_decision_log_says_when_and_why(sweep):
    cwd, name, _ = sweep
    log = json.loads((cwd / "runs" / name / "sequential.json").read_text())
    assert log["design"]["looks"] == [4, 6] and log["design"]["spending"] == "pocock"
    assert log["finished"] and log["looks_done"] == 2 and log["seeds"] == [0, 1, 2, 3, 4, 5]
    by = {c["name"]: c for c in log["comparisons"]}
    steep, flat = by[STEEP], by[FLAT]
    assert (steep["status"], steep["look"], steep["n"], steep["stopped_at"]) == ("decided", 1, 4, 1)
    assert steep["p"] <= steep["threshold"] < 0.025 and steep["alpha_j"] == 0.025  # before the other stopped
    assert (flat["status"], flat["n"], flat["p"]) == ("undecided", 6, None)
    assert [h["n"] for h in flat["history"]] == [4, 6] and flat["alpha_j"] == 0.05  # recycled: steep was rejected
    assert steep["config"]["learning_rate"] == 0.1 and steep["baseline_config"]["attn_gate"] == "none"


def test_one_sweep_run_holds_the_log_and_every_needed_trial(sweep):
    cwd, name, _ = sweep
    uri = f"sqlite:///{cwd}/mlflow.db"
    parents = experiment_runs(uri, f"gs-{name}", "sweep")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    tags = parents[0].data.tags
    assert tags["gatesweep.sequential"] == "true" and tags["gatesweep.seq.stopped"] == "2/2"
    trials = experiment_runs(uri, f"gs-{name}", "trial")
    assert len(trials) == 20 and all(r.data.tags["status"] == "FINISHED" for r in trials)
    # a later stage chaining from this one needs exactly the trials the design needed
    assert sorted(tags["gatesweep.trial_ids"].split(",")) == sorted(r.data.tags["trial_id"] for r in trials)
    from mlflow.tracking import MlflowClient

    assert "sequential.json" in {a.path for a in MlflowClient(uri).list_artifacts(parents[0].info.run_id)}


def test_a_rerun_starts_nothing_and_plan_shows_the_looks(sweep):
    cwd, name, _ = sweep
    again = gatesweep(["run", "spec.yaml"], cwd, cli_env(SQLITE))
    assert again.returncode == 0, again.stderr
    assert "every comparison stopped" in again.stdout and "look 1:" not in again.stdout
    assert len(experiment_runs(f"sqlite:///{cwd}/mlflow.db", f"gs-{name}", "sweep")) == 1
    plan = gatesweep(["plan", "spec.yaml"], cwd, cli_env(SQLITE))
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.count("NOT NEEDED (stopped)") == 4  # seeds 4 and 5 of the decided pair
    assert "(sequential seeds: the estimate counts every configuration at max = 6 seeds)" in plan.stdout
    assert "finished: 20/24" in plan.stdout


def test_the_table_says_which_rows_stopped_when_and_why(sweep):
    cwd, name, _ = sweep
    from analysis.fetch import fetch_runs
    from analysis.seq_table import annotate
    from analysis.sequential import decisions_for_spec
    from analysis.table import stage_table

    runs = fetch_runs([f"gs-{name}"], tracking_uri=f"sqlite:///{cwd}/mlflow.db")
    table = annotate(stage_table(runs), decisions_for_spec(cwd / "spec.yaml", runs_root=cwd / "runs"))
    rows = {(r["attn_gate"], r["learning_rate"]): r["seq_stop"] for _, r in table.iterrows()}
    assert rows[("const", 0.1)].startswith("decided at look 1 (n=4): p=")
    assert rows[("const", 1e-50)].startswith("undecided at max n=6")
    assert rows[("none", 0.1)] == "baseline (n=4)" and rows[("none", 1e-50)] == "baseline (n=6)"
    n = {(r["attn_gate"], r["learning_rate"]): r["n"] for _, r in table.iterrows()}
    assert n[("const", 0.1)] == 4 and n[("const", 1e-50)] == 6
    assert math.isnan(table.set_index(["attn_gate", "learning_rate"]).loc[("const", 1e-50), "p_value"])


def test_a_dry_run_shows_the_looks_and_the_first_look_and_writes_nothing(tmp_path: Path):
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(
        {"name": "dry", "base": BASE, "grid": {"attn_gate": ["none", "const"], "learning_rate": [1e-50, 0.1]},
         "seeds": SEEDS, "resources": {"nodes": 1, "gpus_per_node": 0, "cpus_per_task": 1}}))
    res = gatesweep(["run", "spec.yaml", "--dry-run"], tmp_path, cli_env(SQLITE))
    assert res.returncode == 0, res.stderr
    assert "# sequential seeds: looks at 4,6 seeds per configuration (pocock spending" in res.stdout
    assert "# planned maximum: 24 trials (6 seeds per configuration)" in res.stdout
    assert "# next: the 16 trial(s) the design needs by look 1" in res.stdout
    assert res.stdout.count("# trial ") == 16 and "seed=4" not in res.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]


def test_table_cli_and_the_sweep_runs_decision_show_the_rule(sweep):
    """`gatesweep table SPEC` carries the rule's column; the sweep run's decision table defers to it."""
    cwd, name, _ = sweep
    res = gatesweep(["table", "spec.yaml", "--format", "csv", "--no-time"], cwd, cli_env(SQLITE))
    assert res.returncode == 0, res.stderr
    header, *rows = res.stdout.splitlines()
    assert "seq_stop" in header.split(",")
    assert any("decided at look 1 (n=4)" in r for r in rows) and any("undecided at max n=6" in r for r in rows)
    md = gatesweep(["table", "spec.yaml", "--format", "md", "--no-time"], cwd, cli_env(SQLITE))
    assert "sequential seeds" in md.stdout and "decided at look 1" in md.stdout
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{cwd}/mlflow.db"
    parent = experiment_runs(uri, f"gs-{name}", "sweep")[0].info.run_id
    path = MlflowClient(uri).download_artifacts(parent, "decision/table.json", str(cwd / "dl"))
    decisions = json.loads(Path(path).read_text())
    column = decisions["columns"].index("decision")
    texts = [row[column] for row in decisions["data"]]
    assert any(t.startswith("sequential: decided at look 1") for t in texts), texts


def test_looks_stops_between_looks_and_the_next_run_goes_on(tmp_path: Path):
    """`--looks 1` (a GPU lease of fixed length): the first look only, a clean stop; the next run decides
    on it and adds seeds where still undecided."""
    name = unique("seqlooks")
    write_workdir(tmp_path, name)
    first = gatesweep(["run", "spec.yaml", "--looks", "1"], tmp_path, cli_env(SQLITE), timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "stopped after 1 look(s) (--looks 1)" in first.stdout
    assert seeds_run(tmp_path, name) == {label: [0, 1, 2, 3] for label in seeds_run(tmp_path, name)}
    assert len(seeds_run(tmp_path, name)) == 4
    second = gatesweep(["run", "spec.yaml"], tmp_path, cli_env(SQLITE), timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    seeds = seeds_run(tmp_path, name)
    assert seeds[FLAT] == [0, 1, 2, 3, 4, 5] and seeds[STEEP] == [0, 1, 2, 3]
