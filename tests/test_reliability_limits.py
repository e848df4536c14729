"""Refused at the edge by the launcher (issue #16, item 11, launcher side): an empty experiment name, a
spec that expands to an unbounded number of trials, more CPU ranks per trial than this machine has
cores. Each is one line, exit 2, before anything is written."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from sweeps.errors import SpecError
from sweeps.expand import expand
from sweeps.spec import MAX_TRIALS, MAX_TRIALS_ENV, load_spec
from tests.sweep_helpers import cli_env, gatesweep, unique, write_data, write_spec
from trainer.errors import ExitCode


def _one_line(res) -> str:  # noqa: ANN001 - a CompletedProcess
    err = res.stderr.splitlines()
    assert res.returncode == ExitCode.BAD_INPUT and len(err) == 1, res.stdout + res.stderr
    return err[0]


@pytest.mark.parametrize("where", ["spec", "override"])
def test_an_empty_experiment_name_is_refused(tmp_path: Path, where: str):
    write_spec(tmp_path / "spec.yaml", "noexp", experiment="" if where == "spec" else None)
    if where == "spec":  # write_spec's default replaces a falsy name: put the empty one back
        text = (tmp_path / "spec.yaml").read_text().replace("experiment: gs-noexp", "experiment: ''")
        (tmp_path / "spec.yaml").write_text(text)
    args = ["plan", "spec.yaml"] + (["tracking.experiment="] if where == "override" else [])
    line = _one_line(gatesweep(args, tmp_path, cli_env()))
    source = "spec.yaml" if where == "spec" else "command line"
    assert line == (f"error: {source}: tracking.experiment: an empty MLflow experiment name; give one, or drop the "
                    "key for the default gatesweep-<spec name>")


def test_a_million_trial_grid_is_refused_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(MAX_TRIALS_ENV, raising=False)
    grid = {"learning_rate": [0.001 * (i + 1) for i in range(100)], "warmdown_iters": list(range(1, 101))}
    write_spec(tmp_path / "spec.yaml", "huge", grid=grid, seeds=list(range(100)))
    start = time.perf_counter()
    with pytest.raises(SpecError) as e:
        expand(load_spec(tmp_path / "spec.yaml"))
    took = time.perf_counter() - start
    assert took < 1.0, took  # it used to build every trial first: minutes and gigabytes
    assert str(e.value) == (f"{tmp_path / 'spec.yaml'}: the spec expands to 1,000,000 trials (100 learning_rate x 100 "
                            f"warmdown_iters x 100 seeds), more than the limit of {MAX_TRIALS:,}; shrink the grid or "
                            f"seeds, or allow it with {MAX_TRIALS_ENV}=1000000")
    line = _one_line(gatesweep(["plan", "spec.yaml"], tmp_path, cli_env()))
    assert "1,000,000 trials" in line and f"{MAX_TRIALS_ENV}=1000000" in line


def test_the_trial_limit_can_be_raised(tmp_path: Path):
    write_spec(tmp_path / "spec.yaml", "twelve", grid={"attn_gate": ["none", "headwise", "elementwise"]},
               seeds=[0, 1, 2, 3])
    line = _one_line(gatesweep(["plan", "spec.yaml"], tmp_path, cli_env(**{MAX_TRIALS_ENV: "10"})))
    assert "expands to 12 trials (3 attn_gate x 4 seeds), more than the limit of 10;" in line
    res = gatesweep(["plan", "spec.yaml"], tmp_path, cli_env(**{MAX_TRIALS_ENV: "12"}))
    assert res.returncode == 0 and ": 12 trials, " in res.stdout, res.stdout + res.stderr


def test_more_cpu_ranks_than_cores_are_refused_by_the_launcher(tmp_path: Path):
    cores = len(os.sched_getaffinity(0))
    write_data(tmp_path)
    write_spec(tmp_path / "spec.yaml", unique("ranks"), resources={"nodes": 1, "gpus_per_node": cores + 1,
                                                                    "cpus_per_task": 1, "timeout_min": 10})
    line = _one_line(gatesweep(["run", "spec.yaml"], tmp_path, cli_env(CUDA_VISIBLE_DEVICES="")))
    assert line == (f"error: {cores + 1} CPU ranks on this machine but only {cores} CPU core(s) available: run with "
                    f"--nproc_per_node={cores} or fewer (resources.gpus_per_node for a spec), or on GPUs")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "spec.yaml"]  # no runs/, no mlflow.db
