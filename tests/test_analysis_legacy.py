"""analysis.legacy: results CSVs (full and subset schema) and reference-format logs, text only."""

import datetime as dt
from pathlib import Path

import pytest

from analysis.legacy import (
    check_log_matches,
    coerce,
    config_mismatch,
    is_curves_header,
    legacy_trial_id,
    parse_curves_csv,
    parse_log,
    parse_results_csv,
    tidy_frame,
)
from trainer.errors import DataError

FIX = Path(__file__).parent / "fixtures" / "legacy"


def read(rel: str):
    return parse_results_csv((FIX / rel).read_text(), str(FIX / rel))


def test_full_schema_row_maps_to_params_metrics_and_tags():
    runs = read("study/results_stage1.csv")
    assert len(runs) == 10
    r = runs[6]
    assert (r.run_id, r.seed, r.stage) == ("a20aac7c-a45b-417c-9796-c0913e3a6426", 1337, None)
    assert r.params["attn_gate"] == "headwise" and r.params["gate_act"] == "ns_sigmoid"
    assert r.params["learning_rate"] == 0.0036 and r.params["num_iterations"] == 1500
    assert r.params["runpod_instance"] == "unknown"  # unknown column kept as a param
    assert r.metrics["final_val_loss"] == 3.5277202129364014
    assert r.metrics["train_time_ms"] == 607888.3190155029
    assert r.tags["git_sha"] == "21aae13b20675947154a15b640706eb3a47e5fcd"
    assert r.tags["gpu_name"] == "NVIDIA A100 80GB PCIe" and r.tags["n_gpus"] == "8"
    assert "mlflow.note.content" not in r.tags  # empty notes are not a tag
    assert r.start_time_ms == int(dt.datetime(2025, 12, 7, 11, 2, 55, tzinfo=dt.UTC).timestamp() * 1000)
    assert r.defaulted == ()


def test_subset_schema_gets_only_safe_defaults():
    none_run, gated_run = read("demo/original_baseline.csv")
    assert none_run.params["batch_size"] == 512 and none_run.params["sequence_length"] == 1024
    assert none_run.params["gate_pos"] == "sdpa" and none_run.params["gate_act"] == "sigmoid"
    assert none_run.params["cluster"] == "lab-a"
    assert set(none_run.defaulted) == {"batch_size", "device_batch_size", "sequence_length", "gate_pos", "gate_act"}
    # a gated run without gate settings: guessing them could be wrong, so they stay missing
    assert "gate_act" not in gated_run.params and "gate_pos" not in gated_run.params
    assert "gate_act" not in gated_run.defaulted
    assert "git_sha" not in none_run.tags and none_run.start_time_ms is None


def test_stage_column_and_notes():
    runs = read("demo/results.csv")
    assert [r.stage for r in runs].count("screen") == 4 and [r.stage for r in runs].count("lr") == 8
    assert runs[3].tags["mlflow.note.content"] == "re-run after a node reboot"


@pytest.mark.parametrize("text, message", [
    ("run_id,seed,best_val_loss\nx,1,3.2\n", "missing required column 'final_val_loss'"),
    ("seed,final_val_loss\n1,3.2\n", "missing required column 'run_id'"),
    ("run_id,final_val_loss\nx,3.2\nx,3.3\n", "appears twice"),
    ("run_id,final_val_loss\nx,\n", "final_val_loss is empty"),
    ("run_id,final_val_loss\n,3.2\n", "run_id is empty"),
    ("run_id,final_val_loss,seed\nx,3.2,one\n", "seed='one' is not an integer"),
    ("run_id,final_val_loss\nx,low\n", "final_val_loss='low' is not a number"),
    ("run_id,final_val_loss\n", "no data rows"),
])
def test_bad_csv_names_file_and_problem(text, message):
    with pytest.raises(DataError, match=message) as e:
        parse_results_csv(text, "exp/results.csv")
    assert str(e.value).startswith("exp/results.csv")


def test_trial_id_is_stable_and_depends_on_file_name_not_directory():
    a = legacy_trial_id("/a/results.csv", "r1")
    assert a == legacy_trial_id("/elsewhere/results.csv", "r1") == legacy_trial_id("results.csv", "r1")
    assert a != legacy_trial_id("results.csv", "r2") and a != legacy_trial_id("other.csv", "r1")
    assert len(a) == 12
    assert read("demo/results.csv")[0].trial_id == legacy_trial_id("results.csv", "demo-a1")


def test_coerce():
    assert coerce("512") == 512 and coerce("0.00468") == 0.00468 and coerce("1e-3") == 0.001
    assert coerce("sdpa") == "sdpa" and coerce("") is None and coerce("  ") is None
    assert coerce("abc123") == "abc123"


def test_parse_log_points():
    log = parse_log((FIX / "demo/logs/demo-a1.txt").read_text(), "demo-a1.txt")
    assert log.num_iterations == 20 and log.torch_version == "2.5.0+cu124" and log.cuda_version == "12.4"
    points = {(k, s): v for k, s, v in log.points}
    assert {s for k, s in points if k == "val_loss"} == {0, 10, 20}
    assert points[("val_loss", 20)] == 4.1 and points[("train_loss", 1)] == pytest.approx(10.56)
    assert {s for k, s in points if k == "train_loss"} == set(range(1, 21))
    # step_avg is "nan" through step 11 in the reference format: not logged
    assert min(s for k, s in points if k == "step_avg_ms") == 12
    assert points[("train_time_ms", 20)] == 3000.0
    assert len(points) == len(log.points)  # one value per (key, step)
    # the f-string in the logged code must not be read as a step line
    assert all(isinstance(v, float) for v in points.values())


