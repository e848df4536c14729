"""The decision in MLflow: the seed-averaged table and per-configuration metrics on a sweep's parent
run - pure builders, `gatesweep table --log`, the end of a sweep (SweepStore.finish_parent), and the
parent run's page in the real MLflow UI rendered by headless Chromium."""

import json
import math
import re
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from analysis.cli import import_main, table_main
from analysis.decision import TABLE_ARTIFACT, config_metrics, decision_frame, direction, metric_key, verdict
from analysis.fetch import find_sweep_run
from analysis.table import stage_table
from sweeps.errors import NoRunsError, SpecError
from tests.services import CHROMIUM, CHROMIUM_FLAGS, kill_process_group
from tests.test_analysis_mlflow import log_trial
from tests.test_analysis_study import tidy

STUDY = Path(__file__).parent / "fixtures" / "legacy" / "study"


def test_decision_frame_of_study_stage1():
    table = stage_table(tidy("results_stage1.csv", "stage1"))
    frame = decision_frame(table).set_index("config")
    e = frame.loc["elementwise/sigmoid"]
    assert (e["mean"], e["ci_low"], e["ci_high"]) == pytest.approx(
        (3.515899, 3.515899 - 0.007817, 3.515899 + 0.007817), abs=2e-6)
    # p-values to 6 significant digits (rounding to 6 decimals would print a p of 3.6e-06 as 4e-06)
    assert (e["delta_ci_low"], e["delta_ci_high"], e["p_adj"]) == (-0.02254, -0.012394, 0.0581934)
    assert e["decision"] == "undecided (p adj 0.0582)" and bool(e["low_n"]) is True
    assert (e["verdict"], e["interval"], e["n_pairs"]) == ("undecided", "95% CI, paired on 2 seeds", 2)
    assert frame.loc["none/sigmoid", "decision"] == "baseline" and frame.loc["none/sigmoid", "p_adj"] == ""
    assert frame.loc["none/sigmoid", "verdict"] == "baseline" and frame.loc["none/sigmoid", "n_pairs"] == ""
    # the UI shows the first columns without scrolling: the comparison, its verdict, Δ with its interval
    assert list(frame.reset_index().columns[:7]) == ["config", "verdict", "delta", "delta_ci_low", "delta_ci_high",
                                                     "interval", "decision"]
    metrics = config_metrics(frame.reset_index())
    assert metrics["cfg/elementwise-sigmoid/p_adj"] == 0.0581934 and metrics["cfg/none-sigmoid/n"] == 2.0
    assert "cfg/none-sigmoid/p_adj" not in metrics and "cfg/none-sigmoid/n_pairs" not in metrics
    # 5 configs x (mean, ci_low, ci_high, n) + 4 comparisons x (n_pairs, delta, ci_low, ci_high, p_adj); no time
    assert len(metrics) == 5 * 4 + 4 * 5


def test_verdict_and_metric_key():
    assert verdict(-0.02, 0.0015, "paired") == "lower loss than baseline (p adj 0.0015)"
    assert verdict(0.01, 0.01, "welch") == "higher loss than baseline (p adj 0.01)"
    assert verdict(-0.02, 0.058, "paired") == "undecided (p adj 0.058)"
    # a p adj just below 0.05 never prints as 0.05 beside "lower loss"
    assert verdict(-0.02, 0.049996, "paired") == "lower loss than baseline (p adj 0.049996)"
    assert [direction(-0.02, 0.01, "paired"), direction(0.02, 0.01, "welch"), direction(-0.02, 0.06, "paired"),
            direction(-0.02, math.nan, "n/a"), direction(math.nan, math.nan, "baseline")] == \
        ["better", "worse", "undecided", "no test", "baseline"]
    assert verdict(-0.02, math.nan, "n/a") == "no test (fewer than 2 seeds)"
    assert verdict(math.nan, math.nan, "") == "no baseline"
    assert verdict(math.nan, math.nan, "baseline (no finished runs)") == "baseline (no finished runs)"
    assert metric_key("elementwise/sigmoid lr=0.00468") == "elementwise-sigmoid lr_0.00468"


def chromium(url: str, *mode: str, timeout_s: float = 120.0) -> str:
    """Headless Chromium at a desktop window size (the UI's artifact table renders its rows only
    with a viewport); returns stdout (the DOM for --dump-dom)."""
    profile = tempfile.mkdtemp(dir="/tmp", prefix="gs-chromium-")
    cmd = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=2400,1000",
           "--virtual-time-budget=20000", *mode, url]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill_process_group(proc, grace_s=2.0)
        raise
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert proc.returncode == 0, err[-2000:]
    return out


