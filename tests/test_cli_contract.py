"""The command line's contract (issue #15) through the real CLI in fresh directories: --version, global
options before or after the subcommand, --json of plan/status/run/sync, exit codes by kind, a closed
pipe, help text for every argument, the trainer's key list and resolved config, shell completion of
key= names, the spec's JSON Schema, console tables, and Slurm's own check of a submission."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from sweeps.expand import expand
from sweeps.spec import load_spec
from tests.sweep_helpers import PYTHON, cli_env, cwd_snapshot, gatesweep, write_spec
from trainer.config import FIELD_SECTION
from trainer.record import write_json

REPO = Path(__file__).resolve().parents[1]
SWEEPS = REPO / "sweeps"
UNREACHABLE = "http://127.0.0.1:9"


def _spec(cwd: Path, name: str = "contract") -> Path:
    return write_spec(cwd / "spec.yaml", name)


def _record(cwd: Path, spec: Path, statuses: list[str]) -> list[str]:
    """Local records saying these statuses for the spec's trials (in expansion order); their ids."""
    trials = expand(load_spec(spec))
    for t, st in zip(trials, statuses):
        track = cwd / "runs" / t.spec / t.trial_id / "track"
        track.mkdir(parents=True, exist_ok=True)
        write_json(track / "status.json", {"status": st, "reason": "test record", "time": 0})
    return [t.trial_id for t in trials]


def test_version_long_and_short(tmp_path: Path):
    for flag in ("--version", "-V"):
        res = gatesweep([flag], tmp_path, cli_env())
        assert res.returncode == 0, res.stderr
        assert res.stdout.startswith("gatesweep 0.") and res.stderr == ""


@pytest.mark.parametrize("command", ["plan", "status", "run", "warmup"])
def test_the_global_tracking_uri_works_after_every_subcommand(tmp_path: Path, command: str):
    """Placed after the subcommand (and before it) the option is accepted and used: an unreachable
    store is exit 69 with one line, never 'unrecognized arguments'."""
    (tmp_path / "spec.yaml").write_text("name: s\nbase: {preset: tiny, learning_rate: {from: stage2}}\n")
    env = cli_env(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="2")
    for argv in ([command, "spec.yaml", "--tracking-uri", UNREACHABLE],
                 ["--tracking-uri", UNREACHABLE, command, "spec.yaml"],
                 [command, f"--tracking-uri={UNREACHABLE}", "spec.yaml"]):
        res = gatesweep(argv, tmp_path, env)
        assert "unrecognized" not in res.stderr and len(res.stderr.splitlines()) == 1, res.stderr
        if command == "warmup":  # it consults no store: the chained value needs a fallback
            assert res.returncode == 2 and "no tracking store was consulted" in res.stderr
            continue
        assert res.returncode == 69, (argv, res.stderr)
        assert "tracking store cannot be read" in res.stderr


def test_sync_accepts_the_global_option_after_it(tmp_path: Path):
    res = gatesweep(["sync", "--tracking-uri", UNREACHABLE, "--json"], tmp_path, cli_env())
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"delivered": {}, "failed": {}, "up_to_date": [], "sweeps": {}}


def test_status_json_and_exit_1_when_a_trial_failed(tmp_path: Path):
    spec = _spec(tmp_path)
    ids = _record(tmp_path, spec, ["FINISHED", "FAILED", "KILLED"])
    res = gatesweep(["status", "spec.yaml", "--json"], tmp_path, cli_env())
    assert res.returncode == 1, res.stderr
    out = json.loads(res.stdout)
    assert list(out) == sorted(ids) and [out[i]["status"] for i in ids] == ["FINISHED", "FAILED", "KILLED", "PENDING"]
    assert out[ids[0]]["num_iterations"] == 20 and out[ids[0]]["job_id"] is None
    text = gatesweep(["status", "spec.yaml"], tmp_path, cli_env())
    assert text.returncode == 1 and "FAILED: 1" in text.stdout
    _record(tmp_path, spec, ["FINISHED", "FINISHED", "KILLED"])  # killed trials resume: not a failure
    assert gatesweep(["status", "spec.yaml"], tmp_path, cli_env()).returncode == 0


def test_run_json_maps_trial_ids_to_their_state(tmp_path: Path):
    spec = _spec(tmp_path)
    ids = _record(tmp_path, spec, ["FINISHED"] * 4)
    res = gatesweep(["run", "spec.yaml", "--backend", "local", "--json"], tmp_path, cli_env())
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)  # stdout is the JSON alone; the launcher's lines went to stderr
    assert {k: v["status"] for k, v in out.items()} == dict.fromkeys(ids, "FINISHED")
    assert "nothing to run: 4/4 trials finished" in res.stderr


