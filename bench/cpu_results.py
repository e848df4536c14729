"""What the CPU benchmarks (store_scale, local_overhead) file under bench/results/: the machine, the
command and the code they timed, beside their measurements, as results.json and README.md."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def write_results(out: Path, script: str, argv: Sequence[str], code: Path, label: str | None,
                  measured: dict[str, Any], readme: Callable[[dict], str]) -> dict[str, Any]:
    """results.json + README.md (`readme(result)`) in `out`; `measured` goes under its own keys."""
    rev = subprocess.run(["git", "-C", str(code), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    result = {"date": str(dt.date.today()), "machine": f"{platform.machine()}, {os.cpu_count()} CPU(s), "
              f"load {os.getloadavg()[0]:.1f}", "python": platform.python_version(),
              "command": " ".join([script, *argv]),
              "code_rev": label or rev.stdout.strip() or str(code), **measured}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "README.md").write_text(readme(result))
    return result
