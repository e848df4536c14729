"""Real local sweeps against a real `mlflow server`: what MLflow holds afterwards (one parent, one child
per trial with params, every metric point, artifacts and tags), the runs page in headless Chromium,
a sweep stopped midway and rerun, and a rerun of a finished spec that starts nothing."""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

import pytest

from tests.services import chromium_dump_dom
from tests.sweep_helpers import (
    cli_env,
    client,
    experiment_runs,
    gatesweep,
    gatesweep_popen,
    last_logged_step,
    local_points,
    local_status,
    mlflow_points,
    point_diff,
    results_rows,
    trial_dirs,
    unique,
    wait_until,
    write_data,
    write_spec,
)

pytestmark = pytest.mark.mlflow
N = 20  # TINY_BASE num_iterations


class Sweep:
    def __init__(self, cwd: Path, name: str, uri: str, first: object, seconds: float):
        self.cwd, self.name, self.uri, self.first, self.seconds = cwd, name, uri, first, seconds
        self.experiment = f"gs-{name}"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory, mlflow_server) -> Sweep:
    """A demo-like 4-trial sweep (2 gates x 2 seeds, 2 at a time) run once for the module."""
    cwd = tmp_path_factory.mktemp("sweep")
    name = unique("demo")
    write_data(cwd)
    write_spec(cwd / "spec.yaml", name)
    t0 = time.monotonic()
    res = gatesweep(["run", "spec.yaml", "--backend", "local"], cwd, cli_env(mlflow_server.uri))
    assert res.returncode == 0, res.stdout + res.stderr
    return Sweep(cwd, name, mlflow_server.uri, res, time.monotonic() - t0)


def test_sweep_output_and_local_records(sweep: Sweep):
    assert sweep.first.stdout.splitlines()[-1] == (f"sweep {sweep.name}: 4 finished, 0 not (-); records in "
                                                   f"runs/{sweep.name}")
    dirs = trial_dirs(sweep.cwd, sweep.name)
    assert len(dirs) == 4
    for d in dirs:
        assert local_status(d)["status"] == "FINISHED"
        assert {p.name for p in (d / "track" / "artifacts").iterdir()} == {f"{d.name}.txt", "trial.json", "curve.csv"}
    assert sorted(r["run_id"] for r in results_rows(sweep.cwd)) == sorted(d.name for d in dirs)


def test_one_parent_run_with_one_child_per_trial(sweep: Sweep):
    parents = experiment_runs(sweep.uri, sweep.experiment, "sweep")
    children = experiment_runs(sweep.uri, sweep.experiment, "trial")
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.info.run_name == f"sweep-{sweep.name}-local"
    assert {k: parent.data.tags[k] for k in ("spec", "stage", "backend")} == {
        "spec": sweep.name, "stage": sweep.name, "backend": "local"}
    assert parent.data.params == {"n_trials": "4"}
    assert len(experiment_runs(sweep.uri, sweep.experiment)) == 5  # nothing else in the experiment
    ids = sorted(d.name for d in trial_dirs(sweep.cwd, sweep.name))
    assert sorted(r.data.tags["trial_id"] for r in children) == ids
    assert sorted(parent.data.tags["gatesweep.trial_ids"].split(",")) == ids  # what a chained stage checks
    for run in children:
        tags = run.data.tags
        trial = json.loads((sweep.cwd / "runs" / sweep.name / tags["trial_id"] / "trial.json").read_text())
        assert run.info.status == "FINISHED"
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert {k: tags[k] for k in ("gatesweep.kind", "spec", "stage", "seed", "backend", "status")} == {
            "gatesweep.kind": "trial", "spec": sweep.name, "stage": sweep.name, "seed": str(trial["trial"]["seed"]),
            "backend": "local", "status": "FINISHED"}
        assert re.fullmatch(r"([0-9a-f]{40}|unknown)(-dirty)?", tags["git_sha"])
        assert run.info.run_name == trial["trial"]["tags"]["mlflow.runName"]


def test_params_are_the_flat_config(sweep: Sweep):
    for run in experiment_runs(sweep.uri, sweep.experiment, "trial"):
        d = sweep.cwd / "runs" / sweep.name / run.data.tags["trial_id"]
        config = json.loads((d / "trial.json").read_text())["config"]
        assert run.data.params == {k: str(v) for k, v in config.items()}
        assert run.data.params["attn_gate"] in ("none", "headwise") and run.data.params["num_iterations"] == str(N)


