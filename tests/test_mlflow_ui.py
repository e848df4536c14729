"""The MLflow UI as a researcher meets it after a sweep (issue #24 item 5), rendered by headless Chromium:
the experiment gatesweep created is a training-runs experiment (MLflow's experiment kind), and the links a
sweep prints open the Model training view on its trials - listed, not one collapsed sweep run - and on the
sweep run's decision table. MLflow 3.17 itself opens an experiment on its GenAI overview (see
sweeps/mlflow_ui.py for why the links carry the view)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.sweep_helpers import cli_env, gatesweep, unique, write_data, write_spec
from tests.test_analysis_decision import chromium

pytestmark = pytest.mark.mlflow

TINY = {"num_iterations": 6, "val_every": 3, "warmdown_iters": 2}


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def _page(url: str, expect: str) -> str:
    """The rendered page's text (a loaded 2-core machine may need a second look)."""
    text = ""
    for _ in range(3):
        text = _text(chromium(url, "--dump-dom"))
        if expect in text:
            break
    return text


def test_a_sweeps_links_open_the_training_runs_and_the_decision_table(tmp_path: Path, mlflow_server):
    from mlflow import MlflowClient

    name = unique("ui")
    write_data(tmp_path)
    write_spec(tmp_path / "spec.yaml", name, base=TINY, seeds=[0, 1])
    res = gatesweep(["run", "spec.yaml"], tmp_path, cli_env(mlflow_server.uri), timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    links = dict(re.findall(r"^(MLflow UI|the decision table)[^:]*: .*?(http://\S+)$", res.stdout, re.M))
    assert set(links) == {"MLflow UI", "the decision table"}, res.stdout
    exp = MlflowClient(mlflow_server.uri).get_experiment_by_name(f"gs-{name}")
    assert exp is not None
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # MLflow's kind: training runs
    runs = MlflowClient(mlflow_server.uri).search_runs([exp.experiment_id], "tags.`gatesweep.kind` = 'trial'")
    names = sorted(str(r.info.run_name) for r in runs)
    assert len(names) == 4

    trials = _page(links["MLflow UI"], names[0])
    assert f"Runs - Experiment {exp.experiment_id} - MLflow" in trials, trials[:2000]  # not the GenAI overview
    assert "Overview" not in trials.split("MLflow")[0]
    assert "Model training" in trials and "4 matching runs" in trials, trials[-3000:]
    assert all(n in trials for n in names), (names, trials[-3000:])  # the trials listed, not one collapsed row
    shot = tmp_path / "trials.png"
    chromium(links["MLflow UI"], f"--screenshot={shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000

    decision = _page(links["the decision table"], "baseline")
    assert "table.json" in decision and "View as table" in decision, decision[-3000:]
    # the verdict first: Δ, its CI and the decision before the means (#21)
    assert "config verdict delta delta_ci_low delta_ci_high interval decision n" in decision, decision[-3000:]
    assert re.search(r" headwise [-\d. ]*(undecided|lower loss|higher loss)", decision), decision[-3000:]
    assert re.search(r" none [-\d. ]*baseline", decision), decision[-3000:]
    shot = tmp_path / "decision.png"
    chromium(links["the decision table"], f"--screenshot={shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000

    # a rerun with nothing left to do still says where the runs are
    again = gatesweep(["run", "spec.yaml"], tmp_path, cli_env(mlflow_server.uri))
    assert again.returncode == 0 and links["MLflow UI"] in again.stdout, again.stdout
