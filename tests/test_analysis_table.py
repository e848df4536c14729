"""analysis.table and analysis.render on hand-made runs; expectations computed independently."""

import math
import statistics
import sys

import pandas as pd
import pytest
from scipy import stats as sps

from analysis import render
from analysis.table import compat_table, config_label, group_runs, key_columns, stage_table, varying_columns
from trainer.errors import DataError

BASE = {"gate_pos": "sdpa", "gate_act": "sigmoid", "num_iterations": 1500, "batch_size": 512}


def run(gate, lr, seed, loss, ms=600_000.0, status="FINISHED", stage="s1", **extra):
    return {"mlflow_run_id": f"{gate}-{lr}-{seed}-{status}", "stage": stage, "seed": seed, "status": status,
            **BASE, "attn_gate": gate, "learning_rate": lr, "final_val_loss": loss, "best_val_loss": loss,
            "train_time_ms": ms, "ms_per_step": ms / 1500, **extra}


@pytest.fixture
def runs():
    return pd.DataFrame([
        run("none", 0.0036, 1, 3.30, 600_000), run("none", 0.0036, 2, 3.31, 601_000),
        run("none", 0.0036, 3, 3.29, 602_000),
        run("elementwise", 0.0036, 1, 3.27, 640_000), run("elementwise", 0.0036, 2, 3.28, 641_000),
        run("elementwise", 0.0036, 3, 3.26, 642_000),
        run("headwise", 0.0036, 1, 3.285), run("headwise", 0.0036, 2, 3.291),
        run("headwise", 0.0036, 3, math.nan, status="FAILED"),
        run("headwise", 0.0036, 4, 3.9, status="EARLY_STOPPED"),
        run("headwise", 0.0036, 5, math.nan, status="KILLED"),
        run("none", 0.00468, 1, 3.25), run("none", 0.00468, 2, 3.26),
        run("elementwise", 0.00468, 1, 3.22), run("elementwise", 0.00468, 5, 3.24),
    ])


def test_varying_columns_ignore_constants_and_missing(runs):
    runs = runs.assign(warmdown_iters=[1450] * (len(runs) - 1) + [None])
    assert varying_columns(runs) == ["attn_gate", "learning_rate"]
    assert key_columns(runs.query("learning_rate == 0.0036")) == ["attn_gate"]


@pytest.mark.parametrize("key,values", [("adam_beta2", (0.95, 0.99)), ("train_files", ("a_*.bin", "b_*.bin"))])
def test_every_math_defining_key_separates_configurations(key, values):
    """Keys beyond the study's own columns (any trial-identity key) still split rows, never pool them."""
    runs = pd.DataFrame([run("none", 0.0036, s, 3.3, **{key: v}) for v in values for s in (1, 2)])
    t = stage_table(runs)
    assert list(t[key]) == list(values) and list(t["n"]) == [2, 2]


def test_stage_table_rows_stats_and_order(runs):
    t = stage_table(runs)
    assert list(t.columns[:2]) == ["attn_gate", "learning_rate"]
    assert list(zip(t["attn_gate"], t["learning_rate"], strict=True)) == [
        ("elementwise", 0.0036), ("elementwise", 0.00468), ("headwise", 0.0036),
        ("none", 0.0036), ("none", 0.00468)]
    e = t.iloc[0]
    vals = [3.27, 3.28, 3.26]
    assert e["n"] == 3
    assert e["final_val_loss"] == pytest.approx(statistics.fmean(vals))
    assert e["std"] == pytest.approx(statistics.stdev(vals))
    assert e["ci95"] == pytest.approx(sps.t.ppf(0.975, 2) * statistics.stdev(vals) / math.sqrt(3))
    assert e["train_time_ms"] == pytest.approx(641_000)


def test_failed_and_early_stopped_are_counted_not_averaged(runs):
    h = stage_table(runs).iloc[2]
    assert (h["n"], h["failed"], h["early_stopped"]) == (2, 2, 1)  # FAILED + KILLED; EARLY_STOPPED apart
    assert h["final_val_loss"] == pytest.approx((3.285 + 3.291) / 2)
    assert render.footer(stage_table(runs)) == (
        "Excluded from the statistics: 2 failed run(s), 1 early-stopped run(s).")


def test_baseline_matches_learning_rate_and_picks_the_test(runs):
    t = stage_table(runs).set_index(["attn_gate", "learning_rate"])
    paired = t.loc[("elementwise", 0.0036)]
    assert paired["test"] == "paired"
    assert paired["p_value"] == pytest.approx(sps.ttest_rel([3.27, 3.28, 3.26], [3.30, 3.31, 3.29]).pvalue)
    assert paired["delta"] == pytest.approx(statistics.fmean([3.27, 3.28, 3.26]) - 3.30)
    assert paired["delta_pct"] == pytest.approx(100 * paired["delta"] / 3.30)
    welch = t.loc[("elementwise", 0.00468)]  # seeds {1, 5} vs {1, 2}: Welch against the 0.00468 baseline
    assert welch["test"] == "welch"
    assert welch["p_value"] == pytest.approx(sps.ttest_ind([3.22, 3.24], [3.25, 3.26], equal_var=False).pvalue)
    assert welch["delta"] == pytest.approx(3.23 - 3.255)
    assert t.loc[("none", 0.00468), "test"] == "baseline"
    assert math.isnan(t.loc[("none", 0.00468), "delta"])


