"""Pure builders of a Ray search: backend.ray options, per-trial resources, the dry-run text."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cluster.common.search import METRIC, MODE, SearchPlan
from cluster.common.trialdir import RUNS_ROOT
from cluster.errors import BackendError
from sweeps.expand import Trial, gpu_hours
from sweeps.schema import check_section
from sweeps.spec import SweepSpec


@dataclass(frozen=True, kw_only=True)
class RayOptions:
    address: str | None
    """None: start a local Ray on 127.0.0.1 for this search; else join that cluster (host:port)."""
    num_cpus: int | None
    num_gpus: int | None
    cpus_per_trial: float
    storage_path: Path
    """Tune's experiment directory (absolute; on a multi-node cluster a shared filesystem)."""
    nodes: int | None
    """On a cluster: wait until this many nodes have joined before starting trials."""


def ray_options(spec: SweepSpec, workdir: Path) -> RayOptions:
    """backend.ray (checked by the spec schema when the spec was loaded) with its defaults filled in."""
    opts = check_section("backend.ray", spec.backend_options("ray"), spec.path)
    storage = Path(str(getattr(opts, "storage_path", None) or RUNS_ROOT / spec.name / "_tune"))
    cpus = getattr(opts, "cpus_per_trial", None)
    return RayOptions(address=getattr(opts, "address", None) or None, num_cpus=getattr(opts, "num_cpus", None),
                      num_gpus=getattr(opts, "num_gpus", None),
                      cpus_per_trial=float(spec.resources.cpus_per_task if cpus is None else cpus),
                      storage_path=storage if storage.is_absolute() else workdir / storage,
                      nodes=getattr(opts, "nodes", None))


def check_trials(trials: list[Trial]) -> None:
    multi = [t for t in trials if t.resources.nodes > 1]
    if multi:
        raise BackendError(f"backend 'ray' runs each trial on one node; {multi[0].spec} asks for "
                           f"resources.nodes={multi[0].resources.nodes}: use --backend slurm for multi-node "
                           "trials, or set resources.nodes=1")


def trial_gpus(trial: Trial) -> int:
    return max(trial.resources.gpus_per_node, 0)


def nproc(trial: Trial) -> int:
    """Processes of a trial: one per GPU (on a machine without GPUs, as many CPU ranks, like local)."""
    return max(trial_gpus(trial), 1)


def trial_resources(trial: Trial, *, cluster_gpus: float, cpus_per_trial: float) -> dict[str, float]:
    """What Ray reserves for the trial. A cluster without GPUs runs GPU trials on its CPUs, as the
    local backend does on a machine without GPUs."""
    gpus = trial_gpus(trial) if cluster_gpus > 0 else 0
    return {"cpu": cpus_per_trial, "gpu": gpus}


def check_fits(resources: dict[str, float], cluster: dict[str, float]) -> None:
    """A trial that asks for more than the whole cluster has would wait forever in Tune's queue."""
    for key, name, fix in (("cpu", "CPU", "backend.ray.cpus_per_trial (or resources.cpus_per_task)"),
                           ("gpu", "GPU", "resources.gpus_per_node")):
        if resources[key] > cluster.get(name, 0):
            raise BackendError(f"each trial asks for {resources[key]:g} {name}(s) but the Ray cluster has "
                               f"{cluster.get(name, 0):g}; lower {fix} or give Ray more (backend.ray.num_cpus/num_gpus "
                               "for a local Ray)")


def describe(spec: SweepSpec, plan: SearchPlan, trials: list[Trial], opts: RayOptions, *, max_concurrent: int,
             done: set[str] | frozenset[str] = frozenset()) -> str:
    """The dry-run text: space, scheduler, resources and the trials with their sampled values."""
    lines = [f"ray search {spec.name} (stage {spec.stage}, {spec.path}), experiment {spec.experiment}",
             "search space:"]
    if plan.axes:
        lines += [f"  {a.describe()}" for a in plan.axes]
        lines.append(f"  num_samples {plan.num_samples} per design point and seed (seed {plan.seed}; "
                     "the same draws for every design point)")
    else:
        lines.append("  none: the spec's own trials (no `search:` block)")
    s = plan.scheduler
    if s is None:
        lines.append("scheduler: FIFO (no early stopping)")
    else:
        lines.append(f"scheduler: ASHA on {METRIC} ({MODE}), unit = training steps: grace_period {s.grace_period}, "
                     f"reduction_factor {s.reduction_factor:g}, max_t {s.max_t}; rungs at steps {s.rungs()}")
    t0 = trials[0] if trials else None
    res = f"{t0.resources.gpus_per_node} GPU(s), {opts.cpus_per_trial:g} CPU(s)" if t0 else "-"
    where = f"cluster {opts.address}" + (f" ({opts.nodes} nodes)" if opts.nodes else "") if opts.address \
        else "a local Ray on 127.0.0.1"
    lines.append(f"trials: {len(trials)}, up to {max_concurrent} at a time, each {res}; on {where}; "
                 f"Tune state in {opts.storage_path}")
    lines.append(f"{'#':>3}  {'trial_id':12}  {'design':44}  seed  iters  status")
    for t in trials:
        lines.append(f"{t.index:>3}  {t.trial_id:12}  {t.label[:44]:44}  {t.seed:>4}  {t.config.run.num_iterations:>5}  "
                     f"{'done (replayed)' if t.trial_id in done else 'to run'}")
    lines.append(f"estimate: at most {gpu_hours(trials, spec.estimate_ms_per_step):.2f} GPU-hours "
                 f"(every trial to the end) at {spec.estimate_ms_per_step:g} ms/step")
    return "\n".join(lines)
