"""The one schema of a sweep spec (pydantic v2): every section, backend.* included, checked when the spec
is loaded, by every command. `gatesweep schema` prints it as JSON Schema (sweeps.json_schema, which adds
the trainer keys' types), so an editor with yaml-language-server completes and checks specs
(`# yaml-language-server: $schema=spec.schema.json`).

Trainer keys inside base/grid/include/exclude are checked against trainer/config.py by sweeps.spec
(types, choices, "did you mean" hints); this model only says they are mappings of keys to values.
`check(data, path)` reports every problem at once, each with its field path and the fix.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    Tag,
    ValidationError,
    WithJsonSchema,
)

from sweeps.errors import SpecError
from trainer.config import ALL_KEYS, did_you_mean

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
EXTRA_KEY_RE = re.compile(r"^[a-z][a-z0-9-]*$")
BACKENDS = ("local", "slurm", "ray")  # cluster.backend.BACKENDS: a new backend adds its section below too
# sbatch options the Slurm backend derives itself; `extra` must not override them (the fix is the named field)
RESERVED_EXTRA = {
    "array": "backend.slurm.array_parallelism", "output": "(the job folder)", "error": "(the job folder)",
    "open-mode": "(the job folder)", "signal": "backend.slurm.signal_delay_s", "job-name": "(spec name)",
    "nodes": "resources.nodes", "ntasks-per-node": "resources.gpus_per_node",
    "gpus-per-node": "resources.gpus_per_node", "cpus-per-task": "resources.cpus_per_task",
    "mem": "resources.mem_gb", "time": "backend.slurm.timeout_min", "partition": "backend.slurm.partition",
    "account": "backend.slurm.account", "qos": "backend.slurm.qos", "constraint": "backend.slurm.constraint",
    "dependency": "(chained job arrays)", "requeue": "(always on)", "wrap": "(the job command)",
}


# ---------------------------------------------------------------- value types (our messages, JSON Schema kept)
def _min_int(minimum: int) -> Any:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ValueError(f"expected an integer >= {minimum}, got {v!r}")
        return v
    return check


def _min_number(*, above: float | None = None, least: float | None = None) -> Any:
    def check(v: Any) -> float:
        bad = isinstance(v, bool) or not isinstance(v, (int, float))
        if bad or (above is not None and not v > above) or (least is not None and v < least):
            if above == 0:
                raise ValueError(f"expected a positive number, got {v!r}")
            bound = f"> {above:g}" if above is not None else f">= {least:g}"
            raise ValueError(f"expected a number {bound}, got {v!r}")
        return float(v)
    return check


def _text(v: Any) -> str:
    """A value that reaches sbatch or a shell: a string (numbers are written as text), no control characters."""
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        raise ValueError(f"expected a string, got {v!r}")
    if CONTROL_RE.search(str(v)):
        raise ValueError(f"{str(v)!r} contains a control character (newline, tab, ...); remove it")
    return str(v)


def _name(v: Any) -> str:
    if not isinstance(v, str) or not NAME_RE.fullmatch(v):
        raise ValueError(f"letters, digits, '_', '.', '-' (got {v!r})")
    return v


def _required_name(v: Any) -> str:
    if not isinstance(v, str) or not NAME_RE.fullmatch(v):
        raise ValueError(f"required: letters, digits, '_', '.', '-' (got {v!r})")
    return v


def _design_points(v: Any) -> Any:
    if not isinstance(v, list):
        raise ValueError(f"expected a list of design points (- {{attn_gate: headwise}}), got {type(v).__name__}")
    return v


def _experiment(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"expected an MLflow experiment name (a string), got {v!r}")
    if not v.strip():
        raise ValueError("an empty MLflow experiment name; give one, or drop the key for the default "
                         "gatesweep-<spec name>")
    return v


def _sbatch_extra(v: Any) -> dict[str, Any]:
    if not isinstance(v, Mapping):
        raise ValueError("expected a mapping of sbatch options, e.g. {mail-type: END, exclusive: true}")
    out: dict[str, Any] = {}
    for key, value in v.items():
        k = str(key).replace("_", "-")
        if not EXTRA_KEY_RE.fullmatch(k):
            raise ValueError(f"{key}: not an sbatch long option name (lowercase letters, digits, '-')")
        if k in RESERVED_EXTRA:
            raise ValueError(f"{key}: set by gatesweep; use {RESERVED_EXTRA[k]} instead")
        if value is not False and value is not None:
            out[k] = True if value is True else _text(value)
    return out


def _setup(v: Any) -> list[str]:
    lines = [v] if isinstance(v, str) else v
    if not isinstance(lines, list):
        raise ValueError("expected a list of shell lines, e.g. ['module load cuda/12.4']")
    return [_text(x) for x in lines]


def _address(v: Any) -> str | None:
    if v is not None and (not isinstance(v, str) or ":" not in v):
        raise ValueError(f"expected host:port of a running Ray cluster (`ray start --head` prints it), got {v!r}")
    return v


def _list(what: str) -> Any:
    def check(v: Any) -> Any:
        if not isinstance(v, list) or not v:
            raise ValueError(f"expected a non-empty list of {what}, got {v!r}")
        return v
    return check


Pos = Annotated[int, BeforeValidator(_min_int(1)), WithJsonSchema({"type": "integer", "minimum": 1})]


def _pos_or_auto(v: Any) -> Any:
    return v if v == "auto" else _min_int(1)(v)


PosOrAuto = Annotated[int | Literal["auto"], BeforeValidator(_pos_or_auto),
                      WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 1}, {"const": "auto"}]})]
NonNeg = Annotated[int, BeforeValidator(_min_int(0)), WithJsonSchema({"type": "integer", "minimum": 0})]
Positive = Annotated[float, BeforeValidator(_min_number(above=0)), WithJsonSchema({"type": "number", "exclusiveMinimum": 0})]
NonNegNumber = Annotated[float, BeforeValidator(_min_number(least=0)), WithJsonSchema({"type": "number", "minimum": 0})]
AboveOne = Annotated[float, BeforeValidator(_min_number(above=1)), WithJsonSchema({"type": "number", "exclusiveMinimum": 1})]
Text = Annotated[str, BeforeValidator(_text)]
Name = Annotated[str, BeforeValidator(_name), WithJsonSchema({"type": "string", "pattern": NAME_RE.pattern})]
TrainerValues = dict[str, Any]
"""Trainer keys (trainer/config.py) -> values; a value may be {from: stage, ...} or {time_of: {...}}."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# ---------------------------------------------------------------- sections
class Resources(Section):
    """What one trial gets: nodes x GPUs per node (one trainer rank per GPU)."""

    nodes: Pos = 1
    gpus_per_node: NonNeg = 8
    cpus_per_task: Pos = 8
    mem_gb: NonNeg = Field(default=0, description="0 = the cluster's default")
    timeout_min: Pos = 240


