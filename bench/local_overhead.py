"""What the local launcher costs per trial beyond training: an N-trial sweep of the tiny CPU model, one
trial at a time, timed as one `gatesweep run` process.

    .venv/bin/python bench/local_overhead.py                       # 8 trials, 3 iterations each
    .venv/bin/python bench/local_overhead.py --code /tmp/old-main  # the same against another checkout

overhead per trial = (sweep wall - sum of the trials' train_time_ms) / N: interpreter and imports,
model set-up, validation and checkpoint, the end of each trainer process, the launcher's polling and
record delivery (sqlite store, the launcher delivers), and the launcher's own start amortised over N
(`rerun_s`, a second `gatesweep run` with nothing left to run, gives that fixed part). The trainers'
start-up phases (their first-step line, bench.measure.parse_first_step) are reported as medians.

Writes results.json and README.md into --out (default bench/results/<date>-local-overhead-cpu).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.cpu_results import write_results  # noqa: E402
from bench.measure import parse_first_step  # noqa: E402

TINY = {"preset": "tiny", "vocab_size": 64, "n_embd": 32, "n_head": 2, "sequence_length": 32, "batch_size": 4,
        "device_batch_size": 4, "val_tokens": 256, "warmdown_iters": 1, "val_every": 0, "learning_rate": 0.02,
        "train_files": "data/train_*.bin", "val_files": "data/val_*.bin"}


def spec_text(trials: int, iterations: int) -> str:
    """N seeds of the tiny model, one trial at a time, on the CPU."""
    doc = {"name": "overhead", "base": TINY | {"num_iterations": iterations}, "seeds": list(range(trials)),
           "resources": {"nodes": 1, "gpus_per_node": 0, "cpus_per_task": 1, "timeout_min": 10},
           "tracking": {"experiment": "gatesweep-overhead"},
           "backend": {"default": "local", "local": {"max_parallel": 1}}}
    return json.dumps(doc)  # JSON is YAML


def sweep(work: Path, code: Path) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "GATESWEEP_"))}
    env.update(PYTHONPATH=str(code), OMP_NUM_THREADS="1", MLFLOW_LOGGING_LEVEL="WARNING")
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "gatesweep", "run", "spec.yaml"], cwd=work, env=env,
                         capture_output=True, text=True, stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"gatesweep run failed ({res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}")
    return wall


def trial_figures(work: Path) -> list[dict]:
    """Per trial: train seconds (its summary) and its first-step line's start-up figures."""
    out = []
    for d in sorted((work / "runs" / "overhead").iterdir()):
        summary = d / "track" / "summary.json"
        if not summary.exists():
            continue
        line = next((ln for ln in (d / "stdout.log").read_text().splitlines() if "first step done" in ln), "")
        out.append({"trial_id": d.name, "train_s": json.loads(summary.read_text())["train_time_ms"] / 1000,
                    "first_step": parse_first_step(line)})
    return out


def measure(args: argparse.Namespace, work: Path) -> dict:
    import numpy as np

    from trainer.shards import write_shard

    rng = np.random.default_rng(0)
    write_shard(work / "data" / "train_000.bin", rng.integers(0, 64, 20_000))
    write_shard(work / "data" / "val_000.bin", rng.integers(0, 64, 2_000))
    (work / "spec.yaml").write_text(spec_text(args.trials, args.iterations))
    wall = sweep(work, args.code)
    rerun = sweep(work, args.code)
    trials = trial_figures(work)
    if len(trials) != args.trials:
        raise SystemExit(f"{len(trials)} of {args.trials} trials left a summary in {work}")
    train = sum(t["train_s"] for t in trials)
    since = [t["first_step"].get("since_process_s") for t in trials if t["first_step"].get("since_process_s")]
    phases = [t["first_step"].get("phases", {}) for t in trials]
    keys = list(dict.fromkeys(k for p in phases for k in p))
    return {"trials": args.trials, "num_iterations": args.iterations, "sweep_wall_s": round(wall, 2),
            "sum_train_s": round(train, 3), "overhead_per_trial_s": round((wall - train) / args.trials, 2),
            "rerun_s": round(rerun, 2),
            "trainer_start_to_first_step_s": round(statistics.median(since), 2) if since else None,
            "trainer_phases_median_s": {k: round(statistics.median(p.get(k, 0.0) for p in phases), 3) for k in keys}}


def readme(r: dict) -> str:
    m = r["measured"]
    return "\n".join([
        f"# Local launcher overhead per trial, {r['date']} ({r['machine']})", "",
        f"`{r['command']}` against code at `{r['code_rev']}`: {m['trials']} trials of the tiny CPU model, "
        f"{m['num_iterations']} iterations each, one at a time, sqlite store.", "",
        "| sweep wall | Σ train | overhead per trial | launcher with nothing to run | trainer start → first step |",
        "|---:|---:|---:|---:|---:|",
        f"| {m['sweep_wall_s']:.1f} s | {m['sum_train_s']:.2f} s | **{m['overhead_per_trial_s']:.2f} s** | "
        f"{m['rerun_s']:.1f} s | {m['trainer_start_to_first_step_s']} s |", "",
        "Trainer start-up phases (median, s): " + ", ".join(f"{k} {v}" for k, v in m["trainer_phases_median_s"].items()),
        ""])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--code", type=Path, default=ROOT, help="checkout whose gatesweep is timed (default: this one)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / f"{dt.date.today()}-local-overhead-cpu")
    p.add_argument("--label", help="what --code is, for the results (default: its git revision)")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="gatesweep-overhead-"))
    try:
        measured = measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_results(args.out, "bench/local_overhead.py", argv if argv is not None else sys.argv[1:], args.code, args.label,
                  {"measured": measured}, readme)
    print(json.dumps(measured))
    return 0


if __name__ == "__main__":
    sys.exit(main())