def test_exit_codes_by_kind(tmp_path: Path):
    _spec(tmp_path)
    bad = gatesweep(["plan", "spec.yaml", "learnin_rate=1"], tmp_path, cli_env())
    assert bad.returncode == 2 and "did you mean 'learning_rate'" in bad.stderr
    usage = gatesweep(["plan"], tmp_path, cli_env())
    assert usage.returncode == 2
    none_yet = gatesweep(["table", "--stage", "stage1"], tmp_path, cli_env())  # no sqlite store here
    assert none_yet.returncode == 66 and none_yet.stderr.startswith("error: no MLflow database")
    away = gatesweep(["table", "--stage", "stage1", "--tracking-uri", UNREACHABLE], tmp_path, cli_env())
    assert away.returncode == 69 and "unreachable" in away.stderr


def test_a_closed_pipe_ends_quietly(tmp_path: Path):
    seeds = ",".join(str(i) for i in range(12))  # 96 trials: far more JSON than a pipe buffers
    for cmd in (f"plan {SWEEPS / 'stage2.yaml'} --json seeds={seeds}", f"plan {SWEEPS / 'stage2.yaml'} seeds={seeds}"):
        res = subprocess.run(["bash", "-c", f"{PYTHON} -m gatesweep {cmd} | head -1"], cwd=tmp_path,
                             env=cli_env(), capture_output=True, text=True, timeout=120)
        assert res.returncode == 0 and len(res.stdout.splitlines()) == 1
        assert res.stderr == "", res.stderr


def _parsers() -> dict[str, argparse.ArgumentParser]:
    from analysis import cli as analysis_cli
    from gatesweep.cli import _parser
    from trainer import data_cli

    top = _parser()
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    out = {"gatesweep": top} | {f"gatesweep {n}": p for n, p in sub.choices.items() if p.add_help}
    out |= {"table": analysis_cli.stage_parser("table", "")}
    data = data_cli._parser()
    dsub = next(a for a in data._actions if isinstance(a, argparse._SubParsersAction))
    return out | {f"data {n}": p for n, p in dsub.choices.items()}


def test_every_argument_has_help_text():
    missing = [f"{name}: {a.dest}" for name, p in _parsers().items() for a in p._actions
               if not a.help and not isinstance(a, argparse._SubParsersAction)]
    assert missing == []


def test_train_lists_every_key_and_prints_the_resolved_config(tmp_path: Path):
    res = gatesweep(["train", "--help-config"], tmp_path, cli_env())
    assert res.returncode == 0, res.stderr
    for key in FIELD_SECTION:
        line = next((ln for ln in res.stdout.splitlines() if ln.startswith(f"  {key}: ")), None)
        assert line is not None, key
        follows = res.stdout.split(line + "\n", 1)[1].split("\n", 1)[0]
        assert follows.startswith("      "), f"{key} has no docstring"
    assert "  attn_gate: str = 'none' (none | headwise | elementwise | const)" in res.stdout
    helped = gatesweep(["train", "--help"], tmp_path, cli_env())
    assert helped.stdout.startswith("usage: gatesweep train ") and "--help-config" in helped.stdout
    res = gatesweep(["train", "--print-config", "preset=tiny", "attn_gate=headwise", "learning_rate=0.01"],
                    tmp_path, cli_env(LR=""))
    assert res.returncode == 0, res.stderr
    cfg = yaml.safe_load(res.stdout)
    assert cfg["model"]["attn_gate"] == "headwise" and cfg["optim"]["learning_rate"] == 0.01
    assert cfg["model"]["n_layer"] == 2  # the tiny preset under the overrides
    assert list(tmp_path.iterdir()) == []  # nothing ran, nothing was written