class Tracking(Section):
    experiment: Annotated[str, BeforeValidator(_experiment)] | None = Field(
        None, description="MLflow experiment (default gatesweep-<name>)")


class Estimate(Section):
    ms_per_step: Positive = Field(default=160.0, description="for GPU-hour estimates")


class LocalOptions(Section):
    max_parallel: Pos | None = Field(default=None, description=(
        "trials at a time (default: every GPU slot, trials_per_gpu per GPU; 1 on a machine without GPUs)"))
    trials_per_gpu: PosOrAuto | None = Field(default=None, description=(
        "single-GPU trials per GPU; auto (default): one trains, the next is launched just in time (about a "
        "start-up before it ends) if the GPU's free memory holds it; N: N at a time, started one by one"))
    warm_start: StrictBool | None = Field(default=None, description=(
        "fork single-process trials from one process that has already imported torch and its compiler "
        "(default; on GPUs too); false: every trial starts as a fresh process"))


class SlurmOptions(Section):
    partition: Text | None = None
    account: Text | None = None
    qos: Text | None = None
    constraint: Text | None = None
    timeout_min: Pos | None = Field(default=None, description="time limit per job (default resources.timeout_min)")
    array_parallelism: Pos | None = Field(default=None, description="array tasks running at once (default 256)")
    max_requeues: NonNeg | None = Field(default=None, description="requeues of a job: after a stop signal, a lost "
                                         "node or `scontrol requeue` (default 3)")
    max_array_size: Pos | None = Field(default=None, description="default: the cluster's MaxArraySize")
    signal_delay_s: Pos | None = Field(default=None, description="SIGUSR2 this long before the time limit (default 90)")
    extra: Annotated[dict[str, Any], BeforeValidator(_sbatch_extra)] | None = Field(
        None, description="further sbatch options, e.g. {mail-type: END, exclusive: true}")
    setup: Annotated[list[str], BeforeValidator(_setup)] | None = Field(
        None, description="shell lines run first in the job, e.g. ['module load cuda/12.4']")
    node_jobs: NonNeg | None = Field(default=None, description=(
        "0 (default): an array task per trial; N: N single-node jobs (--exclusive), each running the local "
        "launcher over the spec's trials (many short trials: one start-up per node, warm forks, just-in-time "
        "launches; needs an MLflow server)"))
    node_gpus: NonNeg | None = Field(default=None, description="GPUs of each node job (default 8)")


