"""A stage's runs from the local records (runs/<spec>/<trial_id>/), for machines without MLflow.

Without mlflow (a GPU machine) a trial records to its `track/` only (trainer.tracking) until `gatesweep sync`
delivers it. `read_stage` reads a stage's runs from there in the shape sweeps.chain.stage_runs reads them
from MLflow: {"params", "metrics", "status", "trial_id"}, params as strings, each metric's latest value and
the status, all as MLflow holds them once the records are synced (trainer.mlflow_sync.sync_record). A
stage's trials are found by the stage in each trial.json, whatever its spec is called.

`run_of` and `latest_metrics` are pure; `read_stage` walks the directories and reads the files. A record
file that cannot be parsed is an error naming it: a value chained from a run whose record is damaged
would silently leave that run out. metrics.jsonl is read as `gatesweep sync` reads it (every whole point;
a fragment torn by a full disk or a crash dropped), so the values are those MLflow would hold.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweeps.chain import Chain, Resolved, resolve_from
from sweeps.time_of import TimeOf, TimeResolver, budget_value, gates_of
from trainer.errors import DataError
from trainer.record import metric_chunks, write_json

TRIAL_IDS = ".trial_ids.json"  # runs/<spec>/.trial_ids.json: the stage and trial ids of its last sweep without mlflow
PARAM_CHARS = 6000  # what sync_record sends of a param value (MLflow's limit)
NEVER_STARTED = "QUEUED"  # a trial.json without a status: submitted, never started (an incomplete stage)


@dataclass(frozen=True)
class LocalStage:
    """A stage's runs read from the local records, the spec directories they lie in, and the trial ids
    of the stage's last sweep run without mlflow (None if unknown), as sweeps.chain.stage_runs gives them."""

    runs: list[dict[str, Any]]
    dirs: tuple[str, ...]
    expected: set[str] | None = None

    @property
    def records(self) -> str:
        return f"from local records {', '.join(self.dirs)}"


def latest_metrics(points: Iterable[Mapping[str, Any]], summary: Mapping[str, Any]) -> dict[str, float]:
    """Each metric's value as MLflow's latest_metrics holds it after a sync: the point with the highest
    (step, timestamp); the summary's numbers are sent last (newest timestamp) at its final_step."""
    best: dict[str, tuple[tuple[float, float], float]] = {}
    for p in points:
        order = (float(p["step"]), float(p["ts"]))
        if p["key"] not in best or order >= best[p["key"]][0]:
            best[p["key"]] = (order, float(p["value"]))
    step = float(summary.get("final_step", 0))
    for k, v in summary.items():
        if isinstance(v, (int, float)) and k != "final_step" and (k not in best or step >= best[k][0][0]):
            best[k] = ((step, math.inf), float(v))
    return {k: v for k, (_, v) in best.items()}


def run_of(meta: Mapping[str, Any], params: Mapping[str, Any], status: Mapping[str, Any],
           metrics: Mapping[str, float]) -> dict[str, Any]:
    """One trial's run as sweeps.chain.stage_runs gives it. meta: trial.json's `trial` section."""
    return {"params": {k: str(v)[:PARAM_CHARS] for k, v in params.items()}, "metrics": dict(metrics),
            "trial_id": meta.get("trial_id"), "status": status.get("status") or NEVER_STARTED}


def trial_meta(body: Any) -> dict[str, Any] | None:
    """trial.json's `trial` section if it is a launcher's trial (a hand run's has none)."""
    meta = body.get("trial") if isinstance(body, dict) else None
    if not isinstance(meta, dict) or meta.get("tags", {}).get("gatesweep.kind", "trial") != "trial":
        return None
    return meta


