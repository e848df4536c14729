"""Sequential seeds and time budgets in a spec (pure): parsing, validation messages, looks, the
comparisons with their baselines, and time_of's per-design-point value from source runs."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from sweeps.errors import SpecError
from sweeps.expand import expand
from sweeps.sequential import Sequential, baseline_pairs
from sweeps.spec import apply_spec_overrides, parse_spec
from sweeps.time_of import TimeOf, budget_value
from trainer.clock import WARMUP

SEQ = "{initial: [1337, 1338], add: [2337, 3337, 4337, 5337, 6337, 7337], max: 8, stop: {p_adj: 0.05}}"


def spec(text: str, **kw: Any):
    doc = {"name": "s", "base": {"preset": "tiny"}, "grid": {"attn_gate": ["none", "headwise", "const"]}} | kw
    doc["seeds"] = yaml.safe_load(text) if isinstance(text, str) else text
    return parse_spec(doc, "specs/s.yaml")


def test_a_sequential_spec_plans_looks_and_its_seeds_up_to_max():
    s = spec(SEQ)
    assert s.sequential == Sequential(initial=2, max=8, per_look=2, alpha=0.05, spending="obf")
    assert s.sequential.looks == (2, 4, 6, 8)
    assert s.seeds == (1337, 1338, 2337, 3337, 4337, 5337, 6337, 7337)
    odd = spec("{initial: [1, 2, 3], add: [4, 5, 6, 7, 8], max: 7, per_look: 3, stop: {p_adj: 0.1, spending: pocock}}")
    assert odd.sequential.looks == (3, 6, 7) and odd.seeds == (1, 2, 3, 4, 5, 6, 7)
    assert (odd.sequential.alpha, odd.sequential.spending) == (0.1, "pocock")
    assert spec("{initial: [1, 2, 3, 4], add: [5, 6], max: 6}").sequential.looks == (4, 6)  # the last look: the rest
    assert spec("[0, 1]").sequential is None  # a list stays the fixed design


def test_expansion_is_seed_major_so_a_looks_trials_are_a_prefix_per_configuration():
    trials = expand(spec(SEQ))
    assert len(trials) == 3 * 8
    assert [t.seed for t in trials[:6]] == [1337] * 3 + [1338] * 3
    assert [t.label for t in trials[:3]] == ["attn_gate=none", "attn_gate=headwise", "attn_gate=const"]


@pytest.mark.parametrize(("seeds", "message"), [
    ("{initial: [1], add: [2, 3], max: 3}", "seeds.initial: expected a list of at least 2 seeds (the paired t-test"),
    ("{initial: [1, 2], add: [2, 3], max: 4}", "seeds: seed(s) [2] appear twice in initial + add; every seed once"),
    ("{initial: [1, 2], add: [3, 4]}", "seeds.max: required: the most seeds a configuration may get (e.g. max: 4)"),
    ("{initial: [1, 2], add: [3, 4], max: 5}", "seeds.max: 5 exceeds the 4 seeds of initial + add; add seeds to `add`"),
    ("{initial: [1, 2], add: [3, 4], max: 2}", "seeds.max: 2 leaves no look after the 2 initial seeds: nothing "
                                               "sequential; raise max above 2 or write seeds as a plain list"),
    ("{initial: [1, 2], add: [3], max: 3, per_look: 0}", "seeds.per_look: expected an integer >= 1, got 0"),
    ("{initial: [1, 2], add: [3, 4], max: 4, stop: {p_adj: 1.5}}", "seeds.stop.p_adj: expected a familywise level "
                                                                   "between 0 and 1 (e.g. 0.05), got 1.5"),
    ("{initial: [1, 2], add: [3, 4], max: 4, stop: {p_adj: 0.05, spending: linear}}",
     "seeds.stop.spending: 'linear' is not one of obf, pocock"),
    ("{initial: [1, 2], add: [3, 4], max: 4, stop: {alpha: 0.05}}", "seeds.stop.alpha: unknown key; valid keys: p_adj"),
    ("{initial: [1, 2], extra: [3, 4], max: 4}", "seeds.extra: unknown key; valid keys: initial, add, max"),
])
def test_bad_sequential_seeds_name_the_field_and_the_fix(seeds: str, message: str):
    with pytest.raises(SpecError) as e:
        spec(seeds)
    assert str(e.value).startswith("specs/s.yaml: "), e.value
    assert message in str(e.value), e.value


def test_a_sequential_spec_needs_a_baseline_for_every_gated_point():
    with pytest.raises(SpecError, match=r"specs/s.yaml: seeds: sequential seeds compare each gated design point with "
                                        r"the attn_gate: none point of the same other keys, and attn_gate=headwise "
                                        r"learning_rate=0.03 has none; add that baseline point"):
        spec(SEQ, grid={"attn_gate": ["none"], "learning_rate": [0.02]},
             include=[{"attn_gate": "headwise", "learning_rate": 0.03}])
    with pytest.raises(SpecError, match="this spec has no gated design point"):
        spec(SEQ, grid={"attn_gate": ["none"]})
    spec(SEQ, grid={"attn_gate": ["none", "headwise"], "learning_rate": [0.02, 0.03]})  # one baseline per LR


def test_sequential_seeds_refuse_per_point_seeds_and_a_search():
    with pytest.raises(SpecError, match=r"include\[0\].seeds: a design point's own seeds do not mix with sequential"):
        spec(SEQ, include=[{"attn_gate": "elementwise", "seeds": [1, 2]}])
    with pytest.raises(SpecError, match="seeds: sequential seeds decide the spec's design points; a `search:` block"):
        spec(SEQ, search={"space": {"learning_rate": {"loguniform": [0.001, 0.1]}}})


def test_a_seeds_override_makes_it_a_fixed_design():
    s, _ = apply_spec_overrides(spec(SEQ), {"seeds": "1337,1338"})
    assert s.sequential is None and s.seeds == (1337, 1338)


def test_baselines_agree_on_the_other_keys_and_prefer_the_same_gate_position():
    points = [{"attn_gate": "none", "learning_rate": 1}, {"attn_gate": "headwise", "learning_rate": 1},
              {"attn_gate": "headwise", "learning_rate": 2}, {"attn_gate": "none", "learning_rate": 2},
              {"attn_gate": "none", "gate_pos": "value", "learning_rate": 2},
              {"attn_gate": "elementwise", "gate_pos": "value", "learning_rate": 2},
              {"attn_gate": "const", "learning_rate": 3}]
    assert baseline_pairs(points, {}) == {1: 0, 2: 3, 5: 4, 6: None}
    # the gate from the base config counts: here every point without attn_gate is gated
    assert baseline_pairs([{"learning_rate": 1}, {"learning_rate": 1, "attn_gate": "none"}],
                          {"attn_gate": "headwise"}) == {0: 1}


# ---------------------------------------------------------------- time_of
def run(gate: str, train_ms: float, ms_step: float, status: str = "FINISHED", tid: str = "") -> dict[str, Any]:
    return {"params": {"attn_gate": gate, "gate_pos": "sdpa", "gate_act": "sigmoid", "num_iterations": "1010"},
            "metrics": {"train_time_ms": train_ms, "ms_per_step": ms_step}, "status": status, "trial_id": tid or gate}


SOURCE = [run("none", 180_000, 180.0), run("none", 182_000, 182.0), run("headwise", 190_000, 190.0),
          run("headwise", 192_000, 192.0), run("elementwise", 200_000, 200.0, status="FAILED")]
GATES = {"gate_pos": "sdpa", "gate_act": "sigmoid"}
BUDGET = TimeOf(source="stage3")


def test_time_of_gives_each_gate_the_baselines_wall_clock():
    value, note = budget_value(SOURCE, BUDGET, "num_iterations", GATES | {"attn_gate": "headwise"})
    assert value == round(181_000 / 191.0) + WARMUP == 958
    assert note == ("num_iterations=958 for attn_gate=headwise gate_act=sigmoid gate_pos=sdpa: budget 181.0 s (mean "
                    "train_time_ms of 2 run(s) with attn_gate=none in stage 'stage3') / 191.00 ms/step (mean "
                    "ms_per_step of 2 run(s) with attn_gate=headwise gate_act=sigmoid gate_pos=sdpa) + 10 untimed steps")
    # the baseline gets back its own length: train_time counts N - 10 steps at ms_per_step
    assert budget_value(SOURCE, BUDGET, "num_iterations", GATES | {"attn_gate": "none"})[0] == 1010


def test_time_of_refuses_a_point_without_source_runs_unless_given_its_ms_per_step():
    point = GATES | {"attn_gate": "elementwise"}  # its only source run failed
    with pytest.raises(SpecError, match=r"num_iterations: time_of stage 'stage3' has no finished runs with "
                                        r"attn_gate=elementwise gate_act=sigmoid gate_pos=sdpa to measure its ms/step; "
                                        r"run that configuration in stage 'stage3', give its measured ms/step as "
                                        r"time_of.fallback_ms: <ms>, or override num_iterations=..."):
        budget_value(SOURCE, BUDGET, "num_iterations", point)
    value, note = budget_value(SOURCE, TimeOf(source="stage3", fallback_ms=200.0), "num_iterations", point)
    assert value == round(181_000 / 200.0) + WARMUP and "(time_of.fallback_ms)" in note


def test_time_of_refuses_an_incomplete_or_empty_source():
    with pytest.raises(SpecError, match=r"which is incomplete \(1 of 6 runs queued, running or killed\)"):
        budget_value(SOURCE + [run("none", 1, 1, status="RUNNING")], BUDGET, "num_iterations", GATES)
    with pytest.raises(SpecError, match="time_of stage 'stage3', which has no runs in the tracking store"):
        budget_value([], BUDGET, "num_iterations", GATES)
    assert budget_value([], TimeOf(source="stage3", fallback=900), "num_iterations", GATES)[0] == 900
    with pytest.raises(SpecError, match="has no finished runs with attn_gate=const and a train_time_ms"):
        budget_value(SOURCE, TimeOf(source="stage3", where=(("attn_gate", "const"),)), "num_iterations", GATES)


@pytest.mark.parametrize(("value", "message"), [
    ({"time_of": {"stage": "stage3"}}, None),
    ({"time_of": {"where": {"attn_gate": "none"}}}, "base.num_iterations.time_of.stage: required: the stage whose "
                                                    "measured time sets the budget"),
    ({"time_of": {"stage": "s3", "fallback_ms": 0}}, "base.num_iterations.time_of.fallback_ms: expected a positive "
                                                     "ms/step, got 0"),
    ({"time_of": {"stage": "s3", "budget": 1}}, "base.num_iterations.time_of.budget: unknown key; valid keys: stage"),
    ({"time_of": {"stage": "s3"}, "from": "s2"}, "base.num_iterations: write the budget as {time_of: {stage: S"),
])
def test_time_of_is_validated_at_load(value: dict, message: str | None):
    doc = {"name": "s", "base": {"preset": "tiny", "num_iterations": value}, "grid": {"attn_gate": ["none"]}}
    if message is None:
        assert parse_spec(doc, "specs/s.yaml").base_dict["num_iterations"] == TimeOf(source="stage3")
        return
    with pytest.raises(SpecError) as e:
        parse_spec(doc, "specs/s.yaml")
    assert str(e.value).startswith("specs/s.yaml: " + message.split(":")[0]), e.value
    assert message in str(e.value), e.value


def test_time_of_sets_only_num_iterations():
    doc = {"name": "s", "base": {"preset": "tiny", "warmdown_iters": {"time_of": {"stage": "s3"}}}}
    with pytest.raises(SpecError, match="base.warmdown_iters: time_of sets num_iterations from a measured time budget"):
        parse_spec(doc, "specs/s.yaml")


def test_expansion_resolves_time_of_per_design_point_and_keeps_the_notes():
    doc = {"name": "s", "base": {"preset": "tiny", "num_iterations": {"time_of": {"stage": "stage3"}},
                                 "warmdown_iters": 60},
           "grid": {"attn_gate": ["none", "headwise"]}, "seeds": [0, 1]}
    notes: list[str] = []
    calls: list[dict] = []

    def resolver(t: TimeOf, key: str, values: dict) -> tuple[int, str]:
        calls.append(dict(values))
        from sweeps.time_of import gates_of

        return budget_value(SOURCE, t, key, gates_of(values))

    trials = expand(parse_spec(doc, "specs/s.yaml"), resolve_time=resolver, notes=notes)
    assert {t.label: t.config.run.num_iterations for t in trials} == {"attn_gate=none": 1010,
                                                                      "attn_gate=headwise": 958}
    assert len(calls) == 2 and len(notes) == 2  # once per design point, not per seed
    assert notes[1].startswith("num_iterations=958 for attn_gate=headwise")
    with pytest.raises(SpecError, match=r"specs/s.yaml: num_iterations: time_of stage 'stage3', which has no runs"):
        expand(parse_spec(doc, "specs/s.yaml"))  # no store consulted, no fallback
