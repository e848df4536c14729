"""The search's answer: the best value of the searched keys per design point (e.g. the best LR per
gate), from the trials' records. Pure `best_rows` + `summary_table`; `report` reads the records,
prints, and (`log_best`, `log_search`) writes the sweep's parent run.

Only FINISHED trials compete: an early-stopped trial's final loss does not exist (it never reached
the last step). Seeds of one config are averaged.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.common.search import SearchPlan, group_label
from cluster.common.state import DONE
from cluster.common.trialdir import local_status, trial_dir
from sweeps.select import pick, seed_means
from sweeps.text_table import text_table
from trainer.record import read_json


@dataclass(frozen=True)
class TrialOutcome:
    group: str
    values: tuple[tuple[str, Any], ...]  # the searched keys' values
    trial_id: str
    status: str
    final_val_loss: float


@dataclass(frozen=True)
class BestRow:
    group: str
    values: tuple[tuple[str, Any], ...]  # () when no trial of the group finished
    final_val_loss: float
    trial_ids: tuple[str, ...]
    finished: int
    early_stopped: int
    failed: int
    not_run: int = 0  # KILLED (an interrupted search) or never started: rerun the command to run them


def outcome(trial: Any, plan: SearchPlan, status: str, summary: dict[str, Any]) -> TrialOutcome:
    values = tuple((k, v) for k, v in trial.design if k in plan.keys)
    loss = summary.get("final_val_loss")
    return TrialOutcome(group_label(trial, plan), values, trial.trial_id, status,
                        float(loss) if isinstance(loss, (int, float)) else math.nan)


def best_rows(outcomes: Sequence[TrialOutcome]) -> list[BestRow]:
    groups: dict[str, list[TrialOutcome]] = {}
    for o in outcomes:
        groups.setdefault(o.group, []).append(o)
    rows = []
    for group, items in groups.items():
        # the searched keys are the configuration keys within a design point (sweeps.select: seed means)
        keys = [k for k, _ in items[0].values]
        means = seed_means([dict(o.values) | {"status": o.status, "final_val_loss": o.final_val_loss}
                            for o in items], "final_val_loss", keys)
        best = pick(means) if means else None
        rows.append(BestRow(group, tuple(best.config.items()) if best else (), best.mean if best else math.nan,
                            tuple(items[i].trial_id for i in best.rows) if best else (),
                            finished=sum(o.status == "FINISHED" for o in items),
                            early_stopped=sum(o.status == "EARLY_STOPPED" for o in items),
                            failed=sum(o.status == "FAILED" for o in items),
                            not_run=sum(o.status not in ("FINISHED", "EARLY_STOPPED", "FAILED") for o in items)))
    return rows


def _value_text(values: tuple[tuple[str, Any], ...]) -> str:
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in values) or "(none finished)"


def summary_table(rows: Sequence[BestRow], *, sep: str = "  ") -> list[list[str]]:
    header = ["design", "best", "final_val_loss", "trial_ids", "finished", "early_stopped", "failed", "not_run"]
    body = [[r.group, _value_text(r.values), f"{r.final_val_loss:.4f}" if r.values else "-",
             ",".join(r.trial_ids) or "-", str(r.finished), str(r.early_stopped), str(r.failed), str(r.not_run)]
            for r in rows]
    return [header, *body]


def render_markdown(table: list[list[str]]) -> str:
    lines = ["| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in table[1:]]) + "\n"


def slug(text: str) -> str:
    """An MLflow-safe key part: `attn_gate=none gate_act=sigmoid` -> `attn_gate_none.gate_act_sigmoid`."""
    return ".".join(re.sub(r"[^\w\-]", "_", part) for part in text.split()) or "base"


def parent_params_metrics(rows: Sequence[BestRow]) -> tuple[dict[str, str], dict[str, float]]:
    """best.<design>.<key> params and best.<design>.final_val_loss metrics for the parent run."""
    params: dict[str, str] = {}
    metrics: dict[str, float] = {}
    for r in rows:
        for k, v in r.values:
            params[f"best.{slug(r.group)}.{k}"] = f"{v:g}" if isinstance(v, float) else str(v)
        if r.values:
            metrics[f"best.{slug(r.group)}.final_val_loss"] = r.final_val_loss
    return params, metrics


def log_best(store: Any, rows: Sequence[BestRow], out_dir: Path) -> list[Path]:
    """Write best_lr.{md,csv} into out_dir and log them plus params/metrics to the sweep's parent run."""
    table = summary_table(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    md, csv = out_dir / "best_lr.md", out_dir / "best_lr.csv"
    md.write_text(render_markdown(table))
    csv.write_text("".join(",".join(f'"{c}"' if "," in c else c for c in row) + "\n" for row in table))
    if store.enabled and store.parent_id:
        params, metrics = parent_params_metrics(rows)
        for k, v in params.items():
            store.client.log_param(store.parent_id, k, v)
        for k, v in metrics.items():
            store.client.log_metric(store.parent_id, k, v)
        store.log_parent_artifact(md)
        store.log_parent_artifact(csv)
    return [md, csv]


def log_search(store: Any, plan: SearchPlan, concurrent: int) -> None:
    """The search's settings as params of the sweep's parent run."""
    if not (store.enabled and store.parent_id):
        return
    params = {f"search.{a.key}": a.describe().split(": ", 1)[1] for a in plan.axes}
    params |= {"search.num_samples": str(plan.num_samples), "search.seed": str(plan.seed),
               "search.max_concurrent_trials": str(concurrent)}
    if plan.scheduler:
        a = plan.scheduler
        params |= {"search.scheduler": "asha (training steps)", "search.grace_period": str(a.grace_period),
                   "search.reduction_factor": f"{a.reduction_factor:g}", "search.max_t": str(a.max_t)}
    for k, v in params.items():
        store.client.log_param(store.parent_id, k, v)


def report(plan: SearchPlan, trials: Sequence[Any], store: Any, out_dir: Path) -> str:
    """Print and log the best value per design point; the sweep's status from the trials' records."""
    outcomes = []
    for t in trials:
        run_dir = trial_dir(t)
        status = local_status(run_dir)[0]
        outcomes.append(outcome(t, plan, status, read_json(run_dir / "track" / "summary.json") or {}))
    if plan.axes:
        rows = best_rows(outcomes)
        print(f"best {', '.join(plan.keys)} per design point (FINISHED trials only; early-stopped ones did not "
              "reach the end):")
        table = summary_table(rows)
        print(text_table(table[0], table[1:]))
        log_best(store, rows, out_dir)
    else:  # the spec's own trials: nothing was searched, so no "best"; the stage table compares them
        done = sum(o.status in DONE for o in outcomes)
        print(f"{done}/{len(outcomes)} trials finished; compare them with `gatesweep table <spec>`")
    bad = [o for o in outcomes if o.status not in DONE]
    if bad:
        print(f"{len(bad)} trial(s) not finished ({', '.join(sorted({o.status or 'never run' for o in bad}))}); "
              "rerun the same command to run them")
    return "FINISHED" if not bad else "FAILED"