def test_parse_log_without_middle_separator_and_resumed_steps():
    log = parse_log((FIX / "demo/logs/demo-b1.txt").read_text(), "demo-b1.txt")
    points = {(k, s): v for k, s, v in log.points}
    assert points[("train_loss", 15)] == pytest.approx(5.775)  # the resumed (later) value wins
    assert points[("train_loss", 16)] == pytest.approx(5.44)
    assert points[("val_loss", 20)] == 4.05
    assert log.torch_version == "2.5.0+cu124"


def test_parse_log_rejects_other_text():
    with pytest.raises(DataError, match="x.txt: no 'step:N/M"):
        parse_log("hello\nstep:{step}/{n} val_loss:{v}\n", "x.txt")


def test_log_must_match_the_row():
    run = next(r for r in read("demo/results.csv") if r.run_id == "demo-c1")  # 10 iterations
    log = parse_log((FIX / "demo/logs/demo-a1.txt").read_text(), "demo-a1.txt")  # 20 iterations
    with pytest.raises(DataError, match="log has 20 iterations .* num_iterations=10"):
        check_log_matches(run, log, "logs/demo-c1.txt")


def test_tidy_frame_has_the_fetch_schema():
    df = tidy_frame(read("demo/original_baseline.csv"), stage="s3.5")
    assert list(df.columns[:7]) == ["mlflow_run_id", "trial_id", "spec", "stage", "seed", "status", "backend"]
    assert df["stage"].tolist() == ["s3.5", "s3.5"] and df["spec"].iloc[0] == "original_baseline"
    assert df["final_val_loss"].tolist() == [3.2938, 3.2951]


def test_a_val_step_keeps_the_val_lines_clock_as_the_trainer_logs_it():
    text = ("step:0/2 val_loss:11.0 train_time:152ms step_avg:nanms\n"
            "step:1/2 train_loss:10.0 train_time:77942ms step_avg:nanms\n"
            "step:2/2 train_loss:9.0 train_time:600ms step_avg:300.00ms\n"
            "step:2/2 val_loss:9.5 train_time:611ms step_avg:305.50ms\n")
    points = {(k, s): v for k, s, v in parse_log(text, "x.txt").points}
    assert points[("train_time_ms", 0)] == 152.0 and points[("train_time_ms", 2)] == 611.0
    assert points[("train_time_ms", 1)] == 77942.0 and points[("step_avg_ms", 2)] == 300.0


def test_parse_the_studys_curve_csvs():
    text = (FIX / "study/log_curves_stage3.csv").read_text()
    curves = parse_curves_csv(text, "log_curves_stage3.csv")
    assert len(curves) == 6
    c = curves["cadd9fa4-5d2f-4de3-845e-60fed27b6c1e"]
    assert c.config == {"attn_gate": "none", "learning_rate": 0.00468}
    val = {s: v for k, s, v in c.points if k == "val_loss"}
    ms = {s: v for k, s, v in c.points if k == "train_time_ms"}
    assert len(val) == len(ms) == 42 and val[5100] == 3.292 and ms[5100] == 1476861.0 and ms[0] == 152.0
    stage1 = parse_curves_csv((FIX / "study/stage_1_log_curves.csv").read_text(), "stage_1_log_curves.csv")
    assert stage1["9c5dec76-4726-4e4b-a84a-dbbe36296948"].config == {
        "num_iterations": 1500, "attn_gate": "headwise", "gate_act": "ns_sigmoid", "gate_pos": "sdpa"}
    assert is_curves_header(text.splitlines()[0].split(","))
    results_header = (FIX / "study/results_stage1.csv").read_text().splitlines()[0].split(",")
    assert not is_curves_header(results_header)


@pytest.mark.parametrize("text, match", [
    ("run_id,step,val_loss\na,0,1.0\n", r"c\.csv: missing column\(s\) train_time_ms"),
    ("run_id,step,val_loss,train_time_ms\na,0,x,5\n", r"c\.csv:2: val_loss='x' is not a number"),
    ("run_id,step,val_loss,train_time_ms\na,-1,1.0,5\n", r"c\.csv:2: needs a run_id and an integer step"),
    ("run_id,step,val_loss,train_time_ms,attn_gate\na,0,1.0,5,none\na,1,1.0,5,headwise\n",
     r"c\.csv:3: run a changes its config"),
    ("run_id,step,val_loss,train_time_ms\n", r"c\.csv: no data rows"),
])
def test_curve_csv_errors_name_the_line_and_field(text, match):
    with pytest.raises(DataError, match=match):
        parse_curves_csv(text, "c.csv")


def test_config_mismatch():
    params = {"attn_gate": "elementwise", "learning_rate": 0.00468, "num_iterations": 5100}
    assert config_mismatch({"attn_gate": "elementwise", "learning_rate": 0.00468, "gate_act": "x"}, params) == ""
    assert config_mismatch({"num_iterations": 1500}, params) == "num_iterations=1500 here but num_iterations=5100 in the imported run"
    assert config_mismatch({"attn_gate": "none"}, params).startswith("attn_gate=none here")
