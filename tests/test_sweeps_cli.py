"""`gatesweep plan SPEC --json` and `gatesweep run SPEC --dry-run` through the real CLI: what they
print, and that they write nothing (no files, no MLflow experiment or run)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from sweeps.expand import expand
from sweeps.spec import load_spec
from tests.sweep_helpers import (
    PYTHON,
    cli_env,
    client,
    count_all_runs,
    cwd_snapshot,
    gatesweep,
    unique,
    write_data,
    write_spec,
)

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"
pytestmark = pytest.mark.mlflow


@pytest.fixture
def spec_dir(tmp_path: Path) -> tuple[Path, Path, str]:
    name = unique("cli")
    write_data(tmp_path)
    return tmp_path, write_spec(tmp_path / "spec.yaml", name), name


def test_plan_json_lists_every_trial(spec_dir, mlflow_server):
    cwd, spec, name = spec_dir
    before = cwd_snapshot(cwd)
    res = gatesweep(["plan", "spec.yaml", "--json"], cwd, cli_env(mlflow_server.uri))
    assert res.returncode == 0, res.stderr
    plan = json.loads(res.stdout)
    trials = expand(load_spec(spec))
    assert isinstance(plan, list) and len(plan) == len(trials) == 4
    assert [p["trial_id"] for p in plan] == [t.trial_id for t in trials]
    for p, t in zip(plan, trials):
        assert p["stage"] == name and p["seed"] == t.seed and p["status"] == "PENDING"
        assert p["config"] == t.config.flat()
        assert p["config"]["seed"] == t.seed and p["config"]["attn_gate"] == t.config.model.attn_gate
    # a plan only reads: no file, no experiment on the server
    assert cwd_snapshot(cwd) == before
    assert client(mlflow_server.uri).get_experiment_by_name(f"gs-{name}") is None


def test_plan_json_of_a_shipped_spec_without_a_store(tmp_path: Path):
    """The default store is sqlite:///mlflow.db in the cwd: a plan must not create it."""
    res = gatesweep(["plan", str(SWEEPS / "stage1.yaml"), "--json"], tmp_path, cli_env())
    assert res.returncode == 0, res.stderr
    ids = [p["trial_id"] for p in json.loads(res.stdout)]
    assert ids == [t.trial_id for t in expand(load_spec(SWEEPS / "stage1.yaml"))]
    assert list(tmp_path.iterdir()) == []


def test_plan_table_with_overrides(spec_dir, mlflow_server):
    cwd, _, name = spec_dir
    res = gatesweep(["plan", "spec.yaml", "seeds=3", "learning_rate=0.01"], cwd, cli_env(mlflow_server.uri))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith(f"spec {name} (stage {name}, spec.yaml): 2 trials")
    rows = [ln.split() for ln in lines[3:5]]
    assert [(r[2], r[3], r[5], r[6]) for r in rows] == [("attn_gate=none", "3", "0.01", "PENDING"),
                                                         ("attn_gate=headwise", "3", "0.01", "PENDING")]
    assert "finished: 0/2" in lines[-1]


def test_dry_run_prints_local_commands_and_writes_nothing(spec_dir, mlflow_server):
    cwd, spec, name = spec_dir
    before, runs_before = cwd_snapshot(cwd), count_all_runs(mlflow_server.uri)
    res = gatesweep(["run", "spec.yaml", "--dry-run", "--backend", "local"], cwd, cli_env(mlflow_server.uri))
    assert res.returncode == 0, res.stderr
    trials = expand(load_spec(spec))
    lines = res.stdout.splitlines()
    assert len(lines) == 2 * len(trials) + 1
    for i, t in enumerate(trials):
        assert lines[2 * i] == f"# trial {i} {t.trial_id} {t.label} seed={t.seed}"
        assert shlex.split(lines[2 * i + 1]) == [PYTHON, "-m", "trainer", f"runs/{name}/{t.trial_id}/trial.json"]
    assert lines[-1] == ("4 trial(s) to run (0 finished and 0 running elsewhere skipped), up to 2 at a time; "
                         "0.0 GPU-hours estimated")
    assert cwd_snapshot(cwd) == before  # no runs/, no trial.json, no mlflow.db
    assert count_all_runs(mlflow_server.uri) == runs_before
    assert client(mlflow_server.uri).get_experiment_by_name(f"gs-{name}") is None


