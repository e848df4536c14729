"""Parse the study's legacy records: results CSV rows and reference-format logs. Pure (text in).

Results CSV (`experiments/results.csv` of the study, one row per finished run):
run_id, date, git_commit, seed, attn_gate, gate_pos, gate_act, learning_rate, batch_size,
device_batch_size, sequence_length, num_iterations, warmdown_iters, final_val_loss, best_val_loss,
train_time_ms, ms_per_step, gpu_name, n_gpus, notes. Subsets import too; only run_id and
final_val_loss are required. Unknown columns are kept as params (e.g. the study's
`runpod_instance`); a `stage` column, if present, gives each row's stage.

Defaults for missing columns are applied only where they cannot be wrong (recorded in the run's
`import.defaulted` tag): batch_size 512, device_batch_size 64 and sequence_length 1024 never changed
in the reference trainer; gate_pos sdpa and gate_act sigmoid are filled only for ``attn_gate ==
"none"`` rows, where the gate settings are inert. Nothing else (learning rate, iterations, gate) is
ever guessed.

Logs (`logs/<run_id>.txt`): a header (code, torch/CUDA line, nvidia-smi) then lines
``step:{s}/{N} val_loss:{v} train_time:{ms}ms step_avg:{a}ms`` and the same with ``train_loss``.
Step lines are recognised by a full-line match anywhere, so logs whose header lost a ``====``
separator (as some of the study's do) still parse; code lines never match (they hold ``{...}``).

Curve CSVs (the study's `experiments/log_curves*.csv`): one row per evaluation - run_id, step,
val_loss, train_time_ms, and optionally `total` (= num_iterations) and config columns (attn_gate,
gate_pos, gate_act, learning_rate) that must agree with the run they are attached to.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import PurePath

import pandas as pd

from analysis.import_checks import (
    MAX_FIELD_CHARS,
    check_columns,
    check_config,
    check_field,
    check_measure,
    check_run_id,
    check_stage,
)
from sweeps.select import typed
from trainer.config import INT_LIMITS
from trainer.errors import DataError

REQUIRED_COLUMNS = ("run_id", "final_val_loss")
SUMMARY_METRICS = ("final_val_loss", "best_val_loss", "train_time_ms", "ms_per_step")
TAG_COLUMNS = {"git_commit": "git_sha", "gpu_name": "gpu_name", "n_gpus": "n_gpus",
               "date": "import.date", "notes": "mlflow.note.content"}
ALWAYS_SAFE_DEFAULTS = {"batch_size": 512, "device_batch_size": 64, "sequence_length": 1024}
INERT_GATE_DEFAULTS = {"gate_pos": "sdpa", "gate_act": "sigmoid"}
_SPECIAL = {"run_id", "seed", "stage", *SUMMARY_METRICS, *TAG_COLUMNS}
_STEP_RE = re.compile(
    r"^step:(\d+)/(\d+) (val_loss|train_loss):(\S+) train_time:(\d+)ms step_avg:(\S+)ms\s*$"
)
_TORCH_RE = re.compile(r"^Running pytorch (\S+) compiled for CUDA (\S+)")
_SEPARATOR_RE = re.compile(r"^={20,}\s*$")
_MAX_STEP = INT_LIMITS["num_iterations"]


@dataclass(frozen=True)
class LegacyRun:
    source: str  # the results file's name; with run_id it makes the stable trial_id
    line: int  # line number in the CSV, for messages
    run_id: str
    stage: str | None
    seed: int | None
    params: dict[str, object]
    metrics: dict[str, float]
    tags: dict[str, str]
    start_time_ms: int | None = None
    defaulted: tuple[str, ...] = ()

    @property
    def trial_id(self) -> str:
        return legacy_trial_id(self.source, self.run_id)


@dataclass(frozen=True)
class ParsedLog:
    num_iterations: int | None
    # (key, step, value): val_loss from val lines; train_loss, train_time_ms, step_avg_ms from train
    # lines, except that at a val step train_time_ms is the val line's clock, as the trainer logs it
    # (the val line's step_avg uses another convention and is not kept).
    points: list[tuple[str, int, float]] = field(default_factory=list)
    torch_version: str = ""
    cuda_version: str = ""


@dataclass(frozen=True)
class CurveHistory:
    """One run's rows of a curve CSV: (key, step, value) points and the config it claims."""

    run_id: str
    line: int  # first line of the run in the CSV, for messages
    points: list[tuple[str, int, float]]
    config: dict[str, object]


def legacy_trial_id(source: str, run_id: str) -> str:
    """Stable id of an imported run: sha1 of the results file's name and the run_id."""
    return hashlib.sha1(f"{PurePath(source).name}:{run_id}".encode()).hexdigest()[:12]


