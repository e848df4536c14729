"""The stage table of a sequential sweep on the round-2 records (tests/fixtures/offline_stage1_v2): paired on
the seeds both ran, the design's verdict with its direction and a repeated CI, numbers printed so that
their comparison shows. Expected values are recomputed here with plain scipy on the fixture's numbers."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from analysis import render
from analysis.decision import decision_frame
from analysis.fmt import format_ordered
from analysis.seq_table import annotate, has_sequential, repeated_ci
from analysis.sequential import Design, decide
from analysis.table import stage_table

FIXTURE = Path(__file__).parent / "fixtures" / "offline_stage1_v2"
LOG = json.loads((FIXTURE / "sequential.json").read_text())
ROWS = {("headwise", "sigmoid"): "attn_gate=headwise", ("const", "sigmoid"): "attn_gate=const",
        ("headwise", "ns_sigmoid"): "attn_gate=headwise gate_act=ns_sigmoid",
        ("elementwise", "sigmoid"): "attn_gate=elementwise"}


def runs() -> pd.DataFrame:
    """The fixture as fetch_runs gives it (the columns the table reads)."""
    r = pd.read_csv(FIXTURE / "runs.csv")
    return r.rename(columns={"trial_id": "mlflow_run_id"}).assign(stage="offline-stage1-v2",
                                                                  best_val_loss=r["final_val_loss"])


def per_seed() -> dict[tuple[str, str], dict[int, float]]:
    r = pd.read_csv(FIXTURE / "runs.csv")
    return {key: dict(zip(g["seed"], g["final_val_loss"], strict=True)) for key, g in r.groupby(["attn_gate", "gate_act"])}


def annotated() -> pd.DataFrame:
    return annotate(stage_table(runs(), per_seed=True), LOG).drop(columns="seed_values")


def by_row(table: pd.DataFrame) -> pd.DataFrame:
    return table.set_index(["attn_gate", "gate_act"])


# ---------------------------------------------------------------- item 1: pairing on common seeds
def test_each_row_is_paired_with_the_baseline_on_the_seeds_both_ran():
    """Three arms stopped at 6 seeds, the baseline ran 8: paired on the 6 (the test the design decided
    with, its log's p exactly), not Welch over 6 vs 8 (p 3.6e-06 / 1.0e-04 / 5.4e-04 before)."""
    t = by_row(stage_table(runs()))
    values, base = per_seed(), per_seed()[("none", "sigmoid")]
    logged = {c["name"]: c["p"] for c in LOG["comparisons"]}
    for key, name in ROWS.items():
        group = values[key]
        seeds = sorted(set(group) & set(base))
        res = sps.ttest_rel([group[s] for s in seeds], [base[s] for s in seeds])
        row = t.loc[key]
        assert (row["test"], row["n_pairs"]) == ("paired", len(seeds))
        assert row["p_value"] == pytest.approx(res.pvalue, rel=1e-10)
        assert row["p_value"] == pytest.approx(logged[name], rel=1e-10)
        ci = res.confidence_interval(0.95)
        assert (row["delta_ci_low"], row["delta_ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-10)
        assert row["delta"] == pytest.approx(np.mean([group[s] - base[s] for s in seeds]), rel=1e-10)
    assert [format_ordered([t.loc[k, "p_value"]])[0] for k in ROWS] == ["2.97e-05", "0.00191", "0.00356", "0.473"]
    assert t.loc[("headwise", "sigmoid"), "n_pairs"] == 6 and t.loc[("none", "sigmoid"), "n"] == 8


def test_the_console_table_says_how_many_pairs_a_row_was_tested_on():
    shown = render.display_table(annotated()).set_index(["attn_gate", "gate_act"])
    assert shown.loc[("headwise", "sigmoid"), "n"] == "6" and shown.loc[("headwise", "sigmoid"), "n_pairs"] == "6"
    assert shown.loc[("none", "sigmoid"), "n"] == "8" and shown.loc[("none", "sigmoid"), "n_pairs"] == ""
    md = render.to_markdown(render.display_table(annotated()), render.DISPLAY_HEADERS)
    assert "n pairs" in [h.strip() for h in md.splitlines()[0].strip("|").split("|")]
    assert "Δ is not the difference of their means" in render.reading_note(annotated())


# ---------------------------------------------------------------- item 2: the design's verdict and its RCI
def independent_rci(name: str) -> tuple[float, float, int]:
    """Δ_k ± t_{1-p_k/2, n_k-1} s_k / √n_k at the look the log names, with plain numpy/scipy."""
    c = next(c for c in LOG["comparisons"] if c["name"] == name)
    key = next(k for k, v in ROWS.items() if v == name)
    n = next(h["n"] for h in c["history"] if h["look"] == c["look"])
    seeds = LOG["seeds"][:n]
    d = np.array([per_seed()[key][s] - per_seed()[("none", "sigmoid")][s] for s in seeds])
    half = sps.t.ppf(1 - c["threshold"] / 2, n - 1) * d.std(ddof=1) / math.sqrt(n)
    return d.mean() - half, d.mean() + half, n


def test_sequential_rows_carry_the_designs_verdict_direction_and_repeated_ci():
    t = by_row(annotated())
    assert t.loc[("headwise", "sigmoid"), "seq_verdict"] == "better"
    assert t.loc[("headwise", "ns_sigmoid"), "seq_verdict"] == "better"
    assert t.loc[("const", "sigmoid"), "seq_verdict"] == "worse"
    assert t.loc[("elementwise", "sigmoid"), "seq_verdict"] == "undecided"
    assert t.loc[("none", "sigmoid"), "seq_verdict"] == "baseline"
    assert t.loc[("headwise", "sigmoid"), "seq_stop"] == "decided at look 3 (n=6): p=2.97e-05 <= 0.00292"
    assert t.loc[("elementwise", "sigmoid"), "seq_stop"] == "undecided at max n=8: p=0.473 > 0.0409"
    for key, name in ROWS.items():
        low, high, n = independent_rci(name)
        row = t.loc[key]
        assert (row["rci_low"], row["rci_high"]) == pytest.approx((low, high), rel=1e-9)
        assert row["rci_n"] == n and row["rci_look"] == (4 if key[0] == "elementwise" else 3)
        decided = row["seq_verdict"] in ("better", "worse")
        assert decided == (not low <= 0 <= high)  # excludes 0 exactly when the design decided
        # wider than the fixed-n 95% CI: the price of looking four times
        assert high - low > row["delta_ci_high"] - row["delta_ci_low"]


def test_what_users_read_is_the_design_not_the_fixed_n_p_adj():
    table = annotated()
    md = render.to_markdown(render.display_table(table), render.DISPLAY_HEADERS)
    assert "better, decided at look 3 (n=6): p=2.97e-05 <= 0.00292" in md
    assert "worse, decided at look 3 (n=6): p=0.00191 <= 0.00292" in md
    headers = [h.strip() for h in md.splitlines()[0].strip("|").split("|")]
    assert headers.index("verdict (sequential seeds)") < headers.index("Δ loss") < headers.index("Δ RCI (sequential)")
    assert "p adj (fixed-n, not the design's)" in headers and "Δ 95% CI (fixed-n)" in headers
    assert "p adj" not in headers and "Δ 95% CI" not in headers
    lo, hi, _ = independent_rci("attn_gate=headwise")
    assert f"[{lo:+.4f}, {hi:+.4f}]" in md
    note = render.reading_note(table)
    assert "call a difference real" not in note and "p adj < 0.05" not in note
    assert "repeated confidence interval" in note and "not the design's test" in note
    csv = render.to_csv(table)
    header = csv.splitlines()[0].split(",")
    assert {"seq_verdict", "seq_stop", "rci_low", "rci_high", "rci_look", "rci_n", "rci_level", "n_pairs"} <= set(header)
    assert "seed_values" not in header


def test_the_mlflow_decision_table_leads_with_the_designs_verdict():
    frame = decision_frame(annotated()).set_index("config")
    assert list(frame.reset_index().columns[:7]) == ["config", "verdict", "delta", "delta_ci_low", "delta_ci_high",
                                                     "interval", "decision"]
    h = frame.loc["headwise/sigmoid"]
    lo, hi, _ = independent_rci("attn_gate=headwise")
    assert h["verdict"] == "better" and h["interval"] == "RCI at look 3 (n=6)"
    assert (h["delta_ci_low"], h["delta_ci_high"]) == pytest.approx((lo, hi), abs=1e-6)
    assert h["decision"] == "sequential: decided at look 3 (n=6): p=2.97e-05 <= 0.00292"
    assert "p_adj" not in frame.columns and h["p_adj_fixed_n"] == pytest.approx(0.000118815, rel=1e-5)
    assert frame.loc["elementwise/sigmoid", "verdict"] == "undecided"
    assert frame.loc["const/sigmoid", "verdict"] == "worse" and frame.loc["none/sigmoid", "verdict"] == "baseline"


def test_a_row_outside_the_design_keeps_the_p_adj_reading():
    """A configuration the design did not compare (here: a second learning rate) is read on p adj."""
    extra = runs().query("attn_gate in ['none', 'headwise'] and gate_act == 'sigmoid'").assign(learning_rate=0.01)
    both = pd.concat([runs().assign(learning_rate=0.0036), extra], ignore_index=True)
    table = annotate(stage_table(both, per_seed=True), LOG)
    other = table[(table["learning_rate"] == 0.01) & (table["attn_gate"] == "headwise")].iloc[0]
    assert other["seq_verdict"] == "" and math.isnan(other["rci_low"])
    note = render.reading_note(table)
    assert "call a difference real (rows without a sequential verdict) only when p adj < 0.05" in note


def test_a_decision_after_holm_recycling_says_both_looks_and_takes_the_interval_where_the_data_crossed():
    """Pocock looks at 2 and 4 seeds: `a` misses alpha/2 at look 1; `b` is rejected at look 2 and its
    alpha goes to `a`, whose look-1 data now crosses. Decided at look 2 on the data of look 1."""
    design, seeds = Design((2, 4), 0.05, "pocock"), [10, 11, 12, 13]
    half, full = design.levels(0.025)[0], design.levels(0.05)[0]
    target = (half + full) / 2  # a two-seed paired p between the two levels
    d1 = 0.01 * np.array([-1.0, 1.0]) + 0.01 * sps.t.isf(target / 2, 1)  # sd/√2 = 0.01: t as targeted
    a = {10: 3.0 + d1[0], 11: 3.0 + d1[1], 12: 3.0 - d1.mean(), 13: 3.0 - d1.mean()}
    values = {"none": dict.fromkeys(seeds, 3.0), "a": a, "b": dict(zip(seeds, [4.0, 4.1, 4.05, 4.02]))}
    out = decide(design, seeds, values, {"a": "none", "b": "none"})
    assert (out.decisions["a"].look, out.decisions["a"].stopped_at) == (1, 2)
    log = out.to_json({"a": {"attn_gate": "headwise"}, "b": {"attn_gate": "const"}, "none": {"attn_gate": "none"}})
    log = json.loads(json.dumps(log, allow_nan=False)) | {"seeds": seeds}
    table = pd.DataFrame({"attn_gate": ["headwise", "const", "none"], "delta": [0.0, 1.0, math.nan],
                          "seed_values": [a, values["b"], values["none"]]})
    row = annotate(table, log).iloc[0]
    assert row["seq_stop"].startswith("decided at look 2 (data of look 1, n=2, crossed after Holm recycling): p=")
    assert row["seq_verdict"] == "worse" and (row["rci_look"], row["rci_n"]) == (1, 2)
    diffs = [a[s] - 3.0 for s in seeds[:2]]
    half_width = sps.t.ppf(1 - full / 2, 1) * np.std(diffs, ddof=1) / math.sqrt(2)
    assert (row["rci_low"], row["rci_high"]) == pytest.approx((np.mean(diffs) - half_width, np.mean(diffs) + half_width))
    assert row["rci_low"] > 0  # the data that crossed: its interval excludes 0


def test_records_that_do_not_reproduce_the_log_get_no_interval():
    r = runs()
    r.loc[(r["attn_gate"] == "const") & (r["seed"] == 0), "final_val_loss"] += 0.05
    t = by_row(annotate(stage_table(r, per_seed=True), LOG))
    const = t.loc[("const", "sigmoid")]
    assert math.isnan(const["rci_low"]) and "the records give p=" in const["seq_stop"]
    assert not math.isnan(t.loc[("headwise", "sigmoid"), "rci_low"])


def test_repeated_ci_is_the_inverted_test():
    d = [0.011, 0.02, 0.014, 0.018]
    p = sps.ttest_1samp(d, 0.0).pvalue
    low, high = repeated_ci(d, p)  # at the level equal to its own p the interval just touches 0
    assert low == pytest.approx(0.0, abs=1e-12) and high > 0
    assert repeated_ci(d, p * 0.99)[0] < 0 < repeated_ci(d, p * 1.01)[0]
    assert all(math.isnan(x) for x in repeated_ci([0.0, 0.0], 0.05) + repeated_ci([0.1], 0.05))


# ---------------------------------------------------------------- item 3: numbers that show the comparison
@pytest.mark.parametrize("values, texts", [
    ([0.00291, 0.0029205507592253823], ["0.00291", "0.00292"]),
    ([0.0029201, 0.0029205507592253823], ["0.00292", "0.002921"]),
    ([2.9703858078758937e-05, 0.0029205507592253823], ["2.97e-05", "0.00292"]),
    ([0.0035631753030238547, 0.007115686710470322], ["0.00356", "0.00712"]),
    ([0.05, 0.05], ["0.05", "0.05"]),
    ([0.04999996, 0.05], ["0.04999996", "0.05"]),
    ([math.nan, 0.0409], ["", "0.0409"]),
])
def test_format_ordered_keeps_the_order_visible(values, texts):
    assert format_ordered(values) == texts
    shown = [float(t) for t in texts if t]
    finite = [v for v in values if not math.isnan(v)]
    assert all((a < b) == (x < y) and (a == b) == (x == y)
               for a, x in zip(finite, shown, strict=True) for b, y in zip(finite, shown, strict=True))


def test_a_tiny_std_prints_in_scientific_notation():
    r = runs()
    r.loc[r["attn_gate"] == "elementwise", "final_val_loss"] = 3.57 + 4.2e-5 * r.loc[r["attn_gate"] == "elementwise", "seed"]
    shown = render.display_table(stage_table(r)).set_index(["attn_gate", "gate_act"])
    std = float(np.std(3.57 + 4.2e-5 * np.arange(8), ddof=1))
    assert shown.loc[("elementwise", "sigmoid"), "std"] == f"{std:.1e}" != "0.0000"
    assert shown.loc[("headwise", "sigmoid"), "std"] == "0.0190"


# ---------------------------------------------------------------- through MLflow and the CLI
def log_round2(uri: str) -> str:
    """The fixture as the sweep left it in MLflow: its sweep run with the decision log as an artifact,
    one trial run per record. Returns the sweep run's id."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    client = MlflowClient(uri)
    exp = client.create_experiment("gatesweep-offline-stage1-v2")
    tags = {"spec": "offline_stage1_v2", "stage": "offline-stage1-v2"}
    parent = client.create_run(exp, tags=tags | {"gatesweep.kind": "sweep", "gatesweep.sequential": "true"}).info.run_id
    client.log_artifact(parent, str(FIXTURE / "sequential.json"))
    for _, r in pd.read_csv(FIXTURE / "runs.csv").iterrows():
        run = client.create_run(exp, tags=tags | {"gatesweep.kind": "trial", "mlflow.parentRunId": parent,
                                                  "trial_id": r["trial_id"], "seed": str(r["seed"]), "status": r["status"]})
        metrics = {"final_val_loss": r["final_val_loss"], "best_val_loss": r["final_val_loss"],
                   "train_time_ms": r["train_time_ms"], "ms_per_step": r["ms_per_step"]}
        params = {"attn_gate": r["attn_gate"], "gate_act": r["gate_act"], "learning_rate": 0.0036, "seed": r["seed"]}
        client.log_batch(run.info.run_id, metrics=[Metric(k, float(v), 0, 400) for k, v in metrics.items()],
                         params=[Param(k, str(v)) for k, v in params.items()], tags=[RunTag("backend", "local")])
        client.set_terminated(run.info.run_id, "FINISHED")
    return parent


def test_table_cli_and_the_sweep_runs_decision_of_the_round2_records(tmp_path, monkeypatch, capsys):
    """`gatesweep table SPEC` (md, csv) and the decision table the sweep run gets, from a store that holds
    only MLflow records (no runs/ here: the decision log comes from the sweep run's artifact)."""
    from mlflow import MlflowClient

    from analysis.cli import table_main
    from analysis.decision import TABLE_ARTIFACT, log_sweep_decision

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    parent = log_round2(uri)
    spec = Path(__file__).resolve().parents[1] / "sweeps" / "offline_stage1_v2.yaml"
    monkeypatch.chdir(tmp_path)
    assert table_main([str(spec), "--format", "md", "--no-time", "--tracking-uri", uri]) == 0
    md = capsys.readouterr().out
    lo, hi, _ = independent_rci("attn_gate=headwise")
    assert "better, decided at look 3 (n=6): p=2.97e-05 <= 0.00292" in md and f"[{lo:+.4f}, {hi:+.4f}]" in md
    assert "undecided at max n=8: p=0.473 > 0.0409" in md and "call a difference real" not in md
    assert table_main([str(spec), "--format", "csv", "--no-time", "--tracking-uri", uri]) == 0
    rows = pd.read_csv(io.StringIO(capsys.readouterr().out)).set_index(["attn_gate", "gate_act"])
    assert rows.loc[("headwise", "sigmoid"), "rci_low"] == pytest.approx(lo, rel=1e-9)
    assert rows.loc[("const", "sigmoid"), "p_value"] == pytest.approx(0.0019057325892795388, rel=1e-9)
    assert log_sweep_decision(uri, parent)
    path = MlflowClient(uri).download_artifacts(parent, TABLE_ARTIFACT, str(tmp_path / "dl"))
    table = json.loads(Path(path).read_text())
    assert table["columns"][:7] == ["config", "verdict", "delta", "delta_ci_low", "delta_ci_high", "interval", "decision"]
    got = {r[0]: r[1:7] for r in table["data"]}
    assert got["headwise/sigmoid"][0] == "better" and got["headwise/sigmoid"][2:4] == pytest.approx([lo, hi], abs=1e-6)
    assert got["const/sigmoid"][0] == "worse" and got["elementwise/sigmoid"][0] == "undecided"
    assert got["headwise/ns_sigmoid"][5] == "sequential: decided at look 3 (n=6): p=0.00356 <= 0.00712"


def test_an_open_comparison_shows_its_interval_at_the_latest_complete_look():
    """After look 2 of 4 (headwise, const and ns not yet decided at the levels of that look): open, with
    the repeated CI of look 2 at the current alpha_j - valid at any look, so it may be read mid-sweep."""
    values = {name: {s: per_seed()[key][s] for s in LOG["seeds"][:4]} for key, name in ROWS.items()}
    values["attn_gate=none"] = {s: per_seed()[("none", "sigmoid")][s] for s in LOG["seeds"][:4]}
    out = decide(Design((2, 4, 6, 8), 0.05, "obf"), LOG["seeds"], values, {n: "attn_gate=none" for n in ROWS.values()})
    configs = {c["name"]: c["config"] for c in LOG["comparisons"]} | {"attn_gate=none": LOG["comparisons"][0]["baseline_config"]}
    log = json.loads(json.dumps(out.to_json(configs), allow_nan=False)) | {"seeds": LOG["seeds"]}
    four = runs()[runs()["seed"] < 4]
    t = by_row(annotate(stage_table(four, per_seed=True), log))
    row = t.loc[("headwise", "sigmoid")]
    assert row["seq_verdict"] == "open" and row["seq_stop"] == "open (look 3 of 4)"
    d = [per_seed()[("headwise", "sigmoid")][s] - per_seed()[("none", "sigmoid")][s] for s in range(4)]
    level = out.decisions["attn_gate=headwise"].history[-1].threshold
    half = sps.t.ppf(1 - level / 2, 3) * np.std(d, ddof=1) / 2
    assert (row["rci_look"], row["rci_n"]) == (2, 4)
    assert (row["rci_low"], row["rci_high"]) == pytest.approx((np.mean(d) - half, np.mean(d) + half), rel=1e-9)
    assert has_sequential(t.reset_index())
