"""The sequential-seeds rule (analysis.sequential): its test statistic, its decisions on crafted data, the
table column, and simulated sweeps through the same `decide` that the run loop calls."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from scipy.stats import t as student_t

from analysis.fmt import format_ordered
from analysis.sequential import (
    DECIDED,
    OPEN,
    UNDECIDED,
    Design,
    decide,
    decisions_for_spec,
    p_value,
)
from analysis.stats import compare

SEEDS = list(range(100, 108))
DESIGN = Design((2, 4, 6, 8), 0.05, "obf")


# ---------------------------------------------------------------- the statistic
def test_p_value_is_scipys_paired_t_or_welch_and_the_tables_p():
    rng = np.random.default_rng(3)
    for n in (2, 3, 6):
        a, b = rng.normal(size=n), rng.normal(size=n)
        paired = p_value(dict(enumerate(a)), dict(enumerate(b)))
        assert paired == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-12)
        welch = p_value(dict(enumerate(a)), {i + 50: v for i, v in enumerate(b)})
        assert welch == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue, rel=1e-12)
        assert paired == pytest.approx(compare(dict(enumerate(a)), dict(enumerate(b))).p_value, rel=1e-12)
    assert math.isnan(p_value({1: 3.0}, {1: 3.1}))
    assert p_value({1: 2.0, 2: 3.0}, {1: 1.0, 2: 2.0}) == 0.0  # a constant difference: t is infinite
    assert math.isnan(p_value({1: 1.0, 2: 2.0}, {1: 1.0, 2: 2.0}))


def pair_with_p(p: float, seeds: list[int], *, base: float = 3.0) -> tuple[dict, dict]:
    """(group, baseline) seed -> value whose paired two-sided t-test has exactly p."""
    n = len(seeds)
    t = student_t.isf(p / 2, n - 1)
    z = np.linspace(-1.0, 1.0, n)
    z = (z - z.mean()) / z.std(ddof=1)  # sample mean 0, sample sd 1
    d = 0.01 * (t / math.sqrt(n) + z)  # mean / (sd / sqrt n) = t
    return {s: base + x for s, x in zip(seeds, d)}, {s: base for s in seeds}


def test_pair_with_p_crafts_the_p_value():
    g, b = pair_with_p(0.0123, SEEDS[:4])
    assert p_value(g, b) == pytest.approx(0.0123, rel=1e-9)


# ---------------------------------------------------------------- decisions on crafted data
def test_a_clear_effect_is_decided_at_the_look_it_crosses_and_the_rest_waits():
    levels = DESIGN.levels(0.05 / 2)
    strong, base = pair_with_p(levels[1] / 10, SEEDS[:4])
    weak, _ = pair_with_p(0.5, SEEDS[:4])
    values = {"none": base, "headwise": strong, "const": weak}
    out = decide(DESIGN, SEEDS, values, {"headwise": "none", "const": "none"})
    h, c = out.decisions["headwise"], out.decisions["const"]
    assert out.looks_done == 2 and not out.finished
    assert (h.status, h.look, h.n, h.stopped_at) == (DECIDED, 2, 4, 2)
    assert h.alpha_j == 0.05 / 2 and h.threshold == pytest.approx(levels[1])
    p_text, level = format_ordered([h.p, h.threshold])
    assert h.text(4) == f"decided at look 2 (n=4): p={p_text} <= {level}"
    assert (c.status, c.look) == (OPEN, 3)
    assert c.text(4) == "open (look 3 of 4)"
    # headwise keeps its 4 seeds; const and its baseline need the third look's 6
    assert out.required() == {"headwise": 4, "none": 6, "const": 6}


def test_without_the_looks_seeds_nothing_is_decided():
    g, b = pair_with_p(1e-9, SEEDS[:1] + SEEDS[1:2])
    out = decide(DESIGN, SEEDS, {"none": b, "elementwise": {SEEDS[0]: g[SEEDS[0]]}}, {"elementwise": "none"})
    assert out.looks_done == 0 and out.decisions["elementwise"].status == OPEN
    assert out.required() == {"elementwise": 2, "none": 2}


def test_a_rejection_recycles_its_alpha_to_the_other_comparison():
    last = DESIGN.levels(0.05)[-1]
    half = DESIGN.levels(0.05 / 2)[-1]
    between = (last + half) / 2  # rejected at alpha, not at alpha / 2
    a, base = pair_with_p(between, SEEDS)
    b, _ = pair_with_p(1e-7, SEEDS)
    alone = decide(DESIGN, SEEDS, {"none": base, "a": a, "c": pair_with_p(0.9, SEEDS)[0]},
                   {"a": "none", "c": "none"})
    assert alone.decisions["a"].status == UNDECIDED  # alpha / 2 each, nothing rejected to recycle
    assert alone.decisions["a"].text(4) == "undecided at max n=8: p={} > {}".format(*format_ordered([between, half]))
    both = decide(DESIGN, SEEDS, {"none": base, "a": a, "b": b}, {"a": "none", "b": "none"})
    assert both.decisions["b"].status == DECIDED and both.decisions["b"].alpha_j == 0.025
    assert both.decisions["a"].status == DECIDED and both.decisions["a"].alpha_j == 0.05
    assert both.finished and both.looks_done == 4


def test_the_log_is_strict_json_with_the_configurations():
    g, b = pair_with_p(0.5, SEEDS[:2])
    out = decide(DESIGN, SEEDS, {"none": b, "headwise": g}, {"headwise": "none"})
    log = out.to_json({"headwise": {"attn_gate": "headwise"}, "none": {"attn_gate": "none"}})
    text = json.dumps(log, allow_nan=False)
    back = json.loads(text)
    row = back["comparisons"][0]
    assert row["config"] == {"attn_gate": "headwise"} and row["baseline_config"] == {"attn_gate": "none"}
    assert row["history"][0]["n"] == 2 and row["text"] == "open (look 2 of 4)"
    assert back["design"]["looks"] == [2, 4, 6, 8] and back["required"] == {"headwise": 4, "none": 4}


# ---------------------------------------------------------------- the decision log
def test_decisions_for_spec_reads_the_sweeps_log(tmp_path: Path):
    (tmp_path / "spec.yaml").write_text("name: seqdemo\nstage: s\n")
    assert decisions_for_spec(tmp_path / "spec.yaml", runs_root=tmp_path / "runs") is None
    (tmp_path / "runs" / "seqdemo").mkdir(parents=True)
    (tmp_path / "runs" / "seqdemo" / "sequential.json").write_text('{"comparisons": [], "looks_done": 1}')
    assert decisions_for_spec(tmp_path / "spec.yaml", runs_root=tmp_path / "runs") == {"comparisons": [],
                                                                                        "looks_done": 1}
    assert decisions_for_spec("seqdemo", runs_root=tmp_path / "runs")["looks_done"] == 1


# ---------------------------------------------------------------- simulated sequential sweeps
M = 4
PAIRS = {f"gate{j}": "none" for j in range(M)}


def simulate(rng: np.random.Generator, effect: float = 0.0) -> dict[str, dict[int, float]]:
    """Per-seed final losses: a component shared by every configuration at one seed (data order and
    init, what pairing by seed removes) plus independent noise of sd 1; `effect` (in noise sd) on gate0."""
    shared = rng.normal(0.0, 3.0, len(SEEDS))
    values = {"none": dict(zip(SEEDS, 3.0 + shared + rng.normal(size=len(SEEDS))))}
    for j in range(M):
        shift = effect if j == 0 else 0.0
        values[f"gate{j}"] = dict(zip(SEEDS, 3.0 + shared + shift + rng.normal(size=len(SEEDS))))
    return values


def mc_bound(alpha: float, n: int) -> float:
    return alpha + 2 * math.sqrt(alpha * (1 - alpha) / n)


@pytest.mark.parametrize("spending", ["obf", "pocock"])
def test_no_true_effect_keeps_the_familywise_false_positive_rate_at_alpha(spending: str):
    design = Design((2, 4, 6, 8), 0.05, spending)
    rng = np.random.default_rng(2024)
    n = 2000
    false = sum(any(d.status == DECIDED for d in decide(design, SEEDS, simulate(rng), PAIRS).decisions.values())
                for _ in range(n))
    assert false / n <= mc_bound(0.05, n), false / n


def naive(values: dict[str, dict[int, float]], looks: tuple[int, ...], holm: bool) -> bool:
    """Stop at the first look where some comparison has p <= 0.05 (unadjusted) or Holm p_adj <= 0.05."""
    for n in looks:
        seeds = SEEDS[:n]
        ps = sorted(p_value({s: values[g][s] for s in seeds}, {s: values["none"][s] for s in seeds}) for g in PAIRS)
        if (ps[0] * (M if holm else 1)) <= 0.05:
            return True
    return False


def test_naive_repeated_looks_exceed_alpha_in_the_same_simulator():
    """What the rule replaces: the simulator has the power to show the inflation it prevents."""
    rng = np.random.default_rng(2025)
    n = 2000
    sims = [simulate(rng) for _ in range(n)]
    unadjusted = sum(naive(v, DESIGN.looks, holm=False) for v in sims) / n
    per_look_holm = sum(naive(v, DESIGN.looks, holm=True) for v in sims) / n
    assert unadjusted > 0.15, unadjusted
    assert per_look_holm > mc_bound(0.05, n), per_look_holm


def test_a_planted_effect_stops_early_and_the_nulls_stay_controlled():
    """4 noise sd on one gate (paired difference sd sqrt 2): decided before the last look in most
    simulated sweeps, with fewer seeds on average than max."""
    rng = np.random.default_rng(2026)
    n = 1000
    early = seeds = false = 0
    for _ in range(n):
        out = decide(DESIGN, SEEDS, simulate(rng, effect=4.0), PAIRS)
        d = out.decisions["gate0"]
        early += d.status == DECIDED and d.stopped_at < len(DESIGN.looks)
        seeds += d.n
        false += any(x.status == DECIDED for k, x in out.decisions.items() if k != "gate0")
    assert early / n > 0.7, early / n
    assert seeds / n < 8 - 1, seeds / n
    assert false / n <= mc_bound(0.05, n)


def test_a_raised_level_applies_to_earlier_looks_too():
    """Pocock looks at 2 and 4 seeds: `a` misses alpha/2 at look 1 and has nothing at look 2; `b` is
    rejected at look 2, its alpha goes to `a`, whose look-1 p now crosses the alpha level."""
    design = Design((2, 4), 0.05, "pocock")
    half, full = design.levels(0.025)[0], design.levels(0.05)[0]
    first, base2 = pair_with_p((half + full) / 2, SEEDS[:2])
    mean = float(np.mean([first[s] - base2[s] for s in SEEDS[:2]]))
    a = first | {SEEDS[2]: 3.0 - mean, SEEDS[3]: 3.0 - mean}  # the 4-seed mean difference is 0
    b = dict(zip(SEEDS[:4], [4.0, 4.1, 4.05, 4.02]))
    base = {s: 3.0 for s in SEEDS[:4]}
    out = decide(design, SEEDS, {"none": base, "a": a, "b": b}, {"a": "none", "b": "none"})
    da, db = out.decisions["a"], out.decisions["b"]
    assert db.history[0].p > half and (db.status, db.look, db.alpha_j) == (DECIDED, 2, 0.025)
    assert da.history[1].p > 0.9
    assert (da.status, da.look, da.n, da.stopped_at, da.alpha_j) == (DECIDED, 1, 2, 2, 0.05)
    # the decision was reached at look 2, on the data of look 1: the text says both
    assert da.text(2).startswith("decided at look 2 (data of look 1, n=2, crossed after Holm recycling): p=")
    assert out.required() == {"a": 4, "b": 4, "none": 4}  # it ran 4 seeds before it stopped
