"""Where a run's config comes from: preset < config file < study env vars < key=value."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.trainer_helpers import PYTHON, REPO, trainer_env
from trainer.config import TrainConfig
from trainer.errors import ConfigError
from trainer.overrides import resolve

ENV_CASES = [
    ("ATTNGATE", "elementwise", "attn_gate", "elementwise"),
    ("GATEPOS", "value", "gate_pos", "value"),
    ("GATEACT", "ns_sigmoid", "gate_act", "ns_sigmoid"),
    ("LR", "0.005", "learning_rate", 0.005),
    ("SEED", "7", "seed", 7),
    ("NUM_ITERATIONS", "6000", "num_iterations", 6000),
    ("WARMUP_ITERS", "100", "warmup_iters", 100),
    ("WARMDOWN_ITERS", "1000", "warmdown_iters", 1000),
    ("VAL_EVERY", "50", "val_every", 50),
]


@pytest.mark.parametrize("var,value,key,expected", ENV_CASES)
def test_each_env_var_maps_to_its_config_field(var: str, value: str, key: str, expected):
    cfg, _ = resolve([], {var: value})
    assert cfg.flat()[key] == expected
    assert type(cfg.flat()[key]) is type(expected)
    default = TrainConfig().flat()
    assert {k: v for k, v in cfg.flat().items() if k != key} == {k: v for k, v in default.items() if k != key}


def test_all_env_vars_together():
    cfg, _ = resolve([], {var: value for var, value, _, _ in ENV_CASES} | {"UNRELATED": "x", "LR_SCALE": "3"})
    for _, _, key, expected in ENV_CASES:
        assert cfg.flat()[key] == expected


@pytest.mark.parametrize("order", ["num_iterations first", "warmup first"])
def test_env_vars_are_validated_together_not_one_at_a_time(order: str):
    """warmup_iters <= num_iterations: from the tiny preset (200 iterations) WARMUP_ITERS=300 alone is
    invalid, together with NUM_ITERATIONS=1000 it is not - whatever the environment's order."""
    pairs = [("NUM_ITERATIONS", "1000"), ("WARMUP_ITERS", "300")]
    environ = dict(pairs if order == "num_iterations first" else pairs[::-1])
    cfg, _ = resolve(["preset=tiny"], environ)
    assert (cfg.run.num_iterations, cfg.optim.warmup_iters) == (1000, 300)
    # an env value is checked against the final config, which a key=value may complete
    cfg, _ = resolve(["preset=tiny", "num_iterations=1000"], {"WARMUP_ITERS": "300"})
    assert (cfg.run.num_iterations, cfg.optim.warmup_iters) == (1000, 300)


def test_warmdown_longer_than_the_run_is_allowed_like_the_reference():
    cfg, _ = resolve([], {"NUM_ITERATIONS": "800"})
    assert (cfg.run.num_iterations, cfg.optim.warmdown_iters) == (800, 1450)


@pytest.mark.parametrize("var,value,pattern", [
    ("ATTNGATE", "foo", r"environment variable ATTNGATE.*attn_gate='foo' is not one of none, headwise, "
                        r"elementwise, const"),
    ("ATTNGATE", "headwice", r"ATTNGATE.*did you mean 'headwise'"),
    ("LR", "abc", r"environment variable LR.*learning_rate='abc' is not a number; use e\.g\. learning_rate=0\.0036"),
    ("LR", "-1", r"environment variable LR.*learning_rate=-1\.0 must be > 0"),
    ("LR", "nan", r"environment variable LR.*learning_rate='nan' must be a finite number"),
    ("LR", "inf", r"environment variable LR.*learning_rate='inf' must be a finite number"),
    ("SEED", "1.5", r"environment variable SEED.*seed='1\.5' must be a whole number"),
    ("NUM_ITERATIONS", "many", r"environment variable NUM_ITERATIONS.*not an integer; use e\.g\. num_iterations=100"),
])
def test_invalid_env_values_name_the_variable_and_the_fix(var: str, value: str, pattern: str):
    with pytest.raises(ConfigError, match=pattern):
        resolve([], {var: value})