def test_shell_completion_offers_key_names(tmp_path: Path):
    script = gatesweep(["completion", "bash"], tmp_path, cli_env())
    assert script.returncode == 0 and "gatesweep" in script.stdout and "complete " in script.stdout
    out = tmp_path / "completions.txt"
    line = "gatesweep plan sweeps/demo.yaml learn"
    env = cli_env(_ARGCOMPLETE="1", COMP_LINE=line, COMP_POINT=str(len(line)), COMP_TYPE="9",
                  _ARGCOMPLETE_STDOUT_FILENAME=str(out), _ARGCOMPLETE_IFS="\n")
    res = subprocess.run([PYTHON, "-m", "gatesweep"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "learning_rate=" in out.read_text().split()
    line = "gatesweep run spec.yaml backend.slurm.par"
    env |= {"COMP_LINE": line, "COMP_POINT": str(len(line))}
    subprocess.run([PYTHON, "-m", "gatesweep"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.read_text().split() == ["backend.slurm.partition="]


def test_schema_checks_every_shipped_spec_and_refuses_bad_ones(tmp_path: Path):
    res = gatesweep(["schema"], tmp_path, cli_env())
    assert res.returncode == 0, res.stderr
    schema = json.loads(res.stdout)
    for path in sorted(SWEEPS.glob("*.yaml")):
        jsonschema.validate(yaml.safe_load(path.read_text()), schema)
    for bad in ({"name": "x", "backend": {"slurm": {"timeout_min": "abc"}}}, {"name": "x", "gird": {}},
                {"name": "x", "backend": {"ray": {"num_cpus": "lots"}}}, {"name": "x", "seeds": [-1]}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_console_tables_fit_the_terminal_and_are_markdown_in_a_pipe(monkeypatch: pytest.MonkeyPatch):
    import pandas as pd

    from analysis import cli as analysis_cli
    from analysis import render

    df = pd.DataFrame({"attn_gate": ["none", "headwise"], "n": ["2", "2"]})
    piped = analysis_cli._render(df, "console", title="t", note="a note", headers=None)  # pytest's stdout: no TTY
    assert piped.splitlines()[:2] == ["| attn_gate | n |", "|-----------|---|"] and "a note" in piped
    monkeypatch.setenv("COLUMNS", "40")
    boxed = render.to_console(df, title="t", note="word " * 30)
    assert max(len(ln) for ln in boxed.splitlines()) <= 40


def test_pinning_a_grid_axis_is_refused_and_grid_overrides_replace_it(tmp_path: Path):
    res = gatesweep(["plan", str(SWEEPS / "demo.yaml"), "attn_gate=none"], tmp_path, cli_env())
    assert res.returncode == 2 and "grid.attn_gate=" in res.stderr and len(res.stderr.splitlines()) == 1
    res = gatesweep(["plan", str(SWEEPS / "demo.yaml"), "grid.attn_gate=none,elementwise", "--json"], tmp_path,
                    cli_env())
    assert res.returncode == 0, res.stderr
    narrowed = {p["trial_id"] for p in json.loads(res.stdout)}
    full = {t.trial_id: t for t in expand(load_spec(SWEEPS / "demo.yaml"))}
    # the same trials (same ids) as the full design's none and elementwise points, plus its include point
    assert narrowed <= set(full) and {full[i].label for i in narrowed} == {
        "attn_gate=none", "attn_gate=elementwise", "attn_gate=headwise gate_act=ns_sigmoid"}


@pytest.mark.slurm
def test_slurm_check_asks_sbatch_and_writes_nothing(tmp_path: Path, slurm_cluster):
    _spec(tmp_path)
    before = cwd_snapshot(tmp_path)
    env = cli_env() | {"SLURM_CONF": os.environ["SLURM_CONF"]}
    ok = gatesweep(["run", "spec.yaml", "--backend", "slurm", "--check"], tmp_path, env)
    assert ok.returncode == 0, ok.stderr
    assert "sbatch --test-only: 1 job array(s) for 4 trial(s) would be accepted" in ok.stdout
    bad = gatesweep(["run", "spec.yaml", "--backend", "slurm", "--check", "--partition", "no-such-partition"],
                    tmp_path, env)
    assert bad.returncode == 2 and "invalid partition specified: no-such-partition" in bad.stderr
    assert cwd_snapshot(tmp_path) == before
    # a real run with a typo is refused by the same check before any record (run dir, MLflow run) exists
    typo = gatesweep(["run", "spec.yaml", "--backend", "slurm", "--partition", "no-such-partition"], tmp_path, env)
    assert typo.returncode == 2 and "sbatch --test-only refused" in typo.stderr, typo.stdout + typo.stderr
    assert len(typo.stderr.strip().splitlines()) == 1
    assert cwd_snapshot(tmp_path) == before
    local = gatesweep(["run", "spec.yaml", "--backend", "local", "--check"], tmp_path, env)
    assert local.returncode == 2 and "--check" in local.stderr
