"""A sequential-seeds sweep on the Ray backend: one invocation runs the looks one after another in the
driver, each look's trials as Tune trials, under one sweep run (a real local Ray on 127.0.0.1, the
tiny model on the synthetic source, a sqlite store). The comparison cannot be decided (see
tests/test_sweeps_sequential_local.py), so both looks run: 2 then 4 seeds per configuration."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import yaml

from cluster.common.trialdir import local_status
from gatesweep.cli import main as cli_main
from tests.sweep_helpers import experiment_runs, unique
from trainer.synth import write_synth_dataset

pytestmark = [pytest.mark.ray, pytest.mark.slow]
BASE = {"preset": "tiny", "n_embd": 32, "sequence_length": 64, "batch_size": 8, "device_batch_size": 8,
        "val_tokens": 2048, "num_iterations": 2, "warmdown_iters": 1, "val_every": 0, "learning_rate": 1e-50,
        "train_files": "data/synth/synth_train_*.bin", "val_files": "data/synth/synth_val_*.bin"}


def test_the_ray_backend_runs_the_looks(short_tmp: Path, monkeypatch: pytest.MonkeyPatch):
    write_synth_dataset(short_tmp / "data" / "synth", train_tokens=200_000, val_tokens=16_384, num_train_shards=1)
    name = unique("seqray")
    spec = {"name": name, "stage": name, "base": BASE, "grid": {"attn_gate": ["none", "const"]},
            "seeds": {"initial": [0, 1], "add": [2, 3], "max": 4},
            "resources": {"nodes": 1, "gpus_per_node": 0, "cpus_per_task": 1, "timeout_min": 10},
            "tracking": {"experiment": f"gs-{name}"},
            "backend": {"default": "ray", "ray": {"num_cpus": 2, "cpus_per_trial": 1}}}
    (short_tmp / "seq.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    monkeypatch.chdir(short_tmp)
    uri = f"sqlite:///{short_tmp}/mlflow.db"  # absolute: mlflow caches its sqlite stores by URI in-process
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli_main(["run", "seq.yaml", "--max-parallel", "2"])
    text = out.getvalue()
    assert code == 0, text
    assert "look 1: 4 trial(s) needed by now" in text and "look 2: 8 trial(s) needed by now" in text
    assert "undecided at max n=4" in text and "every comparison stopped; 8 of 8" in text
    runs = sorted((short_tmp / "runs" / name).glob("*/trial.json"))
    assert len(runs) == 8 and all(local_status(p.parent)[0] == "FINISHED" for p in runs)
    log = json.loads((short_tmp / "runs" / name / "sequential.json").read_text())
    assert log["finished"] and [h["n"] for h in log["comparisons"][0]["history"]] == [2, 4]
    parents = experiment_runs(uri, f"gs-{name}", "sweep")
    assert len(parents) == 1 and parents[0].data.tags["backend"] == "ray"
    assert parents[0].data.tags["gatesweep.seq.finished"] == "true"
    trials = experiment_runs(uri, f"gs-{name}", "trial")
    assert len(trials) == 8 and {r.data.tags["backend"] for r in trials} == {"ray"}
