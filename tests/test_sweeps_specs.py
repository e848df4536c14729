"""Specs, pure: every shipped spec loads and expands to the study's trial counts; trial ids are stable,
order-independent and change exactly with the trial's math; bad specs fail with exact messages that
name the file, the field and the valid options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sweeps.errors import SpecError
from sweeps.expand import expand
from sweeps.spec import apply_spec_overrides, load_spec
from trainer.config import CHOICES, FIELD_SECTION, NON_IDENTITY_KEYS, TrainConfig, trial_identity
from trainer.errors import ConfigError

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"
STUDY_COUNTS = {"stage1": 10, "stage2": 16, "stage2_5": 4, "stage3": 7, "demo": 10, "offline_stage1": 15}
SHIPPED = sorted(p.stem for p in SWEEPS.glob("*.yaml"))

# stage1 as the study ran it (reference config, 1500 iterations, LR 0.0036, seeds 1337/1338): pinned so
# that a change to the identity or the hash cannot silently orphan the study's finished runs.
STAGE1_GOLDEN = [
    ("00d8a9742391", "attn_gate=none", 1337), ("92c0eaf0fdd5", "attn_gate=headwise", 1337),
    ("7115b195c42d", "attn_gate=elementwise", 1337), ("82f199f4763a", "attn_gate=const", 1337),
    ("8f0c78eeeb97", "attn_gate=headwise gate_act=ns_sigmoid", 1337),
    ("d25b39a73950", "attn_gate=none", 1338), ("809c6749c371", "attn_gate=headwise", 1338),
    ("e4c4b5131c72", "attn_gate=elementwise", 1338), ("d560c8a85be5", "attn_gate=const", 1338),
    ("edee6a6aa964", "attn_gate=headwise gate_act=ns_sigmoid", 1338),
]


def test_the_study_specs_are_all_shipped():
    assert set(STUDY_COUNTS) <= set(SHIPPED), SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_spec_loads_and_expands(name: str):
    """Including specs added later (lr_search): each loads, expands, and its ids are unique."""
    spec = load_spec(SWEEPS / f"{name}.yaml")
    trials = expand(spec)
    if name in STUDY_COUNTS:
        assert len(trials) == STUDY_COUNTS[name]
    assert trials, name
    assert len({t.trial_id for t in trials}) == len(trials)
    assert [t.index for t in trials] == list(range(len(trials)))
    assert all(t.stage == spec.stage and t.spec == spec.name for t in trials)
    assert all(t.config.run.seed == t.seed and t.seed in spec.seeds + sum((p.seeds or () for p in spec.include), ())
               for t in trials)


def test_stage1_golden_ids_and_seed_major_order():
    trials = expand(load_spec(SWEEPS / "stage1.yaml"))
    assert [(t.trial_id, t.label, t.seed) for t in trials] == STAGE1_GOLDEN
    assert all(t.config.optim.learning_rate == 0.0036 and t.config.run.num_iterations == 1500 for t in trials)


def test_every_shipped_spec_keeps_its_trial_ids():
    """tests/golden/spec_trial_ids.json was written before the fast paths became the trainer's
    defaults and the specs' own fused_proj/ce_chunks/muon_batched lines were dropped: those keys are
    outside the identity, so every trial keeps its id (and its finished runs)."""
    golden = json.loads((Path(__file__).parent / "golden" / "spec_trial_ids.json").read_text())
    assert sorted(golden) == SHIPPED
    for name in SHIPPED:
        trials = expand(load_spec(SWEEPS / f"{name}.yaml"))
        assert [[t.trial_id, t.label, t.seed] for t in trials] == golden[name], name
        assert {(t.config.model.fused_proj, t.config.model.ce_chunks, t.config.optim.muon_batched)
                for t in trials} == {(True, 8, True)}, name


def test_stage_specs_match_the_study_design():
    s2 = expand(load_spec(SWEEPS / "stage2.yaml"))
    assert {(t.config.optim.learning_rate, t.config.model.attn_gate) for t in s2} == {
        (lr, g) for lr in (0.0036, 0.00396, 0.00432, 0.00468) for g in ("none", "elementwise")}
    # chained LR without a tracking store: the study's fallback
    assert {t.config.optim.learning_rate for t in expand(load_spec(SWEEPS / "stage2_5.yaml"))} == {0.00468}
    s3 = expand(load_spec(SWEEPS / "stage3.yaml"))
    baseline = [t for t in s3 if t.config.optim.learning_rate == 0.0036]
    assert [(t.config.model.attn_gate, t.seed) for t in baseline] == [("none", 1337)]
    assert all(t.config.run.num_iterations == 5100 for t in s3)


def test_ids_are_the_same_across_expansions_and_dict_orders(tmp_path: Path):
    path = SWEEPS / "demo.yaml"
    first = [t.trial_id for t in expand(load_spec(path))]
    assert first == [t.trial_id for t in expand(load_spec(path))]
    data = yaml.safe_load(path.read_text())
    shuffled = {k: (dict(reversed(list(v.items()))) if isinstance(v, dict) else v) for k, v in reversed(data.items())}
    other = tmp_path / "demo.yaml"
    other.write_text(yaml.safe_dump(shuffled, sort_keys=False))
    assert list(yaml.safe_load(other.read_text())["base"])[0] == "val_files"  # really reordered
    by_design = {(t.label, t.seed): t.trial_id for t in expand(load_spec(other))}
    assert by_design == {(t.label, t.seed): t.trial_id for t in expand(load_spec(path))}


def _other_value(key: str, value: object) -> list[object]:
    """Candidate values for `key` different from `value`; the first valid one is used."""
    if key in CHOICES:
        return [c for c in CHOICES[key] if c != value]
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [v for v in (value * 2, value + 2, value + 1, value // 2) if v != value]
    if isinstance(value, float):
        return [v for v in (value * 0.5, value + 0.01) if v != value]
    return [f"{value}.other"]


IDENTITY_KEYS = sorted(set(trial_identity(TrainConfig())) - {"seed"})  # seeds: see below


@pytest.fixture(scope="module")
def demo_spec():
    return load_spec(SWEEPS / "demo.yaml")


@pytest.mark.parametrize("key", IDENTITY_KEYS)
def test_id_changes_with_every_identity_key(demo_spec, key: str):
    base = expand(demo_spec)[0]
    current = base.config.flat()[key]
    # a key of the design (a grid axis, an include point's key) changes through its axis: grid.KEY=...
    design = set(dict(demo_spec.grid)) | {k for p in demo_spec.include for k in p.as_dict()}
    for value in _other_value(key, current):
        spec, cfg = apply_spec_overrides(demo_spec, {f"grid.{key}" if key in design else key: value})
        try:
            changed = expand(spec, overrides=cfg)[0]
        except SpecError:
            continue  # e.g. n_head that no longer divides n_embd; try the next value
        assert changed.config.flat()[key] == value
        assert changed.trial_id != base.trial_id, (key, current, value)
        return
    raise AssertionError(f"no valid alternative value for {key}={current!r}")


def test_id_changes_with_the_seed_which_only_seeds_sets(demo_spec):
    ids = {t.seed: t.trial_id for t in expand(demo_spec) if t.label == "attn_gate=none"}
    assert len(ids) == 2 and len(set(ids.values())) == 2
    spec, _ = apply_spec_overrides(demo_spec, {"seeds": "0,7"})
    again = {t.seed: t.trial_id for t in expand(spec) if t.label == "attn_gate=none"}
    assert again[0] == ids[0] and again[7] not in ids.values()
    # a `seed` value would be overwritten by every trial's own seed: refused, pointing at `seeds`
    with pytest.raises(SpecError, match=r"^command line: seed: a trial's seed comes from the top-level `seeds` list"):
        apply_spec_overrides(demo_spec, {"seed": 5})


@pytest.mark.parametrize("key,value", [("out_dir", "elsewhere"), ("compile", "on"), ("compile_mode", "model"),
                                       ("run_id", "abc"), ("results_csv", "experiments/x.csv"), ("notes", "n"),
                                       ("checkpoint_every", 7), ("log_every", 3), ("device", "cpu"),
                                       ("fused_proj", False), ("ce_chunks", 4), ("muon_batched", False),
                                       ("fast", False), ("gate_gemm", "fused_pad64"),
                                       ("inductor_mode", "max-autotune-no-cudagraphs"),
                                       ("compile_cache", "/x/megacache.bin"), ("save_compile_cache", "/y.bin")])
def test_id_ignores_run_infrastructure_keys(demo_spec, key: str, value: object):
    assert key in NON_IDENTITY_KEYS and FIELD_SECTION[key]
    spec, cfg = apply_spec_overrides(demo_spec, {key: value})
    before, after = expand(demo_spec), expand(spec, overrides=cfg)
    assert [t.config.flat()[key] for t in after] == [value] * len(after)
    assert [t.trial_id for t in after] == [t.trial_id for t in before]


def test_spec_level_overrides_do_not_change_ids(demo_spec):
    spec, cfg = apply_spec_overrides(demo_spec, {"resources.gpus_per_node": 8, "tracking.experiment": "elsewhere",
                                                 "backend.local.max_parallel": 4, "estimate.ms_per_step": 3})
    assert cfg == {} and spec.experiment == "elsewhere" and spec.resources.gpus_per_node == 8
    assert [t.trial_id for t in expand(spec)] == [t.trial_id for t in expand(demo_spec)]
    spec, _ = apply_spec_overrides(demo_spec, {"seeds": "5,6,7"})
    assert sorted({t.seed for t in expand(spec)}) == [5, 6, 7] and len(expand(spec)) == 15


def test_nested_backend_overrides_merge_into_the_spec(demo_spec):
    """backend.slurm.extra.<option>=... adds an sbatch option beside the spec's own extras."""
    spec, _ = apply_spec_overrides(demo_spec, {"backend.slurm.extra.mail-type": "END"})
    spec, _ = apply_spec_overrides(spec, {"backend.slurm.extra.exclusive": True, "backend.slurm.partition": "gpu"})
    assert spec.backend["slurm"]["extra"] == {"mail-type": "END", "exclusive": True}
    assert spec.backend["slurm"]["partition"] == "gpu"
    assert "extra" not in (demo_spec.backend.get("slurm") or {})  # the original spec is untouched


