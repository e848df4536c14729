"""A local sweep of 6 short CPU trials (2 at a time) against a real `mlflow server`: healthy, and
SIGSTOPped (hung: it accepts connections and answers nothing) once the first 2 trials have started -
side by side, this checkout and optionally another (issue #25 item 3: 347 s instead of 15 s before).

    .venv/bin/python bench/hung_server.py                                        # this code, 2 repeats
    .venv/bin/python bench/hung_server.py --code /tmp/old-main --label main --repeats 1

Each run: a fresh directory, data and server; `gatesweep run spec.yaml` as a fresh process; the wall
from its start to its end. The stopped server is resumed and killed afterwards. Writes results.json and
README.md into --out (default bench/results/<date>-hung-server-cpu).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.cpu_results import write_results  # noqa: E402
from tests.services import MlflowServer  # noqa: E402  (the tests' real server on a free loopback port)
from tests.sweep_helpers import cli_env, trainers, write_data, write_spec  # noqa: E402


def one_sweep(code: Path, mode: str, work: Path) -> float:
    """Seconds of `gatesweep run` of the 6-trial spec with a healthy or a stopped server."""
    cwd = work / f"{code.name}-{mode}-{time.monotonic_ns()}"
    server = MlflowServer(cwd / "mlflow")
    write_data(cwd)
    write_spec(cwd / "spec.yaml", "hung", base={"num_iterations": 30, "warmdown_iters": 5, "val_every": 10},
               grid={"attn_gate": ["none", "headwise", "elementwise"]}, seeds=[0, 1], max_parallel=2)
    server.start()
    try:
        env = cli_env(server.uri) | {"PYTHONPATH": str(code)}
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "gatesweep", "run", "spec.yaml"], cwd=cwd, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if mode == "stopped":
            while len(trainers(proc.pid)) < 2 and proc.poll() is None:
                time.sleep(0.05)
            assert server._proc is not None
            os.killpg(server._proc.pid, signal.SIGSTOP)
        out, err = proc.communicate(timeout=1800)
        wall = time.monotonic() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"{code} {mode}: exit {proc.returncode}\n{out}\n{err[-3000:]}")
        return round(wall, 1)
    finally:
        if server._proc is not None:
            try:
                os.killpg(server._proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        server.stop()
        shutil.rmtree(cwd, ignore_errors=True)


def readme(result: dict) -> str:
    lines = [f"# A local sweep with a hung tracking server, {result['date']} ({result['machine']})", "",
             f"`{result['command']}`; python {result['python']}, torch {result['torch']}. 6 CPU trials (30 steps, "
             "the tests' tiny model), 2 at a time, against a real `mlflow server` on 127.0.0.1: healthy, or "
             "SIGSTOPped once the first 2 trials have started. Wall seconds of `gatesweep run` (median of "
             "the repeats, all repeats in brackets).", "",
             "| code | healthy | stopped | stopped / healthy |", "|---|---:|---:|---:|"]
    for label, r in result["runs"].items():
        lines.append(f"| {label} | {r['healthy']} {r['healthy_all']} | {r['stopped']} {r['stopped_all']} | "
                     f"{r['stopped'] / r['healthy']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--code", type=Path, action="append", default=[], help="another checkout (repeatable)")
    p.add_argument("--label", action="append", default=[], help="a name for each --code")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / f"{dt.date.today()}-hung-server-cpu")
    args = p.parse_args()
    codes = [(f"this ({ROOT.name})", ROOT)] + [(args.label[i] if i < len(args.label) else str(c), c.resolve())
                                               for i, c in enumerate(args.code)]
    work = Path(tempfile.mkdtemp(prefix="gs-hung-bench-"))
    runs = {}
    try:
        for label, code in codes:
            row: dict = {}
            for mode in ("healthy", "stopped"):
                walls = sorted(one_sweep(code, mode, work) for _ in range(args.repeats))
                row[mode], row[f"{mode}_all"] = walls[len(walls) // 2], walls
                print(f"{label} {mode}: {walls}", file=sys.stderr)
            runs[label] = row
    finally:
        shutil.rmtree(work, ignore_errors=True)
    import torch

    write_results(args.out, "bench/hung_server.py", sys.argv[1:], ROOT, None,
                  {"runs": runs, "torch": torch.__version__}, readme)
    print(args.out / "README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