class RayOptions(Section):
    address: Annotated[str | None, BeforeValidator(_address)] = Field(
        None, description="host:port of a running Ray cluster (default: a local Ray on 127.0.0.1)")
    num_cpus: NonNeg | None = None
    num_gpus: NonNeg | None = None
    cpus_per_trial: NonNegNumber | None = None
    storage_path: Text | None = Field(default=None, description="Tune's experiment directory (default runs/<name>/_tune)")
    nodes: NonNeg | None = Field(default=None, description="on a cluster: wait for this many nodes")
    timeout_min: Pos | None = Field(default=None, description="Ray on Slurm: the allocation's time limit")


class Backend(Section):
    default: Literal["local", "slurm", "ray"] = "local"
    local: LocalOptions | None = None
    slurm: SlurmOptions | None = None
    ray: RayOptions | None = None


class Stop(Section):
    p_adj: Positive = 0.05
    spending: Literal["obf", "pocock"] = "obf"


class SequentialSeeds(Section):
    """Seeds added per undecided configuration until a stopping rule decides (sweeps.sequential)."""

    initial: list[NonNeg] | None = None  # required: sweeps.sequential says why
    add: list[NonNeg] = []
    max: Pos | None = None  # required: sweeps.sequential says why
    per_look: Pos | None = None
    stop: Stop | None = None


class Scheduler(Section):
    type: Literal["asha", "fifo"] = "asha"
    grace_period: Pos | None = None
    reduction_factor: AboveOne | None = None
    max_t: Pos | None = None


class Search(Section):
    """Ray Tune search: per trainer key {loguniform: [lo, hi]} | {uniform: [lo, hi]} | {grid: [values]}."""

    space: dict[str, dict[str, Any]] = Field(default={}, description="trainer key -> {loguniform: [lo, hi]} | "
                                                                  "{uniform: [lo, hi]} | {grid: [values]}")
    num_samples: Pos = 1
    seed: NonNeg = 0
    max_concurrent_trials: Pos = 1
    scheduler: Scheduler | None = None


def _seeds_kind(v: Any) -> str:
    return "plan" if isinstance(v, Mapping) else "count" if isinstance(v, int) and not isinstance(v, bool) else "list"


Seeds = Annotated[
    Annotated[Annotated[list[NonNeg], BeforeValidator(_list("integers or a count"))], Tag("list")]
    | Annotated[Pos, Tag("count")] | Annotated[SequentialSeeds, Tag("plan")],
    Discriminator(_seeds_kind)]
"""A list of seeds, a count (0..n-1), or a sequential plan {initial, add, max, per_look, stop}."""


class Spec(Section):
    """A sweep spec: base trainer config x grid axes (+ include / - exclude points) x seeds."""

    name: Annotated[str, BeforeValidator(_required_name), WithJsonSchema({"type": "string", "pattern": NAME_RE.pattern})]
    stage: Name | None = Field(default=None, description="the study's stage (default: name)")
    description: str = ""
    base: TrainerValues = {}
    grid: dict[str, Annotated[list[Any], BeforeValidator(_list("values"))]] = {}
    include: Annotated[list[TrainerValues], BeforeValidator(_design_points)] = []
    exclude: list[TrainerValues] = []
    seeds: Seeds = [0]
    resources: Resources = Resources()
    tracking: Tracking = Tracking(experiment=None)
    backend: Backend = Backend()
    estimate: Estimate = Estimate()
    search: Search | None = None