# ---------------------------------------------------------------- bad specs -> exact messages
OK = "name: t\n"
BAD_SPECS = {
    "unknown_top_key": ("name: t\ngird: {attn_gate: [none]}\n",
                        "gird: unknown key (did you mean 'grid'?); valid keys: name, stage, description, base, grid, "
                        "include, exclude, seeds, resources, tracking, backend, estimate, search"),
    "unknown_trainer_key": ("name: t\nbase: {learnin_rate: 0.1}\n",
                            "base.learnin_rate: unknown trainer config key (did you mean 'learning_rate'?); see "
                            "trainer/config.py for the keys"),
    "unknown_key_in_grid": ("name: t\ngrid: {attn_gat: [none]}\n",
                            "grid.attn_gat[0]: unknown trainer config key (did you mean 'attn_gate'?); see "
                            "trainer/config.py for the keys"),
    "int_type": ("name: t\nbase: {num_iterations: abc}\n",
                 "base.num_iterations: num_iterations='abc' is not an integer; use e.g. num_iterations=100"),
    "float_type": ("name: t\nbase: {learning_rate: fast}\n",
                   "base.learning_rate: learning_rate='fast' is not a number; use e.g. learning_rate=0.0036"),
    "float_not_finite": ("name: t\ngrid: {learning_rate: [0.0036, .nan]}\n",
                         "grid.learning_rate[1]: learning_rate=nan must be a finite number, not nan"),
    "bool_type": ("name: t\nbase: {save_final: maybe}\n",
                  "base.save_final: save_final='maybe' is not a boolean; use true or false"),
    "int_is_not_bool": ("name: t\nbase: {num_iterations: true}\n",
                        "base.num_iterations: num_iterations=True must be an integer, not a boolean"),
    "unknown_gate": ("name: t\ngrid: {attn_gate: [none, gated]}\n",
                     "grid.attn_gate[1]: attn_gate='gated' is not one of none, headwise, elementwise, const"),
    "gate_typo": ("name: t\nbase: {attn_gate: headwize}\n",
                  "base.attn_gate: attn_gate='headwize' is not one of none, headwise, elementwise, const; "
                  "did you mean 'headwise'?"),
    "gate_act": ("name: t\nbase: {gate_act: relu}\n",
                 "base.gate_act: gate_act='relu' is not one of sigmoid, ns_sigmoid"),
    "empty_axis": ("name: t\ngrid: {attn_gate: []}\n",
                   "grid.attn_gate: expected a non-empty list of values, got []"),
    "scalar_axis": ("name: t\ngrid: {attn_gate: none}\n",
                    "grid.attn_gate: expected a non-empty list of values, got 'none'"),
    "grid_not_mapping": ("name: t\ngrid: [none, headwise]\n",
                         "grid: expected a mapping, got list ['none', 'headwise']"),
    "negative_seed": ("name: t\nseeds: [0, -1]\n", "seeds[1]: expected an integer >= 0, got -1"),
    "duplicate_seeds": ("name: t\nseeds: [1, 1]\n", "seeds: duplicate seeds in [1, 1]"),
    "seed_count_zero": ("name: t\nseeds: 0\n", "seeds: expected an integer >= 1, got 0"),
    "seeds_text": ("name: t\nseeds: abc\n", "seeds: expected a non-empty list of integers or a count, got 'abc'"),
    "seed_float": ("name: t\nseeds: [1.5]\n", "seeds[0]: expected an integer >= 0, got 1.5"),
    "bad_backend": ("name: t\nbackend: {default: kubernetes}\n",
                    "backend.default: 'kubernetes' is not one of local, slurm, ray"),
    "backend_typo": ("name: t\nbackend: {slurm: {partiton: gpu}}\n",
                     "backend.slurm.partiton: unknown key (did you mean 'partition'?); valid keys: partition, account, "
                     "qos, constraint, timeout_min, array_parallelism, max_requeues, max_array_size, signal_delay_s, "
                     "extra, setup, node_jobs, node_gpus"),
    "max_parallel_zero": ("name: t\nbackend: {local: {max_parallel: 0}}\n",
                          "backend.local.max_parallel: expected an integer >= 1, got 0"),
    "max_parallel_text": ("name: t\nbackend: {local: {max_parallel: many}}\n",
                          "backend.local.max_parallel: expected an integer >= 1, got 'many'"),
    "resources_typo": ("name: t\nresources: {gpus_per_nod: 8}\n",
                       "resources.gpus_per_nod: unknown key (did you mean 'gpus_per_node' or 'cpus_per_task'?); "
                       "valid keys: nodes, gpus_per_node, cpus_per_task, mem_gb, timeout_min"),
    "resources_zero_nodes": ("name: t\nresources: {nodes: 0}\n", "resources.nodes: expected an integer >= 1, got 0"),
    "tracking_typo": ("name: t\ntracking: {experimnt: x}\n",
                      "tracking.experimnt: unknown key (did you mean 'experiment'?); valid keys: experiment"),
    "experiment_not_string": ("name: t\ntracking: {experiment: [a]}\n",
                              "tracking.experiment: expected an MLflow experiment name (a string), got ['a']"),
    "include_not_list": ("name: t\ninclude: {attn_gate: none}\n",
                         "include: expected a list of design points (- {attn_gate: headwise}), got dict"),
    "include_typo": ("name: t\ninclude: [{attn_gat: none}]\n",
                     "include[0].attn_gat: unknown trainer config key (did you mean 'attn_gate'?); see "
                     "trainer/config.py for the keys"),
    "exclude_bad_gate": ("name: t\nexclude: [{attn_gate: gated}]\n",
                         "exclude[0].attn_gate: attn_gate='gated' is not one of none, headwise, elementwise, const"),
    "bad_preset": ("name: t\nbase: {preset: huge}\n", "base.preset: 'huge' is not one of reference, tiny"),
    "no_name": ("stage: x\n", "name: required: letters, digits, '_', '.', '-' (got None)"),
    "name_with_shell": ("name: 'a; rm -rf ~'\n", "name: required: letters, digits, '_', '.', '-' (got 'a; rm -rf ~')"),
    "top_level_list": ("- a\n- b\n", "(top level): expected a mapping, got list ['a', 'b']"),
    "estimate": ("name: t\nestimate: {ms_per_step: -1}\n", "estimate.ms_per_step: expected a positive number, got -1"),
    "malformed_yaml": ("name: t\nbase:\n  lr: [1, 2\n  x: 3\n",
                       "malformed YAML (line 4, column 4): expected ',' or ']', but got ':'; fix the syntax"),
    "tab_indent": ("name: t\nbase:\n\tpreset: tiny\n",
                   "malformed YAML (line 3, column 1): found character '\\t' that cannot start any token; fix the syntax"),
    "python_tag": ("name: t\nbase: !!python/object:collections.OrderedDict {}\n",
                   "unsupported YAML tag (line 2, column 7): could not determine a constructor for the tag "
                   "'tag:yaml.org,2002:python/object:collections.OrderedDict'; a spec is plain data (mappings, lists, "
                   "strings, numbers): remove the tag"),
    "seed_in_grid": ("name: t\ngrid: {seed: [0, 1, 2]}\n",
                     "grid.seed[0]: a trial's seed comes from the top-level `seeds` list; write seeds: [0, 1] "
                     "(on the command line seeds=0,1)"),
    "chain_without_from": ("name: t\nbase: {learning_rate: {select: best}}\n",
                           "base.learning_rate: a chained value needs `from: <stage>` (e.g. {from: stage2, select: best, "
                           "metric: final_val_loss, where: {attn_gate: elementwise}})"),
    "chain_select": ("name: t\nbase: {learning_rate: {from: stage2, select: median}}\n",
                     "base.learning_rate.select: 'median' is not one of best, worst"),
    "chain_from_not_a_stage": ("name: t\nbase: {learning_rate: {from: \"x' or tags.stage != '\"}}\n",
                               "base.learning_rate.from: expected a stage name (letters, digits, '_', '.', '-'), "
                               "got \"x' or tags.stage != '\""),
    # checks across keys run on the resolved trial; the message names the design point
    "lr_zero": ("name: t\nbase: {learning_rate: 0}\n",
                " (base): learning_rate=0.0 must be > 0 (the study uses 0.0036)"),
    "lr_negative_in_grid": ("name: t\ngrid: {learning_rate: [0.1, -0.1]}\n",
                            " (learning_rate=-0.1): learning_rate=-0.1 must be > 0 (the study uses 0.0036)"),
    "batch_not_multiple": ("name: t\nbase: {preset: tiny, batch_size: 10, device_batch_size: 4}\n",
                           " (base): batch_size=10 is not a multiple of device_batch_size=4"),
    "heads_do_not_divide": ("name: t\nbase: {n_embd: 100, n_head: 3}\n",
                            " (base): n_embd=100 is not divisible by n_head=3; choose n_embd as a multiple of n_head"),
    "chain_missing_stage": ("name: t\nbase: {learning_rate: {from: nostage}}\n",
                            ": learning_rate: chained from stage 'nostage' but no tracking store was consulted and no "
                            "fallback is given; run `gatesweep plan` with MLFLOW_TRACKING_URI set or override "
                            "learning_rate=..."),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_spec_message(tmp_path: Path, case: str):
    text, expected = BAD_SPECS[case]
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as err:
        expand(load_spec(path))
    msg = str(err.value)
    assert msg == f"{path}{'' if expected.startswith((' ', ':')) else ': '}{expected}"
    assert "\n" not in msg


def test_python_tag_runs_nothing(tmp_path: Path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "spec.yaml"
    path.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(SpecError, match="unsupported YAML tag .*python/object/apply:os.system.*remove the tag"):
        load_spec(path)
    assert not marker.exists()


def test_missing_spec_file_points_at_the_shipped_one(tmp_path: Path):
    with pytest.raises(SpecError) as err:
        load_spec(tmp_path / "stage1.yaml")
    assert str(err.value) == f"{tmp_path / 'stage1.yaml'}: spec file not found; did you mean {SWEEPS / 'stage1.yaml'}?"


@pytest.mark.parametrize("overrides,expected", [
    ({"learnin_rate": 0.1}, "command line: learnin_rate: unknown trainer config key (did you mean 'learning_rate'?); "
                            "see trainer/config.py for the keys"),
    ({"attn_gate": "gated"}, "command line: attn_gate: attn_gate='gated' is not one of none, headwise, elementwise, const"),
    ({"seeds": "1,x"}, "command line: seeds: '1,x' is not a comma-separated list of integers (e.g. seeds=0,1)"),
    ({"resources.gpu_per_node": 2}, "command line: resources.gpu_per_node: unknown key (did you mean "
                                    "'gpus_per_node'?); valid keys: nodes, gpus_per_node, cpus_per_task, mem_gb, timeout_min"),
    ({"backend.local.max_parallel": 0}, "command line: backend.local.max_parallel: expected an integer >= 1, got 0"),
    ({"backend.default": "k8s"}, "command line: backend.default: 'k8s' is not one of local, slurm, ray"),
    ({"estimate.ms_per_step": "fast"}, "command line: estimate.ms_per_step: expected a positive number, "
                                       "got 'fast'"),
    ({"tracking.experimnt": "x"}, "command line: tracking.experimnt: unknown key (did you mean 'experiment'?); "
                                  "valid keys: experiment"),
])
def test_bad_command_line_overrides(demo_spec, overrides: dict, expected: str):
    with pytest.raises((SpecError, ConfigError)) as err:
        apply_spec_overrides(demo_spec, overrides)
    assert str(err.value) == expected
