"""`make demo`'s path in small: a local sweep into the default `sqlite:///mlflow.db`, then `gatesweep table`
from that file - the numbers must equal a direct computation from the trainers' own result rows."""

from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

import pytest
from scipy import stats

from tests.sweep_helpers import cli_env, gatesweep, results_rows, unique, write_data, write_spec


def test_local_sweep_into_sqlite_then_table_matches_the_results_rows(tmp_path: Path):
    name = unique("sqlite")
    write_data(tmp_path)
    write_spec(tmp_path / "spec.yaml", name, grid={"attn_gate": ["none", "elementwise"]}, seeds=[0, 1])
    # no MLFLOW_TRACKING_URI: the default sqlite:///mlflow.db in the working directory; an experiment and
    # a run id left in the shell (e.g. by a notebook's mlflow.start_run) must not capture the trials
    env = cli_env(MLFLOW_EXPERIMENT_ID="424242", MLFLOW_RUN_ID="0" * 32)
    res = gatesweep(["run", "spec.yaml", "--backend", "local"], tmp_path, env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (tmp_path / "mlflow.db").is_file()

    from mlflow import MlflowClient

    mlc = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = mlc.get_experiment_by_name(f"gs-{name}")
    assert exp is not None and {e.name for e in mlc.search_experiments()} <= {"Default", f"gs-{name}"}
    kids = mlc.search_runs([exp.experiment_id], "tags.`gatesweep.kind` = 'trial'")
    assert len(kids) == 4 and all(r.info.status == "FINISHED" for r in kids)

    res = gatesweep(["table", "spec.yaml", "--format", "csv"], tmp_path, env)
    assert res.returncode == 0, res.stderr
    table = {r["attn_gate"]: r for r in csv.DictReader(io.StringIO(res.stdout))}
    assert set(table) == {"none", "elementwise"}

    # the trainers' own records (full precision), independent of MLflow
    loss = {}
    for d in (tmp_path / "runs" / name).iterdir():
        if d.is_dir() and not d.name.startswith("."):
            cfg = json.loads((d / "trial.json").read_text())["config"]
            loss[cfg["attn_gate"], cfg["seed"]] = json.loads((d / "track" / "summary.json").read_text())["final_val_loss"]
    assert len(loss) == 4 and len(results_rows(tmp_path)) == 4
    for gate in ("none", "elementwise"):
        vals = [loss[gate, s] for s in (0, 1)]
        row = table[gate]
        assert int(row["n"]) == 2 and int(row["failed"]) == 0
        assert float(row["final_val_loss"]) == pytest.approx(statistics.fmean(vals), rel=1e-9)
        assert float(row["std"]) == pytest.approx(statistics.stdev(vals), rel=1e-6)
        assert float(row["ci95"]) == pytest.approx(stats.t.ppf(0.975, 1) * statistics.stdev(vals) / 2 ** 0.5,
                                                   rel=1e-6)
    e = table["elementwise"]
    base = statistics.fmean(loss["none", s] for s in (0, 1))
    assert float(e["delta"]) == pytest.approx(float(e["final_val_loss"]) - base, abs=1e-9)
    paired = stats.ttest_rel([loss["elementwise", s] for s in (0, 1)], [loss["none", s] for s in (0, 1)])
    assert e["test"] == "paired" and float(e["p_value"]) == pytest.approx(paired.pvalue, rel=1e-6)
