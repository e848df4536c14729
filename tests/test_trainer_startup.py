"""Start-up: the first-step breakdown line, the background imports that overlap the set-up, and the
guarantee that makes the overlap safe - the initial weights stay bitwise what they were before it
(tests/golden/init_fingerprints.json was computed at main 1c81b38, before the start-up changes)."""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from bench.measure import parse_first_step
from tests.trainer_helpers import REPO, data_cfg, single_env, write_shards
from trainer.build import build_model
from trainer.config import preset_config
from trainer.loop import train
from trainer.startup import COMPILE_MODULES, StartupClock
from trainer.tracking import NullTracker

GOLDEN = json.loads((REPO / "tests" / "golden" / "init_fingerprints.json").read_text())
SETUP_PHASES = ["data", "model init", "to device", "compiler imports wait", "optimizers", "checkpoint",
                "compile cache", "compile wrap", "nvidia-smi wait", "record", "first batch"]
STEP_PHASES = ["forward", "backward", "optimizer step"]


def fingerprint(state: dict[str, torch.Tensor]) -> str:
    """sha256 over name, dtype, shape and bytes of every tensor, in order (as the golden file was made)."""
    h = hashlib.sha256()
    for k, v in state.items():
        v = v.detach().contiguous().cpu()
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}|".encode())
        h.update(v.view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()


# ---------------------------------------------------------------- the line
def test_the_line_lists_phases_in_order_and_adds_up_to_the_total():
    clock = StartupClock(since_process_start=False)
    clock.origin -= 10.0  # as if the clock had started 10 s ago
    clock.add("import torch", 2.5)
    clock.add("model init", 1.25)
    clock.add("model init", 0.25)  # a phase timed twice adds up
    clock.add("compiler imports", 3.0, overlapped=True)
    line = clock.line(train_began=clock.origin + 4.0, setup_done=clock.origin + 6.0, extra="fx graph cache 6 hit / "
                      "0 miss, aot autograd cache 3 hit / 0 miss; compile timers: _compile.compile_inner 4.22s")
    assert line.startswith("first step done 6.0s after train() began (2.0s set-up); phases: import torch 2.50s, "
                           "model init 1.50s, other 6.00s; overlapped: compiler imports 3.00s; fx graph cache")
    parsed = parse_first_step(line)
    assert parsed["phases"] == {"import torch": 2.5, "model init": 1.5, "other": 6.0}
    assert parsed["overlapped"] == {"compiler imports": 3.0}
    assert parsed["cache"] == {"fx_hit": 6, "fx_miss": 0, "aot_hit": 3, "aot_miss": 0}
    assert parsed["compile_timers"] == {"_compile.compile_inner": 4.22}
    assert not clock.open  # later steps are not timed


def test_train_logs_every_set_up_phase_after_the_first_step(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    cfg = data_cfg(tmp_path, num_iterations=3, batch_size=8, device_batch_size=4)  # 2 micro-batches a step
    with caplog.at_level(logging.INFO, logger="trainer.loop"):
        assert train(cfg, NullTracker(), env=single_env()).status == "FINISHED"
    lines = [r.getMessage() for r in caplog.records if "first step done" in r.getMessage()]
    assert len(lines) == 1  # once, after the first step only
    parsed = parse_first_step(lines[0])
    phases = parsed["phases"]
    # the wait is there only when this process had not imported torch._dynamo yet (an earlier test may have)
    assert list(phases) == [p for p in SETUP_PHASES if p in phases] + [*STEP_PHASES, "other"]
    assert set(SETUP_PHASES) - {"compiler imports wait"} <= set(phases)
    assert "since_process_s" not in parsed  # train() called directly: timed from train(), not the process
    assert sum(phases.values()) == pytest.approx(parsed["first_step_s"], abs=0.2)
    assert phases["other"] >= -0.05


# ---------------------------------------------------------------- initial weights
@pytest.mark.parametrize("case", ["reference-none-seed0", "reference-elementwise-seed1", "tiny-headwise-seed3",
                                  "tiny-const-seed4"])
def test_initial_weights_are_bitwise_those_of_before_the_change(case: str):
    golden = GOLDEN[case]
    cfg = preset_config(golden["preset"]).override(golden["overrides"])
    assert fingerprint(build_model(cfg, torch.device("cpu")).state_dict()) == golden["sha256"]


def test_the_background_imports_touch_no_random_generator():
    """What Prewarm imports, in a fresh process: torch's, numpy's and Python's RNG states are unchanged,
    so the model init that runs at the same time draws the same numbers."""
    script = textwrap.dedent(f"""
        import importlib, pickle, random, sys
        import numpy as np, torch
        torch.manual_seed(1234)
        before = (torch.get_rng_state(), pickle.dumps(np.random.get_state()), random.getstate())
        assert not any(m in sys.modules for m in {COMPILE_MODULES!r})
        for m in {COMPILE_MODULES!r}:
            importlib.import_module(m)
        after = (torch.get_rng_state(), pickle.dumps(np.random.get_state()), random.getstate())
        print(torch.equal(before[0], after[0]), before[1] == after[1], before[2] == after[2])
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["True", "True", "True"]


def test_a_cli_run_overlaps_the_imports_with_the_init_and_keeps_the_weights(tmp_path: Path):
    """`python -m trainer`'s path in a fresh process: the background imports are still running while
    the model is initialised, the weights are the golden ones, and the first-step line carries the
    process-level phases."""
    train_glob = write_shards(tmp_path / "data", "train", [6000], vocab=512, seed=1)
    val_glob = write_shards(tmp_path / "data", "val", [3000], vocab=512, seed=2)
    golden = GOLDEN["tiny-headwise-seed3"]
    argv = ["preset=tiny", "attn_gate=headwise", "seed=3", f"train_files={train_glob}", f"val_files={val_glob}",
            "device=cpu", "compile=off", "num_iterations=2", "val_every=0", "batch_size=8", "device_batch_size=8",
            "sequence_length=64", "val_tokens=512", "out_dir=out", "results_csv=experiments/results.csv", "run_id=r"]
    script = "import hashlib, torch\n" + inspect.getsource(fingerprint) + textwrap.dedent(f"""
        import json, sys, threading
        import trainer.loop
        real, seen = trainer.loop.build_model, {{}}
        def build(cfg, device):
            m = sys.modules.get("torch._dynamo")  # in sys.modules from the start of its import
            seen["dynamo_imported"] = m is not None and not getattr(m.__spec__, "_initializing", False)
            seen["prewarm_running"] = any(t.name == "gatesweep-prewarm" for t in threading.enumerate())
            model = real(cfg, device)
            seen["sha256"] = fingerprint(model.state_dict())
            return model
        trainer.loop.build_model = build
        from trainer.main import main
        code = main({argv!r})
        print("RESULT " + json.dumps(seen))
        sys.exit(code)
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", GATESWEEP_TRACKING="local")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=600,
                         env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    seen = json.loads(next(ln for ln in res.stdout.splitlines() if ln.startswith("RESULT "))[7:])
    assert seen == {"dynamo_imported": False, "prewarm_running": True, "sha256": golden["sha256"]}
    line = next(ln for ln in res.stderr.splitlines() if "first step done" in ln)
    parsed = parse_first_step(line)
    assert list(parsed["phases"])[:6] == ["python", "config", "import torch", "dist", "preflight", "tracking"]
    assert parsed["overlapped"]["compiler imports"] > 0 and "compiler imports wait" in parsed["phases"]
    assert sum(parsed["phases"].values()) == pytest.approx(parsed["since_process_s"], abs=0.2)
