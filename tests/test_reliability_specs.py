"""Hostile and unlucky specs (issue #25 items 4, 6, 7, 8): design points that would be dropped without
a word, names and sbatch options with a newline, two spec files with one name, a long spec that is no
alias bomb."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sweeps.errors import SpecError
from sweeps.expand import expand
from sweeps.spec import load_spec, parse_spec
from tests.sweep_helpers import cli_env, experiment_runs, gatesweep, unique, write_data, write_spec
from trainer import yamlsafe
from trainer.config import TrainConfig
from trainer.errors import ConfigError


def _spec(**fields) -> dict:
    return {"name": "s", "base": {"preset": "tiny"}, "seeds": [0]} | fields


# ---------------------------------------------------------------- item 4: design points dropped silently
@pytest.mark.parametrize("fields,where", [
    ({"grid": {"fast": [True, False], "attn_gate": ["none", "headwise"]}}, "grid.fast: fast does not define a trial"),
    ({"grid": {"notes": ["a", "b"]}}, "grid.notes: notes does not define a trial"),
    ({"grid": {"attn_gate": ["none", "headwise"]}, "include": [{"attn_gate": "none", "compile": "off"}]},
     "include[0].compile: compile does not define a trial"),
])
def test_a_design_point_that_is_not_a_trial_of_its_own_is_refused(fields: dict, where: str):
    """`fast: [true, false]` expanded to one trial per gate with no warning: fast is not part of the id."""
    with pytest.raises(SpecError, match=r"^spec\.yaml: ") as e:
        expand(parse_spec(_spec(**fields), "spec.yaml"))
    assert where in str(e.value) and "one would be dropped" in str(e.value) and "set " in str(e.value)


def test_points_that_are_one_trial_on_purpose_still_expand():
    """An include repeating a grid point, and a non-identity key set in base, are fine."""
    spec = parse_spec(_spec(base={"preset": "tiny", "fast": False, "notes": "x"},
                            grid={"attn_gate": ["none", "headwise"]}, include=[{"attn_gate": "none"}]), "spec.yaml")
    assert [t.label for t in expand(spec)] == ["attn_gate=none", "attn_gate=headwise"]


# ---------------------------------------------------------------- item 6: newlines
@pytest.mark.parametrize("fields,where", [
    ({"name": "nl\n"}, "name: "),
    ({"stage": "st\n"}, "stage: "),
    ({"backend": {"slurm": {"extra": {"mail-type\n": "END"}}}}, "backend.slurm.extra: "),
])
def test_a_newline_is_refused_where_a_name_or_an_sbatch_option_goes(fields: dict, where: str):
    """`$` matches before a final newline: "nl\\n" passed the name check (runs/nl⏎/), and an extra sbatch
    key with a newline split its `#SBATCH` line (sbatch then ignores the directives after it)."""
    with pytest.raises(SpecError) as e:
        parse_spec(_spec(**fields), "spec.yaml")
    assert where in str(e.value), str(e.value)


def test_a_run_id_with_a_newline_is_refused():
    with pytest.raises(ConfigError, match="must be a plain name"):
        TrainConfig().override({"run_id": "run\n"})


def test_a_spec_named_with_a_newline_makes_no_run_directory(tmp_path: Path):
    write_data(tmp_path)
    spec = yaml.safe_load(write_spec(tmp_path / "spec.yaml", "nl", seeds=[0]).read_text()) | {"name": "nl\n"}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    res = gatesweep(["run", "spec.yaml"], tmp_path, cli_env())
    assert res.returncode == 2 and len(res.stderr.splitlines()) == 1, res.stderr
    assert "spec.yaml: name: " in res.stderr and not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- item 7: two spec files, one name
def test_a_second_spec_file_with_a_name_in_use_is_refused(tmp_path: Path):
    """Two specs with the same name shared runs/<name>/ and the `spec` tag: `table specA` showed specB's
    rows. The second file is refused, here and from another checkout sharing the experiment's store."""
    name = unique("same")
    write_data(tmp_path)
    write_spec(tmp_path / "specA.yaml", name, base={"num_iterations": 4}, grid={"attn_gate": ["none"]}, seeds=[0])
    write_spec(tmp_path / "specB.yaml", name, base={"num_iterations": 4}, grid={"attn_gate": ["headwise"]}, seeds=[0])
    res = gatesweep(["run", "specA.yaml"], tmp_path, cli_env())
    assert res.returncode == 0, res.stdout + res.stderr
    for args in (["run", "specB.yaml"], ["run", "specB.yaml", "--dry-run"]):
        res = gatesweep(args, tmp_path, cli_env())
        err = res.stderr.splitlines()
        assert res.returncode == 2 and len(err) == 1, res.stdout + res.stderr
        assert err[0].startswith(f"error: specB.yaml: name: '{name}' is already the name of the spec specA.yaml"), err
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert [r.data.tags["label"] for r in experiment_runs(uri, f"gs-{name}", "trial")] == ["attn_gate=none"]
    # another checkout (no runs/ of its own) whose specB would join the same experiment
    other = tmp_path / "other"
    write_data(other)
    write_spec(other / "specB.yaml", name, base={"num_iterations": 4}, grid={"attn_gate": ["headwise"]}, seeds=[0])
    res = gatesweep(["run", "specB.yaml"], other, cli_env(uri))
    assert res.returncode == 2 and "is already the name of the spec specA.yaml" in res.stderr, res.stdout + res.stderr
    # the same spec file run again, and from another checkout at the same path, is the same spec
    (other / "specA.yaml").write_text((tmp_path / "specA.yaml").read_text())
    for cwd, env in ((tmp_path, cli_env()), (other, cli_env(uri))):
        res = gatesweep(["run", "specA.yaml"], cwd, env)
        assert res.returncode == 0, res.stdout + res.stderr


# ---------------------------------------------------------------- item 8: a long spec is no alias bomb
def test_a_spec_with_9000_include_points_loads(tmp_path: Path):
    """The alias guard counted every YAML value, not what aliases add: 9,000 include points (valid, under
    the 10,000-trial cap) were refused as "an alias bomb"."""
    points = [{"attn_gate": "headwise", "gate_pos": "sdpa", "gate_act": "sigmoid", "num_iterations": 100,
               "warmdown_iters": 20, "learning_rate": round(0.001 + i * 1e-6, 6)} for i in range(9000)]
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(_spec(include=points)))
    spec = load_spec(path)
    assert len(spec.include) == 9000
    # what aliases add is still bounded: 200 points sharing one anchored mapping of 1,000 values
    shared = "base: {preset: tiny}\nx: &big [" + ", ".join(["1"] * 1000) + "]\ny: [" + ", ".join(["*big"] * 200) + "]\n"
    with pytest.raises(yamlsafe.RefusedYAML, match="aliases expand to more than 100,000 values"):
        yamlsafe.load(shared)
