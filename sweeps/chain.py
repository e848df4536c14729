"""Stage chaining: a spec value taken from an earlier stage's seed-averaged result.

    learning_rate: {from: stage2, select: best, metric: final_val_loss,
                    where: {attn_gate: elementwise}, fallback: 0.00468}

`select_value` is pure (runs in, value out); `mlflow_resolver` fetches the source stage's runs.
A stage with no runs uses the fallback (or fails without one); a stage with runs still queued,
running or killed is incomplete and fails, so a later stage never builds on a partial result.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sweeps.errors import SpecError, TrackingError
from sweeps.mlflow_runs import newest, search_all
from sweeps.select import matches, pick, seed_means, typed, varying_keys

INCOMPLETE = ("RUNNING", "QUEUED", "KILLED", "SCHEDULED")
ENDED = ("FINISHED", "FAILED", "EARLY_STOPPED")  # a FAILED trial (e.g. a diverging LR) is a result too
TRIAL_IDS_TAG = "gatesweep.trial_ids"  # on a sweep run (cluster.common.store): the trial ids of its spec's expansion
CHUNKS_TAG = f"{TRIAL_IDS_TAG}.chunks"
MAX_TAG_CHARS = 5000  # MLflow's tag value limit on older servers


@dataclass(frozen=True, kw_only=True)
class Chain:
    """A value taken from an earlier stage's seed-averaged result (resolved at plan time)."""

    source: str
    select: str = "best"
    metric: str = "final_val_loss"
    where: tuple[tuple[str, Any], ...] = ()
    fallback: Any = None


@dataclass(frozen=True)
class Resolved:
    """A chained value and where it came from (plan and dry runs print `note`)."""

    value: Any
    note: str


def chain_note(chain: Chain, key: str, value: Any, runs: list[dict[str, Any]], why_none: str, origin: str = "") -> str:
    """`learning_rate=0.00468 is the fallback: stage 'stage2' has no runs ...` or where the value came from
    (`origin`: where the runs were read, when not the tracking store)."""
    where = " where " + ", ".join(f"{k}={v}" for k, v in chain.where) if chain.where else ""
    if not runs:
        return (f"{key}={value} is the fallback: stage '{chain.source}' {why_none}; once it has run, {key} is "
                f"taken from its {chain.select} {chain.metric}{where}")
    return f"{key}={value}: the {chain.select} {chain.metric} of stage '{chain.source}'{where} ({len(runs)} runs{origin})"


def resolve_from(runs: list[dict[str, Any]], chain: Chain, key: str, expected: set[str] | None = None,
                 why_none: str = "has no runs in the tracking store", origin: str = "") -> Resolved:
    value = select_value(runs, chain, key, expected, why_none)
    return Resolved(value, chain_note(chain, key, value, runs, why_none, origin))


def run_first(source: str) -> str:
    """The fix for a source stage with no runs. Stages are named by `stage:`, not by the spec file's name
    (offline-budget-base lives in offline_budget_base.yaml), so the hint names the field to look for."""
    return f"run it first (gatesweep run <the spec with stage: {source}>)"


def check_complete(runs: list[dict[str, Any]], source: str, key: str, expected: set[str] | None) -> None:
    """Refuse a source stage with runs still queued, running or killed, or (when its last sweep's trial
    ids are known) with trials of that sweep that never ended."""
    pending = [r for r in runs if r["status"] in INCOMPLETE]
    if pending:
        raise SpecError(f"{key}: chained from stage '{source}', which is incomplete ({len(pending)} of "
                        f"{len(runs)} runs queued, running or killed); finish it (rerun its spec) or override {key}=...")
    if expected:
        ended = {r.get("trial_id") for r in runs if r["status"] in ENDED}
        missing = expected - ended
        if missing:
            raise SpecError(f"{key}: chained from stage '{source}', which is incomplete ({len(missing)} of "
                            f"{len(expected)} trials of its last sweep have no finished run); finish it (rerun its "
                            f"spec) or override {key}=...")