def test_baseline_ignores_gate_columns_but_prefers_equal_ones():
    rows = [run("none", 0.0036, s, 3.30 + s / 100) for s in (1, 2)]
    rows += [run("headwise", 0.0036, s, 3.28 + s / 100, gate_act="ns_sigmoid") for s in (1, 2)]
    t = stage_table(pd.DataFrame(rows)).set_index(["attn_gate", "gate_act"])
    assert t.loc[("headwise", "ns_sigmoid"), "delta"] == pytest.approx(-0.02)  # vs none/sigmoid
    rows += [run("none", 0.0036, s, 3.40 + s / 100, gate_act="ns_sigmoid") for s in (1, 2)]
    t = stage_table(pd.DataFrame(rows)).set_index(["attn_gate", "gate_act"])
    assert t.loc[("headwise", "ns_sigmoid"), "delta"] == pytest.approx(-0.12)  # vs none/ns_sigmoid


def test_no_baseline_leaves_delta_empty():
    t = stage_table(pd.DataFrame([run("elementwise", 0.0036, 1, 3.2), run("elementwise", 0.0036, 2, 3.3)]))
    assert math.isnan(t.iloc[0]["delta"]) and t.iloc[0]["test"] == ""


def test_stage_blocks_follow_the_requested_order():
    rows = [run("none", 0.00468, s, 3.29, stage="s3") for s in (1, 2)]
    rows += [run("elementwise", 0.00468, s, 3.27, stage="s3") for s in (1, 2)]
    rows += [run("none", 0.0036, 1, 3.2938, stage="s3.5")]
    t = stage_table(pd.DataFrame(rows), stages=["s3.5", "s3"])
    assert list(t["stage"]) == ["s3.5", "s3", "s3"]
    assert list(t["attn_gate"]) == ["none", "elementwise", "none"]


def test_missing_required_column_names_it(runs):
    with pytest.raises(DataError, match="'final_val_loss'"):
        stage_table(runs.drop(columns="final_val_loss"))
    with pytest.raises(DataError, match="empty"):
        stage_table(runs.iloc[0:0])


def test_compat_default_columns_and_values(runs):
    c = compat_table(runs)
    assert list(c.columns) == ["attn_gate", "learning_rate", "seeds", "final_loss", "train_time"]
    first = c.iloc[0].tolist()
    expected_loss = format(statistics.fmean([3.27, 3.28, 3.26]), ".4f")
    assert first == ["elementwise", "0.0036", 3, expected_loss, "10m 41.0s"]
    assert c.iloc[2].tolist() == ["headwise", "0.0036", 2, "3.2880", "10m 0.0s"]


def test_compat_columns_option(runs):
    c = compat_table(runs, columns=["attn_gate", "learning_rate", "num_iterations", "final_loss"])
    assert c.iloc[0].tolist() == ["elementwise", "0.0036", "1500", "3.2700"]
    with pytest.raises(DataError, match="leaves out learning_rate"):
        compat_table(runs, columns=["attn_gate", "final_loss"])
    with pytest.raises(DataError, match="unknown colour"):
        compat_table(runs, columns=["attn_gate", "learning_rate", "colour"])


def test_group_runs_and_labels(runs):
    groups = group_runs(runs)
    assert [config_label(c) for c, _ in groups][:2] == ["elementwise lr=0.0036", "elementwise lr=0.00468"]
    assert len(groups[2][1]) == 5
    assert config_label({"attn_gate": "headwise", "gate_act": "ns_sigmoid"}) == "headwise/ns_sigmoid"


def test_render_markdown_csv_console(runs, monkeypatch):
    c = compat_table(runs.query("learning_rate == 0.00468"))
    assert render.to_csv(c) == ("attn_gate,seeds,final_loss,train_time\n"
                                "elementwise,2,3.2300,10m 0.0s\nnone,2,3.2550,10m 0.0s\n")
    assert render.to_markdown(c).splitlines() == [
        "| attn_gate   | seeds | final_loss | train_time |",
        "|-------------|-------|------------|------------|",
        "| elementwise | 2     | 3.2300     | 10m 0.0s   |",
        "| none        | 2     | 3.2550     | 10m 0.0s   |"]
    display = render.display_table(stage_table(runs))
    assert display.iloc[0]["delta"] == format(statistics.fmean([3.27, 3.28, 3.26]) - 3.30, "+.4f")
    fancy = render.to_console(display, title="s1", note="note")
    assert "elementwise" in fancy and "┃" in fancy  # rich's box
    monkeypatch.setitem(sys.modules, "rich.console", None)  # as if rich were not installed
    plain = render.to_console(display, title="s1", note="note")
    assert "┃" not in plain and plain.splitlines()[1].startswith("attn_gate")
    assert plain.rstrip().endswith("note")


