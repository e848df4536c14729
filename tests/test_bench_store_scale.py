"""bench/store_scale.py's store is what MLflow's client would have written (its bulk inserts read back
like client-logged runs), and a report over many configurations draws a bounded number of them: the
best by final loss and their baselines, with a note of how many were left out."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from analysis import plots
from analysis.cli import report_main
from analysis.fetch import fetch_histories, fetch_runs
from analysis.table import config_label, stage_table
from bench.store_scale import EXPERIMENT, SPEC, STAGE, T0, fill_store, trials

KEYS = ("val_loss", "train_time_ms", "train_loss")


def log_with_client(uri: str, runs: list[dict]) -> None:
    """The same runs through MlflowClient, one log_batch per run, as trainer.mlflow_sync sends them."""
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment(EXPERIMENT)
    parent = client.create_run(exp, tags={"gatesweep.kind": "sweep", "spec": SPEC, "stage": STAGE}).info.run_id
    for i, r in enumerate(runs):
        start = T0 + 1000 * i
        end = start + int(r["summary"]["train_time_ms"])
        tags = {"gatesweep.kind": "trial", "trial_id": f"{i:012x}", "spec": SPEC, "stage": STAGE,
                "seed": str(r["seed"]), "backend": "local", "status": "FINISHED", "mlflow.parentRunId": parent}
        rid = client.create_run(exp, start_time=start, tags=tags).info.run_id
        points = [Metric(k, v, start + s, s) for k, vs in r["history"].items() for s, v in zip(r["steps"], vs, strict=True)]
        points += [Metric(k, v, end, r["steps"][-1]) for k, v in r["summary"].items()]
        client.log_batch(rid, metrics=points, params=[Param(k, str(v)) for k, v in r["config"].items()],
                         tags=[RunTag("gpu_name", "NVIDIA H200")])
        client.set_terminated(rid, "FINISHED", end_time=end)


def test_the_bulk_filled_store_reads_like_client_logged_runs(tmp_path):
    runs = trials(12, seeds=2, points=4)
    fast, slow = f"sqlite:///{tmp_path}/fast.db", f"sqlite:///{tmp_path}/slow.db"
    fill_store(fast, tmp_path / "a1", runs)
    log_with_client(slow, runs)
    frames = [fetch_runs([EXPERIMENT], stage=STAGE, tracking_uri=u) for u in (fast, slow)]
    a, b = (f.drop(columns="mlflow_run_id").set_index("trial_id").sort_index() for f in frames)
    pd.testing.assert_frame_equal(a, b, check_like=True)
    assert len(a) == 12 and set(a["status"]) == {"FINISHED"} and a["final_val_loss"].notna().all()
    hists = []
    for f, u in zip(frames, (fast, slow), strict=True):
        h = fetch_histories(f["mlflow_run_id"].tolist(), KEYS, tracking_uri=u)
        h["mlflow_run_id"] = h["mlflow_run_id"].map(dict(zip(f["mlflow_run_id"], f["trial_id"], strict=True)))
        hists.append(h.sort_values(["mlflow_run_id", "key", "step"]).reset_index(drop=True))
    pd.testing.assert_frame_equal(*hists)
    assert len(hists[0]) == 12 * 3 * 4  # 4 steps a key (the summary re-logs train_time_ms at the last one)
    # the stage table reads both alike, time-matched columns included
    t = [stage_table(f, histories=fetch_histories(f["mlflow_run_id"].tolist(), KEYS[:2], tracking_uri=u))
         for f, u in zip(frames, (fast, slow), strict=True)]
    pd.testing.assert_frame_equal(t[0], t[1])


def independent_pick(table: pd.DataFrame, limit: int) -> set[int]:
    """Best `limit` rows by final loss, plus the none row with the same learning rate for each."""
    best = set(table.sort_values("final_val_loss").index[:limit])
    base = {lr: i for i, (g, lr) in enumerate(zip(table["attn_gate"], table["learning_rate"], strict=True)) if g == "none"}
    return best | {base[table.at[i, "learning_rate"]] for i in best}


def test_a_report_of_many_configurations_draws_the_best_and_their_baselines(tmp_path, capsys):
    runs = trials(160, seeds=2, points=5)  # 80 configurations: 4 gates x 20 learning rates
    uri = f"sqlite:///{tmp_path}/s.db"
    fill_store(uri, tmp_path / "art", runs)
    frame = fetch_runs([EXPERIMENT], stage=STAGE, tracking_uri=uri)
    table = stage_table(frame)
    rows, left_out = plots.pick_configs(table)
    expect = independent_pick(table, plots.MAX_CONFIGS)
    assert set(rows) == expect and left_out == 80 - len(expect) and 0 < left_out < 80 - plots.MAX_CONFIGS
    hist = fetch_histories(frame["mlflow_run_id"].tolist(), ("val_loss",), tracking_uri=uri)
    drawn = plots.plot_val_curves(hist, plots.runs_of(frame, table, rows), tmp_path / "v.png", keys=plots.table_keys(table))
    shown = table.loc[rows]
    labels = {config_label({"attn_gate": g, "learning_rate": lr})
              for g, lr in zip(shown["attn_gate"].tolist(), shown["learning_rate"].tolist(), strict=True)}
    assert set(drawn) == labels and len(drawn) == len(rows)

    assert report_main(["--stage", STAGE, "--experiment", EXPERIMENT, "--tracking-uri", uri,
                        "--out", str(tmp_path / "rep"), "--no-attach"]) == 0
    capsys.readouterr()
    readme = (tmp_path / "rep" / STAGE / "README.md").read_text()
    notes = re.findall(r"the 12 best configurations by final loss and their baselines; (\d+) more in table.csv", readme)
    assert notes and {int(n) for n in notes} == {left_out}
    assert len(notes) == 6  # heading and image text of val_loss, val_loss vs time, final-loss bars
    for name in ("val_loss.png", "val_loss_time.png", "final_loss.png", "table.csv"):
        assert (tmp_path / "rep" / STAGE / name).stat().st_size > 0
    assert len(pd.read_csv(tmp_path / "rep" / STAGE / "table.csv")) == 80  # the table keeps every configuration


@pytest.mark.parametrize("n", [1, 12])
def test_few_configurations_are_all_drawn(n):
    table = pd.DataFrame({"attn_gate": ["none"] * n, "learning_rate": [0.001 * (i + 1) for i in range(n)],
                          "final_val_loss": [3.3 + i / 100 for i in range(n)]})
    assert plots.pick_configs(table) == (list(range(n)), 0)


def test_the_benchmark_results_are_committed_and_quoted_in_the_readme():
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    for kind in ("cpu", "server-cpu"):  # the sqlite sizes, and the servers plain and with --app-name gatesweep
        results = sorted(root.glob(f"bench/results/*-store-scale-{kind}/results.json"))
        assert results, "run bench/store_scale.py (--server) and commit its output"
        assert results[-1].parent.name in readme