def test_dry_run_of_a_multi_gpu_spec_uses_torchrun(tmp_path: Path):
    res = gatesweep(["run", str(SWEEPS / "stage2.yaml"), "--dry-run", "--backend", "local"], tmp_path, cli_env())
    assert res.returncode == 0, res.stderr
    cmds = [shlex.split(ln) for ln in res.stdout.splitlines() if not ln.startswith("#")][:-1]
    assert len(cmds) == 16
    assert all(c[:5] == [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=8"] for c in cmds)
    assert res.stdout.splitlines()[-1] == ("16 trial(s) to run (0 finished and 0 running elsewhere skipped), up to 1 "
                                           "at a time; 5.1 GPU-hours estimated")
    assert list(tmp_path.iterdir()) == []


def test_chained_value_from_a_stage_with_no_runs(tmp_path: Path, mlflow_server):
    """Resolved against the real server: no runs of the source stage and no fallback -> one line
    naming the spec file and the key, exit 2, nothing created."""
    stage = unique("nostage")
    (tmp_path / "spec.yaml").write_text(f"name: chained\nbase: {{learning_rate: {{from: {stage}}}}}\n")
    runs_before = count_all_runs(mlflow_server.uri)
    res = gatesweep(["plan", "spec.yaml"], tmp_path, cli_env(mlflow_server.uri))
    assert res.returncode == 2
    assert res.stderr == (f"error: spec.yaml: learning_rate: chained from stage '{stage}', which has no runs in the "
                          f"tracking store; run it first (gatesweep run <the spec with stage: {stage}>) or add a fallback / "
                          "override learning_rate=...\n")
    assert count_all_runs(mlflow_server.uri) == runs_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]
    # the override named in the message works
    res = gatesweep(["plan", "spec.yaml", "learning_rate=0.01", "--json"], tmp_path, cli_env(mlflow_server.uri))
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)[0]["config"]["learning_rate"] == 0.01


def test_help_lists_every_command_and_the_global_uri_reaches_delegated_ones(tmp_path: Path):
    res = gatesweep(["--help"], tmp_path, cli_env())
    assert res.returncode == 0
    for cmd in ("plan", "run", "status", "sync", "warmup", "table", "report", "import", "train", "data"):
        assert f"    {cmd} " in res.stdout, cmd
    (tmp_path / "spec.yaml").write_text("name: s\n")
    # the global --tracking-uri in front of `table` is the one it uses (an unreachable port here)
    res = gatesweep(["--tracking-uri", "http://127.0.0.1:9", "table", "spec.yaml"], tmp_path, cli_env())
    assert res.returncode == 69 and res.stderr.startswith("error: MLflow server http://127.0.0.1:9 is unreachable")
    res = gatesweep(["--tracking-uri=http://127.0.0.1:9", "data", "synth"], tmp_path, cli_env())
    assert res.returncode == 2 and "--tracking-uri does not apply to `data`" in res.stderr


def test_sync_skips_the_warmup_record(tmp_path: Path, mlflow_server):
    """`gatesweep warmup` leaves a throwaway run under runs/<spec>/.warmup/: `gatesweep sync` must not
    deliver it as a run."""
    track = tmp_path / "runs" / "demo" / ".warmup" / "track"
    track.mkdir(parents=True)
    (track / "status.json").write_text(json.dumps({"status": "FINISHED", "reason": "", "time": 0}))
    (track / "metrics.jsonl").write_text(json.dumps({"key": "train_loss", "value": 1.0, "step": 1, "ts": 0}) + "\n")
    before = count_all_runs(mlflow_server.uri)
    res = gatesweep(["sync"], tmp_path, cli_env(mlflow_server.uri))
    assert res.returncode == 0, res.stderr
    assert count_all_runs(mlflow_server.uri) == before