coerce = typed  # sweeps.select.typed: CSV/MLflow text -> int, float or str


def parse_results_csv(text: str, source: str) -> list[LegacyRun]:
    header, rows = read_csv_rows(text, source)
    for col in REQUIRED_COLUMNS:
        if col not in header:
            raise DataError(f"{source}: missing required column {col!r} (header: {', '.join(header)})")
    runs, seen = [], set()
    for i, row in rows:
        run = _parse_row(row, header, source, i)
        if run.run_id in seen:
            raise DataError(f"{source}:{i}: run_id {run.run_id!r} appears twice; keep one row per run")
        seen.add(run.run_id)
        runs.append(run)
    if not runs:
        raise DataError(f"{source}: no data rows")
    return runs


def read_csv_rows(text: str, source: str) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """(header, [(line, {column: stripped text})]) with every field checked (length, count, CSV syntax)."""
    reader = csv.reader(io.StringIO(text))
    rows: list[tuple[int, dict[str, str]]] = []
    try:
        header = [h.strip() for h in next(reader, [])]
        check_columns(header, source)
        for fields in reader:
            line = reader.line_num
            if len(fields) > len(header):
                raise DataError(f"{source}:{line}: {len(fields)} fields but the header has {len(header)}; "
                                "quote fields that hold commas (\"a, b\")")
            row = {h: v.strip() for h, v in zip(header, fields, strict=False)}
            for col, value in row.items():
                check_field(value, col, source, line)
            if any(row.values()):
                rows.append((line, row))
    except csv.Error as e:
        fix = (f"shorten the field (at most {MAX_FIELD_CHARS:,} characters)" if "field limit" in str(e)
               else "fix the line")
        raise DataError(f"{source}:{reader.line_num}: malformed CSV ({e}); {fix}") from None
    return header, rows


def _parse_row(row: dict[str, str], header: list[str], source: str, line: int) -> LegacyRun:
    run_id = row.get("run_id") or ""
    if not run_id:
        raise DataError(f"{source}:{line}: run_id is empty; every row needs the run's id")
    check_run_id(run_id, source, line)
    metrics = {k: check_measure(k, v, row.get(k), source, line)
               for k in SUMMARY_METRICS if (v := coerce(row.get(k))) is not None}
    if "final_val_loss" not in metrics:
        raise DataError(f"{source}:{line}: final_val_loss is empty for run {run_id}")
    params = {k: v for k in header if k not in _SPECIAL and (v := coerce(row.get(k))) is not None}
    params, defaulted = _apply_defaults(params, header)
    seed = coerce(row.get("seed"))
    if seed is not None and not isinstance(seed, int):
        raise DataError(f"{source}:{line}: seed={seed!r} is not an integer")
    if seed is not None:
        params["seed"] = seed
    params = check_config(params, source, line)
    tags = {TAG_COLUMNS[k]: row[k] for k in TAG_COLUMNS if row.get(k)}
    stage = row.get("stage") or None
    if stage is not None:
        check_stage(stage, f"{source}:{line}")
    return LegacyRun(source=PurePath(source).name, line=line, run_id=run_id, stage=stage, seed=seed,
                     params=params, metrics=metrics, tags=tags,
                     start_time_ms=_parse_date(row.get("date")), defaulted=defaulted)


def _apply_defaults(params: dict[str, object], header: list[str]) -> tuple[dict[str, object], tuple[str, ...]]:
    safe: dict[str, object] = dict(ALWAYS_SAFE_DEFAULTS)
    if params.get("attn_gate") == "none":
        safe.update(INERT_GATE_DEFAULTS)
    filled = {k: v for k, v in safe.items() if k not in header}
    return {**params, **filled}, tuple(filled)


def _parse_date(text: str | None) -> int | None:
    """The study's `date` ("2025-12-07 09:42:24", no zone) -> epoch ms, read as UTC."""
    if not text or not text.strip():
        return None
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1000)


def parse_log(text: str, source: str) -> ParsedLog:
    points: dict[tuple[str, int], float] = {}  # a resumed run may repeat a step: the last one wins
    val_steps: set[int] = set()
    total = None
    torch_version = cuda_version = ""
    for n, line in enumerate(text.splitlines(), start=1):
        if m := _TORCH_RE.match(line):
            torch_version, cuda_version = m.group(1), m.group(2)
            continue
        m = _STEP_RE.match(line)
        if not m:
            continue
        step, total = int(m.group(1)), int(m.group(2))
        kind, ms, avg = m.group(3), float(m.group(5)), _float(m.group(6))
        value = check_measure(kind, _float(m.group(4)), m.group(4), source, n)
        if avg < 0:
            check_measure("step_avg", avg, m.group(6), source, n)
        points[(kind, step)] = value
        if kind == "val_loss":
            points[("train_time_ms", step)] = ms
            val_steps.add(step)
        elif step not in val_steps:  # a resumed run's train line must not overwrite a val step's clock
            points[("train_time_ms", step)] = ms
        if kind == "train_loss" and math.isfinite(avg):  # step_avg is "nan" until the clock has run a few steps
            points[("step_avg_ms", step)] = avg
    if not points:
        raise DataError(f"{source}: no 'step:N/M val_loss:...' lines; is this a reference-format log?")
    ordered = sorted(((k, s, v) for (k, s), v in points.items()), key=lambda p: (p[1], p[0]))
    return ParsedLog(total, ordered, torch_version, cuda_version)


