"""Where a training step's time goes: forward, backward, AdamW, Muon, per configuration.

    python3 bench/profile.py '{"label": {"key": value, ...}, ...}' [--trace LABEL] [--out DIR]

Builds the model and optimizers with the trainer's own builders (reference size, 64x1024 tokens per
step, random tokens), compiles, warms up, then times each phase of 20 steps with CUDA events.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from trainer.build import build_model, build_optimizers, compile_model, select_sdpa_backend  # noqa: E402
from trainer.config import preset_config  # noqa: E402
from trainer.dist import DistEnv  # noqa: E402


def measure(label: str, overrides: dict, steps: int = 20, trace: Path | None = None) -> dict:
    torch._dynamo.reset()
    cfg = preset_config("reference").override({"num_iterations": 100, "warmdown_iters": 0} | overrides)
    env = DistEnv(0, 0, 1, torch.device("cuda", 0))
    model = build_model(cfg, env.device)
    adam, muon = build_optimizers(cfg, model, env, compiled_ns=True)
    select_sdpa_backend(cfg.run.sdpa_backend)
    net = compile_model(cfg, model)
    B, T = cfg.data.device_batch_size, cfg.data.sequence_length
    x = torch.randint(0, 50257, (B, T), device="cuda")
    y = torch.randint(0, 50257, (B, T), device="cuda")
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(5)]
    times: dict[str, list[float]] = {k: [] for k in ("fwd", "bwd", "adam", "muon", "step_wall")}
    t_compile = time.perf_counter()

    def step(record: bool) -> None:
        t0 = time.perf_counter()
        ev[0].record()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = net(x, y)
        ev[1].record()
        loss.backward()
        ev[2].record()
        adam.step()
        ev[3].record()
        muon.step()
        ev[4].record()
        model.zero_grad(set_to_none=True)
        loss.item()
        if record:
            for k, (a, b) in zip(("fwd", "bwd", "adam", "muon"), zip(ev, ev[1:])):
                times[k].append(a.elapsed_time(b))
            times["step_wall"].append(1000 * (time.perf_counter() - t0))

    for i in range(8):
        step(False)
        if i == 0:
            t_compile = time.perf_counter() - t_compile
    for _ in range(steps):
        step(True)
    out = {"label": label, "overrides": overrides, "first_step_s": round(t_compile, 1),
           "peak_mib": torch.cuda.max_memory_allocated() // 2**20}
    out |= {k: round(statistics.median(v), 2) for k, v in times.items()}
    if trace is not None:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                step(False)
            torch.cuda.synchronize()
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=40)
        trace.mkdir(parents=True, exist_ok=True)
        (trace / f"profile-{label}.txt").write_text(table)
        print(table[:6000])
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.empty_cache()
    print(json.dumps(out), flush=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("configs", help='JSON: {"label": {overrides}, ...}')
    p.add_argument("--trace", default="")
    p.add_argument("--out", default="/tmp")
    args = p.parse_args()
    results = []
    for label, over in json.loads(args.configs).items():
        try:
            results.append(measure(label, over, trace=Path(args.out) if label == args.trace else None))
        except Exception as e:  # noqa: BLE001 - report and go on with the next configuration
            print(f"{label}: FAILED {type(e).__name__}: {str(e)[:500]}", flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"profile-{int(time.time())}.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
