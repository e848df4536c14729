"""Start-up phases of `python -m trainer` on this machine, for one or more source trees, alternating runs.

    python3 bench/startup_cpu.py --tree before=/tmp/before --tree after=. --runs 3 --out DIR -- key=value ...

Each run is a fresh process (cwd DIR, PYTHONPATH the tree); its first-step console line is parsed
(bench.measure.parse_first_step) and the median of every phase over the runs is reported, in seconds.
Runs of the trees alternate, so load from other processes on a shared machine hits both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.measure import markdown_table, parse_first_step  # noqa: E402


def run_once(tree: Path, workdir: Path, trainer_args: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree.resolve()), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    res = subprocess.run([sys.executable, "-m", "trainer", *trainer_args], cwd=workdir, env=env,
                         capture_output=True, text=True)
    line = next((ln for ln in (res.stdout + res.stderr).splitlines() if "first step done" in ln), "")
    if res.returncode or not line:
        raise SystemExit(f"{tree}: exit {res.returncode}, no first-step line\n{res.stderr[-2000:]}")
    return parse_first_step(line)


def medians(runs: list[dict]) -> dict[str, float]:
    """Median over the runs of each phase and of the totals (a phase missing in a run counts as 0)."""
    keys = list(dict.fromkeys(k for r in runs for k in r.get("phases", {})))
    out = {k: statistics.median(r.get("phases", {}).get(k, 0.0) for r in runs) for k in keys}
    for k in ("setup_s", "first_step_s", "since_process_s"):
        out[k] = statistics.median(r.get(k, float("nan")) for r in runs)
    for k in dict.fromkeys(k for r in runs for k in r.get("overlapped", {})):
        out[f"overlapped: {k}"] = statistics.median(r.get("overlapped", {}).get(k, 0.0) for r in runs)
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--tree", action="append", required=True, help="NAME=PATH of a source tree with trainer/")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--out", required=True, help="working directory of the runs (data patterns are relative to it)")
    p.add_argument("trainer_args", nargs="*")
    a = p.parse_args()
    trees = dict(t.split("=", 1) for t in a.tree)
    work = Path(a.out)
    raw: dict[str, list[dict]] = {name: [] for name in trees}
    for i in range(a.runs):
        for name, tree in trees.items():
            raw[name].append(run_once(Path(tree), work, a.trainer_args))
            print(f"[{name} #{i + 1}] {raw[name][-1].get('since_process_s')}s", flush=True)
    table = {name: medians(runs) for name, runs in raw.items()}
    rows = [{"phase": k, **{name: round(table[name].get(k, 0.0), 2) for name in trees}}
            for k in dict.fromkeys(k for t in table.values() for k in t)]
    (work / "startup_cpu.json").write_text(json.dumps({"args": a.trainer_args, "runs": raw, "median": table}, indent=1))
    print(markdown_table(rows, ["phase", *trees]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
