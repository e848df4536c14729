"""The command line as a newcomer meets it (issue #24 items 2, 3 and 8): global options before or after
every subcommand and unknown ones refused everywhere; argparse's own errors as one line with the
closest valid word and the subcommand's usage; -v/-q; what a local dry run lists; the sweep's last
line naming why a trial did not finish."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gatesweep.cli import DELEGATED, main
from sweeps.expand import expand
from sweeps.spec import load_spec
from tests.sweep_helpers import cli_env, gatesweep, write_data, write_spec
from trainer.record import write_json

COMMANDS = ["plan", "run", "status", "sync", "warmup", "schema", "completion", *DELEGATED]
UNREACHABLE = "http://127.0.0.1:9"


def _call(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """gatesweep's main() in this process (fast: no interpreter start per case); argparse's --help exits."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", COMMANDS)
def test_version_help_and_unknown_options_before_or_after_every_subcommand(command: str, capsys):
    for argv in (["-V", command], [command, "-V"], ["--version", command, "x"]):
        code, out, _ = _call(argv, capsys)
        assert (code, out.split()[0]) == (0, "gatesweep"), argv  # the version, not the command
    for argv in (["--help", command], [command, "--help"], ["-h", command]):
        code, out, _ = _call(argv, capsys)
        assert code == 0 and f"usage: gatesweep {command}" in out, (argv, out[:300])
    for argv in (["--bogus", command], [command, "--bogus"]):
        code, out, err = _call(argv, capsys)
        assert code == 2 and "unknown option --bogus" in err and out == "", (argv, err)
        assert len(err.splitlines()) == 2 and err.splitlines()[1].startswith("usage: gatesweep"), err


def _finished(run_dir: Path, status: str = "FINISHED") -> None:
    (run_dir / "track").mkdir(parents=True)
    write_json(run_dir / "track" / "status.json", {"status": status, "reason": "test record", "time": 0})


@pytest.mark.parametrize("command", ["plan", "status", "run"])
def test_json_before_the_subcommand_is_the_same_as_after(command: str, tmp_path: Path):
    spec = write_spec(tmp_path / "spec.yaml", "glob")
    ids = [t.trial_id for t in expand(load_spec(spec))]
    for trial_id in ids:  # every trial finished: run answers at once
        _finished(tmp_path / "runs" / "glob" / trial_id)
    outs = []
    for argv in (["--json", command, "spec.yaml"], [command, "spec.yaml", "--json"], [command, "--json", "spec.yaml"]):
        res = gatesweep([*argv, "--backend", "local"] if command == "run" else argv, tmp_path, cli_env())
        assert res.returncode == 0 and "unrecognized" not in res.stderr, res.stderr
        outs.append(json.loads(res.stdout))
    assert outs[0] == outs[1] == outs[2] and len(outs[0]) == len(ids)


def test_a_global_option_a_command_cannot_use_is_refused_with_the_reason(capsys):
    code, _, err = _call(["--json", "report", "--stage", "s"], capsys)
    assert code == 2 and err.startswith("error: gatesweep report: --json does not apply to `report`")
    assert err.splitlines()[1].startswith("usage: gatesweep report [SPEC]")
    code, _, err = _call(["-q", "-v", "plan", "x.yaml"], capsys)
    assert code == 2 and "-q/--quiet and -v/--verbose contradict" in err


@pytest.mark.parametrize("command", ["report", "power"])
def test_the_global_tracking_uri_after_an_analysis_command_is_used(command: str, tmp_path: Path):
    env = cli_env(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="2")
    res = gatesweep([command, "--stage", "stage1", "--tracking-uri", UNREACHABLE], tmp_path, env)
    assert res.returncode == 69 and "unreachable" in res.stderr and len(res.stderr.splitlines()) == 1, res.stderr


