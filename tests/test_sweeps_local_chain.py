"""Stage chaining on a machine without mlflow (a GPU machine): a stage run there records to runs/<spec>/ only,
and a later stage's `{from: ...}` and `time_of` values are read from those records (sweeps.local_runs) - the
same values that MLflow gives once `gatesweep sync` has delivered them. Where mlflow is installed, a source
stage whose records were not synced is refused with the fix rather than resolved to the fallback.

"No mlflow" is made real for the CLI and its trainers: a sitecustomize on PYTHONPATH sets
sys.modules["mlflow"] = None, so find_spec("mlflow") is None and `import mlflow` fails, as on a machine
without the package. Stage 1 runs once (4 tiny trials); each test works on a copy of its directory.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sweeps.local_runs import latest_metrics, read_stage, run_of
from tests.sweep_helpers import REPO, cli_env, gatesweep, trial_dirs, write_data, write_spec

CHAIN = {"from": "stage1", "select": "best", "metric": "final_val_loss", "where": {"attn_gate": "none"},
         "fallback": 0.5}
TIME_OF = {"stage": "stage1", "where": {"attn_gate": "none", "learning_rate": 0.02}, "fallback": 7}


def no_mlflow_env(tmp: Path) -> dict[str, str]:
    stub = tmp / "no-mlflow"
    stub.mkdir(exist_ok=True)
    (stub / "sitecustomize.py").write_text('import sys\nsys.modules["mlflow"] = None\n')
    return cli_env(PYTHONPATH=f"{stub}:{REPO}")


@pytest.fixture(scope="module")
def stage1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("stage1")
    write_data(cwd)
    write_spec(cwd / "stage1.yaml", "stage1", grid={"attn_gate": ["none", "headwise"], "learning_rate": [0.01, 0.02]},
               seeds=[0])
    write_spec(cwd / "stage2.yaml", "stage2", base={"learning_rate": CHAIN}, grid={"attn_gate": ["none"]}, seeds=[0])
    write_spec(cwd / "budget.yaml", "budget", base={"num_iterations": {"time_of": TIME_OF}},
               grid={"attn_gate": ["none", "headwise"]}, seeds=[0])
    res = gatesweep(["run", "stage1.yaml"], cwd, no_mlflow_env(cwd))
    assert res.returncode == 0, res.stdout + res.stderr
    assert not (cwd / "mlflow.db").exists() and not (cwd / "mlruns").exists()
    assert len(trial_dirs(cwd, "stage1")) == 4
    return cwd


@pytest.fixture
def cwd(stage1: Path, tmp_path: Path) -> Path:
    shutil.copytree(stage1, tmp_path / "w")
    return tmp_path / "w"


def plan(cwd: Path, spec: str, env: dict[str, str]) -> tuple[dict[str, object], list[str]]:
    """({trial_id: config}, the `resolved:` notes) of `gatesweep plan`."""
    res = gatesweep(["plan", spec, "--json"], cwd, env)
    assert res.returncode == 0, res.stderr
    notes = gatesweep(["plan", spec], cwd, env).stdout.splitlines()
    return {t["trial_id"]: t["config"] for t in json.loads(res.stdout)}, [n for n in notes if n.startswith("resolved:")]


def test_chained_and_time_of_values_from_local_records_match_mlflow_after_sync(cwd: Path):
    local_env = no_mlflow_env(cwd)
    chained, chain_notes = plan(cwd, "stage2.yaml", local_env)
    budget, budget_notes = plan(cwd, "budget.yaml", local_env)
    # the stage's values, not the fallbacks; the notes say where they came from
    assert [c["learning_rate"] for c in chained.values()] != [CHAIN["fallback"]]
    assert all(c["num_iterations"] != TIME_OF["fallback"] for c in budget.values())
    assert chain_notes == [f"resolved: learning_rate={next(iter(chained.values()))['learning_rate']}: the best "
                           "final_val_loss of stage 'stage1' where attn_gate=none (4 runs, from local records "
                           "runs/stage1)"]
    assert len(budget_notes) == 2 and all(n.endswith("(from local records runs/stage1, 4 runs)") for n in budget_notes)

    # mlflow installed, records not yet delivered: refused with the fix, not the fallback
    env = cli_env()  # the default sqlite:///mlflow.db in cwd
    res = gatesweep(["plan", "stage2.yaml"], cwd, env)
    assert res.returncode == 2
    assert res.stderr == ("error: stage2.yaml: stage 'stage1' has 4 runs in the local records (runs/stage1) but none "
                          "in the tracking store sqlite:///mlflow.db: deliver them first (gatesweep sync runs/stage1), "
                          "then run again\n")
    res = gatesweep(["sync", "runs/stage1"], cwd, env)
    assert res.returncode == 0, res.stderr
    assert plan(cwd, "stage2.yaml", env)[0] == chained  # same values, hence the same trial ids
    assert plan(cwd, "budget.yaml", env)[0] == budget

    # run by run, the reader gives what MLflow holds: params, every metric's latest value, status
    from mlflow.tracking import MlflowClient

    from sweeps.chain import stage_runs

    with_store = {r["trial_id"]: r for r in stage_runs(MlflowClient(f"sqlite:///{cwd}/mlflow.db"), "stage1")[0]}
    local = {r["trial_id"]: r for r in read_stage(cwd / "runs", "stage1").runs}
    assert local == with_store


@pytest.mark.parametrize("status", ["KILLED", "RUNNING"])
def test_an_incomplete_local_stage_is_refused_as_the_mlflow_path_refuses_it(cwd: Path, status: str):
    run_dir = trial_dirs(cwd, "stage1")[0]
    state = json.loads((run_dir / "track" / "status.json").read_text())
    (run_dir / "track" / "status.json").write_text(json.dumps(state | {"status": status}))
    local = gatesweep(["plan", "stage2.yaml"], cwd, no_mlflow_env(cwd))
    assert local.returncode == 2
    assert local.stderr == ("error: stage2.yaml: learning_rate: chained from stage 'stage1', which is incomplete (1 of 4 "
                            "runs queued, running or killed); finish it (rerun its spec) or override learning_rate=...\n")
    budget = gatesweep(["plan", "budget.yaml"], cwd, no_mlflow_env(cwd))
    assert budget.returncode == 2 and "num_iterations: chained from stage 'stage1', which is incomplete" in budget.stderr
    env = cli_env()
    assert gatesweep(["sync", "runs/stage1"], cwd, env).returncode == 0
    assert gatesweep(["plan", "stage2.yaml"], cwd, env).stderr == local.stderr


def test_a_local_stage_whose_last_sweep_did_not_start_every_trial_is_refused(cwd: Path):
    """The launcher without mlflow keeps its sweep's trial ids in runs/<spec>/.trial_ids.json (MLflow keeps
    them on the sweep run): a stage stopped between trials is refused, not chained from in part."""
    ids = json.loads((cwd / "runs" / "stage1" / ".trial_ids.json").read_text())
    assert ids["stage"] == "stage1" and sorted(ids["trial_ids"]) == [p.name for p in trial_dirs(cwd, "stage1")]
    shutil.rmtree(trial_dirs(cwd, "stage1")[2])  # never started
    res = gatesweep(["plan", "stage2.yaml"], cwd, no_mlflow_env(cwd))
    assert res.returncode == 2
    assert res.stderr == ("error: stage2.yaml: learning_rate: chained from stage 'stage1', which is incomplete (1 of 4 "
                          "trials of its last sweep have no finished run); finish it (rerun its spec) or override "
                          "learning_rate=...\n")


@pytest.mark.parametrize("name", ["summary.json", "status.json", "params.json", "../trial.json", "../../.trial_ids.json"])
def test_a_damaged_record_file_is_an_error_naming_it(cwd: Path, name: str):
    path = trial_dirs(cwd, "stage1")[1] / "track" / name
    path.write_text('{"final_val_loss": 3.')  # cut short by a full disk
    res = gatesweep(["plan", "stage2.yaml"], cwd, no_mlflow_env(cwd))
    assert res.returncode == 2
    rel = path.resolve().relative_to(cwd.resolve())
    assert res.stderr.startswith(f"error: {rel}: damaged record file (") and len(res.stderr.splitlines()) == 1
    if rel.name == ".trial_ids.json":
        assert "remove it (the next run of its spec writes it again)" in res.stderr
    else:
        assert f"move {rel.parent if rel.parent.name != 'track' else rel.parent.parent} aside" in res.stderr


def test_a_stage_with_no_local_records_takes_the_fallback_or_is_refused(cwd: Path):
    env = no_mlflow_env(cwd)
    shutil.rmtree(cwd / "runs" / "stage1")
    _, notes = plan(cwd, "stage2.yaml", env)
    assert notes == ["resolved: learning_rate=0.5 is the fallback: stage 'stage1' has no runs in the local records "
                     "(runs/; mlflow is not installed here); once it has run, learning_rate is taken from its best "
                     "final_val_loss where attn_gate=none"]
    write_spec(cwd / "stage2.yaml", "stage2", base={"learning_rate": {"from": "stage1"}}, seeds=[0])
    res = gatesweep(["plan", "stage2.yaml"], cwd, env)
    assert res.returncode == 2 and "which has no runs in the local records (runs/; mlflow is not installed" in res.stderr
    assert "run it first (gatesweep run <the spec with stage: stage1>)" in res.stderr
    write_spec(cwd / "stage2.yaml", "stage2", base={"num_iterations": {"time_of": {"stage": "stage1"}}}, seeds=[0])
    res = gatesweep(["plan", "stage2.yaml"], cwd, env)
    assert res.returncode == 2 and ("num_iterations: time_of stage 'stage1', which has no runs in the local records "
                                    "(runs/; mlflow is not installed here)") in res.stderr, res.stderr


# ---------------------------------------------------------------- the pure parts
def test_latest_metrics_are_mlflows_latest_after_a_sync():
    points = [{"key": "val_loss", "value": 4.0, "step": 10, "ts": 5}, {"key": "val_loss", "value": 3.5, "step": 20, "ts": 6},
              {"key": "lr", "value": 0.1, "step": 20, "ts": 7}, {"key": "lr", "value": 0.0, "step": 20, "ts": 8},
              {"key": "train_time_ms", "value": 90.0, "step": 20, "ts": 9}]
    summary = {"final_step": 20, "train_time_ms": 100.0, "final_val_loss": 3.5, "note": "text", "final_step_x": 1}
    assert latest_metrics(points, summary) == {"val_loss": 3.5, "lr": 0.0, "train_time_ms": 100.0,
                                               "final_val_loss": 3.5, "final_step_x": 1.0}
    # a point logged after the summary's step (a resumed run) is the newer one
    assert latest_metrics(points + [{"key": "train_time_ms", "value": 7.0, "step": 30, "ts": 1}],
                          summary)["train_time_ms"] == 7.0


def test_a_run_has_mlflows_string_params_and_status():
    run = run_of({"trial_id": "abc"}, {"learning_rate": 0.02, "fast": True, "n": 3}, {}, {"final_val_loss": 3.0})
    assert run == {"params": {"learning_rate": "0.02", "fast": "True", "n": "3"}, "metrics": {"final_val_loss": 3.0},
                   "trial_id": "abc", "status": "QUEUED"}  # a trial.json that never started: incomplete