SECTIONS: dict[str, type[Section]] = {"resources": Resources, "tracking": Tracking, "estimate": Estimate,
                                      "backend": Backend, "backend.local": LocalOptions,
                                      "backend.slurm": SlurmOptions, "backend.ray": RayOptions, "search": Search}


# ---------------------------------------------------------------- checking
def check(data: Any, path: str) -> Spec:
    """The spec's structure, every section at once; SpecError lists every problem on one line."""
    problems = structure_problems(data)
    if problems:
        raise SpecError(join_errors(path, problems))
    return Spec.model_validate(cleaned(data))


def structure_problems(data: Any) -> list[str]:
    """Every structural problem of the spec, as `field.path: what is wrong; the fix`."""
    if not isinstance(data, Mapping):
        return [f"(top level): expected a mapping, got {type(data).__name__} {data!r}"]
    try:
        Spec.model_validate(cleaned(data))
    except ValidationError as e:
        return [describe(err) for err in e.errors()]
    return []


def cleaned(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if not (k in ("include", "exclude", "base", "grid") and v is None)}


def check_section(section: str, data: Mapping[str, Any], where: str) -> Section:
    """One section (e.g. backend.slurm merged with the command line's --partition ...), same messages."""
    try:
        return SECTIONS[section].model_validate(dict(data))
    except ValidationError as e:
        raise SpecError(join_errors(where, [describe(err, prefix=section) for err in e.errors()])) from None


def join_errors(path: str, problems: list[str]) -> str:
    if len(problems) == 1:
        return f"{path}: {problems[0]}"
    return f"{path}: {len(problems)} problems: " + "; ".join(problems)


def describe(err: Any, prefix: str = "") -> str:
    """A pydantic error as `field.path: what is wrong; the fix`."""
    loc = [p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p in _UNION_TAGS))]
    where = _loc_text(([prefix] if prefix else []) + loc)
    kind, value = err["type"], err.get("input")
    if kind == "extra_forbidden":
        key = str(loc[-1])
        allowed = _fields_at(([prefix] if prefix else []) + loc[:-1])
        return f"{where}: unknown key{did_you_mean(key, allowed)}; valid keys: {', '.join(allowed)}"
    if kind == "literal_error":
        choices = err["ctx"]["expected"].replace("'", "").replace(" or ", ", ")
        return f"{where}: {value!r} is not one of {choices}"
    if kind == "missing":
        return f"{where}: required: letters, digits, '_', '.', '-' (got None)" if where == "name" else f"{where}: required"
    msg = err["msg"].removeprefix("Value error, ")
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        msg = f"expected a mapping, got {type(value).__name__} {value!r}"
    elif kind == "list_type":
        msg = f"expected a list, got {value!r}"
    return f"{where}: {msg}"


_UNION_TAGS = {"list", "count", "plan"}


def _loc_text(loc: list[Any]) -> str:
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def _fields_at(loc: list[Any]) -> list[str]:
    model: Any = Spec
    for p in loc:
        if isinstance(p, int) or model is None:
            continue
        section = {"backend": Backend, "local": LocalOptions, "slurm": SlurmOptions, "ray": RayOptions,
                   "resources": Resources, "tracking": Tracking, "estimate": Estimate, "search": Search,
                   "scheduler": Scheduler, "seeds": SequentialSeeds, "stop": Stop}.get(str(p))
        model = section
    return list(model.model_fields) if model is not None else []


def override_keys() -> list[str]:
    """Every key a `key=value` override may name: trainer keys and spec fields (shell completion)."""
    spec_keys = ["seeds", *(f"resources.{k}" for k in Resources.model_fields),
                 *(f"tracking.{k}" for k in Tracking.model_fields), *(f"estimate.{k}" for k in Estimate.model_fields),
                 "backend.default", *(f"backend.{b}.{k}" for b, m in (("local", LocalOptions), ("slurm", SlurmOptions),
                                                                       ("ray", RayOptions)) for k in m.model_fields)]
    return [*ALL_KEYS, *spec_keys, *(f"grid.{k}" for k in ALL_KEYS)]
