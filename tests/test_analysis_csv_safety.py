"""Every CSV the toolkit writes is formula-safe: text that a spreadsheet would evaluate (= + - @ tab
CR first) gets a leading quote (OWASP), numbers - negative deltas included - stay numbers. Checked on
render.to_csv and end to end on `gatesweep table --format csv` and the report's table.csv and
compat.csv, over runs whose config values came into MLflow from elsewhere (not through the import)."""

from __future__ import annotations

import csv
import io
import uuid

import pandas as pd
import pytest

from analysis.cli import report_main, table_main
from analysis.render import to_csv

HOSTILE = ['=HYPERLINK("http://evil.example","click")', "+cmd|' /C calc'!A0", "-2+3+cmd|' /C calc'!A0",
           "@SUM(1+1)*cmd|' /C calc'!A0", "\t=1+1", "\r=1+1"]


def cells(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def test_to_csv_quotes_formulas_and_keeps_numbers():
    df = pd.DataFrame({"label": [*HOSTILE, "plain", "-0.0123", "+0.5", "1e-3"],
                       "delta": [-0.0123, 0.5, -1e-9, 0.0, 2.0, -3.25, float("nan"), -0.0, 1.0, 4.0]})
    rows = cells(to_csv(df))
    assert rows[0] == ["label", "delta"]
    labels = [r[0] for r in rows[1:]]
    assert labels[:6] == ["'" + h for h in HOSTILE]
    assert labels[6:] == ["plain", "-0.0123", "+0.5", "1e-3"]  # number-shaped text is a number, not a formula
    deltas = [r[1] for r in rows[1:]]
    assert deltas[0] == "-0.0123" and float(deltas[2]) == -1e-9 and deltas[5] == "-3.25" and deltas[6] == ""


def _log(client, exp_id, gate: str, seed: int, loss: float, stage: str = "s1") -> None:
    from mlflow.entities import Metric, Param, RunTag

    tags = {"gatesweep.kind": "trial", "trial_id": f"t{uuid.uuid4().hex[:8]}", "spec": "x", "stage": stage,
            "seed": str(seed), "status": "FINISHED", "backend": "local"}
    rid = client.create_run(exp_id, tags=tags).info.run_id
    t = 1_700_000_000_000
    client.log_batch(rid, params=[Param("attn_gate", gate), Param("learning_rate", "0.0036")],
                     metrics=[Metric("final_val_loss", loss, t, 100), Metric("train_time_ms", 1000.0 + seed, t, 100)],
                     tags=[RunTag("gpu_name", "+cmd|' /C calc'!A0")])
    client.set_terminated(rid, "FINISHED")


@pytest.mark.mlflow
def test_table_and_report_csvs_are_formula_safe(mlflow_server, tmp_path, capsys):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server.uri)
    name = f"test-csv-{uuid.uuid4().hex[:8]}"
    exp_id = client.create_experiment(name)
    for seed in (0, 1, 2):
        _log(client, exp_id, "none", seed, 3.30 + seed / 100)
        _log(client, exp_id, "headwise", seed, 3.28 + seed / 100 + seed * 0.001)  # Δ ≈ -0.019: better
        _log(client, exp_id, HOSTILE[0], seed, 3.40 + seed / 100)
    common = ["--stage", "s1", "--experiment", name, "--tracking-uri", mlflow_server.uri]

    assert table_main([*common, "--format", "csv"]) == 0
    table = cells(capsys.readouterr().out)
    assert report_main([*common, "--out", str(tmp_path), "--no-attach"]) == 0
    capsys.readouterr()
    report_table = cells((tmp_path / "s1" / "table.csv").read_text())
    compat = cells((tmp_path / "s1" / "compat.csv").read_text())
    for rows in (table, report_table, compat):
        gates = [r[rows[0].index("attn_gate")] for r in rows[1:]]
        assert "'" + HOSTILE[0] in gates and HOSTILE[0] not in gates, gates
        assert not any(c.startswith(("=", "+", "@", "\t", "\r")) for r in rows for c in r), rows
    for rows in (table, report_table):
        head = rows[0]
        by_gate = {r[head.index("attn_gate")]: r for r in rows[1:]}
        delta = by_gate["headwise"][head.index("delta")]
        assert float(delta) == pytest.approx(-0.019, abs=1e-9)  # a negative number, written as one
        assert by_gate["headwise"][head.index("delta_ci_low")].startswith("-")