def check_log_matches(run: LegacyRun, log: ParsedLog, log_name: str) -> None:
    """A log whose step count differs from the CSV row belongs to another run."""
    n = run.params.get("num_iterations")
    if isinstance(n, int) and log.num_iterations is not None and n != log.num_iterations:
        raise DataError(f"{log_name}: log has {log.num_iterations} iterations but {run.source} row for "
                        f"{run.run_id} says num_iterations={n}; check the --logs directory")


CURVE_COLUMNS = ("run_id", "step", "val_loss", "train_time_ms")
CURVE_CONFIG = {"attn_gate": "attn_gate", "gate_pos": "gate_pos", "gate_act": "gate_act",
                "learning_rate": "learning_rate", "total": "num_iterations"}


def is_curves_header(header: list[str]) -> bool:
    """A curve CSV (one row per evaluation), as opposed to a results CSV (one row per run)."""
    return {"run_id", "step", "val_loss"} <= set(header) and "final_val_loss" not in header


def parse_curves_csv(text: str, source: str) -> dict[str, CurveHistory]:
    """Curve CSV -> run_id -> its history (val_loss and train_time_ms by step), checked row by row."""
    header, rows = read_csv_rows(text, source)
    missing = [c for c in CURVE_COLUMNS if c not in header]
    if missing:
        raise DataError(f"{source}: missing column(s) {', '.join(missing)} of a curve CSV "
                        f"({', '.join(CURVE_COLUMNS)}); header: {', '.join(header)}")
    out: dict[str, CurveHistory] = {}
    for i, row in rows:
        run_id = row.get("run_id", "")
        step, loss, ms = (coerce(row.get(c)) for c in CURVE_COLUMNS[1:])
        if not run_id or not isinstance(step, int) or not 0 <= step <= _MAX_STEP:
            raise DataError(f"{source}:{i}: needs a run_id and an integer step in [0, {_MAX_STEP:_}] (got "
                            f"{row.get('run_id')!r}, {row.get('step')!r})")
        check_run_id(run_id, source, i)
        loss, ms = (check_measure(c, v, row.get(c), source, i) for c, v in (("val_loss", loss), ("train_time_ms", ms)))
        config = {CURVE_CONFIG[k]: v for k in CURVE_CONFIG if (v := coerce(row.get(k))) is not None}
        if run_id not in out:
            config = check_config(config, source, i)
            out[run_id] = CurveHistory(run_id, i, [], config)
        hist = out[run_id]
        if config_mismatch(config, hist.config) or set(config) != set(hist.config):
            raise DataError(f"{source}:{i}: run {run_id} changes its config within the file "
                            f"({config} vs {hist.config} at line {hist.line})")
        hist.points.extend([("val_loss", step, loss), ("train_time_ms", step, ms)])
    if not out:
        raise DataError(f"{source}: no data rows")
    return out


def config_mismatch(claimed: dict[str, object], params: dict[str, object]) -> str:
    """The first config field where a curve/log disagrees with its run's params, as 'k=a vs b'; ''."""
    for k, v in claimed.items():
        have = params.get(k)
        if have is None:
            continue
        if isinstance(v, int | float) and isinstance(have, int | float):
            same = math.isclose(float(v), float(have))
        else:
            same = str(v) == str(have)
        if not same:
            return f"{k}={v} here but {k}={have} in the imported run"
    return ""


def tidy_frame(runs: list[LegacyRun], stage: str | None = None) -> pd.DataFrame:
    """The runs as the tidy run table `analysis.fetch.fetch_runs` returns after an import."""
    rows = []
    for r in runs:
        row: dict[str, object] = {
            "mlflow_run_id": None, "trial_id": r.trial_id, "spec": PurePath(r.source).stem,
            "stage": stage or r.stage, "seed": r.seed, "status": "FINISHED", "backend": "import",
        }
        row.update({k: v for k, v in r.params.items() if k != "seed"})
        row.update({k: r.metrics.get(k, math.nan) for k in SUMMARY_METRICS})
        rows.append(row)
    return pd.DataFrame(rows)


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan
