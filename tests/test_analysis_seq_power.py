"""analysis.seq_power (power and seeds of the sequential-seeds design) against statsmodels where the design
has one look, against simulations of the real rule (analysis.sequential.decide) where it has several,
and `gatesweep power` on a sequential spec through a real MLflow server."""

from __future__ import annotations

import math
import uuid
from pathlib import Path

import numpy as np
import pytest
from statsmodels.stats.power import TTestPower

from analysis import power, seq_power
from analysis.cli import import_main
from analysis.power_cli import power_main
from analysis.sequential import DECIDED, Design, decide
from sweeps.errors import SpecError

STUDY = Path(__file__).parent / "fixtures" / "legacy" / "study"


@pytest.mark.parametrize("d, n, alpha", [(0.5, 34, 0.05), (1.2, 8, 0.0125), (2.0, 4, 0.05), (0.8, 12, 0.01)])
def test_one_look_is_the_fixed_sample_paired_t_test_of_statsmodels(d, n, alpha):
    result = seq_power.sequential_power(d, (n,), alpha)
    assert result.power + result.wrong == pytest.approx(TTestPower().power(d, n, alpha), abs=2e-5)
    assert result.power == pytest.approx(TTestPower().power(d, n, alpha / 2, alternative="larger"), abs=2e-5)
    assert result.stop == (1.0,) and result.expected_seeds == n


def test_one_look_in_the_seed_regime_matches_the_fixed_sample_planner():
    """Tens of SDs, few seeds: statsmodels' two-sided power is NaN there; analysis.power is tested against
    a simulated t-test for it."""
    for d, n, alpha in [(5.0, 3, 0.0125), (17.2, 2, 0.0125)]:
        assert seq_power.sequential_power(d, (n,), alpha).power == pytest.approx(
            power.power(d, n, alpha, paired=True), abs=2e-5)


def simulate(design: Design, effect: float, nulls: int, sims: int, seed: int) -> tuple[float, float, float]:
    """The rule itself on simulated sweeps: per-seed differences N(effect, 1) for `gate` and N(0, 1) for
    `nulls` other comparisons with the same baseline; -> (P(gate decided, right sign), P(wrong sign),
    mean seeds gate ran)."""
    seeds = list(range(design.looks[-1]))
    rng = np.random.default_rng(seed)
    right = wrong = ran = 0
    pairs = {"gate": "none"} | {f"null{j}": "none" for j in range(nulls)}
    for _ in range(sims):
        values = {"none": {s: 0.0 for s in seeds}, "gate": dict(zip(seeds, rng.normal(effect, 1.0, len(seeds))))}
        values |= {f"null{j}": dict(zip(seeds, rng.normal(0.0, 1.0, len(seeds)))) for j in range(nulls)}
        d = decide(design, seeds, values, pairs).decisions["gate"]
        if d.status == DECIDED:
            sign = np.mean([values["gate"][s] for s in seeds[:d.n]])
            right, wrong = right + (sign > 0), wrong + (sign < 0)
        ran += design.looks[d.stopped_at - 1]
    return right / sims, wrong / sims, ran / sims


@pytest.mark.parametrize(("looks", "spending", "effect"), [((2, 4, 6, 8), "obf", 1.3), ((2, 4, 6, 8), "pocock", 1.1),
                                                           ((2, 3, 4, 5, 6), "obf", 1.6)])
def test_power_and_expected_seeds_match_the_rule_on_simulated_sweeps(looks, spending, effect):
    design = Design(looks, 0.05, spending)
    sims = 3000
    rate, wrong, seeds = simulate(design, effect, 0, sims, seed=7)
    planned = seq_power.sequential_power(effect, looks, 0.05, spending)
    se = math.sqrt(planned.power * (1 - planned.power) / sims)
    assert rate == pytest.approx(planned.power, abs=3 * se)
    assert planned.wrong < 1e-3 and wrong <= planned.wrong + 4 * math.sqrt(planned.wrong / sims) + 1 / sims
    assert seeds == pytest.approx(planned.expected_seeds, abs=0.08)
    fixed = power.power(effect, looks[-1], 0.05, paired=True)
    assert planned.power < fixed  # the looks cost power at the same max seeds: hence the inflation


