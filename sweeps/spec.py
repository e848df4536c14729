"""Load and validate a sweep spec (YAML, safe_load only) into a typed SweepSpec.

A spec: name, stage, a base trainer config (preset + flat keys), grid axes (key -> values, full
factorial), include/exclude design points for designs that are not a full factorial, seeds,
resources per trial, tracking (experiment) and backend defaults. Every error names the file, the
field path and the valid options.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from sweeps import schema
from sweeps.chain import Chain
from sweeps.errors import SpecError
from sweeps.sequential import Sequential, parse_sequential
from sweeps.time_of import parse_time_of
from trainer import yamlsafe
from trainer.config import ALL_KEYS, FIELD_SECTION, PRESETS, coerce, did_you_mean
from trainer.errors import ConfigError
from trainer.overrides import parse_kv

CHAIN_KEYS = ("from", "select", "metric", "where", "fallback")
NAME_RE = schema.NAME_RE


@dataclass(frozen=True, kw_only=True)
class Resources:
    nodes: int = 1
    gpus_per_node: int = 8
    cpus_per_task: int = 8
    mem_gb: int = 0
    """0 = the cluster's default."""
    timeout_min: int = 240

    @property
    def world_size(self) -> int:
        return self.nodes * max(self.gpus_per_node, 1)


@dataclass(frozen=True, kw_only=True)
class DesignPoint:
    values: tuple[tuple[str, Any], ...]
    seeds: tuple[int, ...] | None = None  # None: the spec's seeds

    def as_dict(self) -> dict[str, Any]:
        return dict(self.values)


@dataclass(frozen=True, kw_only=True)
class SweepSpec:
    path: str
    name: str
    stage: str
    description: str = ""
    base: tuple[tuple[str, Any], ...] = ()
    grid: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    include: tuple[DesignPoint, ...] = ()
    exclude: tuple[tuple[tuple[str, Any], ...], ...] = ()
    seeds: tuple[int, ...] = (0,)
    sequential: Sequential | None = None
    """Sequential seeds (sweeps.sequential): `seeds` is then the planned order, initial seeds first."""
    resources: Resources = field(default_factory=Resources)
    experiment: str = ""
    backend: dict[str, Any] = field(default_factory=dict)
    estimate_ms_per_step: float = 160.0
    """Expected ms per step on the spec's allocation, for GPU-hour estimates (the reference on 8xH100
    ran ~180 ms/step; document your cluster's figure in the spec)."""
    search: dict[str, Any] = field(default_factory=dict)

    @property
    def base_dict(self) -> dict[str, Any]:
        return dict(self.base)

    @property
    def default_backend(self) -> str:
        return str(self.backend.get("default", "local"))

    def backend_options(self, name: str) -> dict[str, Any]:
        return dict(self.backend.get(name, {}) or {})


