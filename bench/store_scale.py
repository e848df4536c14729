"""How `gatesweep table` and `report` scale with the tracking store, before and after a change, side by
side in one run: stores of 1k (3k, 10k) trial runs as the trainer writes them, read as a sqlite file
and (--server) through a real `mlflow server` over that file, plain and with `--app-name gatesweep`
(analysis.server_app's routes); each command a fresh process (wall, CPU, peak memory, the machine's
load when it started; for a server also the server's own peak memory during the call), cold (an
empty cache) and repeated (nothing changed).

    .venv/bin/python bench/store_scale.py                                     # 1,000 runs, this checkout
    .venv/bin/python bench/store_scale.py --runs 1000 3000 10000 --before b151611 --server --repeats 3
    .venv/bin/python bench/store_scale.py ... --quiet-load 1.5   # wait (bounded) for the machine to be idle

`--before REV` times that revision's code (git archive into a temporary folder) against the same
stores, interleaved with this checkout's, and checks that both print the same table and write the
same report files byte for byte. Figures are medians over `--repeats` calls.

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
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.cli_timing import Server, checkout, mlflow_server, quiet, timed  # noqa: E402
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


COMMANDS = ("table", "report")
SERVERS = {"server": None, "server --app-name gatesweep": "gatesweep"}  # store kind -> --app-name
MODES = ("cold", "repeated")
REPORT_FILES = ("README.md", "table.md", "table.csv", "compat.csv")
QUIET_WAIT_S = 180  # at most this long before each timed call for --quiet-load


def argv_of(command: str, uri: str, out: Path) -> list[str]:
    common = ["--stage", STAGE, "--experiment", EXPERIMENT, "--tracking-uri", uri]
    if command == "table":
        return ["table", *common, "--format", "csv"]
    return ["report", *common, "--out", str(out), "--no-attach"]


def call(command: str, uri: str, code: Path, cell: Path, quiet_load: float | None, server: Server | None) -> dict:
    """One timed call in its own folder (its stdout, report and cache); with the server's peak memory
    during it (from what it held before: a server keeps what it once took)."""
    cell.mkdir(parents=True, exist_ok=True)
    waited = quiet(quiet_load, QUIET_WAIT_S)
    if server is not None:
        server.reset_peak()
    result = timed(argv_of(command, uri, cell / "reports"), cell, code, {"XDG_CACHE_HOME": str(cell / "cache")})
    return result | {"waited_s": waited} | ({"server_peak_mib": server.peak_mib()} if server is not None else {})


def output_of(command: str, cell: Path) -> bytes:
    """What a call gave: the table's text, or the report's text files."""
    if command == "table":
        return (cell / "stdout.txt").read_bytes()
    return b"\0".join((cell / "reports" / STAGE / f).read_bytes() for f in REPORT_FILES)


def summary(calls: list[dict]) -> dict:
    return {"wall_s": round(statistics.median(c["wall_s"] for c in calls), 2),
            "cpu_s": round(statistics.median(c["cpu_s"] for c in calls), 2),
            "peak_mib": max(c["peak_mib"] for c in calls), "load": round(statistics.median(c["load"] for c in calls), 2),
            "walls": [c["wall_s"] for c in calls],
            **({"server_peak_mib": max(c["server_peak_mib"] for c in calls)} if "server_peak_mib" in calls[0] else {})}


def compare(uri: str, codes: dict[str, Path], base: Path, args: argparse.Namespace, server: Server | None = None) -> dict:
    """Every code, command and mode on one store, the codes interleaved call by call."""
    out: dict = {}
    for command in COMMANDS:
        for mode in MODES:
            calls: dict[str, list[dict]] = {label: [] for label in codes}
            if mode == "repeated":  # the calls that leave the cache warm are not timed
                for label, code in codes.items():
                    call(command, uri, code, base / label / command / "warm", None, server)
            for i in range(args.repeats):
                for label, code in codes.items():
                    cell = base / label / command / (f"cold{i}" if mode == "cold" else "warm")
                    calls[label].append(call(command, uri, code, cell, args.quiet_load, server))
            for label in codes:
                out.setdefault(label, {}).setdefault(command, {})[mode] = summary(calls[label])
            print(json.dumps({"store": str(base), "command": command, "mode": mode,
                              **{k: out[k][command][mode]["wall_s"] for k in codes}}), flush=True)
        given = {label: {output_of(command, base / label / command / c) for c in ("cold0", "warm")} for label in codes}
        out.setdefault("same_output", {})[command] = len(set().union(*given.values())) == 1
    return out


def measure(n_runs: int, codes: dict[str, Path], args: argparse.Namespace, work: Path) -> dict:
    d = work / f"runs{n_runs}"
    d.mkdir(parents=True)
    uri = f"sqlite:///{d}/mlflow.db"
    t0 = time.perf_counter()
    runs = trials(n_runs, args.seeds, args.points)
    fill_store(uri, d / "artifacts", runs)
    fill_s = time.perf_counter() - t0
    out = {"runs": len(runs), "configurations": len(runs) // args.seeds, "seeds": args.seeds,
           "history_points_per_key": args.points, "fill_s": round(fill_s, 1),
           "db_mib": round((d / "mlflow.db").stat().st_size / 2**20, 1), "stores": {}}
    del runs
    out["stores"]["sqlite"] = compare(uri, codes, d / "sqlite", args)
    if args.server:
        (d / "server").mkdir()
        shutil.copyfile(d / "mlflow.db", d / "server" / "mlflow.db")  # its own file: a server may write
        for kind, app in SERVERS.items():  # one at a time, over the same file
            (d / kind).mkdir(exist_ok=True)
            with mlflow_server(f"sqlite:///{d}/server/mlflow.db", d / kind, app=app) as server:
                out["stores"][kind] = compare(server.uri, codes, d / kind, args, server)
        out["same_across_stores"] = {c: all(output_of(c, d / "sqlite" / "after" / c / "cold0")
                                            == output_of(c, d / kind / "after" / c / "cold0") for kind in SERVERS)
                                     for c in COMMANDS}
    shards(d / "data")
    (d / "plan.yaml").write_text(PLAN_SPEC.format(experiment=EXPERIMENT))
    out["plan_10_trials"] = {label: timed(["--tracking-uri", uri, "plan", "plan.yaml"], d, code)
                             for label, code in codes.items()}
    return out


def readme(result: dict) -> str:
    labels = result["codes"]
    lines = [f"# Store scale, {result['date']} ({result['machine']})", "",
             f"`{result['command']}`: " + ", ".join(f"{k} = `{v}`" for k, v in labels.items()) + ". Each command "
             "a fresh process (`python -m gatesweep ...`, imports included); median of "
             f"{result['repeats']} calls, wall seconds, with the 1-minute load average when they started (2 cores: "
             "others' work shows as load) and the peak resident memory of the command. Cold: an empty cache; "
             "repeated: the same call again, nothing changed. Server peak: the server's own peak resident memory "
             "during the calls (counted from what it already held: a server keeps what it once took).", "",
             "| runs | store | command | mode | " + " | ".join(f"{k} s (load)" for k in labels)
             + " | " + " / ".join(labels) + " peak MiB | " + " / ".join(labels) + " server peak MiB | same output |",
             "|---:|---|---|---|" + "---:|" * len(labels) + "---:|---:|---|"]
    for r in result["stores"]:
        for kind, st in r["stores"].items():
            for command in COMMANDS:
                for mode in MODES:
                    cells = [st[k][command][mode] for k in labels]
                    lines.append(f"| {r['runs']:,} | {kind} | {command} | {mode} | "
                                 + " | ".join(f"{c['wall_s']:.1f} ({c['load']:.1f})" for c in cells) + " | "
                                 + " / ".join(str(c["peak_mib"]) for c in cells) + " | "
                                 + " / ".join(str(c.get("server_peak_mib", "-")) for c in cells)
                                 + f" | {st['same_output'][command]} |")
    lines += ["", "Plan of a 10-trial spec (sqlite): " + "; ".join(
        f"{r['runs']:,} runs " + ", ".join(f"{k} {v['wall_s']} s" for k, v in r["plan_10_trials"].items())
        for r in result["stores"]) + ".",
        "Store filling (not timed above): " + ", ".join(f"{r['runs']:,} runs {r['fill_s']} s, {r['db_mib']} MiB"
                                                       for r in result["stores"]) + ".", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--runs", type=int, nargs="+", default=[1000])
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--points", type=int, default=10, help="history points per key and run")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per figure (their median)")
    p.add_argument("--server", action="store_true",
                   help="also through a real `mlflow server` over the store, plain and with --app-name gatesweep")
    p.add_argument("--before", metavar="REV", help="also time this git revision's code, side by side")
    p.add_argument("--code", type=Path, default=ROOT, help="checkout timed as 'after' (default: this one)")
    p.add_argument("--quiet-load", type=float, default=None,
                   help=f"before each timed call wait (up to {QUIET_WAIT_S} s) for the 1-minute load average to drop below this")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / f"{dt.date.today()}-store-scale-cpu")
    p.add_argument("--keep", action="store_true", help="keep the stores (printed) instead of deleting them")
    args = p.parse_args(argv)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the server and remove the stores on `kill`
    work = Path(tempfile.mkdtemp(prefix="gatesweep-scale-"))
    codes = {"after": args.code}
    if args.before:
        codes = {"before": checkout(args.before, ROOT, work / "before-code"), **codes}
    try:
        stores = [measure(n, codes, args, work) for n in args.runs]
    finally:
        if args.keep:
            print(f"stores kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    names = {"before": args.before, "after": _rev(args.code)}
    write_results(args.out, "bench/store_scale.py", argv if argv is not None else sys.argv[1:], args.code, None,
                  {"codes": {k: names[k] for k in codes}, "repeats": args.repeats, "stores": stores}, readme)
    print(args.out)
    return 0


def _rev(code: Path) -> str:
    rev = subprocess.run(["git", "-C", str(code), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(code), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return (rev.stdout.strip() or str(code)) + ("+changes" if dirty else "")


if __name__ == "__main__":
    sys.exit(main())