@pytest.mark.parametrize(("argv", "first", "usage"), [
    (["stauts", "s.yaml"], "error: gatesweep: unknown command 'stauts' (did you mean 'status'?)",
     "usage: gatesweep COMMAND [options]"),
    (["run", "s.yaml", "--dryrun"], "error: gatesweep run: unknown option --dryrun (did you mean '--dry-run'?)",
     "usage: gatesweep run SPEC [KEY=VALUE ...] [options]"),
    (["run", "s.yaml", "--backend", "slrum"],
     "error: gatesweep run: argument --backend: unknown value 'slrum' (did you mean 'slurm'?); choose from local, "
     "slurm, ray", "usage: gatesweep run SPEC [KEY=VALUE ...] [options]"),
    (["table", "--stage", "s", "--formt", "md"], "error: gatesweep table: unknown option --formt (did you mean '--format'?)",
     "usage: gatesweep table [SPEC] [options]"),
    (["table", "--stage", "s", "--format", "mdx"],
     "error: gatesweep table: argument --format: unknown value 'mdx' (did you mean 'md'?)",
     "usage: gatesweep table [SPEC] [options]"),
    (["data", "synth", "--shrads", "2"], "error: gatesweep data synth: unknown option --shrads (did you mean '--shards'?)",
     "usage: gatesweep data synth [options]"),
    (["train", "--print-confg"], "error: gatesweep train: unknown option --print-confg (did you mean '--print-config'?)",
     ""),
])
def test_argparse_errors_say_what_is_wrong_first_with_a_did_you_mean_and_the_commands_usage(
        argv: list[str], first: str, usage: str, capsys):
    code, out, err = _call(argv, capsys)
    lines = err.splitlines()
    assert code == 2 and out == "" and lines[0].startswith(first), err
    if usage:  # the subcommand's usage in one line after the message, never the top-level one above it
        assert len(lines) == 2 and lines[1].startswith(usage), err


def test_verbose_shows_a_traceback_quiet_keeps_one_line(tmp_path: Path):
    (tmp_path / "bad.yaml").write_text("name: bad\nbase: {learnin_rate: 1}\n")
    plain = gatesweep(["plan", "bad.yaml"], tmp_path, cli_env())
    loud = gatesweep(["-v", "plan", "bad.yaml"], tmp_path, cli_env())
    assert plain.returncode == loud.returncode == 2
    assert len(plain.stderr.splitlines()) == 1 and "learnin_rate" in plain.stderr
    assert "Traceback (most recent call last)" in loud.stderr
    assert loud.stderr.splitlines()[-1] == plain.stderr.splitlines()[0]


@pytest.mark.mlflow
def test_quiet_and_verbose_runs(tmp_path: Path, mlflow_server):
    """-v says how each trial starts; -q leaves the result lines only (no progress, no notes)."""
    write_data(tmp_path)
    write_spec(tmp_path / "spec.yaml", "vq", grid={"attn_gate": ["none"]}, seeds=[0], max_parallel=1,
               base={"num_iterations": 4, "val_every": 2, "warmdown_iters": 2})
    env = cli_env(mlflow_server.uri)
    loud = gatesweep(["run", "spec.yaml", "-v"], tmp_path, env)
    assert loud.returncode == 0, loud.stderr
    trial = next((tmp_path / "runs" / "vq").glob("*/trial.json")).parent
    assert f"start trial {trial.name} (" in loud.stderr and f"> runs/vq/{trial.name}/stdout.log" in loud.stderr
    assert "[vq] done 1/1" in loud.stderr  # the progress lines
    again = gatesweep(["run", "spec.yaml", "seeds=0,1"], tmp_path, env)
    assert again.returncode == 0 and "skipping 1 finished trial(s)" in again.stdout, again.stdout
    assert "[vq] done" in again.stderr and "start trial" not in again.stderr
    quiet = gatesweep(["-q", "run", "spec.yaml", "seeds=0,1,2"], tmp_path, env)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.splitlines() == ["sweep vq: 1 finished, 0 not (-); records in runs/vq"], quiet.stdout
    assert quiet.stderr == "", quiet.stderr


def test_local_dry_run_lists_only_what_would_run(tmp_path: Path):
    spec = write_spec(tmp_path / "spec.yaml", "dry")
    trials = expand(load_spec(spec))
    for t, status in zip(trials, ["FINISHED", "FAILED"]):
        _finished(tmp_path / "runs" / "dry" / t.trial_id, status)
    res = gatesweep(["run", "spec.yaml", "--backend", "local", "--dry-run"], tmp_path, cli_env())
    assert res.returncode == 0, res.stderr
    assert trials[0].trial_id not in res.stdout  # finished: skipped, as a real run (and Slurm's dry run) skip it
    assert f"{trials[1].trial_id} " in res.stdout and "(FAILED: runs again)" in res.stdout
    assert res.stdout.splitlines()[-1].startswith(f"{len(trials) - 1} trial(s) to run (1 finished and 0 running "
                                                  "elsewhere skipped)")
    assert not (tmp_path / "mlflow.db").exists()  # a dry run creates nothing


