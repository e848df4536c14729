"""Stage chaining: `select_value` (pure) picks the seed-averaged best/worst value of the source
stage, and the CLI resolves it from the real MLflow server the same way in plan, dry run and run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sweeps.chain import Chain, select_value
from sweeps.errors import SpecError
from tests.sweep_helpers import cli_env, client, gatesweep, unique


def _run(lr: float, loss: float, gate: str = "elementwise", status: str = "FINISHED") -> dict[str, Any]:
    return {"params": {"learning_rate": str(lr), "attn_gate": gate}, "metrics": {"final_val_loss": loss},
            "status": status}


# stage 2 in miniature: two seeds per (lr, gate); 0.00432 is best for elementwise on the mean
# although one seed of 0.00396 is the single lowest run, and the baseline's best is another LR
STAGE2 = [
    _run(0.0036, 3.30), _run(0.0036, 3.32),
    _run(0.00396, 3.20), _run(0.00396, 3.40),    # mean 3.30: the single best run, not the best mean
    _run(0.00432, 3.25), _run(0.00432, 3.27),    # mean 3.26: best
    _run(0.00468, 3.35), _run(0.00468, 3.37),
    _run(0.00468, 3.10, gate="none"), _run(0.00468, 3.12, gate="none"),
]
ELEMENTWISE = (("attn_gate", "elementwise"),)


def test_best_is_the_lowest_seed_mean_within_the_where_filter():
    assert select_value(STAGE2, Chain(source="stage2", where=ELEMENTWISE), "learning_rate") == 0.00432
    assert select_value(STAGE2, Chain(source="stage2", select="worst", where=ELEMENTWISE),
                        "learning_rate") == 0.00468
    assert select_value(STAGE2, Chain(source="stage2", where=(("attn_gate", "none"),)), "learning_rate") == 0.00468
    # no filter: two gates remain, so which one's LR is meant is refused, not pooled (pooling the runs of
    # an LR over both gates would give 0.00468 at 3.235, a mean of no configuration)
    with pytest.raises(SpecError, match=r"learning_rate: stage 'stage2' has 5 configurations that also differ in "
                                        r"attn_gate \(elementwise, none\); say which one .* with `where` "
                                        r"\(e.g. where: \{attn_gate: elementwise\}\)"):
        select_value(STAGE2, Chain(source="stage2"), "learning_rate")


def _run_wd(lr: float, wd: int, losses: list[float]) -> list[dict[str, Any]]:
    return [{"params": {"learning_rate": str(lr), "attn_gate": "elementwise", "warmdown_iters": str(wd),
                        "seed": str(s)}, "metrics": {"final_val_loss": x}, "status": "FINISHED"}
            for s, x in enumerate(losses)]


# A second key varies (warmdown_iters) and the configurations have unequal numbers of finished seeds:
# per configuration LR 0.004 is the best at both warmdowns, but the runs of an LR pooled over
# warmdowns put 0.005 first (0.004: (3.10 + 3 x 3.50) / 4 = 3.40; 0.005: (3 x 3.12 + 3.52) / 4 = 3.22).
TWO_KEYS = (_run_wd(0.004, 100, [3.10]) + _run_wd(0.005, 100, [3.12, 3.12, 3.12])
            + _run_wd(0.004, 500, [3.50, 3.50, 3.50]) + _run_wd(0.005, 500, [3.52]))


def test_a_second_varying_key_is_grouped_like_the_table_not_pooled():
    pooled: dict[str, list[float]] = {}
    for r in TWO_KEYS:
        pooled.setdefault(r["params"]["learning_rate"], []).append(r["metrics"]["final_val_loss"])
    assert min(pooled, key=lambda k: sum(pooled[k]) / len(pooled[k])) == "0.005"  # what pooling would pick
    with pytest.raises(SpecError, match=r"4 configurations that also differ in warmdown_iters \(100, 500\)"):
        select_value(TWO_KEYS, Chain(source="s", where=ELEMENTWISE), "learning_rate")
    for wd in (100, 500):
        chain = Chain(source="s", where=ELEMENTWISE + (("warmdown_iters", wd),))
        assert select_value(TWO_KEYS, chain, "learning_rate") == 0.004
        assert select_value(TWO_KEYS, chain, "learning_rate") == _table_best(TWO_KEYS, wd)


def _table_best(runs: list[dict[str, Any]], wd: int) -> float:
    """The LR of the stage table's (analysis.table) lowest-loss row at this warmdown."""
    import pandas as pd

    from analysis.table import stage_table

    df = pd.DataFrame([{"attn_gate": r["params"]["attn_gate"], "learning_rate": float(r["params"]["learning_rate"]),
                        "warmdown_iters": int(r["params"]["warmdown_iters"]), "seed": int(r["params"]["seed"]),
                        "status": r["status"], "final_val_loss": r["metrics"]["final_val_loss"],
                        "train_time_ms": 1.0} for r in runs])
    table = stage_table(df)
    rows = table[table["warmdown_iters"] == wd]
    return float(rows.loc[rows["final_val_loss"].idxmin(), "learning_rate"])