def select_value(runs: list[dict[str, Any]], chain: Chain, key: str, expected: set[str] | None = None,
                 why_none: str = "has no runs in the tracking store") -> Any:
    """runs: [{"params": {...}, "status": str, "metrics": {...}, "trial_id": str}] of the source stage.
    expected: the trial ids of the source stage's last sweep (its spec's expansion), when known: every
    one of them must have ended, so a stage run only in part (a sweep stopped between trials, trials
    never submitted) is refused rather than chained from.

    The pick is the source stage's table's: runs are grouped into configurations by every config key
    that varies among them (sweeps.select), `where` keeps some configurations, and the seed-mean best
    (or worst) of `metric` gives the value. Configurations left that differ in a key other than `key`
    are refused: which of them to follow is the spec's decision (`where`), never a pooled mean."""
    if not runs:
        if chain.fallback is not None:
            return chain.fallback
        raise SpecError(f"{key}: chained from stage '{chain.source}', which {why_none}; "
                        f"{run_first(chain.source)} or add a fallback / override {key}=...")
    check_complete(runs, chain.source, key, expected)
    rows = [{k: typed(str(v)) for k, v in r["params"].items()} | {"status": r["status"]}
            | {chain.metric: r["metrics"].get(chain.metric)} for r in runs]
    keys = varying_keys(rows)
    means = [m for m in seed_means(rows, chain.metric, keys) if matches(rows[m.rows[0]], chain.where)]
    if not means or key not in rows[means[0].rows[0]]:
        where = ", ".join(f"{k}={v}" for k, v in chain.where) or "any config"
        raise SpecError(f"{key}: stage '{chain.source}' has no finished runs with {where} and metric "
                        f"'{chain.metric}'; check the `where` filter or override {key}=...")
    others = {k: sorted({str(m.config[k]) for m in means}) for k in keys if k != key}
    others = {k: v for k, v in others.items() if len(v) > 1}
    if others:
        differ = "; ".join(f"{k} ({', '.join(v)})" for k, v in others.items())
        k, v = next(iter(others.items()))
        raise SpecError(f"{key}: stage '{chain.source}' has {len(means)} configurations that also differ in "
                        f"{differ}; say which one to take {key} from with `where` (e.g. where: {{{k}: {v[0]}}}) "
                        f"or override {key}=...")
    return rows[pick(means, chain.select).rows[0]][key]


StageReader = Callable[[str], tuple[list[dict[str, Any]], set[str] | None]]


def stage_reader(client: Any) -> StageReader:
    """stage_runs of this client, read once per stage: a command's chained and time_of values share it."""
    return functools.cache(lambda stage: stage_runs(client, stage))


def mlflow_resolver(read: StageReader) -> Callable[[Chain, str], Any]:
    """Resolve chains from every experiment's trial runs tagged with the source stage."""

    def resolve(chain: Chain, key: str) -> Any:
        try:
            runs, expected = read(chain.source)
        except Exception as e:  # noqa: BLE001 - connection errors come in many types
            raise TrackingError(f"{key}: chained from stage '{chain.source}', but the tracking store cannot be "
                                f"read ({type(e).__name__}: {str(e)[:200]}); start it (make mlflow-up), set "
                                f"MLFLOW_TRACKING_URI, or override {key}=...") from None
        return resolve_from(runs, chain, key, expected)

    return resolve


def stage_runs(client: Any, stage: str) -> tuple[list[dict[str, Any]], set[str] | None]:
    """The stage's trial runs, and the trial ids its newest sweep run expected (None if unknown:
    imported runs)."""
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = [{"params": r.data.params, "metrics": r.data.metrics, "trial_id": r.data.tags.get("trial_id"),
             "status": r.data.tags.get("status") or r.info.status}
            for r in search_all(client, exps, f"tags.`gatesweep.kind` = 'trial' and tags.stage = '{stage}'")]
    sweep = newest(client, exps, f"tags.`gatesweep.kind` = 'sweep' and tags.stage = '{stage}'")
    return runs, trial_ids_of(sweep.data.tags) if sweep else None


def trial_id_tags(ids: Sequence[str]) -> dict[str, str]:
    """The sweep run's tags naming `ids`, however many: comma-separated chunks of at most MAX_TAG_CHARS
    characters in `gatesweep.trial_ids` (the first: the one tag older readers know), `gatesweep.trial_ids.1`,
    ..., and their number in `gatesweep.trial_ids.chunks`."""
    chunks = [""]
    for tid in ids:
        if chunks[-1] and len(chunks[-1]) + 1 + len(tid) > MAX_TAG_CHARS:
            chunks.append("")
        chunks[-1] = f"{chunks[-1]},{tid}" if chunks[-1] else tid
    tags = {TRIAL_IDS_TAG if i == 0 else f"{TRIAL_IDS_TAG}.{i}": c for i, c in enumerate(chunks)}
    return tags | {CHUNKS_TAG: str(len(chunks))}


def trial_ids_of(tags: Mapping[str, str]) -> set[str] | None:
    """The trial ids a sweep run names (trial_id_tags, or the single tag of older sweeps); None when
    unknown (no tag, or a chunk missing)."""
    count = tags.get(CHUNKS_TAG, "1")
    parts = [tags.get(TRIAL_IDS_TAG if i == 0 else f"{TRIAL_IDS_TAG}.{i}")
             for i in range(int(count) if count.isdigit() else 0)]
    if not parts or not all(parts):
        return None
    return set(",".join(parts).split(","))  # type: ignore[arg-type]


def empty_store_resolver() -> Callable[[Chain, str], Any]:
    """For a store that does not exist yet (a sqlite file not created): no stage has runs."""

    def resolve(chain: Chain, key: str) -> Any:
        return resolve_from([], chain, key, why_none="has no runs (the tracking store does not exist yet)")

    return resolve
