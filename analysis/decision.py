"""The decision on a sweep's parent run in MLflow: the seed-averaged table and per-configuration metrics.

Pure builders - `decision_frame` (one row per configuration: its verdict, Δ with its interval and the
decision in words first - for a spec with sequential seeds the design's decision and repeated CI
(analysis.seq_table) - then mean with its 95% CI, raw and adjusted p, the time-matched Δ) and `config_metrics`
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
from analysis.fmt import format_ordered
from analysis.seq_table import SEQUENTIAL_VERDICTS, annotate_for_spec, has_sequential
from analysis.table import NOT_KEYS, config_label
from sweeps.errors import NoRunsError

TABLE_ARTIFACT = "decision/table.json"
README_ARTIFACT = "decision/README.md"
LOGGED_ARTIFACTS_TAG = "mlflow.loggedArtifacts"
ALPHA = 0.05
_METRIC_UNSAFE = re.compile(r"[^\w.\- :]")
# the UI shows the first five columns or so without scrolling: the comparison, its verdict and Δ with its
# interval come first, then the decision in words, then the numbers behind them
_REST = ("p_value", "test", "low_n", "loss_at_base_time", "delta_time", "delta_time_ci_low", "delta_time_ci_high",
         "p_time_adj")
_P_COLUMNS = ("p_adj", "p_adj_fixed_n", "p_value", "p_time_adj")
FIXED_P_ADJ = "p_adj_fixed_n"  # p_adj's name in the table of a sequential design: not the design's test


def verdict(delta: float, p_adj: float, test: str) -> str:
    """Plain words for one row of a fixed-n table: decided only on the adjusted p."""
    if test.startswith("baseline"):
        return test
    if math.isnan(p_adj):
        return "no test (fewer than 2 seeds)" if not math.isnan(delta) else "no baseline"
    p_text, _ = format_ordered([p_adj, ALPHA])
    if p_adj >= ALPHA:
        return f"undecided (p adj {p_text})"
    return f"{'lower' if delta < 0 else 'higher'} loss than baseline (p adj {p_text})"


def direction(delta: float, p_adj: float, test: str) -> str:
    """One word for one row of a fixed-n table: better | worse | undecided | baseline | no test."""
    if test.startswith("baseline"):
        return "baseline"
    if math.isnan(p_adj):
        return "no test"
    return "undecided" if p_adj >= ALPHA else "better" if delta < 0 else "worse"


def decision_frame(table: pd.DataFrame) -> pd.DataFrame:
    """Stage table (numbers) -> the decision table logged on the parent run. Columns: config, verdict
    (better | worse | undecided | ...), Δ with its interval (the repeated CI for a row a sequential
    design decides, else the 95% CI), which interval, the decision in words (the design's for those
    rows, else on p adj), then n, n_pairs, mean with its CI, p adj (named p_adj_fixed_n when the table
    has sequential rows: there it is a raw number, not the design's test) and the rest. p-values to 6
    significant digits, other numbers to 6 decimals; undefined cells empty (the UI would print "null";
    machines read table.csv of the report)."""
    seq = _sequential_rows(table)
    p_adj_name = FIXED_P_ADJ if any(seq) else "p_adj"
    out = pd.DataFrame({
        "config": [config_label(_config(row, table)) for _, row in table.iterrows()],
        "verdict": [s_v if s else direction(d, p, t) for s, s_v, d, p, t in
                    zip(seq, _column(table, "seq_verdict", ""), table["delta"], table["p_adj"], table["test"], strict=True)],
        "delta": table["delta"].to_numpy(),
        "delta_ci_low": _where(seq, _column(table, "rci_low", math.nan), _column(table, "delta_ci_low", math.nan)),
        "delta_ci_high": _where(seq, _column(table, "rci_high", math.nan), _column(table, "delta_ci_high", math.nan)),
        "interval": _interval_names(table, seq),
        "decision": _decisions(table, seq),
        "n": table["n"].to_numpy(),
        "n_pairs": pd.Series([int(k) if k > 0 else math.nan for k in table["n_pairs"]], dtype=object),
        "mean": table["final_val_loss"].to_numpy(),
        "ci_low": (table["final_val_loss"] - table["ci95"]).to_numpy(),
        "ci_high": (table["final_val_loss"] + table["ci95"]).to_numpy(),
        p_adj_name: table["p_adj"].to_numpy(),
        **{c: table[c].to_numpy() for c in _REST},
    })
    for col in out.columns:
        if col in _P_COLUMNS:
            out[col] = [float(f"{v:.6g}") if isinstance(v, float) else v for v in out[col]]
        elif out[col].dtype.kind == "f" or col in ("delta_ci_low", "delta_ci_high"):
            out[col] = [round(float(v), 6) if _is_number(v) else math.nan for v in out[col]]
    return out.astype(object).where(out.notna(), "")


def _sequential_rows(table: pd.DataFrame) -> list[bool]:
    if not has_sequential(table):
        return [False] * len(table)
    return table["seq_verdict"].isin(SEQUENTIAL_VERDICTS).tolist()


def _column(table: pd.DataFrame, col: str, default: object) -> list:
    return table[col].tolist() if col in table.columns else [default] * len(table)


def _where(mask: list[bool], yes: list, no: list) -> list[float]:
    return [float(a) if m else float(b) for m, a, b in zip(mask, yes, no, strict=True)]


def _interval_names(table: pd.DataFrame, seq: list[bool]) -> list[str]:
    """Which interval the row's delta_ci_low/high are: "RCI at look 3 (n=6)", "95% CI, paired on 6 seeds"."""
    looks, ns, lows = _column(table, "rci_look", math.nan), _column(table, "rci_n", math.nan), \
        _column(table, "rci_low", math.nan)
    out = []
    for k, s in enumerate(seq):
        test, pairs = str(table["test"].iloc[k]), int(table["n_pairs"].iloc[k])
        if s:
            out.append(f"RCI at look {int(looks[k])} (n={int(ns[k])})" if _is_number(lows[k]) else "")
        elif test == "paired":
            out.append(f"95% CI, paired on {pairs} seeds")
        else:
            out.append("95% CI, Welch" if test == "welch" else "")
    return out


def _decisions(table: pd.DataFrame, seq: list[bool]) -> list[str]:
    """The verdict in words per row; a sequential design's decision for the rows it compared (a Holm p
    over seeds gathered until a stop is not a valid test: the design's boundaries are)."""
    plain = [verdict(d, p, t) for d, p, t in zip(table["delta"], table["p_adj"], table["test"], strict=True)]
    stops = _column(table, "seq_stop", "")
    return [f"sequential: {s}" if q else v for v, s, q in zip(plain, stops, seq, strict=True)]


def _is_number(v: object) -> bool:
    try:
        return math.isfinite(float(v))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def config_metrics(frame: pd.DataFrame) -> dict[str, float]:
    """decision_frame -> {"cfg/<label>/<stat>": value} for every finite number."""
    stats = ("mean", "ci_low", "ci_high", "n", "n_pairs", "delta", "delta_ci_low", "delta_ci_high", "p_adj",
             FIXED_P_ADJ, "delta_time", "delta_time_ci_low", "delta_time_ci_high", "p_time_adj")
    out = {}
    for _, row in frame.iterrows():
        prefix = f"cfg/{metric_key(str(row['config']))}"
        for stat in stats:
            value = row.get(stat)
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
        table = stage_table(runs, adjust=adjust, histories=fetch_histories(finished, HISTORY_KEYS, tracking_uri=uri),
                            per_seed=True)
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
    return {c: row[c] for c in table.columns if c not in NOT_KEYS}
