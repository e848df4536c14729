"""analysis.timematch and the time-matched columns of stage_table, on hand-made curves; expected
values computed by hand (linear interpolation written out), not with np.interp."""

import math

import pandas as pd
import pytest
from scipy import stats as sps

from analysis import render
from analysis.table import stage_table
from analysis.timematch import NO_CURVE, SHORT_CURVE, Curve, curves_from_histories, loss_at, time_matched


def hist(run_id, points, timestamp=0):
    """points: (step, train_time_ms, val_loss) -> long history rows."""
    rows = []
    for step, ms, loss in points:
        rows += [{"mlflow_run_id": run_id, "key": "val_loss", "step": step, "value": loss},
                 {"mlflow_run_id": run_id, "key": "train_time_ms", "step": step, "value": ms}]
    return rows


def test_curves_join_on_step_and_know_whether_they_reach_the_end():
    h = pd.DataFrame(hist("a", [(0, 10, 9.0), (100, 1000, 5.0), (200, 2000, 4.0)])
                     + hist("b", [(0, 10, 9.0), (100, 1100, 5.5)])
                     + [{"mlflow_run_id": "c", "key": "val_loss", "step": 0, "value": 9.0}]  # no time
                     + [{"mlflow_run_id": "a", "key": "train_loss", "step": 1, "value": 7.0}])
    curves = curves_from_histories(h, {"a": 200, "b": 200})
    assert set(curves) == {"a", "b"}
    assert curves["a"].time_ms.tolist() == [10, 1000, 2000] and curves["a"].loss.tolist() == [9.0, 5.0, 4.0]
    assert curves["a"].complete and not curves["b"].complete
    assert curves_from_histories(h, {})["b"].complete  # unknown last step: a FINISHED run's curve is whole


def test_loss_at_interpolates_holds_and_never_extrapolates():
    done = Curve(pd.Series([100.0, 1000.0, 2000.0]).to_numpy(), pd.Series([6.0, 5.0, 4.0]).to_numpy(), True)
    cut = Curve(done.time_ms, done.loss, False)
    assert loss_at(done, 1500.0) == pytest.approx(5.0 + (4.0 - 5.0) * (1500 - 1000) / (2000 - 1000))
    assert loss_at(done, 1000.0) == 5.0
    assert loss_at(done, 2500.0) == 4.0  # finished earlier: holds its final loss
    assert math.isnan(loss_at(cut, 2500.0))  # curve stops before the run's end: no extrapolation
    assert loss_at(cut, 1500.0) == pytest.approx(4.5)
    assert math.isnan(loss_at(done, 50.0)) and math.isnan(loss_at(None, 1000.0))
    assert math.isnan(loss_at(done, math.nan))


def test_time_matched_pairs_by_seed_else_uses_the_mean_baseline_time():
    c = {"g1": Curve(pd.Series([0.0, 1000.0]).to_numpy(), pd.Series([5.0, 4.0]).to_numpy(), True),
         "g2": Curve(pd.Series([0.0, 2000.0]).to_numpy(), pd.Series([5.0, 3.0]).to_numpy(), True)}
    base = {1: (500.0, 4.6), 2: (1500.0, 4.4)}
    g, b, note = time_matched({1: "g1", 2: "g2"}, base, c)
    assert note == "" and b == {1: 4.6, 2: 4.4}
    assert g == pytest.approx({1: 4.5, 2: 5.0 - 2.0 * 1500 / 2000})
    g, _, _ = time_matched({7: "g1", 8: "g2"}, base, c)  # seeds differ: both read at the mean, 1000 ms
    assert g == pytest.approx({7: 4.0, 8: 4.0})
    g, _, note = time_matched({1: "g1", 2: "missing"}, base, c)
    assert g == {} and note == f"{NO_CURVE} (1 run)"


def run(gate, seed, loss, ms, rid):
    return {"mlflow_run_id": rid, "stage": "s", "seed": seed, "status": "FINISHED", "attn_gate": gate,
            "learning_rate": 0.00468, "num_iterations": 200, "final_val_loss": loss, "best_val_loss": loss,
            "train_time_ms": ms, "ms_per_step": ms / 200}


def test_stage_table_time_matched_columns():
    """A slower gate (2200 ms for 200 steps) read at each seed's baseline end time (2000/2010 ms)."""
    runs = pd.DataFrame([run("none", 1, 4.00, 2000.4, "n1"), run("none", 2, 4.02, 2010.2, "n2"),
                         run("none", 3, 4.01, 2005.0, "n3"),
                         run("elementwise", 1, 3.90, 2200.0, "e1"), run("elementwise", 2, 3.93, 2210.0, "e2"),
                         run("elementwise", 3, 3.91, 2205.0, "e3")])
    h = []
    for rid, end_ms, end_loss in (("n1", 2000, 4.00), ("n2", 2010, 4.02), ("n3", 2005, 4.01)):
        h += hist(rid, [(0, 5, 11.0), (100, end_ms / 2, 5.0), (200, end_ms, end_loss)])
    for rid, end_ms, end_loss in (("e1", 2200, 3.90), ("e2", 2210, 3.93), ("e3", 2205, 3.91)):
        h += hist(rid, [(0, 5, 11.0), (100, 1100, 4.6), (200, end_ms, end_loss)])
    t = stage_table(runs, histories=pd.DataFrame(h)).set_index("attn_gate")

    def by_hand(t_b, end_ms, end_loss):  # between (1100, 4.6) and (end_ms, end_loss)
        return 4.6 + (end_loss - 4.6) * (t_b - 1100) / (end_ms - 1100)

    g = [by_hand(2000, 2200, 3.90), by_hand(2010, 2210, 3.93), by_hand(2005, 2205, 3.91)]
    b = [4.00, 4.02, 4.01]
    e = t.loc["elementwise"]
    assert e["loss_at_base_time"] == pytest.approx(sum(g) / 3)
    assert e["delta_time"] == pytest.approx(sum(g) / 3 - sum(b) / 3)
    res = sps.ttest_rel(g, b)
    ci = res.confidence_interval(0.95)
    assert (e["delta_time_ci_low"], e["delta_time_ci_high"]) == pytest.approx((ci.low, ci.high))
    assert e["p_time"] == pytest.approx(res.pvalue) and e["p_time_adj"] == pytest.approx(res.pvalue)
    assert t.loc["none", "loss_at_base_time"] == pytest.approx(4.01) and math.isnan(t.loc["none", "delta_time"])
    shown = render.display_table(t.reset_index())
    assert shown.iloc[0]["delta_time"] == format(e["delta_time"], "+.4f")
    assert "Time-matched (≈, an approximation)" in render.reading_note(t)
    short = pd.DataFrame([p for p in h if not (p["mlflow_run_id"] == "e1" and p["step"] == 200)])
    t2 = stage_table(runs, histories=short).set_index("attn_gate")  # e1's curve stops at 1100 ms
    assert math.isnan(t2.loc["elementwise", "delta_time"])
    assert t2.loc["elementwise", "time_note"] == f"{SHORT_CURVE} (1 run)"
    assert render.footer(t2.reset_index()) == f"No time-matched Δ for 1 row(s): {SHORT_CURVE} (1 run)."
    assert stage_table(runs)["loss_at_base_time"].isna().all()  # no histories: not asked for