@pytest.mark.mlflow
def test_table_log_puts_the_decision_on_the_sweep_run_and_the_ui_shows_it(mlflow_server, capsys, tmp_path):
    from mlflow import MlflowClient

    name = f"test-decision-{uuid.uuid4().hex[:8]}"
    common = ["--experiment", name, "--tracking-uri", mlflow_server.uri]
    import_main([str(STUDY / "results_stage_3.csv"), "--stage", "stage3", *common])
    import_main([str(STUDY / "log_curves_stage3.csv"), *common])
    with pytest.raises(SpecError, match="--log writes the statistics table; drop --compat"):
        table_main(["--stage", "stage3", "--compat", "--log", *common])
    with pytest.raises(SpecError, match="--log needs exactly one stage"):
        table_main(["--stage", "stage3", "--stage", "stage3.5", "--log", *common])
    client = MlflowClient(mlflow_server.uri)
    bare = f"{name}-bare"  # trial runs logged without a sweep run
    log_trial(client, client.create_experiment(bare), "0" * 32, gate="none", seed=1, final=3.3)
    with pytest.raises(NoRunsError, match="no sweep run .* of stage stage1; run or import"):
        table_main(["--stage", "stage1", "--log", "--experiment", bare, "--tracking-uri", mlflow_server.uri])
    for _ in range(2):  # a second --log replaces the table, never appends to it
        assert table_main(["--stage", "stage3", "--format", "csv", "--log", *common]) == 0
    assert "logged the decision table and" in capsys.readouterr().err
    parent = find_sweep_run([name], stage="stage3", tracking_uri=mlflow_server.uri)
    run = client.get_run(parent)
    assert {"path": TABLE_ARTIFACT, "type": "table"} in json.loads(run.data.tags["mlflow.loggedArtifacts"])
    table = json.loads(Path(client.download_artifacts(parent, TABLE_ARTIFACT, str(tmp_path))).read_text())
    rows = {r[0]: dict(zip(table["columns"], r, strict=True)) for r in table["data"]}
    assert set(rows) == {"elementwise", "none"}
    e = rows["elementwise"]
    assert e["decision"] == "lower loss than baseline (p adj 0.00153)" and e["n"] == 3
    assert e["delta_time_ci_low"] < 0 < e["delta_time_ci_high"]
    m = run.data.metrics
    assert m["cfg/elementwise/mean"] == e["mean"] and m["cfg/elementwise/ci_low"] == e["ci_low"]
    assert m["cfg/elementwise/p_adj"] == pytest.approx(0.00152692) and "cfg/none/p_adj" not in m
    readme = Path(client.download_artifacts(parent, "decision/README.md", str(tmp_path))).read_text()
    assert "| elementwise " in readme and "How to read" in readme

    url = f"{mlflow_server.uri}/#/experiments/{run.info.experiment_id}/runs/{parent}/artifacts/{TABLE_ARTIFACT}"
    text = ""
    for _ in range(3):  # a loaded 2-core machine may need a second look
        text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", chromium(url, "--dump-dom")))
        if "lower loss than baseline" in text:
            break
    assert "View as table" in text and "delta_time_ci_low" in text
    # the verdict columns first: comparison, verdict, Δ with its interval, the decision in words
    assert ("elementwise better -0.020428 -0.023867 -0.01699 95% CI, paired on 3 seeds lower loss than baseline "
            "(p adj 0.00153) 3 3 3.272271 3.269461 3.27508") in text
    png = tmp_path / "parent_run_decision.png"
    chromium(url, f"--screenshot={png}")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


@pytest.mark.mlflow
def test_a_sweep_run_gets_its_decision_when_it_ends(mlflow_server, monkeypatch, capsys):
    from mlflow import MlflowClient

    from cluster.common.store import SweepStore

    name = f"test-sweep-decision-{uuid.uuid4().hex[:8]}"
    store = SweepStore(mlflow_server.uri, name)
    client = MlflowClient(mlflow_server.uri)
    parent = store.start_parent(spec="demo", stage="stage1", backend="local", n_trials=4, spec_path="demo.yaml")
    for gate, seed, final in [("none", 1, 3.30), ("none", 2, 3.32), ("elementwise", 1, 3.27), ("elementwise", 2, 3.28)]:
        log_trial(client, store.experiment_id, parent, gate=gate, seed=seed, final=final)
    log_trial(client, store.experiment_id, parent, gate="none", seed=1, stage="stage2", final=3.0)  # other stage
    store.finish_parent("FINISHED")
    assert capsys.readouterr().err == ""
    run = client.get_run(parent)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["cfg/elementwise/mean"] == pytest.approx(3.275)
    assert run.data.metrics["cfg/elementwise/delta"] == pytest.approx(3.275 - 3.31)
    assert run.data.metrics["cfg/none/n"] == 2.0  # the stage2 run is not in this stage's table
    assert TABLE_ARTIFACT in {a.path for a in client.list_artifacts(parent, "decision")}
    # a sweep that ran nothing: no table, no warning; a broken analysis: a warning, the sweep stands
    empty = SweepStore(mlflow_server.uri, f"{name}-empty")
    empty.start_parent(spec="none", stage="s", backend="local", n_trials=0, spec_path="x.yaml")
    empty.finish_parent("KILLED")
    assert capsys.readouterr().err == ""

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("analysis.decision.log_decision", broken)
    again = SweepStore(mlflow_server.uri, name)
    p2 = again.start_parent(spec="demo", stage="stage1", backend="local", n_trials=0, spec_path="demo.yaml")
    again.finish_parent("FINISHED")
    err = capsys.readouterr().err
    assert f"warning: no decision table on sweep run {p2} (RuntimeError: boom)" in err
    assert client.get_run(p2).info.status == "FINISHED"
