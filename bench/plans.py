"""What a bench call runs: jobs, the plans that group them, and the command of each job (pure).

Multi-lane plans (smoke|full|variants|ablations|parity|scaling) spread jobs over GPUs; the
single-card plans (single1|single2) run one process at a time on one GPU, highest priority first,
within a wall-clock budget: a job whose estimate no longer fits is skipped and reported, so a call
never loses its results to the device's time limit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bench.measure import patch_reference

ROOT = Path(__file__).resolve().parent.parent
OFFLINE = (str(ROOT / ".gpu/data/offline_train_*.bin"), str(ROOT / ".gpu/data/offline_val_*.bin"))


@dataclass
class Job:
    label: str
    kind: str  # ours | ref
    overrides: dict = field(default_factory=dict)
    cache: str = "default"
    gpus: int = 1
    steps: int = 60
    batch: int = 64
    gate: str = "none"
    patch: dict = field(default_factory=dict)  # reference: extra Hyperparameters patches (parity runs)
    data: tuple[str, str] | None = None  # (train, val) patterns instead of the random-token shards
    est_s: float = 45.0  # expected wall time from launch to exit (single-card plans budget with it)
    baseline: str = ""  # label of the job this one is compared with (speed candidates)


def plan_jobs(plan: str, steps: int, ours: dict, n_gpus: int = 2, work: Path = Path("/tmp/gatesweep-bench")
              ) -> list[list[Job]]:
    """Lanes of jobs (one GPU per lane); `n_gpus`: the GPUs given with --lanes."""
    if plan in ("single1", "single2"):
        return [single_card(plan, steps, ours, work)]
    if plan == "study":  # unshared step times of the study's variants (time-matching a packed study)
        return [study_jobs(steps, ours)]
    v = lambda label, gate, cache="ours", **kw: Job(label, "ours", ours | kw, cache, steps=steps, gate=gate)  # noqa: E731
    variants = [v("ours-none-cold", "none", "ours"), v("ours-none-warm", "none", "ours", seed=1),
                v("ours-headwise", "headwise"), v("ours-elementwise", "elementwise"), v("ours-const", "const"),
                v("ours-headwise-ns", "headwise", gate_act="ns_sigmoid"),
                v("ours-elementwise-value", "elementwise", gate_pos="value")]
    ref = [Job("ref-cold", "ref", cache="ref", steps=steps), Job("ref-warm", "ref", cache="ref", steps=steps)]
    if plan == "smoke":
        ablate = [Job("abl-plain", "ours", {"fast": False}, "abl-plain", steps=steps),
                  Job("abl-model-compile", "ours", ours | {"compile_mode": "model"}, "abl-model", steps=steps)]
        return [variants[:4], ref[:1] + ablate]
    if plan == "full":
        return [variants, ref]
    if plan == "variants":  # the rest of the gate variants, each lane with its own baseline
        return [[variants[0], variants[4], variants[5]],
                [v("ours-none-b", "none", "ours-b"), variants[6],
                 v("ours-headwise-unfused", "headwise", "ours-b", fused_proj=False)]]
    if plan == "parity":  # the reference on the offline corpus, as sweeps/offline_stage1.yaml trains
        return [[Job("ref-parity", "ref", cache="ref", steps=300, batch=32, data=OFFLINE,
                     patch=dict(device_batch_size=32, warmdown_iters=90, val_loss_every=50, val_tokens=524288))]]
    if plan == "ablations":  # same-math speed options, each lane against its own baseline
        opts = [{"cd_tuning": True}, {"compile_mode": "model"}, {"sdpa_backend": "cudnn"},
                {"fused_proj": False}]
        return [[v(f"abl-base-{i}", "none", f"abl-{i}"), v(f"abl-{next(iter(o))}={next(iter(o.values()))}", "none",
                                                        f"abl-{i}-x", **o)] for i, o in enumerate(opts)]
    if plan == "scaling":  # global batch fixed at 512 x 1024 tokens; every GPU count the machine has
        return [[Job(f"ddp-{n}gpu", "ours", ours, "ours", gpus=n, batch=512, steps=steps)]
                for n in (1, 2, 4, 8) if n <= n_gpus]
    raise SystemExit(f"unknown plan {plan}; one of smoke, full, variants, parity, ablations, scaling, single1, "
                     "single2")


GATES = {"none": ("none", {}), "headwise": ("headwise", {}), "elementwise": ("elementwise", {}),
         "const": ("const", {}), "headwise-ns": ("headwise", {"gate_act": "ns_sigmoid"}),
         "elementwise-value": ("elementwise", {"gate_pos": "value"})}
STUDY_GATES = ("none", "headwise", "elementwise", "const", "headwise-ns")  # sweeps/offline_stage1.yaml


def single_card(plan: str, steps: int, ours: dict, work: Path) -> list[Job]:
    """One GPU, one process at a time, in priority order (see bench/next_session.sh).

    single1: the headline figures - the reference cold, our defaults cold (saving the portable compile
    cache) and warm (the second trial of a sweep: local cache + portable cache), the gates whose
    overhead has a target, the headwise GEMM placements, and the compile candidates.
    single2: the other gate variants, the study config's step time per variant (32 x 1024 tokens on
    the offline corpus, for time-matching the study), the remaining candidates, the plain path, and a
    start from the portable cache alone (a node with empty local caches)."""
    mega = str(work / "mega" / "none.bin")

    def mk(label: str, gate: str = "none", cache: str = "ours", est: float = 40, base: str = "", **kw: object) -> Job:
        g, extra = GATES[gate]
        return Job(label, "ours", ours | extra | kw, cache, steps=steps, gate=g, est_s=est, baseline=base)

    if plan == "single1":
        return [Job("ref-cold", "ref", cache="ref", steps=steps, est_s=190),
                mk("ours-none-cold", est=55, save_compile_cache=mega),
                mk("ours-none-warm", est=25, seed=1, compile_cache=mega),
                mk("ours-headwise", "headwise"), mk("ours-elementwise", "elementwise"),
                mk("cand-headwise-fused_pad64", "headwise", base="ours-headwise", gate_gemm="fused_pad64"),
                mk("cand-none-cd_tuning", est=90, base="ours-none-cold", cd_tuning=True),
                mk("cand-headwise-separate_pad8", "headwise", base="ours-headwise", gate_gemm="separate_pad8"),
                mk("cand-none-model", est=80, base="ours-none-cold", compile_mode="model")]
    study = study_jobs(steps, ours)
    # part 2's baseline is cold only on a fresh machine (a machine still held after part 1 keeps its caches)
    return [mk("ours-none", est=55, save_compile_cache=mega), mk("ours-const", "const"),
            mk("ours-headwise-ns", "headwise-ns"), mk("ours-elementwise-value", "elementwise-value"), *study,
            mk("cand-none-cudnn", base="ours-none", sdpa_backend="cudnn"),
            mk("cand-none-plain", base="ours-none", fast=False),
            mk("ours-none-mega", cache="mega-only", est=30, seed=2, compile_cache=mega),
            mk("cand-none-max-autotune", est=150, base="ours-none", inductor_mode="max-autotune-no-cudagraphs"),
            mk("cand-none-model-cd", est=120, base="ours-none", compile_mode="model", cd_tuning=True)]


def targets(steps: int, ours: dict, quick: bool = False) -> tuple[list[Job], Job, list[Job]]:
    """Issue #22's trainer targets on one card: (primes, reference, measured jobs).

    Primes compile our graph families at once (2 steps each, not measured) so that every measured job
    is a warm start; then the reference runs alone, cold (its compile, coordinate-descent tuning
    included, has the card to itself); then our jobs one at a time in priority order, each against a
    baseline of this call: defaults (its start-up is the warm start), the gates with targets, the
    headwise GEMM placements, coordinate-descent tuning, the baseline again (the spread between two runs
    of one version). `quick` (plan targets-quick, for a call of ~6 minutes): the three families with
    targets only, primed beside the reference's compile, and the baseline repeated; no candidates."""
    def mk(label: str, gate: str = "none", est: float = 20 + 0.15 * steps, base: str = "", n: int = steps,
           **kw: object) -> Job:
        g, extra = GATES[gate]
        return Job(label, "ours", ours | extra | kw, "ours", steps=n, gate=g, est_s=est, baseline=base)

    fam = [("none", {}), ("headwise", {}), ("elementwise", {}), ("headwise", {"gate_gemm": "fused_pad64"}),
           ("none", {"cd_tuning": True})]
    primes = [mk(f"prime-{g}" + "".join(f"-{k}={v}" for k, v in kw.items()), g, n=2, **kw) for g, kw in fam]
    ref = Job("ref-cold", "ref", cache="ref", steps=steps, est_s=225 + 0.16 * steps)
    measured = [mk("ours-none-warm"), mk("ours-headwise", "headwise"), mk("ours-elementwise", "elementwise"),
                mk("cand-none-cd_tuning", base="ours-none-warm", cd_tuning=True),
                mk("cand-headwise-fused_pad64", "headwise", base="ours-headwise", gate_gemm="fused_pad64"),
                mk("cand-none-repeat", base="ours-none-warm", seed=1),
                mk("cand-headwise-separate_pad8", "headwise", est=60, base="ours-headwise", gate_gemm="separate_pad8")]
    if quick:
        return primes[:3], ref, [*measured[:3], measured[5]]
    return primes, ref, measured


