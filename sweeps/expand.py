"""Spec -> ordered list of trials. Pure but for the chained-value resolver and one check of the
working directory: the paths a trial writes (out_dir, results_csv) must stay inside it (trainer.paths).

Design points are the grid's full factorial (axes in declared order), minus `exclude` matches, plus
`include` points. Trials are ordered seed-major (every design's first seed, then every design's
second seed, ...) so that a sweep cut short still holds complete comparisons. A trial's id is a
hash of its resolved config, seed included, so the same trial has the same id on every machine.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from sweeps.chain import Chain, Resolved, chain_note
from sweeps.errors import SpecError
from sweeps.spec import Resources, SweepSpec, design_points
from sweeps.time_of import TimeOf, TimeResolver, no_store_time_resolver
from trainer.config import NON_IDENTITY_KEYS, TrainConfig, config_hash
from trainer.errors import ConfigError
from trainer.paths import confine

ChainResolver = Callable[[Chain, str], Any]
BUDGET_TAG = "gatesweep.budget_matched"


@dataclass(frozen=True)
class Trial:
    trial_id: str
    spec: str
    stage: str
    seed: int
    index: int
    label: str
    design: tuple[tuple[str, Any], ...]
    config: TrainConfig
    resources: Resources
    experiment: str
    budget_keys: tuple[str, ...] = ()
    """Keys whose value came from a time_of budget: the table compares such a trial with a baseline of
    another value of these keys (a budget-matched design runs each gate for the baseline's time)."""

    def meta(self) -> dict[str, Any]:
        """The `trial` section of trial.json (tags for the tracker)."""
        return {"trial_id": self.trial_id, "spec": self.spec, "stage": self.stage, "seed": self.seed,
                "experiment": self.experiment, "label": self.label,
                "tags": {"gatesweep.kind": "trial", "mlflow.runName": self.run_name}
                | ({BUDGET_TAG: ",".join(self.budget_keys)} if self.budget_keys else {})}

    @property
    def run_name(self) -> str:
        return f"{self.stage}-{self.label.replace(' ', ',') or 'base'}-s{self.seed}"

    def to_json(self) -> dict[str, Any]:
        return {"trial_id": self.trial_id, "spec": self.spec, "stage": self.stage, "seed": self.seed,
                "index": self.index, "label": self.label, "design": dict(self.design),
                "resources": dataclasses.asdict(self.resources), "experiment": self.experiment,
                "config": self.config.flat()}


def _no_chains(chain: Chain, key: str) -> Any:
    if chain.fallback is not None:
        return Resolved(chain.fallback, chain_note(chain, key, chain.fallback, [], "was not looked up (no tracking "
                                                                                   "store consulted)"))
    raise SpecError(f"{key}: chained from stage '{chain.source}' but no tracking store was consulted and no "
                    f"fallback is given; run `gatesweep plan` with MLFLOW_TRACKING_URI set or override {key}=...")


def _label(point: dict[str, Any], varying: list[str]) -> str:
    return " ".join(f"{k}={point[k]}" for k in varying if k in point)


def expand(spec: SweepSpec, *, overrides: dict[str, Any] | None = None,
           resolve_chain: ChainResolver = _no_chains, resolve_time: TimeResolver = no_store_time_resolver,
           notes: list[str] | None = None) -> list[Trial]:
    """notes, if given, receives where each time_of value came from (dry runs and plan print them)."""
    overrides = overrides or {}
    points = design_points(spec)
    varying = list(dict.fromkeys(k for p, _ in points for k in p))
    chain_cache: dict[tuple[Any, ...], Any] = {}

    def resolve(key: str, value: Any) -> Any:
        if isinstance(value, Chain):
            if (value, key) not in chain_cache:
                try:
                    got = resolve_chain(value, key)
                except SpecError as e:  # the resolver knows the key, not the file
                    raise SpecError(f"{spec.path}: {e}") from None
                if isinstance(got, Resolved):
                    got, note = got.value, got.note
                    if notes is not None and note not in notes:
                        notes.append(note)
                chain_cache[(value, key)] = got
            return chain_cache[(value, key)]
        return value

    def budget(key: str, value: TimeOf, point_values: dict[str, Any]) -> int:
        gates = tuple((k, point_values.get(k)) for k in ("attn_gate", "gate_pos", "gate_act"))
        if (value, key, gates) not in chain_cache:
            try:
                chain_cache[(value, key, gates)], note = resolve_time(value, key, point_values)
            except SpecError as e:
                raise SpecError(f"{spec.path}: {e}") from None
            if notes is not None and note not in notes:
                notes.append(note)
        return chain_cache[(value, key, gates)]

    def candidates() -> Iterator[tuple[TrainConfig, dict[str, Any]]]:
        for seed_i in range(max(len(s) for _, s in points)):
            for point, seeds in points:
                if seed_i < len(seeds):
                    yield candidate(point, seeds[seed_i])

    def candidate(point: dict[str, Any], seed: int) -> tuple[TrainConfig, dict[str, Any]]:
        # an overridden key is never resolved: `key=...` is the way out of a chain that cannot resolve
        values = {k: overrides[k] if k in overrides else resolve(k, v) for k, v in (spec.base_dict | point).items()}
        values |= overrides
        # a time budget depends on the point's own gate keys, resolved first
        values |= {k: budget(k, v, values) for k, v in values.items() if isinstance(v, TimeOf)}
        values["seed"] = seed
        source = f"{spec.path} ({_label(point, varying) or 'base'})"
        try:
            cfg = TrainConfig.from_flat(values, source=source)
            confine(cfg, source=source)  # out_dir, results_csv: inside the project (the cwd)
        except ConfigError as e:
            raise SpecError(str(e)) from None
        design = tuple((k, values[k]) for k in varying if k in point)
        return cfg, dict(spec=spec.name, stage=spec.stage, seed=seed, label=_label(dict(design), varying),
                         design=design, resources=spec.resources, experiment=spec.experiment,
                         budget_keys=tuple(k for k, v in (spec.base_dict | point).items()
                                           if isinstance(v, TimeOf) and k not in overrides))

    return unique_trials(_one_trial_per_point(spec, candidates()))


def _one_trial_per_point(spec: SweepSpec, candidates: Iterable[tuple[TrainConfig, dict[str, Any]]]
                         ) -> Iterator[tuple[TrainConfig, dict[str, Any]]]:
    """Refuse two design points that are one trial only because they differ in keys outside the trial's
    identity (`fast: [true, false]`, `notes: [a, b]`): the second would be dropped without a word. The
    same point met twice (an include repeating a grid point) is fine: unique_trials keeps it once."""
    first: dict[str, tuple[dict[str, Any], str]] = {}
    for cfg, fields in candidates:
        tid, flat = config_hash(cfg), cfg.flat()
        if tid not in first:
            first[tid] = (flat, fields["label"])
        else:
            other, label = first[tid]
            keys = [k for k in sorted(NON_IDENTITY_KEYS) if flat[k] != other[k]]
            if keys:
                design = [k for k in keys if k in dict(fields["design"])]
                key = (design or keys)[0]
                raise SpecError(f"{spec.path}: {_where(spec, key)}: {key} does not define a trial (it is not part "
                                f"of the trial id: it does not change the math), so the design points "
                                f"'{label or 'base'}' and '{fields['label'] or 'base'}' are one trial and one "
                                f"would be dropped; set {key} in base (or on the command line) instead of varying it")
        yield cfg, fields


def _where(spec: SweepSpec, key: str) -> str:
    if key in dict(spec.grid):
        return f"grid.{key}"
    found = [i for i, p in enumerate(spec.include) if key in p.as_dict()]
    return f"include[{found[0]}].{key}" if found else key


def unique_trials(candidates: Iterable[tuple[TrainConfig, dict[str, Any]]]) -> list[Trial]:
    """(resolved config, the trial's other fields) -> Trials: id = config_hash(config), so the same trial
    has the same id on every machine; a config met again is the same trial (kept once, first place);
    index = position. Every way of making trials (a spec's expansion, a search's samples) ends here."""
    trials: list[Trial] = []
    seen: set[str] = set()
    for cfg, fields in candidates:
        tid = config_hash(cfg)
        if tid not in seen:
            seen.add(tid)
            trials.append(Trial(trial_id=tid, index=len(trials), config=cfg, **fields))
    return trials


def gpu_hours(trials: list[Trial], ms_per_step: float) -> float:
    """trials x nodes x GPUs per node x expected hours (num_iterations x ms/step)."""
    total = 0.0
    for t in trials:
        hours = t.config.run.num_iterations * ms_per_step / 3.6e6
        total += t.resources.nodes * max(t.resources.gpus_per_node, 1) * hours
    return total


def trials_json(trials: list[Trial]) -> str:
    return json.dumps([t.to_json() for t in trials], indent=1, sort_keys=True)