def test_cross_field_error_from_env_names_the_variable():
    with pytest.raises(ConfigError, match=r"^environment variable WARMUP_ITERS: warmup_iters=300 exceeds "
                                          r"num_iterations=200"):
        resolve(["preset=tiny"], {"WARMUP_ITERS": "300"})


def test_key_value_beats_env_and_env_beats_file(tmp_path: Path):
    f = tmp_path / "c.yaml"
    f.write_text("learning_rate: 0.001\nseed: 3\nattn_gate: const\n")
    cfg, _ = resolve([str(f), "learning_rate=0.01"], {"LR": "0.5", "SEED": "4"})
    assert (cfg.optim.learning_rate, cfg.run.seed, cfg.model.attn_gate) == (0.01, 4, "const")
    # a key=value that fails still fails even when the env gives a good value
    with pytest.raises(ConfigError, match="command line.*seed='x'"):
        resolve(["seed=x"], {"SEED": "4"})


def test_empty_env_values_are_ignored():
    cfg, _ = resolve([], {"LR": "", "ATTNGATE": ""})
    assert cfg == TrainConfig()


@pytest.mark.parametrize("arg,pattern", [
    ("learning_rat=0.1", r"unknown key 'learning_rat'; did you mean 'learning_rate'"),
    ("optim.learning_rat=0.1", r"unknown key 'optim.learning_rat'; did you mean 'learning_rate'"),
    ("model.learning_rate=0.1", r"unknown key 'model.learning_rate'"),
    ("atn_gate=headwise", r"did you mean 'attn_gate'"),
    ("zzzz=1", r"unknown key 'zzzz'; run `gatesweep train --help-config`"),
])
def test_unknown_keys_suggest_the_close_match(arg: str, pattern: str):
    with pytest.raises(ConfigError, match=pattern):
        resolve([arg], {})


def test_yaml_with_flat_keys_and_with_sections(tmp_path: Path):
    flat = tmp_path / "flat.yaml"
    flat.write_text("preset: tiny\nattn_gate: headwise\nlearning_rate: 0.01\nnum_iterations: 120\nnotes: 'yes'\n")
    sections = tmp_path / "sections.yaml"
    sections.write_text("preset: tiny\nmodel:\n  attn_gate: headwise\noptim:\n  learning_rate: 0.01\n"
                        "run:\n  num_iterations: 120\n  notes: 'yes'\n")
    a, _ = resolve([str(flat)], {})
    b, _ = resolve([str(sections)], {})
    assert a == b
    assert (a.model.n_embd, a.model.attn_gate, a.optim.learning_rate, a.run.num_iterations) == (128, "headwise", 0.01,
                                                                                                120)
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  learning_rate: 0.01\n")
    with pytest.raises(ConfigError, match=rf"{bad}: unknown key 'model.learning_rate'"):
        resolve([str(bad)], {})


def test_trial_json_gives_config_and_metadata(tmp_path: Path):
    f = tmp_path / "trial.json"
    f.write_text('{"config": {"preset": "tiny", "seed": 5}, "trial": {"trial_id": "abc123", "stage": "stage1"}}')
    cfg, meta = resolve([str(f)], {})
    assert cfg.run.seed == 5 and cfg.model.n_layer == 2
    assert meta == {"trial_id": "abc123", "stage": "stage1"}


def test_string_fields_keep_the_text_given_on_the_command_line():
    cfg, _ = resolve(["run_id=0123", "notes=yes", "compile=on"], {})
    assert (cfg.run.run_id, cfg.run.notes, cfg.run.compile) == ("0123", "yes", "on")
    cfg, _ = resolve(["compile=false"], {})
    assert cfg.run.compile == "off"


def test_bad_env_value_end_to_end_exits_2_with_one_line_and_writes_nothing(tmp_path: Path):
    out = tmp_path / "out"
    proc = subprocess.run([PYTHON, "-m", "trainer", "preset=tiny", f"out_dir={out}",
                           f"results_csv={out / 'results.csv'}"], cwd=tmp_path,
                          env=trainer_env(ATTNGATE="gated", PYTHONPATH=str(REPO)),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: environment variable ATTNGATE") and "attn_gate='gated'" in lines[0]
    assert list(tmp_path.iterdir()) == []  # no out_dir, no logs, no track record
