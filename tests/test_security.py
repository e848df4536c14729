"""Security: servers bind loopback unless told otherwise; YAML is data (safe_load only); values that
reach a shell are quoted (local launcher and the Slurm sbatch script); credential-looking environment
variables never reach the logs, params, tags or artifacts of a real sweep."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shlex
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from tests.services import free_port, service_host
from tests.sweep_helpers import (
    PYTHON,
    REPO,
    cli_env,
    client,
    experiment_runs,
    gatesweep,
    local_status,
    trial_dirs,
    unique,
    write_data,
    write_spec,
)

PACKAGES = ("trainer", "sweeps", "cluster", "gatesweep", "analysis")
HOSTILE = "x'; touch PWNED1; echo \"$(touch PWNED2)\" `touch PWNED3` #"
MARKERS = ("PWNED", "PWNED1", "PWNED2", "PWNED3")


def _sources() -> list[Path]:
    return [p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")]


# ---------------------------------------------------------------- loopback
def _listening(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp{,6} write them) with a LISTEN socket on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.rsplit(":", 1)
            if state == "0A" and int(hexport, 16) == port:
                found.add(addr)
    return found


LOOPBACK_V4 = "0100007F"  # 127.0.0.1, little-endian


def _hex_v4(addr: str) -> str:
    return "".join(f"{int(b):02X}" for b in reversed(addr.split(".")))


@pytest.mark.mlflow
def test_the_test_server_listens_on_loopback_or_the_test_bridge_only(mlflow_server):
    """127.0.0.1, or with the multi-node test cluster its bridge address of this host (198.18.x.1, the
    only address its nodes reach) - never 0.0.0.0 or the machine's own interface."""
    host = service_host()
    assert host == "127.0.0.1" or (host.startswith("198.18.") and host.endswith(".1")), host
    assert _hex_v4("127.0.0.1") == LOOPBACK_V4
    assert _listening(mlflow_server.port) == {_hex_v4(host)}


@pytest.mark.mlflow
def test_mlflow_up_script_binds_loopback_by_default(tmp_path: Path):
    script = (REPO / "scripts" / "mlflow_up.sh").read_text()
    assert re.search(r"^HOST=\$\{MLFLOW_HOST:-127\.0\.0\.1\}$", script, re.M)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env |= {"MLFLOW_ROOT": str(tmp_path), "MLFLOW_PORT": str(port), "VENV": str(Path(PYTHON).parent.parent)}
    up = subprocess.run(["bash", str(REPO / "scripts" / "mlflow_up.sh")], env=env, capture_output=True, text=True,
                        timeout=180)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert (tmp_path / "env.sh").read_text() == f"export MLFLOW_TRACKING_URI=http://127.0.0.1:{port}\n"
        assert _listening(port) == {LOOPBACK_V4}  # not 0.0.0.0 (00000000) nor :: on any interface
    finally:
        subprocess.run(["bash", str(REPO / "scripts" / "mlflow_down.sh")], env=env, capture_output=True, timeout=60)
    assert _listening(port) == set()


def test_make_mlflow_ui_binds_loopback():
    out = subprocess.run(["make", "-n", "mlflow-ui"], cwd=REPO, capture_output=True, text=True, timeout=60).stdout
    (line,) = [ln for ln in out.replace("\\\n", " ").splitlines() if " ui " in ln and "mlflow" in ln]
    args = shlex.split(line)
    assert args[args.index("--host") + 1] == "127.0.0.1", line
    makefile = (REPO / "Makefile").read_text()
    assert "0.0.0.0" not in makefile


# ---------------------------------------------------------------- YAML is data
def test_yaml_is_only_safe_loaded():
    unsafe = re.compile(r"yaml\.(load|unsafe_load|full_load|load_all)\(|Loader\s*=|UnsafeLoader|FullLoader")
    hits = [f"{p.relative_to(REPO)}:{i}" for p in _sources()
            for i, line in enumerate(p.read_text().splitlines(), 1) if unsafe.search(line)]
    assert hits == []
    # every document is read through trainer.yamlsafe: safe_load's loader plus refused duplicate keys
    # and bounded alias expansion (tests/test_reliability_edges.py)
    direct = [f"{p.relative_to(REPO)}:{i}" for p in _sources() if p.name != "yamlsafe.py"
              for i, line in enumerate(p.read_text().splitlines(), 1) if "yaml.safe_load(" in line]
    assert direct == []
    from trainer.yamlsafe import StrictLoader

    assert issubclass(StrictLoader, __import__("yaml").SafeLoader)


