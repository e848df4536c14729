"""The decision on a sweep's parent run in MLflow: the seed-averaged table and per-configuration metrics.

Pure builders - `decision_frame` (one row per configuration: mean with its 95% CI, Δ with its CI,
raw and adjusted p, the time-matched Δ and a plain-words verdict) and `config_metrics`
(``cfg/<label>/mean``, ``.../ci_low``, ``.../ci_high``, ``.../p_adj``, ...) - and a thin executor,
`log_decision`, that writes them: ``decision/table.json`` in the split-orient JSON of
``mlflow.log_table``, registered in the run's ``mlflow.loggedArtifacts`` tag so that the UI renders
it as a table (log_table itself would append to an earlier table instead of replacing it),
``decision/README.md`` with the Markdown table and how to read it, and the metrics. So the run page
answers "mean ± CI per configuration" (mlflow#3762).
"""

from __future__ import annotations

import json
import math
import re
import sys
import tempfile
from pathlib import Path

import pandas as pd

from analysis import render
from analysis.sequential import SEQ_COLUMN
from analysis.table import STAT_COLUMNS, config_label
from sweeps.errors import NoRunsError

TABLE_ARTIFACT = "decision/table.json"
README_ARTIFACT = "decision/README.md"
LOGGED_ARTIFACTS_TAG = "mlflow.loggedArtifacts"
ALPHA = 0.05
_METRIC_UNSAFE = re.compile(r"[^\w.\- :]")
# the UI shows the first five columns or so without scrolling: mean ± CI and the verdict come first
_COMPARISON = ("delta", "delta_ci_low", "delta_ci_high", "p_adj", "p_value", "test", "low_n", "loss_at_base_time",
               "delta_time", "delta_time_ci_low", "delta_time_ci_high", "p_time_adj")


def verdict(delta: float, p_adj: float, test: str) -> str:
    """Plain words for one row: decided only on the adjusted p."""
    if test.startswith("baseline"):
        return test
    if math.isnan(p_adj):
        return "no test (fewer than 2 seeds)" if not math.isnan(delta) else "no baseline"
    if p_adj >= ALPHA:
        return f"undecided (p adj {p_adj:.3g})"
    return f"{'lower' if delta < 0 else 'higher'} loss than baseline (p adj {p_adj:.3g})"


def decision_frame(table: pd.DataFrame) -> pd.DataFrame:
    """Stage table (numbers) -> the decision table logged on the parent run: numbers to 6 decimals,
    undefined cells empty (the UI would print "null"; machines read table.csv of the report)."""
    out = pd.DataFrame({
        "config": [config_label(_config(row, table)) for _, row in table.iterrows()],
        "mean": table["final_val_loss"].to_numpy(),
        "ci_low": (table["final_val_loss"] - table["ci95"]).to_numpy(),
        "ci_high": (table["final_val_loss"] + table["ci95"]).to_numpy(),
        "n": table["n"].to_numpy(),
        "decision": _decisions(table),
        **{c: table[c].to_numpy() for c in _COMPARISON},
    })
    return out.round(6).astype(object).where(out.notna(), "")


def _decisions(table: pd.DataFrame) -> list[str]:
    """The verdict per row; a sequential sweep's stopping rule overrides it for the rows it compared (a
    Holm p over seeds gathered until a stop is not a valid test: the rule's boundaries are)."""
    plain = [verdict(d, p, t) for d, p, t in zip(table["delta"], table["p_adj"], table["test"], strict=True)]
    if SEQ_COLUMN not in table.columns:
        return plain
    return [f"sequential: {s}" if s and not s.startswith("baseline") else v
            for v, s in zip(plain, table[SEQ_COLUMN].astype(str), strict=True)]


def config_metrics(frame: pd.DataFrame) -> dict[str, float]:
    """decision_frame -> {"cfg/<label>/<stat>": value} for every finite number."""
    stats = ("mean", "ci_low", "ci_high", "n", "delta", "delta_ci_low", "delta_ci_high", "p_adj", "delta_time",
             "delta_time_ci_low", "delta_time_ci_high", "p_time_adj")
    out = {}
    for _, row in frame.iterrows():
        prefix = f"cfg/{metric_key(str(row['config']))}"
        for stat in stats:
            value = row[stat]
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                out[f"{prefix}/{stat}"] = float(value)
    return out