def test_failed_and_non_finite_runs_do_not_count():
    runs = STAGE2 + [_run(0.005, 1.0, status="FAILED"), _run(0.0055, float("nan"))]
    assert select_value(runs, Chain(source="stage2", where=ELEMENTWISE), "learning_rate") == 0.00432


@pytest.mark.parametrize("status", ["RUNNING", "QUEUED", "KILLED"])
def test_an_incomplete_source_stage_is_refused(status: str):
    runs = STAGE2 + [_run(0.005, 3.0, status=status)]
    with pytest.raises(SpecError, match=r"learning_rate: chained from stage 'stage2', which is incomplete "
                                        r"\(1 of 11 runs queued, running or killed\); finish it"):
        select_value(runs, Chain(source="stage2", fallback=0.00468), "learning_rate")


def test_a_stage_whose_last_sweep_did_not_end_every_trial_is_refused():
    runs = [r | {"trial_id": f"t{i}"} for i, r in enumerate(STAGE2)]
    ids = {f"t{i}" for i in range(len(STAGE2))}
    chain = Chain(source="stage2", where=ELEMENTWISE)
    assert select_value(runs, chain, "learning_rate", expected=ids) == 0.00432
    runs[-1] = runs[-1] | {"status": "FAILED"}  # a failed trial is a result: still complete
    assert select_value(runs, chain, "learning_rate", expected=ids) == 0.00432
    with pytest.raises(SpecError, match=r"which is incomplete \(2 of 12 trials of its last sweep have no "
                                        r"finished run\); finish it \(rerun its spec\) or override learning_rate"):
        select_value(runs, chain, "learning_rate", expected=ids | {"never-ran", "stopped-between-trials"})


def test_no_runs_uses_the_fallback_and_no_match_is_an_error():
    assert select_value([], Chain(source="stage2", fallback=0.00468), "learning_rate") == 0.00468
    with pytest.raises(SpecError, match=r"stage 'stage2' has no finished runs with attn_gate=headwise"):
        select_value(STAGE2, Chain(source="stage2", where=(("attn_gate", "headwise"),)), "learning_rate")


def test_values_come_back_typed():
    runs = [{"params": {"warmup_iters": "100"}, "metrics": {"final_val_loss": 3.0}, "status": "FINISHED"}]
    assert select_value(runs, Chain(source="s"), "warmup_iters") == 100
    assert isinstance(select_value(runs, Chain(source="s"), "warmup_iters"), int)


# ---------------------------------------------------------------- through the CLI and a real server
def _log_stage(uri: str, stage: str, runs: list[dict[str, Any]], expected: list[str] | None = None) -> None:
    """The source stage as the launchers record it: trial runs and (optionally) the sweep run that
    names the trial ids of its spec's expansion."""
    c = client(uri)
    exp = c.create_experiment(unique("gs-chain-src"))
    if expected is not None:
        c.create_run(exp, tags={"gatesweep.kind": "sweep", "stage": stage, "gatesweep.trial_ids": ",".join(expected)})
    for i, r in enumerate(runs):
        run = c.create_run(exp, tags={"gatesweep.kind": "trial", "stage": stage, "status": r["status"],
                                      "trial_id": f"t{i}"})
        for k, v in r["params"].items():
            c.log_param(run.info.run_id, k, v)
        c.log_metric(run.info.run_id, "final_val_loss", r["metrics"]["final_val_loss"])
        c.set_terminated(run.info.run_id)


@pytest.mark.mlflow
def test_plan_and_dry_run_resolve_the_chain_from_the_server(tmp_path: Path, mlflow_server):
    stage = unique("stage2")
    _log_stage(mlflow_server.uri, stage, STAGE2)
    (tmp_path / "spec.yaml").write_text(
        "name: chained\nstage: s25\nbase: {preset: tiny, learning_rate: {from: " + stage
        + ", where: {attn_gate: elementwise}, fallback: 0.00468}}\nseeds: [0]\n"
        "resources: {gpus_per_node: 0}\nbackend: {default: local}\n")
    env = cli_env(mlflow_server.uri)
    res = gatesweep(["plan", "spec.yaml", "--json"], tmp_path, env)
    assert res.returncode == 0, res.stderr
    planned = json.loads(res.stdout)[0]
    assert planned["config"]["learning_rate"] == 0.00432
    # the dry run shows the same value and hence the same trial id as plan and the real run
    res = gatesweep(["run", "spec.yaml", "--dry-run"], tmp_path, env)
    assert res.returncode == 0, res.stderr
    assert f"# trial 0 {planned['trial_id']}" in res.stdout
    fallback = gatesweep(["plan", "spec.yaml", "--json", "learning_rate=0.00468"], tmp_path, env)
    assert json.loads(fallback.stdout)[0]["trial_id"] != planned["trial_id"]  # the id does depend on the LR
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]


