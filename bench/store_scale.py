"""How `gatesweep table`, `report` and `plan` scale with the tracking store: sqlite stores of 1k (and
10k) trial runs as the trainer writes them, each command timed as a fresh process (wall and CPU).

    .venv/bin/python bench/store_scale.py                       # 1,000 runs (about 2 minutes on 2 cores)
    .venv/bin/python bench/store_scale.py --runs 1000 10000     # and 10,000 runs
    .venv/bin/python bench/store_scale.py --code /tmp/old-main  # the same against another checkout

The store is filled in MLflow's own schema through MLflow's SQLAlchemy store: `SqlAlchemyStore` creates
the database (its migrations) and the experiment, then rows go into its tables (`SqlRun`, `SqlParam`,
`SqlTag`, `SqlMetric`, `SqlLatestMetric`) in bulk inserts - the same rows `log_batch` writes, minutes
faster at 10k runs (tests/test_bench_store_scale.py checks that the tables read them like client-logged
runs). Each trial run: the trainer's params (the flat config), its tags (gatesweep.kind=trial,
trial_id, spec, stage, seed, status, ...), summary metrics and histories of val_loss, train_time_ms and
train_loss (`--points` each), under one sweep run. Configurations = runs / seeds: 4 gates x learning
rates, so every gated configuration has a baseline. The plan is the issue's measurement: a 10-trial spec
whose experiment is the filled one.

Writes results.json and README.md into --out (default bench/results/<date>-store-scale-cpu).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.cpu_results import write_results  # noqa: E402

EXPERIMENT, SPEC, STAGE = "gatesweep-scale", "scale", "scale"
GATES = ("none", "headwise", "elementwise", "const")
T0 = 1_760_000_000_000  # first run's start time, ms
PLAN_SPEC = """name: scale-plan
stage: scale-plan
base: {{preset: tiny, num_iterations: 100, warmdown_iters: 30, train_files: data/train_*.bin, val_files: data/val_*.bin}}
grid: {{attn_gate: [none, headwise, elementwise, const]}}
include: [{{attn_gate: headwise, gate_act: ns_sigmoid}}]
seeds: [0, 1]
tracking: {{experiment: {experiment}}}
"""


def trials(n_runs: int, seeds: int, points: int, iterations: int = 1000) -> list[dict]:
    """The runs to store: config, seed, summary and histories. Pure and seeded."""
    import numpy as np

    from trainer.config import TrainConfig

    rng = np.random.default_rng(0)
    base = TrainConfig().flat()
    out = []
    for c in range(max(1, n_runs // seeds)):
        gate, lr = GATES[c % len(GATES)], round(0.0010 + 0.0001 * (c // len(GATES)), 6)
        for seed in range(seeds):
            cfg = base | {"attn_gate": gate, "learning_rate": lr, "seed": seed, "num_iterations": iterations,
                          "warmdown_iters": iterations // 4, "run_id": uuid.UUID(int=len(out)).hex}
            final = 3.30 + 0.2 * abs(lr - 0.0036) - 0.01 * (gate != "none") + float(rng.normal(0, 0.003))
            ms = 300.0 + 3.0 * (gate != "none") + float(rng.normal(0, 1))
            steps = [iterations * k // (points - 1) for k in range(points)]
            hist = {"val_loss": [final + 8.0 * (1 - s / iterations) ** 3 for s in steps],
                    "train_time_ms": [ms * s for s in steps],
                    "train_loss": [final + 0.05 + 8.0 * (1 - s / iterations) ** 3 for s in steps]}
            out.append({"config": cfg, "seed": seed, "gate": gate, "steps": steps, "history": hist,
                        "summary": {"final_val_loss": final, "best_val_loss": final, "train_time_ms": ms * iterations,
                                    "ms_per_step": ms, "peak_mem_mib": 31000.0}})
    return out


def fill_store(uri: str, artifacts: Path, runs: list[dict]) -> None:
    """The runs (and their sweep run) in MLflow's schema, written through its SQLAlchemy store."""
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlParam, SqlRun, SqlTag
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore(uri, str(artifacts))
    exp_id = store.create_experiment(EXPERIMENT)
    parent = store.create_run(exp_id, user_id="bench", start_time=T0 - 1, run_name="sweep scale",
                              tags=[]).info.run_id
    from mlflow.entities import RunTag

    for k, v in {"gatesweep.kind": "sweep", "spec": SPEC, "stage": STAGE, "backend": "local"}.items():
        store.set_tag(parent, RunTag(k, v))
    rows: dict[str, list[dict]] = {"runs": [], "params": [], "tags": [], "metrics": [], "latest": []}
    for i, r in enumerate(runs):
        rid, start = uuid.UUID(int=i + 1).hex, T0 + 1000 * i
        end = start + int(r["summary"]["train_time_ms"])
        rows["runs"].append({"run_uuid": rid, "name": f"{r['gate']}-s{r['seed']}", "source_type": "LOCAL",
                             "source_name": "", "entry_point_name": "", "user_id": "bench", "status": "FINISHED",
                             "start_time": start, "end_time": end, "source_version": "", "lifecycle_stage": "active",
                             "artifact_uri": f"{artifacts}/{exp_id}/{rid}/artifacts", "experiment_id": int(exp_id)})
        rows["params"] += [{"key": k, "value": str(v), "run_uuid": rid} for k, v in r["config"].items()]
        tags = {"gatesweep.kind": "trial", "trial_id": f"{i:012x}", "spec": SPEC, "stage": STAGE,
                "seed": str(r["seed"]), "backend": "local", "status": "FINISHED", "label": r["gate"],
                "gatesweep.run_uid": f"{i:012x}", "mlflow.parentRunId": parent, "mlflow.runName": f"{r['gate']}-s{r['seed']}",
                "mlflow.user": "bench", "git_sha": "0" * 40, "gpu_name": "NVIDIA H200", "n_gpus": "1"}
        rows["tags"] += [{"key": k, "value": v, "run_uuid": rid} for k, v in tags.items()]
        latest = {}
        for key, values in r["history"].items():
            for s, v in zip(r["steps"], values, strict=True):
                point = {"key": key, "value": v, "timestamp": start + s, "step": s, "is_nan": False, "run_uuid": rid}
                rows["metrics"].append(point)
                latest[key] = point
        last = r["steps"][-1]
        for key, v in r["summary"].items():  # the summary is each key's latest point (trainer.mlflow_sync)
            point = {"key": key, "value": v, "timestamp": end, "step": last, "is_nan": False, "run_uuid": rid}
            rows["metrics"].append(point)
            latest[key] = point
        rows["latest"] += latest.values()
    tables = {"runs": SqlRun, "params": SqlParam, "tags": SqlTag, "metrics": SqlMetric, "latest": SqlLatestMetric}
    with store.ManagedSessionMaker() as session:
        for name, model in tables.items():
            for i in range(0, len(rows[name]), 50_000):
                session.execute(model.__table__.insert(), rows[name][i:i + 50_000])