def study_jobs(steps: int, ours: dict) -> list[Job]:
    """The study config (32 x 1024 tokens on the offline corpus) per gate variant, one at a time."""
    return [Job(f"study-{name}", "ours", ours | GATES[name][1] | {"device_batch_size": 32}, "study",
                steps=steps, batch=32, gate=GATES[name][0], data=OFFLINE, est_s=40) for name in STUDY_GATES]


def fits(jobs: list[Job], budget_s: float) -> tuple[list[Job], list[Job]]:
    """(jobs whose estimates fit in the budget, taken in order; the rest). A job that does not fit is
    skipped, and cheaper ones after it may still run."""
    run, skip, used = [], [], 0.0
    for job in jobs:
        if used + job.est_s <= budget_s:
            run.append(job)
            used += job.est_s
        else:
            skip.append(job)
    return run, skip


def command(job: Job, train: str, val: str, run_dir: Path, python: str, ref_source: str | None = None
            ) -> tuple[list[str], str | None]:
    """(argv, the patched reference script's text or None). Our trainer gets its config as key=value."""
    nproc = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={job.gpus}"]
    val_tokens = 64 * 1024 * job.gpus * 2
    if job.data:
        train, val = job.data
    if job.kind == "ref":
        values = dict(input_bin=train, input_val_bin=val, batch_size=job.batch, num_iterations=job.steps,
                      val_loss_every=0, val_tokens=val_tokens) | job.patch
        script = patch_reference(ref_source, **values) if ref_source is not None else None
        return [python, *nproc, str(run_dir / "train_gpt2.py")], script
    cfg = {"train_files": train, "val_files": val, "batch_size": job.batch, "device_batch_size": 64,
           "num_iterations": job.steps, "warmdown_iters": 0, "val_every": 0, "val_tokens": val_tokens,
           "out_dir": str(run_dir), "run_id": "bench", "results_csv": str(run_dir / "experiments" / "results.csv"),
           "attn_gate": job.gate} | job.overrides
    # One GPU: a plain process, as every launcher starts a one-GPU trial (cluster/local.py trainer_command,
    # Slurm, Ray): torchrun would add its own start-up (~3 s: a second torch import, the elastic agent).
    launch = [python] if job.gpus == 1 else [python, *nproc]
    return [*launch, "-m", "trainer", *[f"{k}={v}" for k, v in cfg.items()]], None