# ---------------------------------------------------------------- reading the files
def _load(path: Path, fix: str = "") -> dict[str, Any]:
    """A record's JSON object; {} when missing. Damaged: an error naming the file and the fix (default: move
    the trial's directory aside)."""
    try:
        obj = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except ValueError as e:
        obj, why = None, str(e).splitlines()[0][:80] if str(e) else "empty"
    else:
        why = f"a JSON {type(obj).__name__}, not an object"
    if not isinstance(obj, dict):
        trial = path.parent.parent if path.parent.name == "track" else path.parent
        fix = fix or f"move {trial} aside (its trial then runs again)"
        raise DataError(f"{path}: damaged record file ({why}); a chained value cannot be read from it. Restore it, or "
                        f"{fix}, then plan again")
    return obj


def read_trial(run_dir: Path, meta: Mapping[str, Any]) -> dict[str, Any]:
    track = run_dir / "track"
    points = [p for chunk, _, _ in metric_chunks(track / "metrics.jsonl", 0, 10_000) for p in chunk]
    metrics = latest_metrics(points, _load(track / "summary.json"))
    return run_of(meta, _load(track / "params.json"), _load(track / "status.json"), metrics)


def write_trial_ids(record_dir: Path, stage: str, ids: Iterable[str], now: float) -> None:
    """What a sweep run's trial-id tags say in MLflow (sweeps.chain.trial_id_tags), for a sweep that has no
    sweep run: written by the launcher where mlflow is not installed."""
    record_dir.mkdir(parents=True, exist_ok=True)
    write_json(record_dir / TRIAL_IDS, {"stage": stage, "trial_ids": list(ids), "time": now})


def newest_ids(sweeps: Iterable[Mapping[str, Any]], stage: str) -> set[str] | None:
    """The trial ids of the stage's newest sweep (TRIAL_IDS files' contents), None if none names it."""
    mine = [s for s in sweeps if s.get("stage") == stage and isinstance(s.get("trial_ids"), list)]
    return set(max(mine, key=lambda s: float(s.get("time", 0)))["trial_ids"]) if mine else None


def read_stage(root: Path, stage: str) -> LocalStage:
    """Every launcher trial under root/<spec>/ whose trial.json names `stage`."""
    runs, dirs, sweeps = [], [], []
    for spec_dir in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else ():
        sweeps.append(_load(spec_dir / TRIAL_IDS, fix="remove it (the next run of its spec writes it again)"))
        found = 0
        for run_dir in sorted(spec_dir.iterdir()):
            if not (run_dir / "trial.json").is_file():
                continue
            meta = trial_meta(_load(run_dir / "trial.json"))
            if meta is not None and meta.get("stage") == stage:
                runs.append(read_trial(run_dir, meta))
                found += 1
        if found:
            dirs.append(str(spec_dir))
    return LocalStage(runs, tuple(dirs), newest_ids(sweeps, stage))


LocalReader = Callable[[str], LocalStage]


def local_reader(root: Path) -> LocalReader:
    """read_stage under root, once per stage: a command's chained and time_of values share it."""
    return functools.cache(lambda stage: read_stage(root, stage))


# ---------------------------------------------------------------- resolving from them
def _no_runs(root: Path) -> str:
    return f"has no runs in the local records ({root}/; mlflow is not installed here)"


def local_resolver(read: LocalReader, root: Path) -> Callable[[Chain, str], Resolved]:
    """Chains resolved from the local records (the source's sweep's trial ids from TRIAL_IDS, if written)."""

    def resolve(chain: Chain, key: str) -> Resolved:
        stage = read(chain.source)
        return resolve_from(stage.runs, chain, key, stage.expected, why_none=_no_runs(root),
                            origin=f", {stage.records}" if stage.runs else "")

    return resolve


def local_time_resolver(read: LocalReader, root: Path) -> TimeResolver:
    def resolve(spec: TimeOf, key: str, values: Mapping[str, Any]) -> tuple[int, str]:
        stage = read(spec.source)
        value, note = budget_value(stage.runs, spec, key, gates_of(values), stage.expected, _no_runs(root))
        return value, note + (f" ({stage.records}, {len(stage.runs)} runs)" if stage.runs else f" ({_no_runs(root)})")

    return resolve