def test_python_tags_are_refused_and_run_nothing(tmp_path: Path):
    (tmp_path / "spec.yaml").write_text('name: !!python/object/apply:os.system ["touch PWNED"]\n')
    (tmp_path / "cfg.yaml").write_text('notes: !!python/object/apply:os.system ["touch PWNED"]\n')
    spec = gatesweep(["plan", "spec.yaml"], tmp_path, cli_env())
    trainer = subprocess.run([PYTHON, "-m", "trainer", "cfg.yaml"], cwd=tmp_path, env=cli_env(), capture_output=True,
                             text=True, timeout=60)
    assert spec.returncode == trainer.returncode == 2
    assert "unsupported YAML tag" in spec.stderr and "not valid YAML" in trainer.stderr
    # a tag inside a command-line value is plain text
    write_spec(tmp_path / "ok.yaml", "tagged")
    res = gatesweep(["plan", "ok.yaml", "--json", 'notes=!!python/object/apply:os.system ["touch PWNED"]'],
                    tmp_path, cli_env())
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)[0]["config"]["notes"] == '!!python/object/apply:os.system ["touch PWNED"]'
    assert not (tmp_path / "PWNED").exists()


# ---------------------------------------------------------------- shell quoting
def test_no_shell_in_the_packages():
    shell = re.compile(r"shell\s*=\s*True|os\.system\(|os\.popen\(|subprocess\.getoutput\(|commands\.getoutput")
    hits = [f"{p.relative_to(REPO)}:{i}" for p in _sources()
            for i, line in enumerate(p.read_text().splitlines(), 1) if shell.search(line)]
    assert hits == []


