"""`make bench`: our trainer per gate variant vs the reference ModernArch script, one call, one card.

Run on a GPU machine from the repository root:
    python3 bench/run.py --ref .ref/train_gpt2.py --out bench/results/<name> [--plan smoke|full|scaling]

The reference script (modded-nanogpt records/track_1_short/2024-10-14_ModernArch/train_gpt2.py) is
fetched into a git-ignored folder and never committed; only its data paths and step/batch counts are
patched. Jobs are spread over "lanes" (one GPU each, jobs in a lane run one after another). Start-up
is the wall time from process launch to the first optimizer step's log line; cold = empty compile
caches, warm = the caches a previous run of the same graphs filled.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.measure import flops_per_token, markdown_table, parse_first_step, parse_log  # noqa: E402
from bench.plans import Job, command, fits, plan_jobs, targets  # noqa: E402,F401 - plan_jobs: tests import it here

WORK = Path(os.environ.get("BENCH_WORK", "/tmp/gatesweep-bench"))


@dataclass
class Result:
    label: str
    kind: str
    gate: str
    gpus: int
    startup_s: float
    step_ms: float
    spread: float
    tokens_per_s: float
    mfu: float
    peak_mib: int | None
    final_val_loss: float
    exit_code: int
    overrides: dict
    cache: str
    log: str = ""
    note: str = ""  # our trainer's "first step done ..." console line: where start-up time went
    baseline: str = ""
    batch: int = 64
    # the note parsed (bench.measure.parse_first_step): phases in seconds, plus outside_s = startup_s minus
    # the trainer's own "after process start" (the launcher, e.g. torchrun, and this script's polling)
    startup_phases: dict = field(default_factory=dict)


def make_data(vocab: int = 50257) -> tuple[str, str]:
    import numpy as np

    from trainer.shards import write_shard

    d = WORK / "data"
    if not (d / "rand_val_000000.bin").exists():
        rng = np.random.default_rng(0)
        for i in (1, 2):
            write_shard(d / f"rand_train_{i:06d}.bin", rng.integers(0, vocab, 40_000_000, dtype=np.int64))
        write_shard(d / "rand_val_000000.bin", rng.integers(0, vocab, 4_200_000, dtype=np.int64))
    return str(d / "rand_train_*.bin"), str(d / "rand_val_*.bin")


def _env(job: Job, gpu_ids: list[int]) -> dict[str, str]:
    cache = WORK / "cache" / job.cache
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=",".join(map(str, gpu_ids)),
               TORCHINDUCTOR_CACHE_DIR=str(cache / "inductor"), TRITON_CACHE_DIR=str(cache / "triton"),
               PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", NCCL_NVLS_ENABLE="0", GATESWEEP_ALLOW_OUTSIDE_PATHS="1",
               TORCH_SYMM_MEM_DISABLE_MULTICAST="1", NVSHMEM_DISABLE_NVLS="1")
    return env


def job_logs(run_dir: Path) -> list[Path]:
    """The run log(s) of a job: the reference's logs/<uuid>.txt; ours, run with out_dir the working directory
    (a hand run, trainer.main.hand_run_dirs), under runs/manual/<run_id>/logs/ (2026-12-05: reading only
    logs/ missed them and a whole device call measured nothing). The record's copy under track/ is skipped."""
    return sorted(p for p in run_dir.rglob("logs/*.txt") if "track" not in p.relative_to(run_dir).parts)


