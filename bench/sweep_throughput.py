"""Sweep throughput on one GPU machine: a sweep of N short trials against one trial alone, in one call.

    python3 bench/sweep_throughput.py --spec sweeps/offline_stage1_v2.yaml --looks 1 --out OUT [key=value ...]

In order, sharing one compile cache ($BENCH_WORK/cache/<spec>): (1) `gatesweep warmup` (every graph
family of the spec, compiled at once: the one-off cost of a cold cache, timed); (2) the spec's first
trial alone as a fresh `python -m trainer` (its ms/step is the single-run figure); (3) `gatesweep run
--backend local` of the spec (the launcher's own policy: packing, staggered starts, the warm trainer),
with the GPU's utilization and memory sampled through NVML (nvidia-smi where pynvml is missing).
Writes OUT/sweep_results.json, OUT/sweep_table.md and OUT/sweep_records.tgz (records, no checkpoints).
Overrides (key=value, e.g. backend.local.trials_per_gpu=2) go to every gatesweep command.
--dry-run (or BENCH_DRY_RUN=1) prints the commands and the trials without running anything.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.sweep_stats import step_ms_by_regime, summarize_sweep, table, train_points, trial_times  # noqa: E402

WORK = Path(os.environ.get("BENCH_WORK", "/tmp/gatesweep-bench"))
SINGLE = Path("runs") / ".bench-single"


class Sampler(threading.Thread):
    """GPU 0's utilization (% of time a kernel ran) and used memory, every `every` seconds."""

    def __init__(self, every: float = 0.2):
        super().__init__(daemon=True)
        self.every, self.samples, self.stop = every, [], threading.Event()
        self.how = ""

    def run(self) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
            h = pynvml.nvmlDeviceGetHandleByIndex(0)
            self.how = "pynvml"
            read = lambda: (pynvml.nvmlDeviceGetUtilizationRates(h).gpu,  # noqa: E731
                            pynvml.nvmlDeviceGetMemoryInfo(h).used / 2**20)
        except Exception:  # noqa: BLE001 - fall back to nvidia-smi
            self.how = "nvidia-smi"

            def read() -> tuple[float, float]:
                out = subprocess.run(["nvidia-smi", "-i", "0", "--query-gpu=utilization.gpu,memory.used",
                                      "--format=csv,noheader,nounits"], capture_output=True, text=True).stdout
                u, m = out.strip().split(",")
                return float(u), float(m)
        while not self.stop.is_set():
            try:
                self.samples.append((time.time(), *read()))
            except Exception:  # noqa: BLE001 - a missed sample
                pass
            self.stop.wait(self.every)

    def summary(self, t0: float, t1: float) -> dict[str, Any]:
        s = [(u, m) for t, u, m in self.samples if t0 <= t <= t1]
        if not s:
            return {"how": self.how, "samples": 0}
        return {"how": self.how, "samples": len(s), "util_mean": round(sum(u for u, _ in s) / len(s) / 100, 4),
                "util_zero_fraction": round(sum(1 for u, _ in s if u == 0) / len(s), 4),
                "mem_used_max": round(max(m for _, m in s))}


def run(cmd: list[str], log: Path, env: dict[str, str], timeout: float) -> tuple[int, float]:
    t0 = time.time()
    with open(log, "ab") as f:
        f.write(f"$ {' '.join(cmd)}\n".encode())
        f.flush()
        try:
            code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=max(timeout, 1)).returncode
        except subprocess.TimeoutExpired:
            code = 124
    return code, time.time() - t0


