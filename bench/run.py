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
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.measure import flops_per_token, markdown_table, parse_log, patch_reference  # noqa: E402

WORK = Path(os.environ.get("BENCH_WORK", "/tmp/gatesweep-bench"))


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
               PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", NCCL_NVLS_ENABLE="0",
               TORCH_SYMM_MEM_DISABLE_MULTICAST="1", NVSHMEM_DISABLE_NVLS="1")
    return env


def _command(job: Job, train: str, val: str, run_dir: Path) -> list[str]:
    nproc = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={job.gpus}"]
    val_tokens = 64 * 1024 * job.gpus * 2
    if job.kind == "ref":
        src = Path(ARGS.ref).read_text()
        script = run_dir / "train_gpt2.py"
        values = dict(input_bin=train, input_val_bin=val, batch_size=job.batch, num_iterations=job.steps,
                      val_loss_every=0, val_tokens=val_tokens) | job.patch
        script.write_text(patch_reference(src, **values))
        return [sys.executable, *nproc, str(script)]
    cfg = {"train_files": train, "val_files": val, "batch_size": job.batch, "device_batch_size": 64,
           "num_iterations": job.steps, "warmdown_iters": 0, "val_every": 0, "val_tokens": val_tokens,
           "out_dir": str(run_dir), "run_id": "bench", "results_csv": str(run_dir / "results.csv"),
           "attn_gate": job.gate} | job.overrides
    return [sys.executable, *nproc, "-m", "trainer", *[f"{k}={v}" for k, v in cfg.items()]]


def run_job(job: Job, gpu_ids: list[int], train: str, val: str, peak_tflops: float) -> Result:
    run_dir = WORK / "runs" / job.label
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    if job.data:
        train, val = (str(Path(p).resolve()) for p in job.data)
    cmd = _command(job, train, val, run_dir)
    t0 = time.time()
    with open(run_dir / "stdout.txt", "w") as out:
        proc = subprocess.Popen(cmd, cwd=run_dir, env=_env(job, gpu_ids), stdout=out, stderr=subprocess.STDOUT)
        first = None
        while proc.poll() is None:
            if first is None:
                for log in (run_dir / "logs").glob("*.txt") if (run_dir / "logs").is_dir() else []:
                    if "\nstep:1/" in log.read_text(errors="replace"):
                        first = time.time() - t0
            time.sleep(0.2)
    logs = sorted((run_dir / "logs").glob("*.txt")) if (run_dir / "logs").is_dir() else []
    text = logs[0].read_text(errors="replace") if logs else ""
    stats = parse_log(text)
    if first is None and stats.steps:
        first = float("nan")
    tokens = job.batch * 1024
    tps = tokens / (stats.step_ms_median / 1000) if stats.step_ms_median == stats.step_ms_median else float("nan")
    mfu = tps * flops_per_token(gate=job.gate) / (peak_tflops * 1e12 * job.gpus)
    tail = (run_dir / "stdout.txt").read_text(errors="replace")[-1500:]
    res = Result(job.label, job.kind, job.gate, job.gpus, round(first or float("nan"), 1), round(stats.step_ms_median, 2),
                 round(stats.step_ms_spread, 3), round(tps), round(mfu, 4), stats.peak_mib, stats.final_val_loss,
                 proc.returncode, job.overrides, job.cache, tail if proc.returncode else "")
    print(f"[{job.label}] exit={proc.returncode} startup={res.startup_s}s step={res.step_ms}ms "
          f"peak={res.peak_mib}MiB val={res.final_val_loss}", flush=True)
    if proc.returncode:
        print(tail, flush=True)
    return res


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


