"""`gatesweep sync` of one big record into a fresh sqlite store: wall time, lines/s and peak RSS of the
command (a fresh process, imports included), per record size, side by side with another checkout.

    .venv/bin/python bench/sync_stream.py                               # 10^3, 10^5, 10^6 lines, this code
    .venv/bin/python bench/sync_stream.py --code /tmp/old-main --label main --lines 1000 100000 1000000

Issue #25 item 11's targets: 10^6 lines in <= 200 MB at >= 50k lines/s. The record is what the trainer
writes (4 keys a step: train_loss, lr, step_avg_ms, val_loss), FINISHED, with params and tags. Lines/s
counts the delivery alone: the command's wall minus that of the 10^3-line record (start-up, imports,
store creation), which is reported too; peak RSS is the process's ru_maxrss.

Writes results.json and README.md into --out (default bench/results/<date>-sync-stream-cpu).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.cpu_results import write_results  # noqa: E402

KEYS = ("train_loss", "lr", "step_avg_ms", "val_loss")
def write_record(track: Path, lines: int) -> None:
    track.mkdir(parents=True, exist_ok=True)
    with open(track / "metrics.jsonl", "w") as f:
        for i in range(lines):
            step = i // len(KEYS)
            f.write(json.dumps({"key": KEYS[i % len(KEYS)], "value": 1.0 / (1 + i), "step": step,
                                "ts": 1_790_000_000_000 + step}) + "\n")
    (track / "params.json").write_text(json.dumps({"learning_rate": 0.01, "attn_gate": "none"}))
    (track / "tags.json").write_text(json.dumps({"experiment": "bench-sync"}))
    (track / "status.json").write_text(json.dumps({"status": "FINISHED", "reason": "", "time": time.time()}))


def sync_once(code: Path, track: Path, cwd: Path) -> dict:
    """Run `python -m gatesweep sync TRACK` from `code` with cwd's fresh sqlite store: wall s, peak RSS MiB."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | {
        "PYTHONPATH": str(code), "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "gatesweep", "sync", str(track)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0 or "1 record(s) delivered" not in out:
        raise RuntimeError(f"sync failed (exit {rc}):\n{out}\n{err[-3000:]}")
    return {"wall_s": round(wall, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "rss_mib": round(usage.ru_maxrss / 1024, 1)}


def measure(code: Path, sizes: list[int], work: Path, repeats: int) -> list[dict]:
    """Per size: the median wall and the largest peak RSS of `repeats` syncs, each into a fresh store."""
    rows = []
    for n in sizes:
        tries = []
        for i in range(repeats):
            case = work / f"{code.name}-{n}-{i}"
            write_record(case / "rec" / "track", n)
            tries.append(sync_once(code, case / "rec" / "track", case))
            shutil.rmtree(case)
        walls, cpus = sorted(t["wall_s"] for t in tries), sorted(t["cpu_s"] for t in tries)
        rows.append({"lines": n, "wall_s": walls[len(walls) // 2], "walls_s": walls, "cpu_s": cpus[len(cpus) // 2],
                     "rss_mib": max(t["rss_mib"] for t in tries)})
        print(f"{code}: {n:,} lines: {rows[-1]}", file=sys.stderr)
    first = rows[0]
    for r in rows:
        extra = r["lines"] - first["lines"]
        r["lines_per_s"] = round(extra / max(r["wall_s"] - first["wall_s"], 1e-3)) if r is not first else None
        r["lines_per_cpu_s"] = round(extra / max(r["cpu_s"] - first["cpu_s"], 1e-3)) if r is not first else None
    return rows


def readme(result: dict) -> str:
    lines = [f"# gatesweep sync of one big record, {result['date']} ({result['machine']})", "",
             f"`{result['command']}`; python {result['python']}. Each row is `python -m gatesweep sync` of one "
             "FINISHED record into a fresh sqlite store, a fresh process (imports included), median wall and "
             "largest peak RSS of the repeats; lines/s is the delivery alone (wall minus the smallest record's), "
             "lines/CPU-s the same from the process's CPU time (less sensitive to other load on the machine). Targets (issue #25 item 11): 10^6 lines "
             "at >= 50k lines/s in <= 200 MB.", "",
             "| code | lines | wall s | lines/s | CPU s | lines/CPU-s | peak RSS MiB |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for label, rows in result["runs"].items():
        for r in rows:
            lps = f"{r['lines_per_s']:,}" if r["lines_per_s"] else "(start-up)"
            lpc = f"{r['lines_per_cpu_s']:,}" if r["lines_per_cpu_s"] else "(start-up)"
            lines.append(f"| {label} | {r['lines']:,} | {r['wall_s']} | {lps} | {r['cpu_s']} | {lpc} | {r['rss_mib']} |")
    lines += ["", result.get("note", ""), ""]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lines", type=int, nargs="+", default=[1_000, 100_000, 1_000_000])
    p.add_argument("--code", type=Path, action="append", default=[],
                   help="another checkout to time beside this one (repeatable)")
    p.add_argument("--label", action="append", default=[], help="a name for each --code (default: its path)")
    p.add_argument("--repeats", type=int, default=3, help="syncs per size and code (median wall, largest RSS)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / f"{dt.date.today()}-sync-stream-cpu")
    args = p.parse_args()
    sizes = sorted(args.lines)
    codes = [(f"this ({ROOT.name})", ROOT)] + [(args.label[i] if i < len(args.label) else str(c), c)
                                               for i, c in enumerate(args.code)]
    work = Path(tempfile.mkdtemp(prefix="gs-sync-bench-"))
    try:
        runs = {label: measure(code.resolve(), sizes, work, args.repeats) for label, code in codes}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    import torch

    note = (f"torch {torch.__version__} (not used by sync). The MLflow client alone (`import mlflow` + a sqlite "
            "client) is most of the smallest record's peak RSS.")
    write_results(args.out, "bench/sync_stream.py", sys.argv[1:], ROOT, None, {"runs": runs, "note": note}, readme)
    print(args.out / "README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
