"""Store lookups read only the spec's trials, once per command: counted on the real sqlite store
(MlflowClient.search_runs wrapped to count calls and the runs they return) for a spec whose experiment
also holds many runs of another spec."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from bench.store_scale import EXPERIMENT, fill_store, trials
from gatesweep.cli import main as cli_main
from sweeps.expand import expand
from sweeps.spec import load_spec
from tests.sweep_helpers import write_data, write_spec

UNRELATED = 300


class Searches:
    """Every search_runs call of this process: (filter, runs returned)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def rows(self) -> int:
        return sum(n for _, n in self.calls)

    def trial_lookups(self) -> list[tuple[str, int]]:
        return [c for c in self.calls if "'trial'" in c[0]]


@pytest.fixture
def searches(monkeypatch: pytest.MonkeyPatch) -> Iterator[Searches]:
    seen = Searches()
    real = MlflowClient.search_runs

    def counted(self, experiment_ids, filter_string="", *args, **kwargs):
        page = real(self, experiment_ids, filter_string, *args, **kwargs)
        seen.calls.append((filter_string, len(page)))
        return page

    monkeypatch.setattr(MlflowClient, "search_runs", counted)
    yield seen


@pytest.fixture
def crowded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project whose store's experiment holds UNRELATED finished runs of spec 'scale', and a 4-trial
    spec 'mine' tracked in the same experiment."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    fill_store(uri, tmp_path / "artifacts", trials(UNRELATED, seeds=2, points=2))
    write_data(tmp_path)
    write_spec(tmp_path / "spec.yaml", "mine", experiment=EXPERIMENT, base={"num_iterations": 3, "val_every": 0})
    return tmp_path


def test_plan_reads_only_the_specs_trials(crowded: Path, searches: Searches, capsys: pytest.CaptureFixture):
    mine = expand(load_spec(crowded / "spec.yaml"))
    c = MlflowClient()
    exp = c.get_experiment_by_name(EXPERIMENT).experiment_id
    # one trial ran elsewhere: MLflow alone knows it finished
    c.create_run(exp, tags={"gatesweep.kind": "trial", "trial_id": mine[1].trial_id, "spec": "mine",
                            "status": "FINISHED"})
    searches.calls.clear()
    assert cli_main(["plan", "spec.yaml", "--json"]) == 0
    status = {t["trial_id"]: t["status"] for t in json.loads(capsys.readouterr().out)}
    assert status == {t.trial_id: "FINISHED" if t is mine[1] else "PENDING" for t in mine}
    assert searches.rows() <= len(mine), searches.calls  # not the experiment's other runs


def test_a_local_run_looks_its_trials_up_once(crowded: Path, searches: Searches):
    assert cli_main(["run", "spec.yaml", "--backend", "local"]) == 0
    # the launcher's lookup of the spec's trials; the sweep's decision table (analysis.decision) reads a
    # sqlite store with SQL (analysis.store_sql), not through MLflow's run search
    assert len(searches.trial_lookups()) == 1, searches.calls
    assert searches.rows() <= 3 * 4, searches.calls


def test_a_chained_spec_reads_its_source_stage_once(tmp_path: Path, searches: Searches,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    c = MlflowClient()
    exp = c.create_experiment("src")
    for lr, loss in ((0.01, 3.2), (0.02, 3.1)):
        run = c.create_run(exp, tags={"gatesweep.kind": "trial", "stage": "src", "status": "FINISHED",
                                      "trial_id": f"t{lr}"})
        c.log_param(run.info.run_id, "learning_rate", lr)
        c.log_param(run.info.run_id, "warmup_iters", int(lr * 1000))
        c.log_metric(run.info.run_id, "final_val_loss", loss)
        c.set_terminated(run.info.run_id)
    (tmp_path / "spec.yaml").write_text(
        "name: chained\nbase: {preset: tiny, learning_rate: {from: src, where: {warmup_iters: 20}},\n"
        "       warmup_iters: {from: src, where: {learning_rate: 0.02}}}\n"
        "grid: {attn_gate: [none, headwise]}\nseeds: [0, 1]\n")
    searches.calls.clear()
    assert cli_main(["plan", "spec.yaml", "--json"]) == 0
    planned = json.loads(capsys.readouterr().out)
    assert {(t["config"]["learning_rate"], t["config"]["warmup_iters"]) for t in planned} == {(0.02, 20)}
    source = [f for f, _ in searches.calls if "tags.stage = 'src'" in f and "'trial'" in f]
    assert len(source) == 1, searches.calls