def test_with_holm_each_comparison_gets_at_least_the_power_planned_at_alpha_over_m():
    """One real effect among m = 3 comparisons: the rule starts it at alpha / 3 and recycling can only
    raise its level, so its rate of decisions is at least the plan at alpha / 3 and at most at alpha."""
    design = Design((2, 4, 6, 8), 0.05, "obf")
    sims = 2000
    rate, _, _ = simulate(design, 1.6, 2, sims, seed=11)
    low = seq_power.sequential_power(1.6, design.looks, 0.05 / 3).power
    high = seq_power.sequential_power(1.6, design.looks, 0.05).power
    se = math.sqrt(low * (1 - low) / sims)
    assert low - 3 * se <= rate <= low + 3 * se + 0.01  # the others are null: recycling is rare
    assert high > low + 0.1


def test_seeds_needed_is_the_smallest_max_that_reaches_the_target_and_inflates_the_fixed_n(monkeypatch):
    d, alpha = 2.0, 0.0125
    fixed = power.seeds_needed(d, 1.0, alpha, 0.8, paired=True)
    found = seq_power.seeds_needed(d, alpha, 0.8, initial=2, per_look=2, spending="obf")
    assert found is not None and found.power >= 0.8
    assert found.looks == seq_power.schedule(2, 2, found.looks[-1])
    short = seq_power.sequential_power(d, seq_power.schedule(2, 2, found.looks[-1] - 1), alpha, "obf")
    assert short.power < 0.8
    assert fixed is not None and found.looks[-1] >= fixed  # never below the fixed-sample n
    assert found.expected_seeds < found.looks[-1]  # the design stops early when the effect is real
    monkeypatch.setattr(seq_power, "MAX_SEQ_SEEDS", found.looks[-1] - 1)
    assert seq_power.seeds_needed(d, alpha, 0.8, initial=2, per_look=2, spending="obf") is None


def test_schedule_is_the_specs_look_rule():
    from sweeps.sequential import Sequential

    for initial, per_look, top in [(2, 2, 8), (3, 2, 8), (2, 3, 9), (2, 5, 4)]:
        assert seq_power.schedule(initial, per_look, top) == Sequential(initial=initial, max=top,
                                                                         per_look=per_look).looks


SPEC = """name: results_stage1
stage: stage1
base: {{num_iterations: 100}}
grid:
  attn_gate: [none, headwise, elementwise, const]
include:
  - {{attn_gate: headwise, gate_act: ns_sigmoid}}
seeds: {{initial: [1337, 1338], add: [2337, 3337, 4337, 5337, 6337, 7337], max: 8, per_look: 2,
        stop: {{p_adj: 0.05, spending: obf}}}}
tracking: {{experiment: {experiment}}}
"""


@pytest.mark.mlflow
def test_cli_power_on_a_sequential_spec(mlflow_server, capsys, tmp_path):
    """The study's stage 1 as if it ran with sequential seeds (a spec of the same name, stage and
    experiment as the import): the plan uses the design's looks, spending and Holm start level."""
    experiment = f"test-seqpower-{uuid.uuid4().hex[:8]}"
    uri = ["--tracking-uri", mlflow_server.uri]
    assert import_main([str(STUDY / "results_stage1.csv"), "--stage", "stage1", "--experiment", experiment, *uri]) == 0
    spec = tmp_path / "results_stage1.yaml"
    spec.write_text(SPEC.format(experiment=experiment))
    capsys.readouterr()
    assert power_main([str(spec), "--effect-pct", "0.5", *uri]) == 0
    out = capsys.readouterr().out
    assert "looks 2, 4, 6, 8 (O'Brien-Fleming-type alpha spending" in out
    assert "alpha 0.05 / 4 = 0.0125" in out and "Bonferroni" not in out
    sd = 0.00103
    d = 3.5334 * 0.005 / sd
    found = seq_power.seeds_needed(d, 0.0125, 0.8, initial=2, per_look=2, spending="obf")
    assert found is not None
    assert f"max {found.looks[-1]} seeds per configuration" in out
    spec_design = seq_power.sequential_power(d, (2, 4, 6, 8), 0.0125)
    assert f"the spec's design (max 8 seeds): power {spec_design.power:.3f}" in out
    with pytest.raises(SpecError, match="seeds.stop.p_adj"):
        power_main([str(spec), "--alpha", "0.1", *uri])