def plan_jobs(plan: str, steps: int, ours: dict, n_gpus: int = 2) -> list[list[Job]]:
    """Lanes of jobs (one GPU per lane); `n_gpus`: the GPUs given with --lanes."""
    v = lambda label, gate, cache="ours", **kw: Job(label, "ours", ours | kw, cache, steps=steps, gate=gate)  # noqa: E731
    variants = [v("ours-none-cold", "none", "ours"), v("ours-none-warm", "none", "ours", seed=1),
                v("ours-headwise", "headwise"), v("ours-elementwise", "elementwise"), v("ours-const", "const"),
                v("ours-headwise-ns", "headwise", gate_act="ns_sigmoid"),
                v("ours-elementwise-value", "elementwise", gate_pos="value")]
    ref = [Job("ref-cold", "ref", cache="ref", steps=steps), Job("ref-warm", "ref", cache="ref", steps=steps)]
    if plan == "smoke":
        ablate = [Job("abl-plain", "ours", {}, "abl-plain", steps=steps),
                  Job("abl-model-compile", "ours", ours | {"compile_mode": "model"}, "abl-model", steps=steps)]
        return [variants[:4], ref[:1] + ablate]
    if plan == "full":
        return [variants, ref]
    if plan == "variants":  # the rest of the gate variants, each lane with its own baseline
        return [[variants[0], variants[4], variants[5]],
                [v("ours-none-b", "none", "ours-b"), variants[6],
                 v("ours-headwise-unfused", "headwise", "ours-b", fused_proj=False)]]
    if plan == "parity":  # the reference on the offline corpus, as sweeps/offline_stage1.yaml trains
        data = (str(ROOT / ".gpu/data/offline_train_*.bin"), str(ROOT / ".gpu/data/offline_val_*.bin"))
        return [[Job("ref-parity", "ref", cache="ref", steps=300, batch=32, data=data,
                     patch=dict(device_batch_size=32, warmdown_iters=90, val_loss_every=50, val_tokens=524288))]]
    if plan == "ablations":  # same-math speed options, each lane against its own baseline
        opts = [{"cd_tuning": True}, {"compile_mode": "model"}, {"sdpa_backend": "cudnn"},
                {"fused_proj": False}]
        return [[v(f"abl-base-{i}", "none", f"abl-{i}"), v(f"abl-{next(iter(o))}={next(iter(o.values()))}", "none",
                                                        f"abl-{i}-x", **o)] for i, o in enumerate(opts)]
    if plan == "scaling":  # global batch fixed at 512 x 1024 tokens; every GPU count the machine has
        return [[Job(f"ddp-{n}gpu", "ours", ours, "ours", gpus=n, batch=512, steps=steps)]
                for n in (1, 2, 4, 8) if n <= n_gpus]
    raise SystemExit(f"unknown plan {plan}")


def main() -> int:
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--ref", default=str(ROOT / ".ref" / "train_gpt2.py"))
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "latest"))
    p.add_argument("--plan", default="full")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--ours", default="{}", help="JSON overrides for our trainer in every 'ours' job")
    p.add_argument("--lanes", default="0,1", help="GPU ids, one lane each")
    ARGS = p.parse_args()
    import torch

    out = Path(ARGS.out)
    out.mkdir(parents=True, exist_ok=True)
    train, val = make_data()
    peak = matmul_tflops()
    card = torch.cuda.get_device_name(0)
    gpu_ids = [int(x) for x in ARGS.lanes.split(",")]
    lanes = plan_jobs(ARGS.plan, ARGS.steps, json.loads(ARGS.ours), n_gpus=len(gpu_ids))
    results: list[Result] = []
    lock = threading.Lock()

    def lane(jobs: list[Job], gid: int) -> None:
        for job in jobs:
            ids = gpu_ids[: job.gpus] if job.gpus > 1 else [gid]
            r = run_job(job, ids, train, val, peak)
            with lock:
                results.append(r)

    if ARGS.plan == "scaling":  # whole machine per job: one after another
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
            "n_gpus": torch.cuda.device_count()}
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": [asdict(r) for r in results]}, indent=1))
    cols = ["label", "gate", "gpus", "startup_s", "step_ms", "spread", "mfu", "peak_mib", "final_val_loss", "exit_code"]
    table = markdown_table([asdict(r) for r in sorted(results, key=lambda r: r.label)], cols)
    (out / "table.md").write_text(f"{meta}\n\n{table}")
    print(json.dumps(meta))
    print(table)
    return 0


ARGS: argparse.Namespace

if __name__ == "__main__":
    sys.exit(main())