def run_job(job: Job, gpu_ids: list[int], train: str, val: str, peak_tflops: float,
            timeout_s: float | None = None) -> Result:
    run_dir = WORK / "runs" / job.label
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    if job.data:
        job.data = tuple(str(Path(p).resolve()) for p in job.data)  # type: ignore[assignment]
    ref_source = Path(ARGS.ref).read_text() if job.kind == "ref" else None
    cmd, script = command(job, train, val, run_dir, sys.executable, ref_source)
    if script is not None:
        (run_dir / "train_gpt2.py").write_text(script)
    t0 = time.time()
    with open(run_dir / "stdout.txt", "w") as out:
        proc = subprocess.Popen(cmd, cwd=run_dir, env=_env(job, gpu_ids), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        first = None
        while proc.poll() is None:
            if first is None:
                for log in job_logs(run_dir):
                    if "\nstep:1/" in log.read_text(errors="replace"):
                        first = time.time() - t0
            if timeout_s is not None and time.time() - t0 > timeout_s:
                os.killpg(proc.pid, signal.SIGKILL)  # the budget of the call: keep what was measured
            time.sleep(0.2)
    logs = job_logs(run_dir)
    text = logs[0].read_text(errors="replace") if logs else ""
    stats = parse_log(text)
    out_text = (run_dir / "stdout.txt").read_text(errors="replace")
    note = next((ln.split(": ", 1)[1] for ln in out_text.splitlines() if "first step done" in ln), "")
    if first is None and stats.steps:  # it stepped and ended between two looks: the trainer's own figure
        first = parse_first_step(note).get("since_process_s", float("nan"))
    tokens = job.batch * 1024
    tps = tokens / (stats.step_ms_median / 1000) if stats.step_ms_median == stats.step_ms_median else float("nan")
    mfu = tps * flops_per_token(gate=job.gate) / (peak_tflops * 1e12 * job.gpus)
    tail = out_text[-1500:]
    phases = startup_breakdown(note, first)
    res = Result(job.label, job.kind, job.gate, job.gpus, round(first or float("nan"), 1), round(stats.step_ms_median, 2),
                 round(stats.step_ms_spread, 3), round(tps) if tps == tps else tps, round(mfu, 4), stats.peak_mib, stats.final_val_loss,
                 proc.returncode, job.overrides, job.cache, tail if proc.returncode else "", note, job.baseline,
                 job.batch, phases)
    print(f"[{job.label}] exit={proc.returncode} startup={res.startup_s}s step={res.step_ms}ms "
          f"peak={res.peak_mib}MiB val={res.final_val_loss} {note}", flush=True)
    if proc.returncode:
        print(tail, flush=True)
    return res


def startup_breakdown(note: str, startup_s: float | None) -> dict:
    """The first-step line's phases, with the part of the measured start outside the trainer's clock."""
    out = parse_first_step(note)
    if startup_s is not None and startup_s == startup_s and "since_process_s" in out:
        out["outside_s"] = round(startup_s - out["since_process_s"], 1)
    return out


def matmul_tflops() -> float:
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2 * 8192**3 * 20 / (start.elapsed_time(end) / 1000) / 1e12


def main() -> int:
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--ref", default=str(ROOT / ".ref" / "train_gpt2.py"))
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "latest"))
    p.add_argument("--plan", default="full")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--ours", default="{}", help="JSON overrides for our trainer in every 'ours' job")
    p.add_argument("--lanes", default="0,1", help="GPU ids, one lane each")
    p.add_argument("--budget", type=float, default=510, help="single-card plans: seconds for all jobs")
    p.add_argument("--dry-run", action="store_true", help="print the planned jobs and commands, run nothing")
    ARGS = p.parse_args()
    gpu_ids = [int(x) for x in ARGS.lanes.split(",")]
    target_plan = ARGS.plan in ("targets", "targets-quick", "targets-ours")
    if target_plan:
        primes, ref, measured = targets(ARGS.steps, json.loads(ARGS.ours), quick=ARGS.plan != "targets")
        # targets-ours: the gates' overheads and our warm start only (no reference: a call of ~4 minutes)
        lanes = [primes, [] if ARGS.plan == "targets-ours" else [ref], measured]
    else:
        lanes = plan_jobs(ARGS.plan, ARGS.steps, json.loads(ARGS.ours), n_gpus=len(gpu_ids), work=WORK)
    single = ARGS.plan.startswith("single") or target_plan
    if ARGS.dry_run:
        if ARGS.plan == "targets":
            print("phase 1 (at once, not measured), phase 2 (alone), phase 3 (one at a time, within the budget left)")
        elif target_plan:
            print("phase 1 (at once, not measured) beside phase 2 (the reference), phase 3 (one at a time, within "
                  "the budget left)")
        print(dry_run(lanes, ARGS.budget if single else None))
        return 0
    import torch

    out = Path(ARGS.out)
    out.mkdir(parents=True, exist_ok=True)
    train, val = make_data()
    peak = matmul_tflops()
    card = torch.cuda.get_device_name(0)
    results: list[Result] = []
    skipped: list[str] = []
    lock = threading.Lock()

    def lane(jobs: list[Job], gid: int) -> None:
        for job in jobs:
            ids = gpu_ids[: job.gpus] if job.gpus > 1 else [gid]
            r = run_job(job, ids, train, val, peak)
            with lock:
                results.append(r)

    primed: list[dict] = []
    if target_plan:  # compile our graphs at once, then (quick: meanwhile) the reference, then ours one at a time
        t_end = time.time() + ARGS.budget
        threads = [threading.Thread(target=lambda j=job: primed.append(asdict(run_job(j, gpu_ids[:1], train, val, peak,
                                                                                     timeout_s=240))))
                   for job in lanes[0]]
        for t in threads:
            t.start()
        if ARGS.plan == "targets":
            for t in threads:
                t.join()
        # quick: the primes (~60 s) end inside the reference's compile (~190 s), before its timed steps
        for job in lanes[1]:
            results.append(run_job(job, gpu_ids[:1], train, val, peak, timeout_s=t_end - time.time()))
        for t in threads:
            t.join()
        lanes = [lanes[2]]
    else:
        t_end = time.time() + ARGS.budget
    if single:  # one process at a time, within the budget
        for job in lanes[0]:
            left = t_end - time.time()
            if job.est_s > left:
                skipped.append(job.label)
                print(f"[{job.label}] skipped: estimated {job.est_s:.0f}s, {left:.0f}s of the budget left", flush=True)
                continue
            results.append(run_job(job, gpu_ids[:1], train, val, peak, timeout_s=left))
    elif ARGS.plan == "scaling":  # whole machine per job: one after another
        for jobs in lanes:
            lane(jobs, gpu_ids[0])
    else:
        threads = [threading.Thread(target=lane, args=(jobs, gpu_ids[i % len(gpu_ids)]))
                   for i, jobs in enumerate(lanes)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    meta = {"card": card, "torch": torch.__version__, "cuda": torch.version.cuda,
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "matmul_tflops": round(peak, 1),
            "plan": ARGS.plan, "steps": ARGS.steps, "ours_overrides": json.loads(ARGS.ours),
            "n_gpus": torch.cuda.device_count(), "skipped": skipped,
            "primes": [{k: p[k] for k in ("label", "exit_code", "startup_s", "note")} for p in primed],
            "concurrent": not single and ARGS.plan != "scaling" and len(lanes) > 1}
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": [asdict(r) for r in results]}, indent=1))
    cols = ["label", "gate", "gpus", "startup_s", "step_ms", "spread", "mfu", "peak_mib", "final_val_loss", "exit_code"]
    table = markdown_table([asdict(r) for r in sorted(results, key=lambda r: r.label)], cols)
    (out / "table.md").write_text(f"{meta}\n\n{table}")
    print(json.dumps(meta))
    print(table)
    return 0


def dry_run(lanes: list[list[Job]], budget: float | None) -> str:
    """The jobs a call would run, lane by lane, with their commands; with a budget (single-card
    plans) also which jobs the estimates leave out."""
    lines = []
    for i, jobs in enumerate(lanes):
        run, skip = fits(jobs, budget) if budget is not None else (jobs, [])
        total = sum(j.est_s for j in run)
        lines.append(f"lane {i}: {len(run)} jobs, estimated {total:.0f}s" + (f" of {budget:.0f}s" if budget else ""))
        for job in run:
            cmd, _ = command(job, "TRAIN", "VAL", WORK / "runs" / job.label, "python3")
            lines.append(f"  [{job.label}] ~{job.est_s:.0f}s cache={job.cache}: {' '.join(cmd[1:])}")
        lines += [f"  [{job.label}] would be skipped (estimate {job.est_s:.0f}s)" for job in skip]
    return "\n".join(lines)


ARGS: argparse.Namespace

if __name__ == "__main__":
    sys.exit(main())
