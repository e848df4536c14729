"""Legacy results CSV (+ reference-format logs) -> MLflow runs in the trainer's schema (write edge).

Every imported run is a child of one sweep run per (file, stage) - tags gatesweep.kind=sweep,
backend=import, spec=<file stem>, stage - and carries the trial tags of ARCHITECTURE.md with
backend=import and trial_id = sha1(file name, run_id)[:12]. Re-importing is idempotent: runs whose
trial_id is already in the experiment are skipped.

A run becomes visible (gatesweep.kind=trial, trial_id) only after all its data is logged, and is
deleted if logging fails, so an interrupted import never leaves a half-run that a re-import skips.

Histories afterwards (`import_histories`): a curve CSV or a folder of <run_id>.txt logs attaches
val_loss / train_time_ms (and a log's train_loss, step_avg_ms) as the metric histories of the runs
imported earlier with that `import.run_id` - the same histories a logged run has, so time-matched
tables read both alike. Points carry the run's start time as timestamp, one ms before its summary
metrics, so a summary stays each key's latest value. Idempotent: a run whose histories already
hold every (key, step) of the new ones is left alone; otherwise all points are logged, and those it
had already (same key, step, value and timestamp) MLflow stores once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from analysis.fetch import KIND_TAG, call, open_client, search, tag_filter
from analysis.import_checks import check_stage, read_utf8
from analysis.legacy import (
    LegacyRun,
    ParsedLog,
    check_log_matches,
    coerce,
    config_mismatch,
    is_curves_header,
    parse_curves_csv,
    parse_log,
    parse_results_csv,
)
from sweeps.errors import NoRunsError
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
        raise DataError(f"{path}: no such file; give a results CSV, a curve CSV or a folder of <run_id>.txt logs")
    if stage is not None:
        check_stage(stage, "--stage")
    runs = parse_results_csv(read_utf8(path), str(path))
    out = []
    for run in runs:
        run_stage = stage or run.stage
        if not run_stage:
            raise DataError(f"{path}:{run.line}: no stage for run {run.run_id}; pass --stage NAME "
                            "or add a 'stage' column")
        log_path = Path(logs_dir) / f"{run.run_id}.txt" if logs_dir else None
        log = None
        if log_path is not None and log_path.is_file():
            log = parse_log(read_utf8(log_path), str(log_path))
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
    from trainer.mlflow_sync import ensure_experiment

    return call(uri, ensure_experiment, client, name)


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


@dataclass
class HistoryResult:
    experiment: str
    source: str
    attached: list[str] = field(default_factory=list)  # legacy run ids given a history now
    present: list[str] = field(default_factory=list)  # had it already
    unknown: list[str] = field(default_factory=list)  # no run imported with that run_id

    def summary(self) -> str:
        line = (f"{self.experiment}: attached histories from {self.source} to {len(self.attached)} run(s), "
                f"{len(self.present)} had them already")
        if self.unknown:
            line += f"; {len(self.unknown)} run id(s) not imported here (import their results CSV first)"
        return line


def is_curves_file(path: str | Path) -> bool:
    """A curve CSV (step, val_loss per row) rather than a results CSV (one row per run)."""
    lines = read_utf8(Path(path)).splitlines()
    return is_curves_header([h.strip() for h in lines[0].split(",")] if lines else [])


def history_sources(path: str | Path) -> dict[str, Path | object]:
    """run_id -> its log file (logs folder) or its parsed CurveHistory (curve CSV)."""
    path = Path(path)
    if path.is_dir():
        logs = {p.stem: p for p in sorted(path.glob("*.txt")) if p.is_file()}
        if not logs:
            raise DataError(f"{path}: no <run_id>.txt logs in this folder")
        return dict(logs)
    if not path.is_file():
        raise DataError(f"{path}: no such curve CSV or logs folder")
    return dict(parse_curves_csv(read_utf8(path), str(path)))


def load_history(source) -> tuple[list[tuple[str, int, float]], dict[str, object], Path | None]:
    """(points, the config it claims, the log file to attach) of one run's history source."""
    if isinstance(source, Path):
        log = parse_log(read_utf8(source), str(source))
        return log.points, ({"num_iterations": log.num_iterations} if log.num_iterations else {}), source
    return source.points, source.config, None


def import_histories(
    path: str | Path, *, experiment: str = DEFAULT_EXPERIMENT, tracking_uri: str | None = None,
) -> HistoryResult:
    """Attach each run's history; only the logs of imported runs are read (a study's logs folder
    also holds aborted runs' logs that never made it into a results CSV)."""
    sources = history_sources(path)
    client, uri = open_client(tracking_uri)
    exp = call(uri, client.get_experiment_by_name, experiment)
    if exp is None:
        raise NoRunsError(f"experiment {experiment!r} not found at {uri}; import the results CSV first "
                          "(gatesweep import results.csv --stage S) or pass --experiment")
    imported: dict[str, list] = {}
    for r in search(client, uri, [exp.experiment_id], tag_filter("trial")):
        if (rid := r.data.tags.get("import.run_id")) in sources:
            imported.setdefault(rid, []).append(r)
    if not imported:
        raise DataError(f"{path}: none of its {len(sources)} run id(s) was imported into {experiment}; "
                        "import the results CSV first (gatesweep import results.csv --stage S)")
    items = {rid: load_history(sources[rid]) for rid in imported}
    for rid, runs in imported.items():  # check everything before writing anything
        for r in runs:
            params = {k: coerce(v) for k, v in r.data.params.items()}
            if why := config_mismatch(items[rid][1], params):
                raise DataError(f"{path}: run {rid}: {why}; is this the right file?")
    result = HistoryResult(experiment, Path(path).name, unknown=sorted(set(sources) - set(imported)))
    for rid, runs in imported.items():
        points, _, log_path = items[rid]
        fresh = [r for r in runs if not _has_history(client, uri, r.info.run_id, points)]
        for r in fresh:
            _log_history(client, uri, r, points, log_path)
        (result.attached if fresh else result.present).append(rid)
    return result


def _has_history(client, uri: str, run_id: str, points: list[tuple[str, int, float]]) -> bool:
    """Every key of `points` is already logged at every one of its steps."""
    wanted: dict[str, set[int]] = {}
    for k, s, _ in points:
        wanted.setdefault(k, set()).add(s)
    for key, steps in wanted.items():
        have = {int(m.step) for m in call(uri, client.get_metric_history, run_id, key)}
        if not steps <= have:
            return False
    return True


def _log_history(client, uri: str, run, points: list[tuple[str, int, float]], log_path: Path | None) -> None:
    from mlflow.entities import Metric

    start = run.info.start_time or 0
    metrics = [Metric(k, v, start, s) for k, s, v in points]
    rid = run.info.run_id
    for i in range(0, len(metrics), _BATCH):
        call(uri, lambda chunk=metrics[i:i + _BATCH]: client.log_batch(rid, metrics=chunk))
    if log_path is not None:
        call(uri, client.log_artifact, rid, str(log_path), "logs")
