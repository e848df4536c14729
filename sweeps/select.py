"""Runs -> configurations -> seed means -> the best one. Pure: the project's one grouping rule.

A configuration is the runs that agree on every config key that *varies* among the runs considered
(`CONFIG_KEYS`: the keys that define a trial's math, trainer.config.trial_identity, seed aside;
`attn_gate` is always a key). The stage table (analysis.table), a chained value (`{from: stage}`,
sweeps.chain) and a search's best value per design point (cluster.ray.summary) all group by this
rule, and average a metric over the FINISHED runs (the seeds) of each configuration, so a chained
stage picks the value the source stage's table shows as best.

A row is a flat mapping: config keys (typed: `typed()` reads MLflow's text params), `status`, metrics.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trainer.config import FIELD_SECTION, NON_IDENTITY_KEYS

# The study's columns come first, so that tables read like its own.
STUDY_ORDER: tuple[str, ...] = (
    "attn_gate", "gate_pos", "gate_act", "learning_rate", "num_iterations", "warmdown_iters",
    "warmup_iters", "batch_size", "device_batch_size", "sequence_length", "weight_decay",
    "muon_lr_ratio", "muon_momentum", "ns_steps", "n_layer", "n_head", "n_embd", "vocab_size",
    "val_tokens", "val_every", "replay_first_batch",
)
CONFIG_KEYS: tuple[str, ...] = STUDY_ORDER + tuple(sorted(
    k for k in FIELD_SECTION if k not in NON_IDENTITY_KEYS and k != "seed" and k not in STUDY_ORDER))
FINISHED = "FINISHED"
_INT_RE = re.compile(r"^[+-]?\d+$")
_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$|^[+-]?(nan|inf)$", re.IGNORECASE)


def typed(text: str | None) -> object:
    """CSV/MLflow text -> int, float or str; empty -> None."""
    if text is None or text.strip() == "":
        return None
    s = text.strip()
    if _INT_RE.match(s):
        return int(s)
    if _FLOAT_RE.match(s):
        return float(s)
    return s


def clean(v: object) -> object:
    """Missing (None, NaN, pandas NA) -> None so that keys compare equal; numpy scalars -> Python scalars."""
    if v is None or (isinstance(v, float) and math.isnan(v)) or type(v).__name__ == "NAType":
        return None
    item = getattr(v, "item", None)
    return item() if callable(item) and type(v).__module__ == "numpy" else v


def varying_keys(rows: Sequence[Mapping[str, Any]], candidates: Sequence[str] = CONFIG_KEYS) -> list[str]:
    """`attn_gate`, then every candidate key with more than one distinct non-missing value, in candidate order."""
    present = {k for r in rows for k in r}
    varying = [k for k in candidates if k in present
               and len({clean(r.get(k)) for r in rows} - {None}) > 1]
    return ["attn_gate"] + [k for k in varying if k != "attn_gate"]


def sort_key(key: tuple) -> tuple:
    """Strings alphabetically, numbers ascending, missing last (pandas' groupby order)."""
    return tuple((v is None, isinstance(v, str), v if v is not None else 0) for v in key)


def group(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> list[tuple[tuple, list[int]]]:
    """(key values, indices of its rows) per configuration, in sort_key order."""
    out: dict[tuple, list[int]] = {}
    for i, r in enumerate(rows):
        out.setdefault(tuple(clean(r.get(k)) for k in keys), []).append(i)
    return sorted(out.items(), key=lambda kv: sort_key(kv[0]))


@dataclass(frozen=True)
class Mean:
    """One configuration's seed mean of a metric over its FINISHED runs with a finite value."""

    config: dict[str, Any]
    mean: float
    n: int
    rows: tuple[int, ...]  # indices of the runs averaged


def seed_means(rows: Sequence[Mapping[str, Any]], metric: str, keys: Sequence[str]) -> list[Mean]:
    """Every configuration (grouped by `keys`) with at least one finished, finite value of `metric`."""
    out = []
    for key, idx in group(rows, keys):
        ok = [i for i in idx if rows[i].get("status") == FINISHED and _finite(rows[i].get(metric))]
        if ok:
            out.append(Mean(dict(zip(keys, key)), sum(float(rows[i][metric]) for i in ok) / len(ok), len(ok),
                            tuple(ok)))
    return out


def pick(means: Sequence[Mean], select: str = "best") -> Mean:
    """The lowest seed mean ("best"; losses) or the highest ("worst"); the first in table order on a tie."""
    return (min if select == "best" else max)(means, key=lambda m: m.mean)


def same(a: Any, b: Any) -> bool:
    """Spec values against recorded ones: numbers within rounding, everything else as text."""
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-12)
    except (TypeError, ValueError):
        return str(a) == str(b)


def matches(config: Mapping[str, Any], where: Sequence[tuple[str, Any]]) -> bool:
    return all(same(config.get(k), v) for k, v in where)


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False