class _Ctx:
    def __init__(self, path: str):
        self.path = path

    def error(self, field_path: str, msg: str) -> SpecError:
        return SpecError(f"{self.path}: {field_path}: {msg}")

    def mapping(self, value: Any, field_path: str) -> Mapping[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.error(field_path, f"expected a mapping, got {type(value).__name__} {value!r}")
        return value

    def keys(self, m: Mapping[str, Any], allowed: tuple[str, ...], field_path: str) -> None:
        for k in m:
            if k not in allowed:
                raise self.error(f"{field_path}.{k}" if field_path else str(k),
                                 f"unknown key{did_you_mean(str(k), allowed)}; valid keys: {', '.join(allowed)}")

    def int_(self, value: Any, field_path: str, minimum: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.error(field_path, f"expected an integer >= {minimum}, got {value!r}")
        return value


def _config_value(ctx: _Ctx, key: str, value: Any, field_path: str) -> Any:
    """Validate one trainer key/value (chained values are checked structurally here)."""
    if key not in ALL_KEYS:
        raise ctx.error(field_path, f"unknown trainer config key{did_you_mean(key, ALL_KEYS)}; see "
                                    "trainer/config.py for the keys")
    if key == "seed":  # expansion sets it per trial: a value here would be dropped without a word
        raise ctx.error(field_path, "a trial's seed comes from the top-level `seeds` list; write seeds: [0, 1] "
                                    "(on the command line seeds=0,1)")
    if isinstance(value, Mapping):
        if "time_of" in value:
            return parse_time_of(ctx, value, key, field_path, NAME_RE)
        return _chain(ctx, value, field_path)
    if key == "preset":
        if value not in PRESETS:
            raise ctx.error(field_path, f"{value!r} is not one of {', '.join(PRESETS)}")
        return value
    try:  # type and choices only: checks across keys run on the resolved trial config
        coerce(FIELD_SECTION[key], key, value, source="spec")
    except ConfigError as e:
        raise ctx.error(field_path, str(e).split(": ", 1)[-1]) from None
    return value


def _chain(ctx: _Ctx, m: Mapping[str, Any], field_path: str) -> Chain:
    ctx.keys(m, CHAIN_KEYS, field_path)
    if "from" not in m:
        raise ctx.error(field_path, "a chained value needs `from: <stage>` (e.g. {from: stage2, select: best, "
                                    "metric: final_val_loss, where: {attn_gate: elementwise}})")
    select = m.get("select", "best")
    if select not in ("best", "worst"):
        raise ctx.error(f"{field_path}.select", f"{select!r} is not one of best, worst")
    if not isinstance(m["from"], str) or not NAME_RE.fullmatch(m["from"]):
        raise ctx.error(f"{field_path}.from", f"expected a stage name (letters, digits, '_', '.', '-'), "
                                              f"got {m['from']!r}")
    where = ctx.mapping(m.get("where"), f"{field_path}.where")
    return Chain(source=str(m["from"]), select=select, metric=str(m.get("metric", "final_val_loss")),
                 where=tuple(sorted(where.items())), fallback=m.get("fallback"))


def _config_block(ctx: _Ctx, m: Mapping[str, Any], field_path: str) -> tuple[tuple[str, Any], ...]:
    return tuple((str(k), _config_value(ctx, str(k), v, f"{field_path}.{k}")) for k, v in m.items())


def _seeds(ctx: _Ctx, value: Any, field_path: str) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        return tuple(range(ctx.int_(value, field_path, 1)))
    if not isinstance(value, list) or not value:
        raise ctx.error(field_path, f"expected a non-empty list of integers or a count, got {value!r}")
    seeds = tuple(ctx.int_(s, f"{field_path}[{i}]") for i, s in enumerate(value))
    if len(set(seeds)) != len(seeds):
        raise ctx.error(field_path, f"duplicate seeds in {list(seeds)}")
    return seeds


def parse_spec(data: Any, path: str) -> SweepSpec:
    """The schema (sweeps.schema) and the trainer keys first, every problem at once; then the checks
    that need a valid spec (chained values, sequential seeds, baselines)."""
    ctx = _Ctx(path)
    problems = schema.structure_problems(data) + _trainer_problems(ctx, data)
    if problems:
        raise SpecError(schema.join_errors(path, problems))
    m = schema.Spec.model_validate(schema.cleaned(data))
    base = _config_block(ctx, m.base, "base")
    grid = tuple((k, tuple(_config_value(ctx, k, v, f"grid.{k}[{i}]") for i, v in enumerate(values)))
                 for k, values in m.grid.items())
    include = []
    for i, entry in enumerate(m.include):
        entry = dict(entry)
        seeds = _seeds(ctx, entry.pop("seeds"), f"include[{i}].seeds") if "seeds" in entry else None
        include.append(DesignPoint(values=_config_block(ctx, entry, f"include[{i}]"), seeds=seeds))
    exclude = tuple(_config_block(ctx, e, f"exclude[{i}]") for i, e in enumerate(m.exclude))
    seeds, sequential = _seed_plan(ctx, data.get("seeds", [0]), include, data)
    spec = SweepSpec(path=path, name=m.name, stage=m.stage or m.name, description=m.description, base=base,
                     grid=grid, include=tuple(include), exclude=exclude, seeds=seeds, sequential=sequential,
                     resources=Resources(**m.resources.model_dump()),
                     experiment=m.tracking.experiment or f"gatesweep-{m.name}",
                     backend=dict(data.get("backend") or {}), estimate_ms_per_step=m.estimate.ms_per_step,
                     search=dict(data.get("search") or {}))
    if sequential is not None:
        _check_comparisons(spec)
    return spec


def _trainer_problems(ctx: _Ctx, data: Any) -> list[str]:
    """Every unknown trainer key or bad value in base, grid, include and exclude (sweeps.schema checked
    that they are mappings and lists)."""
    if not isinstance(data, Mapping):
        return []
    blocks: list[tuple[str, Any]] = [("base", data.get("base"))]
    grid = data.get("grid")
    if isinstance(grid, Mapping):
        blocks += [(f"grid.{k}[{i}]", {k: v}) for k, vs in grid.items() if isinstance(vs, list) for i, v in enumerate(vs)]
    for section in ("include", "exclude"):
        entries = data.get(section)
        if isinstance(entries, list):
            blocks += [(f"{section}[{i}]", {k: v for k, v in e.items() if k != "seeds"})
                       for i, e in enumerate(entries) if isinstance(e, Mapping)]
    out: dict[tuple[str, str], str] = {}  # (key, problem) -> the first place: an axis' values share a key's problem
    for where, block in blocks:
        for k, v in (block.items() if isinstance(block, Mapping) else ()):
            field_path = where if where.startswith("grid.") else f"{where}.{k}"
            try:
                _config_value(ctx, str(k), v, field_path)
            except SpecError as e:
                text = str(e).removeprefix(f"{ctx.path}: ")
                out.setdefault((str(k), text.removeprefix(f"{field_path}: ")), text)
    return list(out.values())


def _seed_plan(ctx: _Ctx, value: Any, include: list[DesignPoint], top: Mapping[str, Any]
               ) -> tuple[tuple[int, ...], Sequential | None]:
    """A list (fixed design) or {initial, add, max, per_look, stop} (sequential seeds)."""
    if not isinstance(value, Mapping):
        return _seeds(ctx, value, "seeds"), None
    seeds, sequential = parse_sequential(ctx, value, "seeds")
    own = [i for i, p in enumerate(include) if p.seeds is not None]
    if own:
        raise ctx.error(f"include[{own[0]}].seeds", "a design point's own seeds do not mix with sequential seeds, "
                                                    "which every design point shares; remove it")
    if top.get("search"):
        raise ctx.error("seeds", "sequential seeds decide the spec's design points; a `search:` block samples its "
                                 "own trials: write seeds as a plain list")
    return seeds, sequential


def design_points(spec: SweepSpec) -> list[tuple[dict[str, Any], tuple[int, ...]]]:
    check_trial_count(spec)
    axes = [k for k, _ in spec.grid]
    points: list[tuple[dict[str, Any], tuple[int, ...]]] = []
    for combo in itertools.product(*(values for _, values in spec.grid)):
        point = dict(zip(axes, combo))
        resolved = spec.base_dict | point
        if any(all(resolved.get(k) == v for k, v in ex) for ex in spec.exclude):
            continue
        points.append((point, spec.seeds))
    for inc in spec.include:
        point = inc.as_dict()
        seeds = inc.seeds or spec.seeds
        if not any(p == point and s == seeds for p, s in points):
            points.append((point, seeds))
    if not spec.grid and not spec.include:
        points.append(({}, spec.seeds))
    return points


MAX_TRIALS_ENV = "GATESWEEP_MAX_TRIALS"
MAX_TRIALS = 10_000  # a typo'd axis (a range of 1000 values) must not take minutes and gigabytes to refuse


def check_trial_count(spec: SweepSpec) -> None:
    """Refuse a spec whose expansion has more trials than the limit, counted before anything is built
    (grid points before exclusions, times seeds, plus the include points' seeds)."""
    sizes = [len(values) for _, values in spec.grid]
    n = math.prod(sizes) * len(spec.seeds) if spec.grid or not spec.include else 0
    n += sum(len(inc.seeds or spec.seeds) for inc in spec.include)
    raw = os.environ.get(MAX_TRIALS_ENV, "")
    try:
        cap = int(raw) if raw else MAX_TRIALS
    except ValueError:
        raise SpecError(f"{MAX_TRIALS_ENV}={raw!r} is not an integer; set it to the largest trial count to allow "
                        "(e.g. 50000) or unset it") from None
    if n > cap:
        grid = " x ".join(f"{len(v)} {k}" for k, v in spec.grid) or "1 base point"
        raise SpecError(f"{spec.path}: the spec expands to {n:,} trials ({grid} x {len(spec.seeds)} seeds"
                        f"{', plus include' if spec.include else ''}), more than the limit of {cap:,}; shrink the grid "
                        f"or seeds, or allow it with {MAX_TRIALS_ENV}={n}")


def _check_comparisons(spec: SweepSpec) -> None:
    from sweeps.sequential import check_baselines

    points = [p for p, _ in design_points(spec)]
    check_baselines(spec.path, points, spec.base_dict,
                    [" ".join(f"{k}={v}" for k, v in p.items()) or "base" for p in points])


def spec_file_id(path: str | os.PathLike[str]) -> str:
    """Which spec file this is, the same from any checkout of the project: its path relative to the
    project (the working directory), symlinks resolved; absolute if it lies elsewhere."""
    real, root = Path(os.path.realpath(path)), Path(os.path.realpath(os.getcwd()))
    return real.relative_to(root).as_posix() if real.is_relative_to(root) else str(real)


def load_spec(path: str | Path) -> SweepSpec:
    p = Path(path)
    if not p.is_file():
        shipped = Path(__file__).parent / p.name
        hint = f"; did you mean {shipped}?" if shipped.is_file() else "; the shipped specs are in sweeps/"
        raise SpecError(f"{path}: spec file not found{hint}")
    try:
        data = yamlsafe.load(p.read_text(encoding="utf-8"))  # safe_load + no duplicate keys, bounded aliases
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        if isinstance(e, yaml.constructor.ConstructorError):  # safe_load refuses !!python/... tags
            raise SpecError(f"{path}: unsupported YAML tag{where}: {problem}; a spec is plain data "
                            "(mappings, lists, strings, numbers): remove the tag") from None
        raise SpecError(f"{path}: malformed YAML{where}: {problem}; fix the syntax") from None
    return parse_spec(data, str(path))


# ---------------------------------------------------------------- spec-level overrides
SPEC_OVERRIDE_PREFIXES = ("resources.", "tracking.", "backend.", "estimate.")


def apply_spec_overrides(spec: SweepSpec, overrides: dict[str, Any]) -> tuple[SweepSpec, dict[str, Any]]:
    """Split CLI overrides: `resources.*`, `tracking.experiment`, `backend.*`, `seeds` change the spec;
    every other key overrides the base trainer config of every trial (and so their trial ids)."""
    config: dict[str, Any] = {}
    ctx = _Ctx("command line")
    for key, value in overrides.items():
        if key == "seeds":  # on the command line always a list of seed values: seeds=0 or seeds=0,1,2
            items = [value] if isinstance(value, int) else str(value).split(",")
            try:
                seeds = [int(s) for s in items]
            except ValueError:
                raise ctx.error("seeds", f"{value!r} is not a comma-separated list of integers (e.g. seeds=0,1)") from None
            # a fixed list replaces a sequential plan too: the same trials (ids) for those seeds
            spec = replace(spec, seeds=_seeds(ctx, seeds, "seeds"), sequential=None)
        elif key.startswith("resources."):
            res = schema.check_section("resources", dataclasses.asdict(spec.resources) | {key.split(".", 1)[1]: value},
                                       "command line")
            spec = replace(spec, resources=Resources(**res.model_dump()))
        elif key.startswith("tracking."):
            tracking = schema.check_section("tracking", {key.split(".", 1)[1]: value}, "command line")
            spec = replace(spec, experiment=str(tracking.model_dump()["experiment"]))
        elif key.startswith("backend."):
            parts = key.split(".")
            backend = {k: dict(v) if isinstance(v, Mapping) else v for k, v in spec.backend.items()}
            # nest every further part: backend.slurm.extra.exclusive=true -> {slurm: {extra: {exclusive: true}}}
            node: dict[str, Any] = backend
            for part in parts[1:-1]:
                child = node.get(part)
                node[part] = child = dict(child) if isinstance(child, Mapping) else {}
                node = child
            node[parts[-1]] = value
            spec = parse_spec_backend(spec, backend)
        elif key.startswith("grid."):
            spec = _replace_axis(spec, key.split(".", 1)[1], value, ctx)
        elif key.startswith("estimate."):
            estimate = schema.check_section("estimate", {key.split(".", 1)[1]: value}, "command line")
            spec = replace(spec, estimate_ms_per_step=float(estimate.model_dump()["ms_per_step"]))
        else:
            config[key] = _config_value(ctx, key, value, key)
            _refuse_design_key(spec, key)
    return spec, config


def _replace_axis(spec: SweepSpec, key: str, value: Any, ctx: _Ctx) -> SweepSpec:
    """`grid.KEY=a,b` (Hydra's sweep syntax): the axis KEY takes these values, a new axis if it was none."""
    raw = [v.strip() for v in str(value).split(",")] if not isinstance(value, list) else value
    values = tuple(_config_value(ctx, key, parse_kv([f"{key}={v}"])[key] if isinstance(v, str) else v,
                                 f"grid.{key}[{i}]") for i, v in enumerate(raw) if v != "")
    if not values:
        raise ctx.error(f"grid.{key}", "give at least one value, e.g. grid.attn_gate=none,headwise")
    grid = dict(spec.grid)
    grid[key] = values
    return replace(spec, grid=tuple(grid.items()))


def _refuse_design_key(spec: SweepSpec, key: str) -> None:
    """A plain `KEY=value` sets KEY for every trial: on a grid axis (or a key an include point sets) that
    would silently shrink the design to points the spec never asked for."""
    axes = dict(spec.grid)
    name = key.rsplit(".", 1)[-1]
    if name in axes:
        shown = ",".join(str(v) for v in axes[name])
        raise SpecError(f"command line: {key}: a grid axis of {spec.path} ({shown}); {key}=... would set it for every "
                        f"trial and change the design. Narrow the axis instead: grid.{name}=<values> "
                        f"(e.g. grid.{name}={axes[name][0]})")
    points = [i for i, p in enumerate(spec.include) if name in p.as_dict()]
    if points:
        raise SpecError(f"command line: {key}: set by include[{points[0]}] of {spec.path}; {key}=... would change "
                        f"that design point; edit the spec (or copy it) to change it")


def parse_spec_backend(spec: SweepSpec, backend: dict[str, Any]) -> SweepSpec:
    schema.check_section("backend", backend, "command line")
    return replace(spec, backend=backend)