def single_run(spec: str, overrides: list[str], env: dict[str, str], timeout: float, tag: str = "") -> dict[str, Any]:
    """The spec's first trial alone, as a fresh process, with the sweep's compile cache."""
    from cluster.common.prepare import prepare
    from cluster.common.trialdir import write_trial_json

    trial = prepare(spec, overrides, None, use_store=False).trials[0]
    run_dir = SINGLE / (trial.trial_id + tag)
    shutil.rmtree(run_dir, ignore_errors=True)
    path = write_trial_json(trial, run_dir, backend="local", overrides={"results_csv": str(SINGLE / "results.csv")})
    code, wall = run([sys.executable, "-m", "trainer", str(path)], run_dir / "stdout.log",
                     env | {"GATESWEEP_TRACKING": "local"}, timeout)
    t = trial_times(run_dir)
    cfg = trial.config
    per_step = cfg.data.batch_size * cfg.data.sequence_length
    summary_file = run_dir / "track" / "summary.json"
    train_s = json.loads(summary_file.read_text()).get("train_time_ms", 0) / 1000 if summary_file.is_file() else 0
    first10 = (t.ms_per_step or 0) * 10 / 1000  # steps 1-10 are outside train_time (the reference's clock)
    return {"label": trial.label, "seed": trial.seed, "exit_code": code, "wall_s": round(wall, 1),
            "ms_per_step": t.ms_per_step, "tokens_per_step": per_step, "tokens": t.tokens,
            "startup_s": t.startup_s, "own_startup_s": t.own_startup_s, "train_s": round(train_s, 1),
            "span_s": round(t.ended - t.first_step, 1) if t.ended and t.first_step else None,
            "val_diag_exit_s": round(wall - (t.startup_s or 0) - train_s - first10, 1)}


FORK_PROBE = """
import os
os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
os.environ["OPENBLAS_NUM_THREADS"] = "1"
import importlib, torch
from cluster.local.warm import TRAINER_MODULES, _unsafe_to_fork
from trainer.startup import COMPILE_MODULES
for m in (*TRAINER_MODULES, *COMPILE_MODULES):
    importlib.import_module(m)
why = _unsafe_to_fork()
maps = "libcuda.so" in open("/proc/self/maps").read()
pid = os.fork()
if pid == 0:
    try:
        x = torch.ones(4, device="cuda") * 2
        os._exit(0 if float(x.sum()) == 8.0 else 4)
    except BaseException as e:
        print("child:", type(e).__name__, e, flush=True)
        os._exit(3)
code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
print(f"fork probe: unsafe={why!r} libcuda_mapped={maps} child_exit={code}")
"""