def shards(data: Path) -> None:
    """Tiny token shards for the plan's spec (plan checks the data files exist)."""
    import numpy as np

    from trainer.shards import write_shard

    data.mkdir(parents=True, exist_ok=True)
    write_shard(data / "train_000.bin", np.zeros(20_000, dtype=np.int64))
    write_shard(data / "val_000.bin", np.zeros(40_000, dtype=np.int64))


def timed(argv: list[str], cwd: Path, code: Path) -> dict:
    """Wall and CPU seconds of one CLI process (the CPU of its children included)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(PYTHONPATH=str(code), MLFLOW_LOGGING_LEVEL="WARNING", MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT="true")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "gatesweep", *argv], cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if res.returncode != 0:
        raise SystemExit(f"gatesweep {' '.join(argv)} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "stdout_lines": len(res.stdout.splitlines())}


def measure(n_runs: int, args: argparse.Namespace, work: Path) -> dict:
    d = work / f"runs{n_runs}"
    d.mkdir(parents=True)
    uri = f"sqlite:///{d}/mlflow.db"
    t0 = time.perf_counter()
    runs = trials(n_runs, args.seeds, args.points)
    fill_store(uri, d / "artifacts", runs)
    fill_s = time.perf_counter() - t0
    shards(d / "data")
    (d / "plan.yaml").write_text(PLAN_SPEC.format(experiment=EXPERIMENT))
    common = ["--stage", STAGE, "--experiment", EXPERIMENT, "--tracking-uri", uri]
    out = {"runs": len(runs), "configurations": len(runs) // args.seeds, "seeds": args.seeds,
           "history_points_per_key": args.points, "fill_s": round(fill_s, 1),
           "db_mib": round((d / "mlflow.db").stat().st_size / 2**20, 1)}
    out["table"] = timed(["table", *common, "--format", "csv"], d, args.code)
    out["table_no_time"] = timed(["table", *common, "--format", "csv", "--no-time"], d, args.code)
    out["report"] = timed(["report", *common, "--out", str(d / "reports"), "--no-attach"], d, args.code)
    out["plan_10_trials"] = timed(["--tracking-uri", uri, "plan", "plan.yaml"], d, args.code)
    print(json.dumps({n_runs: out}), flush=True)
    return out


def readme(result: dict) -> str:
    lines = [f"# Store scale, {result['date']} ({result['machine']})", "",
             f"`{result['command']}` against code at `{result['code_rev']}`. Each command is a fresh process "
             "(`python -m gatesweep ...`, imports included), timed once; seconds wall / CPU.", "",
             "| runs | configurations | table | table --no-time | report | plan (10 trials) |",
             "|---:|---:|---:|---:|---:|---:|"]
    for r in result["stores"]:
        cells = [f"{r[k]['wall_s']:.1f} / {r[k]['cpu_s']:.1f}" for k in ("table", "table_no_time", "report", "plan_10_trials")]
        lines.append(f"| {r['runs']:,} | {r['configurations']:,} | " + " | ".join(cells) + " |")
    lines += ["", "Store filling (not timed above): " + ", ".join(f"{r['runs']:,} runs {r['fill_s']} s, {r['db_mib']} MiB"
                                                          for r in result["stores"]) + ".", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--runs", type=int, nargs="+", default=[1000])
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--points", type=int, default=10, help="history points per key and run")
    p.add_argument("--code", type=Path, default=ROOT, help="checkout whose gatesweep is timed (default: this one)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / f"{dt.date.today()}-store-scale-cpu")
    p.add_argument("--label", help="what --code is, for the results (default: its git revision)")
    p.add_argument("--keep", action="store_true", help="keep the stores (printed) instead of deleting them")
    args = p.parse_args(argv)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported
    work = Path(tempfile.mkdtemp(prefix="gatesweep-scale-"))
    try:
        stores = [measure(n, args, work) for n in args.runs]
    finally:
        if args.keep:
            print(f"stores kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    write_results(args.out, "bench/store_scale.py", argv if argv is not None else sys.argv[1:], args.code, args.label,
                  {"stores": stores}, readme)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
