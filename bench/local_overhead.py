"""What the local launcher costs per trial beyond training: sweeps of the tiny CPU model, one trial at
a time, each timed as one `gatesweep run` process, with trials forked from the warm trainer (the
default) and as fresh `python -m trainer` processes (backend.local.warm_start: false), side by side.

    .venv/bin/python bench/local_overhead.py                       # 8 and 16 trials, 3 iterations each
    .venv/bin/python bench/local_overhead.py --code /tmp/old-main  # the same against another checkout

Per mode, two sweeps in fresh directories: N and 2N trials. Two figures per trial:
- amortised = (wall(N) - sum of train_time_ms) / N: everything, including the launcher's own start and
  the store's creation, spread over N trials;
- marginal  = ((wall(2N) - train(2N)) - (wall(N) - train(N))) / N: what one more trial adds (its
  process start, model set-up, validation and checkpoint, its end, polling and record delivery).
`rerun_s` is a second `gatesweep run` of the N-trial sweep with nothing left to run. The trainers'
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


def spec_text(trials: int, iterations: int, warm: bool) -> str:
    """N seeds of the tiny model, one trial at a time, on the CPU."""
    doc = {"name": "overhead", "base": TINY | {"num_iterations": iterations}, "seeds": list(range(trials)),
           "resources": {"nodes": 1, "gpus_per_node": 0, "cpus_per_task": 1, "timeout_min": 10},
           "tracking": {"experiment": "gatesweep-overhead"},
           "backend": {"default": "local", "local": {"max_parallel": 1, "warm_start": warm}}}
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


def one_sweep(root: Path, code: Path, trials: int, iterations: int, warm: bool, rerun: bool = False) -> dict:
    import numpy as np

    from trainer.shards import write_shard

    work = Path(tempfile.mkdtemp(prefix="overhead-", dir=root))
    rng = np.random.default_rng(0)
    write_shard(work / "data" / "train_000.bin", rng.integers(0, 64, 20_000))
    write_shard(work / "data" / "val_000.bin", rng.integers(0, 64, 2_000))
    (work / "spec.yaml").write_text(spec_text(trials, iterations, warm))
    wall = sweep(work, code)
    figures = trial_figures(work)
    if len(figures) != trials:
        raise SystemExit(f"{len(figures)} of {trials} trials left a summary in {work}")
    return {"wall": wall, "train": sum(t["train_s"] for t in figures), "trials": figures,
            "rerun": sweep(work, code) if rerun else None}


def measure_mode(runs: dict[int, list[dict]], n: int) -> dict:
    """Figures of one start mode from its sweeps ({trials: [one result per repeat]}): medians over repeats."""
    med = statistics.median
    small, large = runs[n], runs[2 * n]
    trials = [t for r in small + large for t in r["trials"]]
    since = [t["first_step"].get("since_process_s") for t in trials if t["first_step"].get("since_process_s")]
    phases = [t["first_step"].get("phases", {}) for t in trials]
    keys = list(dict.fromkeys(k for p in phases for k in p))
    over_small = med(r["wall"] - r["train"] for r in small)
    over_large = med(r["wall"] - r["train"] for r in large)
    return {"sweep_wall_s": round(med(r["wall"] for r in small), 2),
            "sweep_wall_2n_s": round(med(r["wall"] for r in large), 2),
            "sum_train_s": round(med(r["train"] for r in small), 3),
            "sum_train_2n_s": round(med(r["train"] for r in large), 3),
            "overhead_per_trial_s": round(over_small / n, 2),
            "marginal_overhead_per_trial_s": round((over_large - over_small) / n, 2),
            "rerun_s": round(med(r["rerun"] for r in small), 2),
            "trainer_start_to_first_step_s": round(med(since), 2) if since else None,
            "trainer_phases_median_s": {k: round(med(p.get(k, 0.0) for p in phases), 3) for k in keys}}


def measure(args: argparse.Namespace, root: Path) -> dict:
    n = args.trials
    one_sweep(root, args.code, 2, args.iterations, True)  # discarded: fills the page cache (torch, mlflow)
    runs: dict[str, dict[int, list[dict]]] = {"warm": {n: [], 2 * n: []}, "fresh": {n: [], 2 * n: []}}
    for _ in range(args.repeats):  # interleaved, so that a slow spell of the machine hits both modes
        for mode in runs:
            for size in (n, 2 * n):
                runs[mode][size].append(one_sweep(root, args.code, size, args.iterations, mode == "warm",
                                                  rerun=size == n))
    modes = {mode: measure_mode(r, n) for mode, r in runs.items()}
    return {"trials": n, "num_iterations": args.iterations, "repeats": args.repeats, "modes": modes,
            "marginal_ratio_fresh_over_warm": round(modes["fresh"]["marginal_overhead_per_trial_s"]
                                                    / max(modes["warm"]["marginal_overhead_per_trial_s"], 0.01), 1)}


def readme(r: dict) -> str:
    m = r["measured"]
    rows = [f"| {name} | {x['sweep_wall_s']:.1f} s | {x['sweep_wall_2n_s']:.1f} s | {x['sum_train_s']:.2f} s | "
            f"**{x['overhead_per_trial_s']:.2f} s** | **{x['marginal_overhead_per_trial_s']:.2f} s** | "
            f"{x['rerun_s']:.1f} s | {x['trainer_start_to_first_step_s']} s |" for name, x in m["modes"].items()]
    phases = [f"- {name}: " + ", ".join(f"{k} {v}" for k, v in x["trainer_phases_median_s"].items() if v)
              for name, x in m["modes"].items()]
    n = m["trials"]
    return "\n".join([
        f"# Local launcher overhead per trial, {r['date']} ({r['machine']})", "",
        f"`{r['command']}` against code at `{r['code_rev']}`: sweeps of {n} and {2 * n} trials of the tiny CPU "
        f"model, {m['num_iterations']} iterations each, one at a time, medians of {m['repeats']} repeats, sqlite store; trials forked from the warm "
        "trainer (`warm`, the default) and as fresh processes (`fresh`, `backend.local.warm_start: false`).", "",
        f"| start | wall, {n} trials | wall, {2 * n} trials | Σ train ({n}) | overhead per trial, amortised | "
        "overhead per trial, marginal | launcher with nothing to run | trainer start → first step |",
        "|---|---:|---:|---:|---:|---:|---:|---:|", *rows, "",
        f"Marginal overhead, fresh / warm: {m['marginal_ratio_fresh_over_warm']}x. Amortised = (wall − Σ train) / N "
        "(includes the launcher's start and the store's creation); marginal = what one more trial adds.", "",
        "Trainer start-up phases (median, s; zeros left out):", *phases, ""])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3, help="sweeps per mode and size; medians are reported")
    p.add_argument("--code", type=Path, default=ROOT, help="checkout whose gatesweep is timed (default: this one)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / f"{dt.date.today()}-local-overhead-cpu")
    p.add_argument("--label", help="what --code is, for the results (default: its git revision)")
    args = p.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="gatesweep-overhead-"))
    try:
        measured = measure(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    write_results(args.out, "bench/local_overhead.py", argv if argv is not None else sys.argv[1:], args.code, args.label,
                  {"measured": measured}, readme)
    print(json.dumps(measured))
    return 0


if __name__ == "__main__":
    sys.exit(main())