def test_a_baseline_with_only_failed_runs_is_labelled_and_anchors_nothing():
    df = pd.DataFrame([run("none", 0.0036, 1, math.nan, status="FAILED"),
                       run("none", 0.0036, 2, math.nan, status="FAILED"),
                       run("elementwise", 0.0036, 1, 3.27), run("elementwise", 0.0036, 2, 3.28)])
    table = stage_table(df).set_index("attn_gate")
    assert table.loc["none", "test"] == "baseline (no finished runs)"
    assert table.loc["none", "failed"] == 2 and table.loc["none", "n"] == 0
    assert math.isnan(table.loc["elementwise", "delta"])


def test_comparison_rows_carry_ci_and_holm_adjusted_p(runs):
    t = stage_table(runs).set_index(["attn_gate", "learning_rate"])
    paired = t.loc[("elementwise", 0.0036)]
    ci = sps.ttest_rel([3.27, 3.28, 3.26], [3.30, 3.31, 3.29]).confidence_interval(0.95)
    assert (paired["delta_ci_low"], paired["delta_ci_high"]) == pytest.approx((ci.low, ci.high))
    welch = t.loc[("elementwise", 0.00468)]
    ci = sps.ttest_ind([3.22, 3.24], [3.25, 3.26], equal_var=False).confidence_interval(0.95)
    assert (welch["delta_ci_low"], welch["delta_ci_high"]) == pytest.approx((ci.low, ci.high))
    # three comparisons (elementwise x2, headwise); the two baselines have no p and stay out of the family
    compared = t[t["p_value"].notna()]
    assert len(compared) == 3
    ps = compared["p_value"].tolist()
    order = sorted(range(3), key=lambda i: ps[i])
    holm = [0.0] * 3
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (3 - rank) * ps[i]))
        holm[i] = running
    assert compared["p_adj"].tolist() == pytest.approx(holm)
    assert t[t["test"] == "baseline"]["p_adj"].isna().all()
    none = stage_table(runs, adjust="none")
    assert none["p_adj"].dropna().tolist() == pytest.approx(none["p_value"].dropna().tolist())
    bh = stage_table(runs, adjust="bh")
    assert bh["p_adj"].dropna().tolist() == pytest.approx(list(sps.false_discovery_control(
        bh["p_value"].dropna().tolist())))


def test_low_n_flag_in_csv_and_display(runs):
    t = stage_table(runs)
    assert dict(zip(zip(t["attn_gate"], t["learning_rate"]), t["low_n"])) == {
        ("elementwise", 0.0036): False, ("elementwise", 0.00468): True, ("headwise", 0.0036): True,
        ("none", 0.0036): False, ("none", 0.00468): True}
    header = render.to_csv(t).splitlines()[0].split(",")
    for col in ("delta_ci_low", "delta_ci_high", "p_adj", "low_n", "p_value", "delta"):
        assert col in header
    shown = render.display_table(t)
    assert shown["n"].tolist() == ["3", "2†", "2†", "3", "2†"]
    assert shown.iloc[0]["delta_ci"].startswith("[-0.") and shown.iloc[3]["delta_ci"] == ""
    assert "loss_at_base_time" not in shown.columns  # no histories given: no time-matched columns
    note = render.reading_note(t)
    assert "Holm-adjusted across the 3 comparison(s)" in note and "† marks n < 3" in note
    md = render.to_markdown(shown, render.DISPLAY_HEADERS)
    assert "| Δ 95% CI " in md and "| p adj " in md


def test_the_low_n_sentence_appears_only_with_a_low_n_row(runs):
    three = stage_table(runs.query("learning_rate == 0.0036 and attn_gate != 'headwise'"))
    assert not three["low_n"].any() and "†" not in render.reading_note(three)


def test_budget_matched_rows_compare_with_a_baseline_of_other_length():
    """A time_of design gives each gate its own num_iterations (the baseline's wall-clock): such rows still
    pair with the baseline; without the budget tag other lengths never pair (stage 2.5 vs 3 stay apart)."""
    none = [run("none", 0.0036, s, v, num_iterations=1500) for s, v in ((1, 3.30), (2, 3.31), (3, 3.29))]
    gated = [run("elementwise", 0.0036, s, v, num_iterations=1412) for s, v in ((1, 3.28), (2, 3.30), (3, 3.27))]
    plain = stage_table(pd.DataFrame(none + gated))
    assert math.isnan(plain.set_index("attn_gate").at["elementwise", "delta"])
    budget = pd.DataFrame([r | {"budget_matched": "num_iterations"} for r in none + gated])
    row = stage_table(budget).set_index("attn_gate").loc["elementwise"]
    diffs = [3.28 - 3.30, 3.30 - 3.31, 3.27 - 3.29]
    assert row["test"] == "paired" and row["num_iterations"] == 1412
    assert row["delta"] == pytest.approx(statistics.mean(diffs))
    assert row["p_value"] == pytest.approx(sps.ttest_1samp(diffs, 0).pvalue)
