"""A sequential-seeds sweep on the real Slurm, continued across invocations: the first `gatesweep run`
submits the first look and returns; once those jobs end the next one decides and submits the second
look; a last one with --wait follows it to the end and finds every comparison stopped.

The comparison cannot be decided (at learning rate 1e-50 no parameter moves, so const and none are
bitwise equal on any CPU: tests/test_trainer_frozen_lr.py), so the sweep goes on to max: looks at 2 and 4 seeds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import cluster.slurm.wait
from cluster.common.trialdir import RUNS_ROOT
from sweeps.expand import expand
from sweeps.spec import load_spec
from tests.slurm_helpers import gatesweep, job_id, status, unique, wait_until, write_data

pytestmark = [pytest.mark.slurm]
BASE = {"preset": "tiny", "n_embd": 32, "sequence_length": 64, "batch_size": 8, "device_batch_size": 8,
        "val_tokens": 2048, "num_iterations": 2, "warmdown_iters": 1, "val_every": 0, "fast": False, "learning_rate": 1e-50,
        "device": "cpu", "compile": "off", "train_files": "data/synth/synth_train_*.bin",
        "val_files": "data/synth/synth_val_*.bin"}


def test_a_sequential_sweep_continues_across_invocations(slurm_cluster, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(cluster.slurm.wait, "POLL_S", 1.0)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")  # mlflow caches stores by URI
    write_data(tmp_path)
    name = unique("seqslurm")
    spec = {"name": name, "stage": name, "base": BASE, "grid": {"attn_gate": ["none", "const"]},
            "seeds": {"initial": [0, 1], "add": [2, 3], "max": 4},
            "resources": {"nodes": 1, "gpus_per_node": 0, "cpus_per_task": 1, "timeout_min": 10},
            "tracking": {"experiment": f"gs-{name}"},
            "backend": {"default": "slurm", "slurm": {"timeout_min": 10, "max_requeues": 1}}}
    (tmp_path / "seq.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    trials = expand(load_spec(tmp_path / "seq.yaml"))
    look1, look2 = [RUNS_ROOT / name / t.trial_id for t in trials[:4]], [RUNS_ROOT / name / t.trial_id for t in trials[4:]]

    code, out, err = gatesweep(["run", "seq.yaml"])
    assert code == 0, out + err
    assert "look 1: 4 trial(s) needed by now" in out and "submitted 4 trial(s)" in out
    assert "run the same command again (or with --wait)" in out
    assert all(job_id(d) for d in look1) and not any(d.exists() for d in look2)

    wait_until(lambda: all(status(d) == "FINISHED" for d in look1), 300, "the first look's jobs")
    code, out, err = gatesweep(["run", "seq.yaml"])
    assert code == 0, out + err
    assert "1 of 2 look(s) complete" in out and "open (look 2 of 2)" in out
    assert "look 2: 8 trial(s) needed by now" in out and "submitted 4 trial(s)" in out
    assert "skipping 4 finished trial(s)" in out
    ids = {job_id(d) for d in look2}
    assert len(ids) == 4

    code, out, err = gatesweep(["run", "seq.yaml", "--wait"])
    assert code == 0, out + err
    assert "4 trial(s) already queued or running in Slurm; not submitting them again" in out or \
        "nothing to submit" in out
    assert "undecided at max n=4: p undefined" in out and "every comparison stopped; 8 of 8" in out
    assert all(status(d) == "FINISHED" for d in look1 + look2)
    assert {job_id(d) for d in look2} == ids  # followed, never resubmitted
    log = json.loads((RUNS_ROOT / name / "sequential.json").read_text())
    assert log["finished"] and log["looks_done"] == 2
    assert log["comparisons"][0]["status"] == "undecided" and log["required"] == {"attn_gate=const": 4,
                                                                                  "attn_gate=none": 4}