def fork_probe(env: dict[str, str]) -> dict[str, Any]:
    """Can a process that imported what the warm trainer imports fork a child that uses CUDA? (A GPU
    machine's first answer to cluster/local/warm.py; the sweep runs with warm_start false if not.)"""
    r = subprocess.run([sys.executable, "-c", FORK_PROBE], env=env, capture_output=True, text=True, timeout=120)
    line = (r.stdout + r.stderr).strip().splitlines()
    ok = r.returncode == 0 and any("child_exit=0" in ln for ln in line)
    return {"ok": ok, "output": line[-3:]}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--spec", default="sweeps/offline_stage1_v2.yaml")
    p.add_argument("--looks", type=int, default=1)
    p.add_argument("--out", default="/tmp/out")
    p.add_argument("--budget", type=float, default=540, help="seconds for all three parts")
    p.add_argument("--skip-warmup", action="store_true")
    p.add_argument("--dry-run", action="store_true", default=bool(os.environ.get("BENCH_DRY_RUN")))
    p.add_argument("overrides", nargs="*")
    a = p.parse_args()
    from cluster.common.compile_cache import cache_env
    from cluster.common.prepare import prepare
    from cluster.common.store import clean_env

    prep = prepare(a.spec, a.overrides, None, use_store=False)
    name = prep.spec.name
    os.environ["GATESWEEP_COMPILE_CACHE"] = str(WORK / "cache" / name)
    env = clean_env() | {"PYTHONUNBUFFERED": "1"} | cache_env(Path("runs") / name)
    # a store of its own: trials an earlier bench recorded as finished must run again
    env.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{WORK}/mlflow-{int(time.time())}.db")
    gs = [sys.executable, "-m", "gatesweep"]
    cmds = {"warmup": [*gs, "warmup", a.spec, *a.overrides],
            "sweep": [*gs, "run", a.spec, "--backend", "local", "--looks", str(a.looks), *a.overrides]}
    if a.dry_run:
        print(f"compile cache: {env['TORCHINDUCTOR_CACHE_DIR']}")
        for k, c in cmds.items():
            print(f"[{k}] {' '.join(c)}")
        print(f"[single] {sys.executable} -m trainer {SINGLE}/<first trial>/trial.json  ({prep.trials[0].label}, "
              f"seed {prep.trials[0].seed})")
        return subprocess.run([*cmds["sweep"], "--dry-run"], env=env).returncode
    import torch

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "sweep_bench.log"
    t_end = time.time() + a.budget
    shutil.rmtree(Path("runs") / name, ignore_errors=True)
    card = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    meta = {"card": card, "torch": torch.__version__, "cuda": torch.version.cuda,
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "code": os.environ.get("GATESWEEP_GIT_SHA", ""),
            "spec": a.spec, "looks": a.looks, "overrides": a.overrides, "cpus": os.cpu_count()}
    res: dict[str, Any] = {"meta": meta}
    res["fork_probe"] = fork_probe(env) if torch.cuda.is_available() else {"ok": None}
    print(f"[fork probe] {res['fork_probe']}", flush=True)
    if res["fork_probe"]["ok"] is False:  # measure the rest with fresh processes rather than lose the call
        cmds["sweep"].append("backend.local.warm_start=false")
    if not a.skip_warmup:
        code, wall = run(cmds["warmup"], log, env, t_end - time.time())
        res["warmup"] = {"exit_code": code, "wall_s": round(wall, 1)}
        print(f"[warmup] exit={code} {wall:.1f}s", flush=True)
    res["single"] = single_run(a.spec, a.overrides, env, t_end - time.time())
    print(f"[single] {res['single']}", flush=True)
    sampler = Sampler()
    sampler.start()
    t0 = time.time()
    code, wall = run(cmds["sweep"], log, env, t_end - time.time())
    t1 = time.time()
    sampler.stop.set()
    trials = [trial_times(d) for d in sorted((Path("runs") / name).iterdir())
              if d.is_dir() and (d / "trial.json").is_file() and not d.name.startswith(".")]
    res["sweep"] = {"exit_code": code} | summarize_sweep(trials, t0, t1, res["single"], sampler.summary(t0, t1))
    res["sweep"]["notes"] = [ln for ln in log.read_text(errors="replace").splitlines() if ln.startswith("note:")]
    res["sweep"]["step_ms_by_regime"] = step_ms_by_regime(
        trials, {t.trial_id: train_points(Path("runs") / name / t.trial_id) for t in trials},
        prep.trials[0].config.run.val_every)
    if t_end - time.time() > 1.3 * res["single"]["wall_s"]:  # the comparator once more: its own spread
        res["single_repeat"] = single_run(a.spec, a.overrides, env, t_end - time.time(), tag="-repeat")
        print(f"[single again] {res['single_repeat']}", flush=True)
    if res.get("warmup"):
        w = res["warmup"]["wall_s"]
        res["sweep"]["ratio_with_warmup"] = round(res["sweep"]["sweep_throughput_ratio"] * wall / (wall + w), 4) \
            if res["sweep"]["sweep_throughput_ratio"] else None
    (out / "sweep_results.json").write_text(json.dumps(res, indent=1))
    text = f"{json.dumps(meta)}\n\n{table(res['sweep'])}"
    (out / "sweep_table.md").write_text(text)
    with tarfile.open(out / "sweep_records.tgz", "w:gz") as tar:
        for d in (Path("runs") / name, SINGLE):
            tar.add(d, filter=lambda ti: None if "/checkpoints" in ti.name or ".compile-cache" in ti.name else ti)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