def test_hostile_names_in_dry_runs_are_quoted(tmp_path: Path, slurm_cluster):
    """Local: the printed command is exactly the argv. Slurm: every hostile option value reaches sbatch
    as one quoted word (sbatch itself reads the partition back verbatim), and the script runs nothing."""
    write_data(tmp_path)
    write_spec(tmp_path / "spec.yaml", "hostile", experiment=HOSTILE, seeds=[0], grid={"attn_gate": ["none"]})
    res = gatesweep(["run", "spec.yaml", "--dry-run", "--backend", "local", f"notes={HOSTILE}"], tmp_path, cli_env())
    assert res.returncode == 0, res.stderr
    cmd = shlex.split(res.stdout.splitlines()[1])
    assert cmd[:3] == [PYTHON, "-m", "trainer"] and len(cmd) == 4

    opts = {"partition": HOSTILE, "account": HOSTILE + " a", "qos": HOSTILE + " q", "constraint": HOSTILE + " c"}
    args = [a for k, v in opts.items() for a in (f"--{k}", v)]
    res = gatesweep(["run", "spec.yaml", "--backend", "slurm", "--dry-run", *args, f"notes={HOSTILE}"], tmp_path,
                    cli_env(SLURM_CONF=slurm_cluster.conf))
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    script = "\n".join(lines[lines.index("#!/bin/bash"):next(i for i, ln in enumerate(lines) if ln.startswith("estimate:"))])
    sbatch = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH --"):
            (word,) = shlex.split(line[len("#SBATCH "):])  # one shell word per option
            key, _, value = word[2:].partition("=")
            sbatch[key] = value
    assert {k: sbatch[k] for k in opts} == opts
    # run the script's shell part for real, with a stub srun: nothing hostile executes
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "srun").write_text("#!/bin/sh\necho srun-called > srun.out\n")
    (stub / "srun").chmod(0o755)
    (tmp_path / "job.sh").write_text(script + "\n")
    ran = subprocess.run(["bash", "job.sh"], cwd=tmp_path, env=cli_env(PATH=f"{stub}:{os.environ['PATH']}"),
                         capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert (tmp_path / "srun.out").read_text() == "srun-called\n"
    # and Slurm's own parser reads the partition back as the one hostile string
    test_only = subprocess.run(["sbatch", "--test-only", "job.sh"], cwd=tmp_path, capture_output=True, text=True,
                               env=cli_env(SLURM_CONF=slurm_cluster.conf), timeout=60)
    assert f"invalid partition specified: {HOSTILE}" in test_only.stderr, test_only.stderr
    assert not any((tmp_path / m).exists() for m in MARKERS)
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing


# ---------------------------------------------------------------- a real sweep: hostile names, credentials
@pytest.fixture(scope="module")
def secret_sweep(tmp_path_factory: pytest.TempPathFactory, mlflow_server):
    """One real trial with a hostile experiment name and notes, credentials in the environment, and
    one credential pasted into a config value (notes)."""
    cwd = tmp_path_factory.mktemp("secrets")
    secrets = {"AWS_SECRET_ACCESS_KEY": "aws" + uuid.uuid4().hex, "MY_API_TOKEN": "tok" + uuid.uuid4().hex,
               "MLFLOW_TRACKING_PASSWORD": "pw" + uuid.uuid4().hex, "DB_PASSWORD": "db" + uuid.uuid4().hex}
    experiment = f"{HOSTILE} {uuid.uuid4().hex[:6]}"
    name = unique("secret")
    write_data(cwd)
    write_spec(cwd / "spec.yaml", name, experiment=experiment, seeds=[0], grid={"attn_gate": ["none"]})
    notes = f"{HOSTILE} ticket {secrets['MY_API_TOKEN']}"
    res = gatesweep(["run", "spec.yaml", f"notes={notes}"], cwd, cli_env(mlflow_server.uri, **secrets))
    assert res.returncode == 0, res.stdout + res.stderr
    return cwd, name, experiment, secrets, notes, res


@pytest.mark.mlflow
def test_hostile_names_go_through_a_real_sweep_verbatim(secret_sweep, mlflow_server):
    cwd, name, experiment, _, _, _ = secret_sweep
    assert not any((cwd / m).exists() for m in MARKERS)
    (run,) = experiment_runs(mlflow_server.uri, experiment, "trial")
    assert client(mlflow_server.uri).get_experiment_by_name(experiment).name == experiment
    assert run.data.params["notes"].startswith(HOSTILE + " ticket ")
    assert all(local_status(d)["status"] == "FINISHED" for d in trial_dirs(cwd, name))


@pytest.mark.mlflow
def test_credentials_never_reach_logs_params_or_artifacts(secret_sweep, mlflow_server, tmp_path: Path):
    cwd, name, experiment, secrets, _, res = secret_sweep
    values = list(secrets.values())
    leaks = [f"launcher output: {k}" for k, v in secrets.items() if v in res.stdout + res.stderr]
    # every file the sweep wrote: logs, stdout.log, the local record, checkpoints, results.csv ...
    for p in cwd.rglob("*"):
        if not p.is_file() or p.parent.name == "data":
            continue
        data = p.read_bytes()
        for k, v in secrets.items():
            # trial.json is the launcher's input; the token pasted into notes is there by the user's hand
            if v.encode() in data and not (p.name == "trial.json" and p.parent.parent.name == name
                                           and k == "MY_API_TOKEN"):
                leaks.append(f"{p.relative_to(cwd)}: {k}")
    # everything MLflow holds: params, tags, metrics keys, and the artifacts downloaded back
    c = client(mlflow_server.uri)
    for run in experiment_runs(mlflow_server.uri, experiment):
        text = json.dumps([run.data.params, run.data.tags, sorted(run.data.metrics)])
        leaks += [f"run {run.info.run_name} params/tags: {k}" for k, v in secrets.items() if v in text]
        got = Path(c.download_artifacts(run.info.run_id, "", str(tmp_path / run.info.run_id)))
        for p in got.rglob("*"):
            if p.is_file():
                leaks += [f"artifact {p.name}: {k}" for k, v in secrets.items() if v.encode() in p.read_bytes()]
    assert leaks == [], leaks
    (run,) = experiment_runs(mlflow_server.uri, experiment, "trial")
    assert run.data.params["notes"].endswith("ticket <redacted:MY_API_TOKEN>")
    artifact = json.loads((tmp_path / run.info.run_id / "trial.json").read_text())
    assert artifact["config"]["notes"].endswith("ticket <redacted:MY_API_TOKEN>")
    assert len(values) == 4


# ---------------------------------------------------------------- where a spec or a config may write
def _project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    write_data(project)
    write_spec(project / "spec.yaml", unique("paths"), seeds=[0], grid={"attn_gate": ["none"]})
    return project


TRAINER_TINY = ["preset=tiny", "vocab_size=64", "n_embd=32", "n_head=2", "sequence_length=32", "batch_size=4",
                "device_batch_size=4", "val_tokens=256", "num_iterations=3", "warmdown_iters=1", "val_every=0",
                "train_files=data/train_*.bin", "val_files=data/val_*.bin", "device=cpu", "compile=off"]


@pytest.mark.parametrize("override,expect", [
    ("results_csv=../outside/results.csv", "results_csv='../outside/results.csv' is outside the project directory"),
    ("results_csv={outside}/.bashrc", "results_csv='{outside}/.bashrc' is outside the project directory"),
    ("out_dir=../outside", "out_dir='../outside' is outside the project directory"),
    ("out_dir=runs/../../outside", "out_dir='runs/../../outside' is outside the project directory"),
    ("run_id=../../outside/x", "run_id='../../outside/x' must be a plain name"),
    ("run_id=a/b", "run_id='a/b' must be a plain name"),
])
def test_a_config_cannot_write_outside_the_project(tmp_path: Path, override: str, expect: str):
    """A trainer's config file and a spec (file or command line) alike: refused with one line naming the
    key, before anything is written; nothing appears outside the project. (A path typed as key=value on
    the trainer's own command line is the person's choice: test_paths_typed_on_the_trainers_command_line.)"""
    project, outside = _project(tmp_path), tmp_path / "outside"
    override, expect = override.format(outside=outside), expect.format(outside=outside)
    key, _, value = override.partition("=")
    (project / "mine.yaml").write_text(yaml.safe_dump({key: value}))
    trainer = ["mine.yaml"] if not key == "run_id" else [override]  # run_id: a plain name, typed or not
    runs = [subprocess.run([PYTHON, "-m", "trainer", *trainer, *TRAINER_TINY], cwd=project, env=cli_env(),
                           capture_output=True, text=True, timeout=120),
            gatesweep(["plan", "spec.yaml", override], project, cli_env())]
    if not override.startswith("run_id"):  # a spec's run_id is the trial id: not a spec key
        key, _, value = override.partition("=")
        spec = yaml.safe_load((project / "spec.yaml").read_text())
        spec["base"][key] = value
        (project / "bad.yaml").write_text(yaml.safe_dump(spec))
        runs.append(gatesweep(["run", "bad.yaml"], project, cli_env()))
    for res in runs:
        lines = res.stderr.splitlines()
        assert res.returncode == 2 and len(lines) == 1 and expect in lines[0], res.stderr[-2000:]
    assert not outside.exists() and not (project / "runs").exists() and not (project / "experiments").exists()


def test_writing_outside_the_project_on_purpose(tmp_path: Path):
    """GATESWEEP_ALLOW_OUTSIDE_PATHS=1: a cluster layout that keeps results elsewhere."""
    project, outside = _project(tmp_path), tmp_path / "outside"
    env = cli_env(GATESWEEP_ALLOW_OUTSIDE_PATHS="1", GATESWEEP_TRACKING="local")
    res = subprocess.run([PYTHON, "-m", "trainer", *TRAINER_TINY, "run_id=far", f"results_csv={outside}/r.csv"],
                         cwd=project, env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (outside / "r.csv").read_text().splitlines()[1].startswith('"far",')


def test_paths_typed_on_the_trainers_command_line_and_under_configured_roots(tmp_path: Path):
    """Issue #24 item 7: what the person running the command chose is theirs - a path typed as key=value on
    the trainer's command line, and for specs too anything under $SCRATCH or GATESWEEP_OUTPUT_ROOTS."""
    project, scratch = _project(tmp_path), tmp_path / "scratch"
    env = cli_env(GATESWEEP_TRACKING="local")
    env.pop("SCRATCH", None)
    env.pop("GATESWEEP_OUTPUT_ROOTS", None)
    res = subprocess.run([PYTHON, "-m", "trainer", *TRAINER_TINY, "run_id=typed", f"out_dir={scratch}/o",
                          f"results_csv={scratch}/typed.csv"], cwd=project, env=env, capture_output=True, text=True,
                         timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (scratch / "o" / "logs" / "typed.txt").is_file() and (scratch / "o" / "track" / "status.json").is_file()
    assert (scratch / "typed.csv").read_text().splitlines()[1].startswith('"typed",')
    # a spec's path outside the project: refused, unless it lies under a configured root
    spec = yaml.safe_load((project / "spec.yaml").read_text())
    spec["base"]["results_csv"] = f"{scratch}/sweep.csv"
    (project / "far.yaml").write_text(yaml.safe_dump(spec))
    refused = gatesweep(["plan", "far.yaml"], project, env)
    assert refused.returncode == 2 and "is outside the project directory" in refused.stderr
    assert "GATESWEEP_OUTPUT_ROOTS" in refused.stderr
    elsewhere = cli_env(GATESWEEP_TRACKING="local", GATESWEEP_OUTPUT_ROOTS=f"/nonexistent:{tmp_path / 'other'}")
    assert gatesweep(["plan", "far.yaml"], project, elsewhere).returncode == 2
    listed = cli_env(GATESWEEP_TRACKING="local", GATESWEEP_OUTPUT_ROOTS=f"/nonexistent:{scratch}")
    assert gatesweep(["plan", "far.yaml"], project, listed).returncode == 0
    run = gatesweep(["run", "far.yaml", "--backend", "local"], project, cli_env(GATESWEEP_TRACKING="local",
                                                                                SCRATCH=str(scratch)))
    assert run.returncode == 0, run.stdout + run.stderr
    assert len((scratch / "sweep.csv").read_text().splitlines()) == 2  # the trial's row, under $SCRATCH


def test_notes_reach_results_csv_as_one_quoted_field(tmp_path: Path):
    """The sink of `notes` outside JSON is results.csv: there it was written bare (a `$(...)` landed as
    shell text in the row) and a newline split the row. Now every text field is quoted and a row is one line."""
    project = _project(tmp_path)
    notes = f'{HOSTILE}, "quoted"\nsecond line'
    res = subprocess.run([PYTHON, "-m", "trainer", *TRAINER_TINY, "run_id=notes", f"notes={notes}"], cwd=project,
                         env=cli_env(GATESWEEP_TRACKING="local"), capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    header, row = (project / "experiments" / "results.csv").read_text().splitlines()
    flat = notes.replace("\n", " ")
    assert row.endswith(',"' + flat.replace('"', '""') + '"')
    assert row.startswith('"notes","') and ',"none","sdpa","sigmoid",' in row  # text quoted, numbers bare
    (parsed,) = csv.DictReader(io.StringIO(header + "\n" + row + "\n"))
    assert parsed["notes"] == flat and parsed["seed"] == "0"
    assert not any((project / m).exists() for m in MARKERS)


# ---------------------------------------------------------------- results.csv: a CSV the project owns
SHELL_NOTES = "$(echo PWNED > pwned.txt)"


def _owned_targets(project: Path) -> None:
    """What a hostile spec could aim results_csv at inside the project."""
    (project / ".venv" / "bin").mkdir(parents=True)
    (project / ".venv" / "bin" / "activate").write_text("# activate\nexport VIRTUAL_ENV=x\n")
    (project / "experiments").mkdir()
    (project / "experiments" / "tool.csv").write_text("#!/bin/sh\n")
    (project / "experiments" / "tool.csv").chmod(0o755)
    (project / "experiments" / "other.csv").write_text("name,score\nx,1\n")
    (project / "experiments" / "link.csv").symlink_to(project / ".venv" / "bin" / "activate")


@pytest.mark.parametrize("target,expect", [
    (".venv/bin/activate", "is not a .csv file"),
    ("results.csv", "is not under the project's experiments/ or runs/"),
    ("experiments/.results.csv", "is a hidden file"),
    ("experiments/tool.csv", "is an executable file"),
    ("experiments/other.csv", "holds a file that is not a gatesweep results table"),
    ("experiments/link.csv", "is not a .csv file (a link to"),
])
def test_results_csv_must_be_a_csv_the_project_owns(tmp_path: Path, target: str, expect: str):
    """Issue #25 item 1: `base: {results_csv: .venv/bin/activate, notes: "$(echo PWNED > pwned.txt)"}`
    appended a row to the venv's activate script, and sourcing it ran the command. A spec and a trainer
    started by hand are refused (one line, exit 2) before anything is written; the target is untouched."""
    project = _project(tmp_path)
    _owned_targets(project)
    spec = yaml.safe_load((project / "spec.yaml").read_text())
    spec["base"] |= {"results_csv": target, "notes": SHELL_NOTES}
    (project / "bad.yaml").write_text(yaml.safe_dump(spec))
    before = {p: p.read_bytes() for p in project.rglob("*") if p.is_file()}
    runs = [gatesweep(["run", "bad.yaml"], project, cli_env())]
    if "not under" not in expect:  # where a path typed on the trainer's command line goes is its typer's choice
        runs.append(subprocess.run([PYTHON, "-m", "trainer", *TRAINER_TINY, f"results_csv={target}",
                                    f"notes={SHELL_NOTES}"], cwd=project, env=cli_env(GATESWEEP_TRACKING="local"),
                                   capture_output=True, text=True, timeout=120))
    for res in runs:
        lines = res.stderr.splitlines()
        assert res.returncode == 2 and len(lines) == 1, res.stderr[-2000:]
        assert f"results_csv='{target}' {expect}" in lines[0] and "experiments/results.csv" in lines[0], lines[0]
    after = {p: p.read_bytes() for p in project.rglob("*") if p.is_file()}
    assert after == before and not (project / "runs").exists()
    sourced = subprocess.run(["bash", "-c", "source .venv/bin/activate"], cwd=project, capture_output=True, timeout=30)
    assert sourced.returncode == 0 and not (project / "pwned.txt").exists()


def test_results_csv_is_checked_again_when_the_row_is_written(tmp_path: Path):
    """The file may change while a run trains: append_result re-checks it under its lock."""
    from trainer.errors import ConfigError
    from trainer.runlog import RESULTS_HEADER, append_result

    script = tmp_path / "hook.csv"
    script.write_text(RESULTS_HEADER + "\n")
    script.chmod(0o755)
    with pytest.raises(ConfigError, match="is an executable file"):
        append_result(script, {"run_id": "r", "notes": SHELL_NOTES})
    plain = tmp_path / "profile"
    with pytest.raises(ConfigError, match="is not a .csv file"):
        append_result(plain, {"run_id": "r"})
    assert script.read_text() == RESULTS_HEADER + "\n" and not plain.exists()


def test_every_text_field_of_a_results_row_is_formula_safe():
    """OWASP CSV injection: a cell starting with = + - @ tab or CR gets a leading ', numbers stay numbers
    (one rule, trainer.csvsafe, shared with the analysis exports)."""
    from trainer.runlog import RESULTS_COLUMNS, row_text

    hostile = {"=HYPERLINK(\"http://x\",\"y\")", "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)", "\tx"}
    row = {k: "=1+1" for k in RESULTS_COLUMNS} | {"seed": 3, "learning_rate": -0.5, "run_id": "r1"}
    for text in hostile:
        (parsed,) = csv.reader(io.StringIO(row_text(row | {"notes": text, "gpu_name": text})))
        cells = dict(zip(RESULTS_COLUMNS, parsed, strict=True))
        assert cells["notes"] == cells["gpu_name"] == "'" + text, text
        assert cells["date"] == "'=1+1" and cells["seed"] == "3" and cells["learning_rate"] == "-0.5"


def test_a_formula_in_notes_is_not_live_in_results_csv(tmp_path: Path):
    """Issue #25 item 1: a `notes` value `=HYPERLINK(...)` stayed live in experiments/results.csv."""
    project = _project(tmp_path)
    notes = '=HYPERLINK("http://127.0.0.1/x","click")'
    res = subprocess.run([PYTHON, "-m", "trainer", *TRAINER_TINY, "run_id=formula", f"notes={notes}"], cwd=project,
                         env=cli_env(GATESWEEP_TRACKING="local"), capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    (row,) = csv.DictReader(io.StringIO((project / "experiments" / "results.csv").read_text()))
    assert row["notes"] == "'" + notes and row["run_id"] == "formula"
