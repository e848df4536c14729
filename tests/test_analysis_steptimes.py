"""analysis.steptimes: runs that shared a GPU are put on step times measured one process at a time, and
only then time-matched. Expectations computed by hand from the rule (time at step s = (s - 10) * ms)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from analysis import render, steptimes
from analysis.comparisons import SHARED_GPU
from analysis.table import stage_table
from trainer.errors import DataError

N = 110  # 100 timed steps


def run(gate, seed, loss, shared=3):
    return {"mlflow_run_id": f"{gate}-{seed}", "stage": "s", "seed": seed, "status": "FINISHED", "attn_gate": gate,
            "gate_act": "sigmoid", "gate_pos": "sdpa", "num_iterations": N, "final_val_loss": loss,
            "best_val_loss": loss, "train_time_ms": 99_999.0, "ms_per_step": 900.0, "gpu_shared": shared}


def history(run_id, losses):
    """val_loss and (shared-GPU, meaningless) train_time_ms at steps 10, 60, 110."""
    rows = []
    for step, loss in zip((10, 60, 110), losses, strict=True):
        rows.append({"mlflow_run_id": run_id, "key": "val_loss", "step": step, "value": loss})
        rows.append({"mlflow_run_id": run_id, "key": "train_time_ms", "step": step, "value": 7.0 * step * 3})
    return rows


@pytest.fixture
def data():
    runs = pd.DataFrame([run("none", 0, 3.0), run("none", 1, 3.1), run("headwise", 0, 2.9), run("headwise", 1, 3.0)])
    hist = pd.DataFrame(history("none-0", (5, 4, 3.0)) + history("none-1", (5, 4, 3.1))
                        + history("headwise-0", (5, 3.9, 2.9)) + history("headwise-1", (5, 4.0, 3.0)))
    return runs, hist


def bench_results(tmp_path: Path, none_ms=50.0, head_ms=55.0) -> Path:
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"meta": {}, "results": [
        {"label": "study-none", "gate": "none", "overrides": {}, "step_ms": none_ms, "exit_code": 0},
        {"label": "study-headwise", "gate": "headwise", "overrides": {}, "step_ms": head_ms, "exit_code": 0},
        {"label": "study-headwise-ns", "gate": "headwise", "overrides": {"gate_act": "ns_sigmoid"}, "step_ms": 60,
         "exit_code": 0},
        {"label": "broken", "gate": "const", "overrides": {}, "step_ms": 1.0, "exit_code": 1}]}))
    return path


def test_load_reads_bench_results_and_plain_lists(tmp_path: Path):
    ms = steptimes.load(bench_results(tmp_path))
    assert ms == {("none", "sigmoid", "sdpa"): 50.0, ("headwise", "sigmoid", "sdpa"): 55.0,
                  ("headwise", "ns_sigmoid", "sdpa"): 60.0}  # the failed job is not a step time
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps([{"attn_gate": "const", "ms_per_step": 42}]))
    assert steptimes.load(plain) == {("const", "sigmoid", "sdpa"): 42.0}
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(DataError, match="no step times in it"):
        steptimes.load(tmp_path / "bad.json")


def test_shared_runs_get_no_time_matched_delta_and_are_marked(data):
    runs, hist = data
    table = stage_table(runs, histories=hist).set_index("attn_gate")
    assert bool(table.at["headwise", "gpu_shared"]) and math.isnan(table.at["headwise", "delta_time"])
    assert table.at["headwise", "time_note"] == SHARED_GPU
    shown = render.display_table(stage_table(runs, histories=hist))
    assert all(v.endswith(render.SHARED_MARK) for v in shown["ms_per_step"])
    assert "not speed figures" in render.footer(stage_table(runs, histories=hist))


def test_retimed_runs_are_time_matched_on_the_measured_clock(data, tmp_path: Path):
    runs, hist = data
    runs, hist, missing = steptimes.retime(runs, hist, steptimes.load(bench_results(tmp_path)))
    assert missing == []
    assert runs.set_index("mlflow_run_id").at["headwise-0", "train_time_ms"] == 100 * 55.0
    t = hist[(hist["key"] == "train_time_ms") & (hist["mlflow_run_id"] == "none-0")]["value"].tolist()
    assert t == [0.0, 50 * 50.0, 100 * 50.0]
    row = stage_table(runs, histories=hist).set_index("attn_gate").loc["headwise"]
    assert not row["gpu_shared"] and row["ms_per_step"] == 55.0
    # baseline time 5000 ms; headwise's clock: 2750 ms at step 60, 5500 ms at step 110 -> 2250/2750 of the way
    frac = (5000 - 2750) / (5500 - 2750)
    at = [3.9 + frac * (2.9 - 3.9), 4.0 + frac * (3.0 - 4.0)]
    assert row["loss_at_base_time"] == pytest.approx(sum(at) / 2)
    assert row["delta_time"] == pytest.approx(sum(at) / 2 - 3.05)


def test_configurations_without_a_step_time_keep_their_flag(data, tmp_path: Path):
    runs, hist = data
    path = tmp_path / "only_none.json"
    path.write_text(json.dumps([{"attn_gate": "none", "ms_per_step": 50}]))
    runs, hist, missing = steptimes.retime(runs, hist, steptimes.load(path))
    assert missing == ["headwise/sigmoid/sdpa"]
    table = stage_table(runs, histories=hist).set_index("attn_gate")
    assert bool(table.at["headwise", "gpu_shared"]) and table.at["headwise", "time_note"] == SHARED_GPU
