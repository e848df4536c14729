"""analysis.plots: PNGs are written and the arrays drawn are the expected aggregates."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.plots import (
    is_lr_stage,
    plot_lr_sweep,
    plot_per_layer,
    plot_stage_bars,
    plot_val_curves,
    plot_val_vs_time,
)
from analysis.table import stage_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 5_000  # axes, lines and labels, not an empty canvas


def runs_frame():
    rows = []
    for gate, lr, base in [("none", 0.0036, 3.30), ("elementwise", 0.0036, 3.27),
                           ("none", 0.00468, 3.28), ("elementwise", 0.00468, 3.25)]:
        for seed in (1, 2):
            rows.append({"mlflow_run_id": f"{gate}-{lr}-{seed}", "stage": "s", "seed": seed, "status": "FINISHED",
                         "attn_gate": gate, "learning_rate": lr, "final_val_loss": base + seed / 100,
                         "train_time_ms": 6e5, "ms_per_step": 400.0,
                         **{f"diag/gate_mean/layer_{i:02d}": (0.5 if gate == "none" else 0.1) * (i + 1) + seed
                            for i in range(3)}})
    rows.append({**rows[0], "mlflow_run_id": "failed", "status": "FAILED", "final_val_loss": float("nan"),
                 "diag/gate_mean/layer_00": 99.0})
    return pd.DataFrame(rows)


def test_val_curves(tmp_path):
    runs = runs_frame()
    hist = pd.DataFrame(
        [{"mlflow_run_id": r, "key": "val_loss", "step": s, "value": v}
         for r, off in [("none-0.0036-1", 0.0), ("none-0.0036-2", 0.2)]
         for s, v in [(0, 10.0 + off), (125, 5.0 + off), (250, 4.0 + off)]]
        + [{"mlflow_run_id": "failed", "key": "val_loss", "step": 0, "value": 50.0},
           {"mlflow_run_id": "none-0.0036-1", "key": "train_loss", "step": 0, "value": 77.0}])
    out = tmp_path / "reports" / "s" / "val.png"
    drawn = plot_val_curves(hist, runs, out)
    assert list(drawn) == ["none lr=0.0036"]  # configs without history are skipped; FAILED not drawn
    a = drawn["none lr=0.0036"]
    np.testing.assert_array_equal(a["step"], [0, 125, 250])
    np.testing.assert_allclose(a["mean"], [10.1, 5.1, 4.1])
    np.testing.assert_allclose(a["lo"], [10.0, 5.0, 4.0])
    np.testing.assert_allclose(a["hi"], [10.2, 5.2, 4.2])
    assert_png(out)
    sd = plot_val_curves(hist, runs, tmp_path / "sd.png", band="std")["none lr=0.0036"]
    np.testing.assert_allclose(sd["hi"] - sd["mean"], np.std([0.0, 0.2], ddof=1))


def test_lr_sweep_and_bars(tmp_path):
    table = stage_table(runs_frame())
    assert is_lr_stage(table)
    drawn = plot_lr_sweep(table, tmp_path / "lr.png")
    assert list(drawn) == ["elementwise", "none"]
    np.testing.assert_array_equal(drawn["none"]["learning_rate"], [0.0036, 0.00468])
    np.testing.assert_allclose(drawn["none"]["mean"], [3.315, 3.295])
    np.testing.assert_allclose(drawn["none"]["ci95"], table["ci95"].iloc[2:4])
    assert_png(tmp_path / "lr.png")
    bars = plot_stage_bars(table, tmp_path / "bars.png")
    assert list(bars["labels"])[0] == "elementwise lr=0.0036"
    np.testing.assert_allclose(bars["mean"], [3.285, 3.265, 3.315, 3.295])
    assert_png(tmp_path / "bars.png")


def test_per_layer(tmp_path):
    drawn = plot_per_layer(runs_frame(), "diag/gate_mean", tmp_path / "layers.png")
    np.testing.assert_array_equal(drawn["none lr=0.0036"]["layer"], [0, 1, 2])
    # mean over seeds 1 and 2 of 0.5 * (i + 1) + seed; the FAILED run's 99 is left out
    np.testing.assert_allclose(drawn["none lr=0.0036"]["mean"], [2.0, 2.5, 3.0])
    np.testing.assert_allclose(drawn["elementwise lr=0.00468"]["mean"], [1.6, 1.7, 1.8])
    assert_png(tmp_path / "layers.png")
    with pytest.raises(ValueError, match="diag/nothing/layer_NN"):
        plot_per_layer(runs_frame(), "diag/nothing", tmp_path / "x.png")


def test_val_vs_wall_clock(tmp_path):
    runs = runs_frame()
    rows = []
    for r, off, ms_per_step in [("none-0.0036-1", 0.0, 400.0), ("none-0.0036-2", 0.2, 440.0),
                                ("elementwise-0.0036-1", 0.1, 500.0)]:
        for s, v in [(0, 10.0), (125, 5.0), (250, 4.0)]:
            rows += [{"mlflow_run_id": r, "key": "val_loss", "step": s, "value": v + off},
                     {"mlflow_run_id": r, "key": "train_time_ms", "step": s, "value": s * ms_per_step}]
    rows.append({"mlflow_run_id": "none-0.0036-1", "key": "val_loss", "step": 300, "value": 3.9})  # no time
    out = tmp_path / "time.png"
    drawn = plot_val_vs_time(pd.DataFrame(rows), runs, out)
    assert set(drawn) == {"none lr=0.0036", "elementwise lr=0.0036"}
    none = drawn["none lr=0.0036"]
    np.testing.assert_allclose(none["minutes"], [0.0, 125 * 420 / 60_000, 250 * 420 / 60_000])  # mean time
    np.testing.assert_allclose(none["mean"], [10.1, 5.1, 4.1])  # step 300 has no time: left out
    np.testing.assert_allclose(drawn["elementwise lr=0.0036"]["minutes"][-1], 250 * 500 / 60_000)
    assert_png(out)
    only_loss = pd.DataFrame([r for r in rows if r["key"] == "val_loss"])
    assert plot_val_vs_time(only_loss, runs, tmp_path / "none.png") == {}
    assert not (tmp_path / "none.png").exists()
