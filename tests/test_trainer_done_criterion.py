"""The trainer issue's CPU done-criterion, as a user types it: synthetic shards from `gatesweep data
synth`, then `torchrun --standalone --nproc_per_node=2 -m trainer preset=tiny` (200 steps, 2 gloo
ranks). The val loss must approach the source's entropy (its Bayes-optimal loss, written in
synth.json) and end far below ln(vocab); the run log and the results.csv row must be written."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_two_rank_tiny_preset_learns_the_synthetic_source(tmp_path: Path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "MLFLOW_TRACKING_URI"):
        env.pop(k, None)
    data = subprocess.run([sys.executable, "-m", "gatesweep", "data", "synth", "--out", "data/synth"],
                          cwd=tmp_path, env=env, capture_output=True, text=True)
    assert data.returncode == 0, data.stderr
    source = json.loads((tmp_path / "data" / "synth" / "synth.json").read_text())
    bayes, ln_vocab = source["entropy_nats_per_token"], source["ln_vocab"]

    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "trainer", "preset=tiny", "out_dir=out", "run_id=tiny2"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    log = (tmp_path / "out" / "logs" / "tiny2.txt").read_text()
    assert "step:200/200 val_loss:" in log
    (row,) = list(csv.DictReader((tmp_path / "experiments" / "results.csv").open()))
    final = float(row["final_val_loss"])
    assert row["run_id"] == "tiny2" and int(row["num_iterations"]) == 200
    assert math.isfinite(final) and bayes < final < bayes + 0.5, (final, bayes)  # close to the entropy
    assert final < ln_vocab - 3.0  # far below a uniform guess
    print(f"\ntiny preset, 2 ranks, 200 steps: val {final:.3f} vs Bayes {bayes:.3f}, ln(vocab) {ln_vocab:.3f}")