def test_what_the_default_store_leaves_in_the_project_is_git_ignored(tmp_path: Path, monkeypatch):
    """`make demo` left `.mlflow.db.lock` as an untracked file: the store's files are ignored, all of them."""
    import subprocess

    from sweeps.store_file import ensure_store
    from tests.sweep_helpers import REPO

    monkeypatch.chdir(tmp_path)
    ensure_store("sqlite:///mlflow.db")
    made = sorted(p.name for p in tmp_path.iterdir())
    assert "mlflow.db" in made and ".mlflow.db.lock" in made
    for name in made:
        res = subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", "--no-index", "--", name])
        assert res.returncode == 0, f"{name} is not git-ignored"


def test_table_help_states_the_exit_code_table_really_uses(tmp_path: Path):
    import re

    text = " ".join(gatesweep(["table", "-h"], tmp_path, cli_env()).stdout.split())
    claimed = re.search(r"say so and exit 0 instead of (\d+)", text)
    empty = gatesweep(["table", "--stage", "stage1"], tmp_path, cli_env())  # no store here
    assert claimed and int(claimed[1]) == empty.returncode == 66, (text, empty.stderr)
    assert gatesweep(["table", "--stage", "stage1", "--skip-empty"], tmp_path, cli_env()).returncode == 0


def test_the_json_schema_types_the_trainer_keys(tmp_path: Path):
    """An editor reading `gatesweep schema` flags a misspelt trainer key or choice in base/grid/include."""
    import jsonschema

    from trainer.config import ALL_KEYS

    schema = json.loads(gatesweep(["schema"], tmp_path, cli_env()).stdout)
    for bad in ({"base": {"learning_rat": 0.01}}, {"grid": {"attn_gate": ["headwize"]}},
                {"base": {"num_iterations": "lots"}}, {"include": [{"attn_gat": "none"}]},
                {"exclude": [{"gate_act": "relu"}]}, {"grid": {"learning_rate": []}}, {"base": {"seed": 1}},
                {"base": {"learning_rate": {"form": "stage2"}}}, {"search": {"space": {"lr": {"grid": [1]}}}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"name": "x"} | bad, schema)
    good = {"name": "x", "base": {"preset": "tiny", "learning_rate": {"from": "stage2", "fallback": 0.00468},
                                  "compile": True, "num_iterations": {"time_of": {"stage": "s1"}}},
            "grid": {"attn_gate": ["none", "elementwise"]}, "include": [{"attn_gate": "headwise", "seeds": [3]}]}
    jsonschema.validate(good, schema)
    keys = schema["$defs"]["TrainerValues"]["properties"]
    assert set(keys) == set(ALL_KEYS) - {"seed"} and "default" in keys["learning_rate"]["description"]


@pytest.mark.mlflow
def test_the_demo_table_says_that_no_gate_is_expected_to_win(tmp_path: Path, mlflow_server):
    """`make demo` ends with `gatesweep table sweeps/demo.yaml`: its text says what the reader should expect
    from a tiny synthetic model, in a terminal and in a pipe alike."""
    import uuid

    from mlflow import MlflowClient

    from tests.sweep_helpers import REPO
    from tests.test_analysis_mlflow import log_trial

    name = f"demo-note-{uuid.uuid4().hex[:8]}"
    client = MlflowClient(mlflow_server.uri)
    exp = client.create_experiment(name)
    for gate, seed, final in [("none", 0, 2.61), ("none", 1, 2.62), ("elementwise", 0, 2.615), ("elementwise", 1, 2.62)]:
        log_trial(client, exp, "", gate=gate, seed=seed, stage="demo", final=final)
    for fmt in ("console", "md"):
        res = gatesweep(["table", str(REPO / "sweeps" / "demo.yaml"), "--experiment", name, "--format", fmt,
                         "--no-time"], tmp_path, cli_env(mlflow_server.uri))
        assert res.returncode == 0, res.stderr
        text = " ".join(res.stdout.split())
        assert "demo: Stage-1 design" in text and "no gate is expected to win" in text, res.stdout