@pytest.mark.mlflow
def test_a_half_run_source_stage_is_refused_through_the_cli(tmp_path: Path, mlflow_server):
    stage = unique("stage2")
    # its sweep expanded to 12 trials; only the 10 of STAGE2 have runs (stopped between trials)
    _log_stage(mlflow_server.uri, stage, STAGE2, expected=[f"t{i}" for i in range(12)])
    (tmp_path / "spec.yaml").write_text(
        "name: chained\nbase: {preset: tiny, learning_rate: {from: " + stage + ", fallback: 0.00468}}\n")
    res = gatesweep(["plan", "spec.yaml"], tmp_path, cli_env(mlflow_server.uri))
    assert res.returncode == 2
    assert res.stderr == (f"error: spec.yaml: learning_rate: chained from stage '{stage}', which is incomplete (2 of "
                          "12 trials of its last sweep have no finished run); finish it (rerun its spec) or "
                          "override learning_rate=...\n")


@pytest.mark.mlflow
def test_an_unreachable_store_is_a_one_line_error(tmp_path: Path):
    (tmp_path / "spec.yaml").write_text("name: chained\nbase: {preset: tiny, learning_rate: {from: stage2}}\n")
    res = gatesweep(["plan", "spec.yaml"], tmp_path, cli_env("http://127.0.0.1:9", MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
                                                               MLFLOW_HTTP_REQUEST_TIMEOUT="2"))
    assert res.returncode == 69  # the store cannot be reached: EX_UNAVAILABLE
    assert len(res.stderr.splitlines()) == 1, res.stderr
    assert "learning_rate: chained from stage 'stage2', but the tracking store cannot be read" in res.stderr
    assert "override learning_rate=..." in res.stderr


def test_plan_on_a_missing_sqlite_store_creates_nothing(tmp_path: Path):
    (tmp_path / "spec.yaml").write_text(
        "name: chained\nbase: {preset: tiny, learning_rate: {from: stage2, fallback: 0.00468}}\nseeds: [0]\n")
    res = gatesweep(["plan", "spec.yaml", "--json"], tmp_path, cli_env())  # default sqlite:///mlflow.db
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)[0]["config"]["learning_rate"] == 0.00468
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]


@pytest.mark.mlflow
def test_plan_says_whether_a_chained_value_is_the_fallback(tmp_path: Path, mlflow_server):
    """Issue #24 item 8: a chained learning rate that is the spec's fallback (the source stage has not run)
    looks like any other number in the trial table; plan says which it is."""
    ran, never = unique("stage2"), unique("stage2")
    _log_stage(mlflow_server.uri, ran, STAGE2)
    env = cli_env(mlflow_server.uri)
    for stage, line in (
            (ran, f"resolved: learning_rate=0.00432: the best final_val_loss of stage '{ran}' where "
                  f"attn_gate=elementwise ({len(STAGE2)} runs)"),
            (never, f"resolved: learning_rate=0.00468 is the fallback: stage '{never}' has no runs in the tracking "
                    f"store; once it has run, learning_rate is taken from its best final_val_loss where "
                    f"attn_gate=elementwise")):
        (tmp_path / "spec.yaml").write_text(
            "name: chained\nbase: {preset: tiny, learning_rate: {from: " + stage
            + ", where: {attn_gate: elementwise}, fallback: 0.00468}}\nseeds: [0]\n")
        res = gatesweep(["plan", "spec.yaml"], tmp_path, env)
        assert res.returncode == 0 and line in res.stdout.splitlines(), res.stdout
        dry = gatesweep(["run", "spec.yaml", "--dry-run", "--backend", "local"], tmp_path, env)
        assert f"# {line}" in dry.stdout.splitlines(), dry.stdout
    res = gatesweep(["plan", "spec.yaml"], tmp_path, cli_env())  # the default sqlite store, not created yet
    assert f"stage '{never}' has no runs (the tracking store does not exist yet)" in res.stdout
