"""The `search:` block of a spec: a search space, ASHA settings and sampled trials. Pure: no Ray, no I/O.

Samples are drawn here, not by Ray's search DSL, so that a sampled config is an ordinary `Trial`
(trial id = `config_hash` of its resolved config, like every other trial): `--dry-run` shows the
exact trials, every backend records them the same way, and a rerun of the same spec draws the same
values, which is what lets an interrupted search resume by trial id. Ray only receives the list.

    search:
      space:                              # trainer keys; each value one of:
        learning_rate: {loguniform: [0.002, 0.2]}   #   loguniform / uniform: [low, high]
        # muon_lr_ratio: {grid: [0.05, 0.1]}        #   grid: [values...] (every value is tried)
      num_samples: 6          # random draws (shared by every design point: gates meet the same LRs)
      seed: 0                 # seeds the draws
      max_concurrent_trials: 2
      scheduler: {type: asha, grace_period: 50, reduction_factor: 2, max_t: 300}   # training steps

ASHA's unit is the training step: every evaluation reports (step, val_loss), and a rung at step s
judges each trial at its first evaluation at or after s.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from sweeps.errors import SpecError
from sweeps.expand import Trial, unique_trials
from sweeps.schema import Scheduler, Search, check_section
from sweeps.spec import SweepSpec
from trainer.config import ALL_KEYS, FIELD_SECTION, TrainConfig, coerce, did_you_mean
from trainer.errors import ConfigError

DISTRIBUTIONS = ("loguniform", "uniform", "grid")
SIGNIFICANT_DIGITS = 3  # sampled values are rounded: readable params, and ids that survive a print
METRIC, MODE = "val_loss", "min"


@dataclass(frozen=True)
class Axis:
    key: str
    kind: str  # loguniform | uniform | grid
    values: tuple[Any, ...]  # (low, high) for the random kinds, the values for grid

    def describe(self) -> str:
        if self.kind == "grid":
            return f"{self.key}: grid {list(self.values)}"
        return f"{self.key}: {self.kind} [{self.values[0]:g}, {self.values[1]:g}]"


@dataclass(frozen=True, kw_only=True)
class Asha:
    grace_period: int
    """Training steps before the first rung."""
    reduction_factor: float
    max_t: int
    """Training steps; a trial that reaches it is stopped (0 = no scheduler: every trial runs to the end)."""

    def rungs(self) -> list[int]:
        """Steps at which ASHA compares trials (as Ray's ASHA places them: grace * rf^k below max_t)."""
        if self.max_t <= 0:
            return []
        n = int(math.log(self.max_t / self.grace_period) / math.log(self.reduction_factor) + 1)
        return [int(self.grace_period * self.reduction_factor ** k) for k in range(n)
                if self.grace_period * self.reduction_factor ** k < self.max_t]


@dataclass(frozen=True, kw_only=True)
class SearchPlan:
    axes: tuple[Axis, ...]
    num_samples: int
    seed: int
    max_concurrent_trials: int
    scheduler: Asha | None

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(a.key for a in self.axes)

    @property
    def random_axes(self) -> tuple[Axis, ...]:
        return tuple(a for a in self.axes if a.kind != "grid")


class _Ctx:
    """Errors of the search block, named by their field. Its structure (keys, types, scheduler type) is
    the spec schema's (sweeps.schema.Search), checked when the spec was loaded; here: what needs the
    trainer's keys and the spec's grid."""

    def __init__(self, spec: SweepSpec):
        self.path = spec.path

    def error(self, field_path: str, msg: str) -> SpecError:
        return SpecError(f"{self.path}: search.{field_path}: {msg}")


def parse_search(spec: SweepSpec) -> SearchPlan:
    """`spec.search` into a SearchPlan."""
    ctx = _Ctx(spec)
    if not spec.search:
        # no search: the spec's own trials (its grid x seeds) as Tune trials, every one to the end, one
        # at a time unless --max-parallel says otherwise
        return SearchPlan(axes=(), num_samples=1, seed=0, max_concurrent_trials=1, scheduler=None)
    top = check_section("search", spec.search, spec.path)
    assert isinstance(top, Search)
    for k in top.space:
        if k not in ALL_KEYS:
            raise ctx.error(f"space.{k}", f"unknown key{did_you_mean(k, ALL_KEYS)}; search over trainer keys (trainer/config.py)")
    axes = tuple(_axis(ctx, spec, str(k), v) for k, v in top.space.items())
    if not axes:
        raise ctx.error("space", "empty; give at least one key, e.g. learning_rate: {loguniform: [0.002, 0.2]}")
    if top.num_samples > 1 and all(a.kind == "grid" for a in axes):
        raise ctx.error("num_samples", f"{top.num_samples} with only grid axes would repeat the same trials; drop "
                                       "num_samples or make an axis loguniform/uniform")
    return SearchPlan(axes=axes, num_samples=top.num_samples, seed=top.seed,
                      max_concurrent_trials=top.max_concurrent_trials, scheduler=_scheduler(ctx, top.scheduler, spec))


def _axis(ctx: _Ctx, spec: SweepSpec, key: str, m: dict[str, Any]) -> Axis:
    where = f"space.{key}"
    if key in ("seed", "preset") or key in dict(spec.grid):
        why = "the spec's seeds" if key == "seed" else ("the base preset" if key == "preset" else "a grid axis")
        raise ctx.error(where, f"{key} is {why}; search over other keys")
    unknown = [k for k in m if k not in DISTRIBUTIONS]
    if unknown:
        raise ctx.error(f"{where}.{unknown[0]}", f"unknown key; valid keys: {', '.join(DISTRIBUTIONS)}")
    if len(m) != 1:
        raise ctx.error(where, f"give exactly one of {', '.join(DISTRIBUTIONS)}, e.g. {{loguniform: [0.002, 0.2]}}")
    kind, args = next(iter(m.items()))
    if not isinstance(args, list) or not args:
        raise ctx.error(f"{where}.{kind}", f"expected a list, got {args!r}")
    section = FIELD_SECTION[key]
    try:
        values = tuple(coerce(section, key, v, source="search") for v in args)
    except ConfigError as e:
        raise ctx.error(f"{where}.{kind}", str(e).split(": ", 1)[-1]) from None
    if kind == "grid":
        return Axis(key, kind, values)
    if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ctx.error(f"{where}.{kind}", f"expected [low, high] numbers for a numeric key, got {args!r}")
    low, high = values
    if not low < high or (kind == "loguniform" and low <= 0):
        raise ctx.error(f"{where}.{kind}", f"need 0 < low < high for loguniform, low < high for uniform; got {args!r}")
    return Axis(key, kind, (low, high))


def _scheduler(ctx: _Ctx, s: Scheduler | None, spec: SweepSpec) -> Asha | None:
    s = s or Scheduler()
    if s.type == "fifo":
        return None
    num_iterations = int(spec.base_dict.get("num_iterations", 0) or 0)
    max_t = s.max_t or num_iterations
    if not max_t:
        raise ctx.error("scheduler.max_t", "required when base.num_iterations is not set: the training steps "
                                           "a trial may run (usually num_iterations)")
    grace = s.grace_period or max(1, max_t // 4)
    rf = 2.0 if s.reduction_factor is None else s.reduction_factor
    if grace >= max_t:
        raise ctx.error("scheduler.grace_period", f"{grace} steps is not below max_t={max_t}; ASHA would never "
                                                  "compare trials; lower it (e.g. max_t / 4)")
    return Asha(grace_period=grace, reduction_factor=float(rf), max_t=max_t)


# ---------------------------------------------------------------- samples -> trials
def _round(value: float) -> float:
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


def sample_points(plan: SearchPlan) -> list[dict[str, Any]]:
    """The search's points: every grid combination x num_samples random draws (seeded, rounded)."""
    rng = np.random.default_rng(plan.seed)
    draws: list[dict[str, Any]] = []
    for _ in range(plan.num_samples):
        point: dict[str, Any] = {}
        for a in plan.random_axes:
            low, high = a.values
            x = math.exp(rng.uniform(math.log(low), math.log(high))) if a.kind == "loguniform" else rng.uniform(low, high)
            point[a.key] = round(x) if isinstance(low, int) else _round(x)  # int keys coerce to int bounds
        draws.append(point)
    grid_axes = [a for a in plan.axes if a.kind == "grid"]
    combos = [dict(zip([a.key for a in grid_axes], c)) for c in itertools.product(*(a.values for a in grid_axes))]
    return [{k: (c | d)[k] for k in plan.keys} for d in draws for c in combos]


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def search_trials(plan: SearchPlan, base_trials: list[Trial]) -> list[Trial]:
    """Each expanded trial of the spec (a design point and seed) x each search point, as Trials whose
    id is the hash of the resolved config, the same rule as `sweeps.expand`. Seed-major order kept."""
    def candidates() -> Iterator[tuple[TrainConfig, dict[str, Any]]]:
        for base in base_trials:
            fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)
                      if f.name not in ("trial_id", "index", "config")}
            for point in sample_points(plan):
                try:
                    cfg = base.config.override(point, source=f"search point {point}")
                except ConfigError as e:
                    raise SpecError(str(e)) from None
                extra = " ".join(f"{k}={_fmt(v)}" for k, v in point.items())
                yield cfg, fields | {"label": f"{base.label} {extra}".strip(), "design": base.design + tuple(point.items())}

    return unique_trials(candidates())


def group_label(trial: Trial, plan: SearchPlan) -> str:
    """The design point without the searched keys: what "best LR per gate" groups by."""
    return " ".join(f"{k}={_fmt(v)}" for k, v in trial.design if k not in plan.keys) or "base"
