"""`gatesweep import` of the study's curve CSVs and of a logs folder against a real MLflow server:
the histories become the imported runs' metric histories (idempotently) and the stage table's
time-matched columns read them as they read a logged run's."""

import io
import math
import uuid
from pathlib import Path

import pandas as pd
import pytest

from analysis.cli import import_main, report_main, table_main
from analysis.fetch import fetch_histories, fetch_runs
from analysis.legacy import legacy_trial_id
from analysis.table import stage_table
from sweeps.errors import SpecError
from tests.test_analysis_study import histories, tidy
from trainer.errors import DataError

pytestmark = pytest.mark.mlflow
FIX = Path(__file__).parent / "fixtures" / "legacy"
STUDY = FIX / "study"


@pytest.fixture
def exp(mlflow_server):
    name = f"test-hist-{uuid.uuid4().hex[:8]}"
    return name, ["--experiment", name, "--tracking-uri", mlflow_server.uri]


def test_curve_csv_import_is_idempotent_and_feeds_the_time_matched_table(mlflow_server, exp, capsys, tmp_path):
    name, common = exp
    uri = mlflow_server.uri
    assert import_main([str(STUDY / "results_stage_3.csv"), "--stage", "stage3", *common]) == 0
    assert import_main([str(STUDY / "log_curves_stage3.csv"), *common]) == 0
    assert import_main([str(STUDY / "log_curves_stage3.csv"), *common]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "attached histories from log_curves_stage3.csv to 6 run(s), 0 had them already" in out[1]
    assert "to 0 run(s), 6 had them already" in out[2]
    runs = fetch_runs([name], stage="stage3", tracking_uri=uri)
    rid = runs.set_index("trial_id")["mlflow_run_id"].iloc[0]
    legacy_id = runs.set_index("mlflow_run_id").loc[rid, "trial_id"]
    h = fetch_histories([rid], ("val_loss", "train_time_ms"), tracking_uri=uri)
    csv = pd.read_csv(STUDY / "log_curves_stage3.csv")
    source = runs.set_index("mlflow_run_id").loc[rid]
    one = csv[(csv["attn_gate"] == source["attn_gate"])]
    assert len(h[h["key"] == "val_loss"]) == 42 and legacy_id  # every evaluation, once
    assert set(h[h["key"] == "val_loss"]["value"]) <= set(one["val_loss"])
    # the summary stays the run's latest train_time_ms (full precision), not the curve's last point
    results = pd.read_csv(STUDY / "results_stage_3.csv").set_index("seed")
    row = runs.set_index("mlflow_run_id").loc[rid]
    same = results[results["attn_gate"] == row["attn_gate"]].loc[row["seed"]]
    assert row["train_time_ms"] == pytest.approx(same["train_time_ms"], abs=1e-6)

    assert table_main(["--stage", "stage3", "--format", "csv", *common]) == 0
    table = pd.read_csv(io.StringIO(capsys.readouterr().out)).set_index("attn_gate")
    pure = stage_table(tidy("results_stage_3.csv", "stage3"),
                       histories=histories("log_curves_stage3.csv")).set_index("attn_gate")
    # abs 1e-6: in MLflow the last train_time_ms point is the summary's full-precision value
    # (1476861.476 ms), which the curve CSV rounds to the ms; p moves in its 5th digit
    for col in ("delta", "delta_ci_low", "p_adj", "loss_at_base_time", "delta_time", "delta_time_ci_low",
                "delta_time_ci_high", "p_time_adj"):
        tol = 1e-3 * pure.loc["elementwise", col] if col.startswith("p_") else 1e-6
        assert table.loc["elementwise", col] == pytest.approx(pure.loc["elementwise", col], abs=tol), col
    assert table_main(["--stage", "stage3", "--format", "md", "--no-time", *common]) == 0
    assert "Δ time" not in capsys.readouterr().out

    assert report_main(["--stage", "stage3", *common, "--out", str(tmp_path), "--no-attach"]) == 0
    readme = (tmp_path / "stage3" / "README.md").read_text()
    assert "(val_loss_time.png)" in readme and "loss @ base time ≈" in readme and "Time-matched" in readme
    assert (tmp_path / "stage3" / "val_loss_time.png").stat().st_size > 5_000


def test_logs_folder_attaches_to_runs_imported_without_logs(mlflow_server, exp, capsys):
    from mlflow import MlflowClient

    name, common = exp
    assert import_main([str(FIX / "demo/results.csv"), *common]) == 0
    assert import_main([str(FIX / "demo/logs"), *common]) == 0
    assert import_main([str(FIX / "demo/logs"), *common]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "attached histories from logs to 2 run(s), 0 had them already" in out[1]
    assert "to 0 run(s), 2 had them already" in out[2]
    runs = fetch_runs([name], tracking_uri=mlflow_server.uri).set_index("trial_id")
    b1 = runs.loc[legacy_trial_id("results.csv", "demo-b1"), "mlflow_run_id"]
    h = fetch_histories([b1], ("val_loss", "train_loss", "train_time_ms"), tracking_uri=mlflow_server.uri)
    tl = h[h["key"] == "train_loss"].set_index("step")["value"]
    assert tl[15] == pytest.approx(5.775) and len(tl) == 20  # demo-b1: the resumed value wins
    assert sorted(h[h["key"] == "val_loss"]["step"]) == [0, 10, 20]
    client = MlflowClient(mlflow_server.uri)
    assert [a.path for a in client.list_artifacts(b1, "logs")] == ["logs/demo-b1.txt"]
    assert client.get_run(b1).data.metrics["train_time_ms"] == 6400.0  # the summary stays latest


def test_history_import_errors_write_nothing(mlflow_server, exp, tmp_path):
    name, common = exp
    with pytest.raises(SpecError, match="--logs/--stage apply to a results CSV"):
        import_main([str(STUDY / "log_curves_stage3.csv"), "--stage", "x", *common])
    import_main([str(STUDY / "results_stage_3.csv"), "--stage", "stage3", *common])
    with pytest.raises(DataError, match=r"none of its 5 run id\(s\) was imported"):
        import_main([str(STUDY / "log_curves.csv"), *common])
    wrong = tmp_path / "curves.csv"
    csv = pd.read_csv(STUDY / "log_curves_stage3.csv")
    csv.loc[csv["attn_gate"] == "elementwise", "attn_gate"] = "headwise"
    csv.to_csv(wrong, index=False)
    with pytest.raises(DataError, match=r"curves\.csv: run .*: attn_gate=headwise here but attn_gate=elementwise"):
        import_main([str(wrong), *common])
    runs = fetch_runs([name], tracking_uri=mlflow_server.uri)
    h = fetch_histories(runs["mlflow_run_id"], ("val_loss",), tracking_uri=mlflow_server.uri)
    assert h.empty  # the check runs before any run is written, the none-gate runs included
    with pytest.raises(DataError, match="nope.csv: no such file; give a results CSV, a curve CSV or a folder"):
        import_main([str(tmp_path / "nope.csv"), *common])
    assert not math.isnan(runs["final_val_loss"].iloc[0])