def test_every_metric_point_is_in_mlflow(sweep: Sweep):
    for run in experiment_runs(sweep.uri, sweep.experiment, "trial"):
        d = sweep.cwd / "runs" / sweep.name / run.data.tags["trial_id"]
        local = local_points(d / "track")
        remote = mlflow_points(sweep.uri, run.info.run_id)
        assert point_diff(remote, local) == ([], [])
        steps = {k: sorted(s for key, s, _, _ in remote if key == k) for k in ("train_loss", "step_avg_ms", "lr")}
        assert steps == {k: list(range(1, N + 1)) for k in steps}
        assert sorted(s for key, s, _, _ in remote if key == "val_loss") == [0, 5, 10, 15, 20]
        summary = json.loads((d / "track" / "summary.json").read_text())
        for key in ("final_val_loss", "best_val_loss", "train_time_ms", "ms_per_step"):
            assert run.data.metrics[key] == pytest.approx(summary[key], rel=1e-12)


def test_artifacts_are_the_log_trial_json_and_curve(sweep: Sweep, tmp_path: Path):
    c = client(sweep.uri)
    for run in experiment_runs(sweep.uri, sweep.experiment, "trial"):
        tid = run.data.tags["trial_id"]
        d = sweep.cwd / "runs" / sweep.name / tid
        assert sorted(a.path for a in c.list_artifacts(run.info.run_id)) == sorted([f"{tid}.txt", "curve.csv",
                                                                                     "trial.json"])
        got = Path(c.download_artifacts(run.info.run_id, "", str(tmp_path / tid)))
        assert (got / f"{tid}.txt").read_text() == (d / "logs" / f"{tid}.txt").read_text()
        assert (got / "curve.csv").read_text() == (d / "curve.csv").read_text()
        assert json.loads((got / "trial.json").read_text()) == json.loads((d / "trial.json").read_text())


def test_mlflow_ui_lists_the_sweep(sweep: Sweep):
    """The real server's UI, rendered by headless Chromium: the experiment's runs page shows the sweep
    run and its 4 trial runs (children are collapsed under the parent), a trial's page shows its name."""
    exp = client(sweep.uri).get_experiment_by_name(sweep.experiment)
    parent = f"sweep-{sweep.name}-local"
    dom = chromium_dump_dom(f"{sweep.uri}/#/experiments/{exp.experiment_id}/runs", expect=parent)
    assert parent in dom
    assert "5 matching runs" in re.sub(r"<[^>]+>", "", dom)
    child = experiment_runs(sweep.uri, sweep.experiment, "trial")[0]
    dom = chromium_dump_dom(f"{sweep.uri}/#/experiments/{exp.experiment_id}/runs/{child.info.run_id}",
                            expect=child.info.run_name)
    assert child.info.run_name in dom


SITECUSTOMIZE = """
import os, sys
with open({log!r}, "a") as f:
    f.write(f"{{os.getpid()}} {{' '.join(sys.argv)}}\\n")
"""


def test_rerun_of_a_finished_spec_is_fast_and_starts_nothing(sweep: Sweep, tmp_path: Path):
    """Every Python process started with the hook on PYTHONPATH records itself: the rerun is the
    only one (no trainer), it answers from the local records, and MLflow gets no new run."""
    log = tmp_path / "processes.log"
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(SITECUSTOMIZE.format(log=str(log)))
    dirs = trial_dirs(sweep.cwd, sweep.name)
    before = {p: p.stat().st_mtime_ns for d in dirs for p in (d / "stdout.log", d / "trial.json")}
    n_runs = len(experiment_runs(sweep.uri, sweep.experiment))
    env = cli_env(sweep.uri)
    env["PYTHONPATH"] = f"{tmp_path / 'hook'}:{env['PYTHONPATH']}"
    t0 = time.monotonic()
    res = gatesweep(["run", "spec.yaml", "--backend", "local"], sweep.cwd, env)
    seconds = time.monotonic() - t0
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "skipping 4 finished trial(s)" and lines[-1] == "nothing to run: 4/4 trials finished"
    # the one line between: where the finished trials are in the MLflow UI (#24), no new run asked for
    assert len(lines) == 3 and lines[1].startswith(f"MLflow UI: the trials, best first: {sweep.uri}/#/experiments/")
    assert res.stderr == ""
    started = log.read_text().splitlines()
    assert len(started) == 1 and started[0].endswith("run spec.yaml --backend local"), started  # no trainer
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert len(experiment_runs(sweep.uri, sweep.experiment)) == n_runs
    assert seconds < max(10.0, sweep.seconds / 4), (seconds, sweep.seconds)