def metric_key(label: str) -> str:
    """A config label as one MLflow metric-name segment: "headwise/ns_sigmoid lr=0.00468" ->
    "headwise-ns_sigmoid lr_0.00468" (no "/", which would nest it)."""
    return _METRIC_UNSAFE.sub("_", label.replace("/", "-")).strip() or "all"


def readme(title: str, table: pd.DataFrame, adjust: str) -> str:
    shown = render.to_markdown(render.display_table(table), render.DISPLAY_HEADERS)
    notes = [t for t in (render.footer(table), render.reading_note(table, adjust)) if t]
    return "\n\n".join([f"# Decision: {title}", shown.rstrip(), *notes]) + "\n"


def log_decision(client, run_id: str, table: pd.DataFrame, *, title: str, adjust: str = "holm") -> dict[str, float]:
    """Write the decision table, its README and the per-configuration metrics on `run_id`."""
    from mlflow.entities import Metric

    frame = decision_frame(table)
    metrics = config_metrics(frame)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "table.json").write_text(str(frame.to_json(orient="split", index=False)))
        (Path(tmp) / "README.md").write_text(readme(title, table, adjust))
        client.log_artifacts(run_id, tmp, "decision")
    tags = json.loads(client.get_run(run_id).data.tags.get(LOGGED_ARTIFACTS_TAG, "[]"))
    entry = {"path": TABLE_ARTIFACT, "type": "table"}
    if entry not in tags:
        client.set_tag(run_id, LOGGED_ARTIFACTS_TAG, json.dumps([*tags, entry]))
    now = int(pd.Timestamp.now().timestamp() * 1000)
    items = [Metric(k, v, now, 0) for k, v in metrics.items()]
    for i in range(0, len(items), 1000):
        client.log_batch(run_id, metrics=items[i:i + 1000])
    return metrics


def log_sweep_decision(tracking_uri: str, parent_id: str, *, adjust: str = "holm") -> bool:
    """After a sweep: the decision over its trial runs (same spec and stage) on its parent run.
    Never raises - a sweep's result must not depend on its summary; says why on stderr instead."""
    try:
        from analysis.fetch import fetch_histories, fetch_runs, open_client
        from analysis.table import FINISHED, stage_table
        from analysis.timematch import HISTORY_KEYS

        client, uri = open_client(tracking_uri)
        parent = client.get_run(parent_id)
        spec, stage = parent.data.tags.get("spec"), parent.data.tags.get("stage") or None
        experiment = client.get_experiment(parent.info.experiment_id).name
        runs = fetch_runs([experiment], stage=stage, spec=spec, tracking_uri=uri)
        finished = runs[runs["status"] == FINISHED]["mlflow_run_id"].tolist()
        if not finished:
            return False  # e.g. a Slurm submission: the trials have not run yet
        table = stage_table(runs, adjust=adjust, histories=fetch_histories(finished, HISTORY_KEYS, tracking_uri=uri))
        if spec:
            from analysis.sequential import annotate_for_spec

            table = annotate_for_spec(table, spec, tracking_uri=uri)
        log_decision(client, parent_id, table, title=stage or spec or parent_id, adjust=adjust)
        return True
    except NoRunsError:
        return False  # nothing ran (an interrupted start): nothing to decide
    except Exception as e:  # noqa: BLE001 - whatever went wrong, the sweep itself stands
        print(f"warning: no decision table on sweep run {parent_id} ({type(e).__name__}: {str(e)[:200]}); "
              "`gatesweep table --log` writes it later", file=sys.stderr)
        return False


def _config(row: pd.Series, table: pd.DataFrame) -> dict:
    return {c: row[c] for c in table.columns if c not in STAT_COLUMNS and c not in ("seed_values",)}
