"""Legacy results CSV (+ reference-format logs) -> MLflow runs in the trainer's schema (write edge).

Every imported run is a child of one sweep run per (file, stage) - tags gatesweep.kind=sweep,
backend=import, spec=<file stem>, stage - and carries the trial tags of ARCHITECTURE.md with
backend=import and trial_id = sha1(file name, run_id)[:12]. Re-importing is idempotent: runs whose
trial_id is already in the experiment are skipped.

A run becomes visible (gatesweep.kind=trial, trial_id) only after all its data is logged, and is
deleted if logging fails, so an interrupted import never leaves a half-run that a re-import skips.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from analysis.fetch import KIND_TAG, call, open_client, search, tag_filter
from analysis.legacy import LegacyRun, ParsedLog, check_log_matches, parse_log, parse_results_csv
from trainer.errors import DataError

DEFAULT_EXPERIMENT = "gatesweep-import"
_BATCH = 1000  # MLflow's log_batch limit on metrics per call


@dataclass
class ImportResult:
    experiment: str
    created: list[str] = field(default_factory=list)  # legacy run ids
    skipped: list[str] = field(default_factory=list)  # already imported (same trial_id)
    logs_attached: int = 0
    missing_logs: list[str] = field(default_factory=list)

    def summary(self) -> str:
        line = (f"{self.experiment}: imported {len(self.created)} run(s), skipped {len(self.skipped)} "
                f"already present, attached {self.logs_attached} log(s)")
        if self.missing_logs:
            line += f"; no log for {len(self.missing_logs)} run(s)"
        return line


def load_legacy(
    csv_path: str | Path, *, logs_dir: str | Path | None = None, stage: str | None = None
) -> list[tuple[LegacyRun, str, ParsedLog | None, Path | None]]:
    """Read and check everything before anything is written: (run, stage, log, log path)."""
    path = Path(csv_path)
    if not path.is_file():
        raise DataError(f"{path}: no such results file")
    runs = parse_results_csv(path.read_text(), str(path))
    out = []
    for run in runs:
        run_stage = stage or run.stage
        if not run_stage:
            raise DataError(f"{path}:{run.line}: no stage for run {run.run_id}; pass --stage NAME "
                            "or add a 'stage' column")
        log_path = Path(logs_dir) / f"{run.run_id}.txt" if logs_dir else None
        log = None
        if log_path is not None and log_path.is_file():
            log = parse_log(log_path.read_text(errors="replace"), str(log_path))
            check_log_matches(run, log, str(log_path))
        out.append((run, run_stage, log, log_path if log else None))
    return out


def import_results(
    csv_path: str | Path,
    *,
    logs_dir: str | Path | None = None,
    stage: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    tracking_uri: str | None = None,
) -> ImportResult:
    if logs_dir is not None and not Path(logs_dir).is_dir():
        raise DataError(f"--logs {logs_dir}: not a directory")
    items = load_legacy(csv_path, logs_dir=logs_dir, stage=stage)
    client, uri = open_client(tracking_uri, must_exist=False)
    exp_id = _experiment_id(client, uri, experiment)
    existing = {r.data.tags.get("trial_id") for r in search(client, uri, [exp_id], tag_filter("trial"))}
    result = ImportResult(experiment)
    parents: dict[str, str] = {}
    spec = Path(csv_path).stem
    for run, run_stage, log, log_path in items:
        if run.trial_id in existing:
            result.skipped.append(run.run_id)
            continue
        if run_stage not in parents:
            parents[run_stage] = _parent_run(client, uri, exp_id, spec, run_stage)
        _create_run(client, uri, exp_id, run, run_stage, spec, parents[run_stage], log, log_path)
        existing.add(run.trial_id)
        result.created.append(run.run_id)
        result.logs_attached += log is not None
        if logs_dir is not None and log is None:
            result.missing_logs.append(run.run_id)
    return result


def _experiment_id(client, uri: str, name: str) -> str:
    exp = call(uri, client.get_experiment_by_name, name)
    if exp is not None:
        return exp.experiment_id
    return call(uri, client.create_experiment, name)


def _parent_run(client, uri: str, exp_id: str, spec: str, stage: str) -> str:
    """The sweep run standing for this import (reused on re-import of new rows)."""
    found = [r for r in search(client, uri, [exp_id], tag_filter("sweep", stage=stage, spec=spec))
             if r.data.tags.get("backend") == "import"]
    if found:
        return found[0].info.run_id
    tags = {KIND_TAG: "sweep", "spec": spec, "stage": stage, "backend": "import"}
    parent = call(uri, lambda: client.create_run(exp_id, tags=tags, run_name=f"import {spec} {stage}"))
    call(uri, client.set_terminated, parent.info.run_id, "FINISHED")
    return parent.info.run_id


def _create_run(client, uri, exp_id, run: LegacyRun, stage, spec, parent_id, log, log_path) -> None:
    from mlflow.entities import Metric, Param, RunTag

    start = run.start_time_ms or int(time.time() * 1000)
    created = call(uri, lambda: client.create_run(exp_id, start_time=start, run_name=run.run_id,
                                                  tags={"backend": "import"}))
    rid = created.info.run_id
    try:
        params = [Param(k, str(v)) for k, v in run.params.items()]
        metrics = [Metric(k, v, start, s) for k, s, v in (log.points if log else [])]
        last = max([s for _, s, _ in log.points], default=0) if log else 0
        last = max(last, int(run.params.get("num_iterations") or 0))  # type: ignore[arg-type]
        # One ms later at the last step, so the summary is each key's "latest" metric.
        metrics += [Metric(k, v, start + 1, last) for k, v in run.metrics.items()]
        call(uri, lambda: client.log_batch(rid, params=params))
        for i in range(0, len(metrics), _BATCH):
            call(uri, lambda chunk=metrics[i:i + _BATCH]: client.log_batch(rid, metrics=chunk))
        if log_path is not None:
            call(uri, client.log_artifact, rid, str(log_path), "logs")
        tags = [RunTag(k, v) for k, v in _trial_tags(run, stage, spec, parent_id, log).items()]
        call(uri, lambda: client.log_batch(rid, tags=tags))
        call(uri, client.set_terminated, rid, "FINISHED")
    except BaseException:
        try:
            client.delete_run(rid)
        except Exception:  # the original error is the one to report
            pass
        raise


def _trial_tags(run: LegacyRun, stage: str, spec: str, parent_id: str, log) -> dict[str, str]:
    tags = {
        "mlflow.parentRunId": parent_id, KIND_TAG: "trial", "trial_id": run.trial_id, "spec": spec,
        "stage": stage, "backend": "import", "status": "FINISHED", "import.source": run.source,
        "import.run_id": run.run_id, **run.tags,
    }
    if run.seed is not None:
        tags["seed"] = str(run.seed)
    if run.defaulted:
        tags["import.defaulted"] = ",".join(run.defaulted)
    if log is not None and log.torch_version:
        tags["torch_version"] = log.torch_version
    return tags
