"""Budget-matched designs: a design point's num_iterations from a source stage's measured times.

    num_iterations: {time_of: {stage: stage3, where: {attn_gate: none}, fallback_ms: 180}}

Budget T = seed-mean `train_time_ms` of the source stage's FINISHED runs matching `where` (default
the baseline, attn_gate: none). A design point's ms/step = seed-mean `ms_per_step` of the source
stage's FINISHED runs with its own gate keys (attn_gate, gate_pos, gate_act), else `fallback_ms`.
num_iterations = round(T / ms/step) + the 10 untimed steps (train_time counts steps 10..N, see
trainer.clock; ms_per_step = train_time_ms / (N - 10)): every variant then trains as long as the
baseline did, and the baseline itself resolves to exactly its source's num_iterations. The LR
schedule (warmdown) then ends at that time. Resolved per design point at plan time, from the same
MLflow runs as `{from: ...}` chains (sweeps.chain); `budget_value` is pure.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sweeps.chain import StageReader, check_complete, run_first
from sweeps.errors import SpecError, TrackingError
from sweeps.select import matches
from trainer.clock import WARMUP

TIME_OF_KEYS = ("stage", "where", "fallback", "fallback_ms")
GATE_KEYS = ("attn_gate", "gate_pos", "gate_act")
GATE_DEFAULTS = {"attn_gate": "none", "gate_pos": "sdpa", "gate_act": "sigmoid"}
TIME_KEY = "num_iterations"


@dataclass(frozen=True, kw_only=True)
class TimeOf:
    source: str
    where: tuple[tuple[str, Any], ...] = (("attn_gate", "none"),)
    fallback: Any = None  # num_iterations while the source stage has no runs at all
    fallback_ms: float | None = None  # ms/step of a design point the source stage did not run


TimeResolver = Callable[[TimeOf, str, Mapping[str, Any]], tuple[int, str]]


def parse_time_of(ctx: Any, m: Any, key: str, field_path: str, name_re: Any) -> TimeOf:
    """`{time_of: {...}}` of a spec value; `ctx`: sweeps.spec's error context."""
    if key != TIME_KEY:
        raise ctx.error(field_path, f"time_of sets {TIME_KEY} from a measured time budget; {key} cannot take it "
                                    "(use {from: ...} to chain other values)")
    if len(m) != 1:
        raise ctx.error(field_path, "write the budget as {time_of: {stage: S, where: {attn_gate: none}}} alone")
    body = ctx.mapping(m["time_of"], f"{field_path}.time_of")
    ctx.keys(body, TIME_OF_KEYS, f"{field_path}.time_of")
    stage = body.get("stage")
    if not isinstance(stage, str) or not name_re.fullmatch(stage):
        raise ctx.error(f"{field_path}.time_of.stage", f"required: the stage whose measured time sets the budget "
                                                       f"(letters, digits, '_', '.', '-'), got {stage!r}")
    where = ctx.mapping(body.get("where", {"attn_gate": "none"}), f"{field_path}.time_of.where")
    ms = body.get("fallback_ms")
    if ms is not None and (isinstance(ms, bool) or not isinstance(ms, (int, float)) or not ms > 0):
        raise ctx.error(f"{field_path}.time_of.fallback_ms", f"expected a positive ms/step, got {ms!r}")
    fallback = body.get("fallback")
    if fallback is not None:
        ctx.int_(fallback, f"{field_path}.time_of.fallback", 1)
    return TimeOf(source=stage, where=tuple(sorted(where.items())), fallback=fallback,
                  fallback_ms=None if ms is None else float(ms))


def gates_of(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: values.get(k, GATE_DEFAULTS[k]) for k in GATE_KEYS}


def budget_value(runs: list[dict[str, Any]], spec: TimeOf, key: str, gates: Mapping[str, Any],
                 expected: set[str] | None = None, why_none: str = "has no runs in the tracking store") -> tuple[int, str]:
    """(num_iterations, where it came from) for a design point with these gate keys. runs: the source
    stage's trial runs as sweeps.chain reads them ({"params", "metrics", "status", "trial_id"})."""
    if not runs:
        if spec.fallback is not None:
            return int(spec.fallback), f"time_of.fallback (stage '{spec.source}' has no runs)"
        raise SpecError(f"{key}: time_of stage '{spec.source}', which {why_none}; "
                        f"{run_first(spec.source)}, add time_of.fallback or override {key}=...")
    check_complete(runs, spec.source, key, expected)
    where = ", ".join(f"{k}={v}" for k, v in spec.where) or "any config"
    budget = _finished(runs, spec.where, "train_time_ms")
    if not budget:
        raise SpecError(f"{key}: time_of stage '{spec.source}' has no finished runs with {where} and a train_time_ms; "
                        f"check time_of.where or override {key}=...")
    total_ms = sum(budget) / len(budget)
    point = tuple(sorted(gates.items()))
    label = " ".join(f"{k}={v}" for k, v in point)
    own = _finished(runs, point, "ms_per_step")
    if own:
        ms, ms_from = sum(own) / len(own), f"mean ms_per_step of {len(own)} run(s) with {label}"
    elif spec.fallback_ms is not None:
        ms, ms_from = spec.fallback_ms, "time_of.fallback_ms"
    else:
        raise SpecError(f"{key}: time_of stage '{spec.source}' has no finished runs with {label} to measure its ms/step; "
                        f"run that configuration in stage '{spec.source}', give its measured ms/step as "
                        f"time_of.fallback_ms: <ms>, or override {key}=...")
    value = max(WARMUP + 1, round(total_ms / ms) + WARMUP)
    return value, (f"{key}={value} for {label}: budget {total_ms / 1000:.1f} s (mean train_time_ms of {len(budget)} "
                   f"run(s) with {where} in stage '{spec.source}') / {ms:.2f} ms/step ({ms_from}) + {WARMUP} untimed steps")


def _finished(runs: list[dict[str, Any]], where: tuple[tuple[str, Any], ...], metric: str) -> list[float]:
    out = []
    for r in runs:
        if r["status"] != "FINISHED" or not matches(r["params"], where) or metric not in r["metrics"]:
            continue
        v = float(r["metrics"][metric])
        if math.isfinite(v) and v > 0:
            out.append(v)
    return out


def mlflow_time_resolver(read: StageReader) -> TimeResolver:
    """Resolve time_of from every experiment's trial runs tagged with the source stage (`read`:
    sweeps.chain.stage_reader, once per stage)."""

    def resolve(spec: TimeOf, key: str, values: Mapping[str, Any]) -> tuple[int, str]:
        try:
            runs, expected = read(spec.source)
        except Exception as e:  # noqa: BLE001 - connection errors come in many types
            raise TrackingError(f"{key}: time_of stage '{spec.source}', but the tracking store cannot be read "
                                f"({type(e).__name__}: {str(e)[:200]}); start it (make mlflow-up), set "
                                f"MLFLOW_TRACKING_URI, or override {key}=...") from None
        return budget_value(runs, spec, key, gates_of(values), expected)

    return resolve


def no_store_time_resolver(spec: TimeOf, key: str, values: Mapping[str, Any]) -> tuple[int, str]:
    """No tracking store consulted (or none exists yet): the fallback, or a clear refusal."""
    return budget_value([], spec, key, gates_of(values))