# ---------------------------------------------------------------- stopped midway, then rerun
@pytest.mark.parametrize("sig,seeds,parallel", [(signal.SIGINT, [0, 1], 2), (signal.SIGTERM, [0], 1)],
                         ids=["ctrl-c", "kill"])
def test_sweep_stopped_midway_resumes_and_finishes_every_trial_once(tmp_path: Path, mlflow_server, sig, seeds,
                                                                    parallel):
    """Stop the launcher while `parallel` trials train: they checkpoint and end KILLED, the sweep run
    says KILLED. The rerun resumes them from their checkpoints and runs the ones never started: every
    trial ends FINISHED exactly once, in exactly one MLflow run, with every step logged exactly once."""
    name, n = unique("stop"), 150
    write_data(tmp_path)
    write_spec(tmp_path / "spec.yaml", name, base={"num_iterations": n, "warmdown_iters": 20, "val_every": 50},
               seeds=seeds, max_parallel=parallel)
    total = 2 * len(seeds)
    experiment = f"gs-{name}"
    proc = gatesweep_popen(["run", "spec.yaml"], tmp_path, cli_env(mlflow_server.uri))
    runs_dir = tmp_path / "runs" / name

    def all_training() -> bool:
        dirs = list(runs_dir.glob("*/logs")) if runs_dir.exists() else []
        return len(dirs) == parallel and all(last_logged_step(d.parent) >= 5 for d in dirs)

    wait_until(all_training, 120, f"{parallel} trial(s) to train 5 steps")
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "interrupted: running trials were stopped and marked KILLED; rerun the same command to resume" in err
    started = trial_dirs(tmp_path, name)
    assert len(started) == parallel, (out, err)
    saved = {}
    for d in started:
        st = local_status(d)
        m = re.fullmatch(r"stopped by signal SIGTERM at step (\d+); checkpoint saved", st["reason"])
        assert st["status"] == "KILLED" and m, (st, (d / "stdout.log").read_text()[-2000:])
        saved[d.name] = int(m[1])
        assert 5 <= saved[d.name] < n
        assert (d / "checkpoints" / d.name / "latest.pt").exists()
    assert [r.info.status for r in experiment_runs(mlflow_server.uri, experiment, "sweep")] == ["KILLED"]
    assert results_rows(tmp_path) == []

    res = gatesweep(["run", "spec.yaml"], tmp_path, cli_env(mlflow_server.uri))
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.splitlines()[-1] == f"sweep {name}: {total} finished, 0 not (-); records in runs/{name}"
    dirs = trial_dirs(tmp_path, name)
    assert len(dirs) == total and all(local_status(d)["status"] == "FINISHED" for d in dirs)
    for tid, step in saved.items():
        log = (runs_dir / tid / "logs" / f"{tid}.txt").read_text()
        assert f"resumed from step {step} (runs/{name}/{tid}/checkpoints/{tid}/latest.pt)" in log
    rows = results_rows(tmp_path)
    assert sorted(r["run_id"] for r in rows) == sorted(d.name for d in dirs)  # each finished exactly once
    trials = experiment_runs(mlflow_server.uri, experiment, "trial")
    assert sorted(r.data.tags["trial_id"] for r in trials) == sorted(d.name for d in dirs)  # no duplicate run
    sweeps = experiment_runs(mlflow_server.uri, experiment, "sweep")
    assert sorted(r.info.status for r in sweeps) == ["FINISHED", "KILLED"]
    second = next(r for r in sweeps if r.info.status == "FINISHED")
    for run in trials:
        assert run.info.status == "FINISHED" and run.data.tags["status"] == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == second.info.run_id
        steps = [s for k, s, _, _ in mlflow_points(mlflow_server.uri, run.info.run_id, ["train_loss"])]
        assert sorted(steps) == list(range(1, n + 1))  # the resumed attempt continues, nothing twice
        d = runs_dir / run.data.tags["trial_id"]
        assert point_diff(mlflow_points(mlflow_server.uri, run.info.run_id), local_points(d / "track")) == ([], [])
