"""The Slurm backend's pure builder: options, executor parameters and sbatch text (golden files),
quoting of hostile values, array chunking and the GPU-hour estimate. No Slurm needed here."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from cluster.common.sbatch_options import resolve_options
from cluster.slurm.launch import DEPENDENCY_PLACEHOLDER, estimate_line, plan_arrays
from cluster.slurm.sbatch import (
    chunks,
    executor_params,
    parse_max_array_size,
    sbatch_text,
    setup_lines,
)
from sweeps.errors import SpecError
from sweeps.expand import expand
from sweeps.spec import load_spec, parse_spec
from trainer.errors import GatesweepError

GOLDEN = Path(__file__).parent / "golden"
REPO = Path(__file__).resolve().parents[1]
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"  # UPDATE_GOLDEN=1 pytest ... rewrites the files


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(text)
    assert path.read_text() == text, f"{path} differs; if intended, regenerate with UPDATE_GOLDEN=1"


def spec_of(slurm: dict | None = None, resources: dict | None = None, path: str = "golden.yaml"):
    return parse_spec({"name": "golden", "base": {"preset": "tiny", "num_iterations": 100},
                       "grid": {"attn_gate": ["none", "headwise", "elementwise"]}, "seeds": [0, 1],
                       "resources": resources or {"nodes": 2, "gpus_per_node": 8, "cpus_per_task": 8,
                                                  "mem_gb": 64, "timeout_min": 30},
                       "backend": {"slurm": slurm or {}}}, path)


def build(spec, cli: dict | None = None, *, root: str = "/RUNS/golden", array_size: int = 6) -> str:
    opts = resolve_options(spec, cli or {})
    env = {"GATESWEEP_GIT_SHA": "0123abc-dirty", "GATESWEEP_TRACKING": "mlflow",
           "TORCHINDUCTOR_CACHE_DIR": f"{root}/.compile-cache/inductor"}
    setup = setup_lines(Path(f"{root}/.snapshots/HASH"), env, opts.setup)
    params = executor_params(spec.resources, opts, job_name="gs-golden", setup=setup)
    return sbatch_text(params, folder=Path(f"{root}/.slurm/%j"), python="/VENV/bin/python", array_size=array_size)


def test_golden_array_script_with_every_option():
    spec = spec_of({"partition": "gpu", "account": "proj", "qos": "high", "constraint": "h100",
                    "array_parallelism": 4, "signal_delay_s": 120, "max_requeues": 5,
                    "extra": {"mail-type": "END", "exclusive": True, "mail_user": "me@example.org"},
                    "setup": ["module load cuda/12.4"]})
    check_golden("slurm_array.sbatch", build(spec, {"timeout_min": 60}))


def test_golden_single_trial_script_defaults():
    spec = spec_of(resources={"gpus_per_node": 2, "cpus_per_task": 1, "timeout_min": 10})
    text = build(spec, array_size=1)
    assert "--array" not in text and "%A_%a" not in text
    check_golden("slurm_single.sbatch", text)


def test_options_precedence_and_mapping():
    spec = spec_of({"timeout_min": 20, "partition": "spec-part", "array_parallelism": 3})
    opts = resolve_options(spec, {"partition": "cli-part", "max_requeues": 0})
    assert (opts.partition, opts.timeout_min, opts.array_parallelism, opts.max_requeues) == ("cli-part", 20, 3, 0)
    assert resolve_options(spec_of(), {}).timeout_min == 30  # resources.timeout_min when nothing else says
    params = executor_params(spec.resources, opts, job_name="j", setup=[])
    assert params["nodes"] == 2 and params["ntasks_per_node"] == 8 and params["gpus_per_node"] == 8
    assert params["mem"] == "64GB" and params["time"] == 20 and params["additional_parameters"] == {"requeue": True}
    cpu = executor_params(spec_of(resources={"gpus_per_node": 0}).resources, opts, job_name="j", setup=[])
    assert cpu["ntasks_per_node"] == 1 and "gpus_per_node" not in cpu and "mem" not in cpu


HOSTILE = {"partition": "a b;rm -rf /", "account": "$(touch PWNED)", "qos": "`touch PWNED`",
           "constraint": "x'y\"z&&touch PWNED"}


def test_hostile_values_are_quoted(tmp_path: Path):
    """Every value reaches sbatch and bash as the same string, and nothing in it is executed."""
    root = str(tmp_path / "we ird $(touch PWNED) 'q" / "runs" / "golden")
    spec = spec_of({**HOSTILE, "extra": {"comment": "$(id); touch PWNED #"},
                    "setup": ["echo setup-line-ran"]})
    text = build(spec, root=root, array_size=2)
    flags = dict(re.findall(r"^#SBATCH --([a-z-]+)=(.*)$", text, re.MULTILINE))
    for key, value in HOSTILE.items():
        assert shlex.split(flags[key]) == [value], (key, flags[key])
    assert shlex.split(flags["comment"]) == ["$(id); touch PWNED #"]
    assert shlex.split(flags["output"]) == [f"{root}/.slurm/%A_%a/%A_%a_0_log.out"]
    command = text.split("# command\n", 1)[1].strip().splitlines()[-1]
    assert shlex.split(command)[-1] == f"{root}/.slurm/%j"  # the job folder, as one argument
    # Run the generated setup section for real: PYTHONPATH gets the path verbatim, nothing is substituted.
    setup = text.split("# setup\n", 1)[1].split("# command", 1)[0]
    probe = setup + '\nprintf "%s\\n" "$PYTHONPATH" "$GATESWEEP_GIT_SHA" "${MLFLOW_RUN_ID-unset}"\n'
    res = subprocess.run(["bash", "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                         env={"PATH": os.environ["PATH"], "MLFLOW_RUN_ID": "leaked"})
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["setup-line-ran", f"{root}/.snapshots/HASH", "0123abc-dirty", "unset"]
    assert not list(tmp_path.rglob("PWNED"))
    assert subprocess.run(["bash", "-n", "-c", text]).returncode == 0


@pytest.mark.parametrize("cli,spec_slurm,match", [
    ({"partition": "gpu\nrm -rf /"}, {}, r"golden.yaml with --partition: backend.slurm.partition: 'gpu\\nrm -rf /' "
                                        r"contains a control character"),
    ({}, {"account": "a\rb"}, r"golden.yaml: backend.slurm.account: 'a\\rb' contains a control character"),
    ({}, {"extra": {"comment": "x\ny"}}, r"backend.slurm.extra: 'x\\ny' contains a control character"),
    ({}, {"extra": {"x\nrm -rf /": 1}}, r"backend.slurm.extra: x\nrm -rf /: not an sbatch long option name"),
    ({}, {"extra": {"array": "0-3"}}, r"backend.slurm.extra: array: set by gatesweep; use backend.slurm.array_parallelism"),
    ({}, {"setup": ["ok", "bad\nline"]}, r"backend.slurm.setup: 'bad\\nline' contains a control character"),
    ({}, {"array_parallelism": 0}, r"backend.slurm.array_parallelism: expected an integer >= 1, got 0"),
    ({"timeout_min": "abc"}, {}, r"with --timeout-min: backend.slurm.timeout_min: expected an integer >= 1, got 'abc'"),
    ({}, {"signal_delay_s": 600}, r"signal_delay_s=600 is not below the time limit \(10 min\)"),
])
def test_bad_options_name_the_field_and_the_fix(cli, spec_slurm, match):
    """A bad backend.slurm value fails when the spec is loaded (every command), a bad --option when it is
    merged; both through the spec schema, both name the field."""
    with pytest.raises(GatesweepError, match=match):
        resolve_options(spec_of(spec_slurm, resources={"timeout_min": 10}), cli)


def test_every_bad_backend_value_is_reported_at_load_at_once():
    with pytest.raises(SpecError) as e:
        parse_spec(
            {"name": "g", "backend": {"slurm": {"timeout_min": "abc", "partition": ["a", "b"]},
                                      "ray": {"num_cpus": "lots"}}}, "s.yaml")
    assert str(e.value) == ("s.yaml: 3 problems: backend.slurm.partition: expected a string, got ['a', 'b']; "
                            "backend.slurm.timeout_min: expected an integer >= 1, got 'abc'; "
                            "backend.ray.num_cpus: expected an integer >= 0, got 'lots'")


def test_chunks_under_max_array_size_and_chained_arrays():
    assert chunks(5, 2) == [range(0, 2), range(2, 4), range(4, 5)]
    assert chunks(3, 1001) == [range(0, 3)]
    assert parse_max_array_size("Foo = 1\nMaxArraySize            = 1001\nMaxJobCount = 10\n") == 1001
    spec = spec_of({"array_parallelism": 2}, resources={"gpus_per_node": 2, "cpus_per_task": 1, "timeout_min": 10})
    trials = expand(spec)  # 3 gates x 2 seeds
    plans = plan_arrays(trials, resolve_options(spec, {}), job_name="j", setup=[], folder=Path("/R/.slurm/%j"),
                        python="/p", array_size=4)
    assert [len(p.trials) for p in plans] == [4, 2]
    assert [t.trial_id for p in plans for t in p.trials] == [t.trial_id for t in trials]
    assert "#SBATCH --array=0-3%2" in plans[0].text and "dependency" not in plans[0].text
    assert "#SBATCH --array=0-1%2" in plans[1].text
    assert f"#SBATCH --dependency={shlex.quote(DEPENDENCY_PLACEHOLDER)}" in plans[1].text


def test_gpu_hour_estimate_of_stage2():
    spec = load_spec(REPO / "sweeps" / "stage2.yaml")
    line = estimate_line(expand(spec), spec.estimate_ms_per_step)
    # 16 trials x 1 node x 8 GPUs x 800 iterations x 180 ms = 16 x 8 x 0.04 h
    assert line == ("estimate: 16 trials x 1 node(s) x 8 GPU(s) x 0.04 h (800 iterations x 180 ms/step, "
                    "estimate.ms_per_step) = 5.1 GPU-hours")
