"""`fast`: the same-math fast paths are the trainer's defaults, `fast=false` is the plain reference
path, and an explicit fused_proj / ce_chunks / muon_batched beside it wins; none of it is part of a
trial's identity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from trainer.config import FAST_PATHS, NON_IDENTITY_KEYS, TrainConfig, config_hash
from trainer.overrides import resolve


def paths(cfg: TrainConfig) -> tuple[bool, int, bool]:
    return cfg.model.fused_proj, cfg.model.ce_chunks, cfg.optim.muon_batched


def test_defaults_are_the_fast_paths_and_fast_false_is_the_plain_path():
    assert TrainConfig().run.fast and paths(TrainConfig()) == (True, 8, True)
    assert paths(TrainConfig().override({"fast": False})) == (False, 1, False)
    assert paths(TrainConfig().override({"fast": False}).override({"fast": "true"})) == (True, 8, True)
    assert paths(TrainConfig().override({"run.fast": "off"})) == (False, 1, False)
    assert set(FAST_PATHS) | {"fast"} <= NON_IDENTITY_KEYS


@pytest.mark.parametrize("given,want", [({"fast": False, "ce_chunks": 4}, (False, 4, False)),
                                        ({"fast": False, "muon_batched": True}, (False, 1, True)),
                                        ({"fast": True, "fused_proj": False}, (False, 8, True)),
                                        ({"fused_proj": False}, (False, 8, True))])
def test_an_explicit_option_beside_fast_wins(given: dict, want: tuple):
    assert paths(TrainConfig().override(given)) == want


def test_fast_follows_the_config_layers(tmp_path: Path):
    """preset < file < env < key=value: a later layer's `fast` resets the three options unless that
    layer names them itself."""
    f = tmp_path / "c.yaml"
    f.write_text("preset: tiny\nfast: false\nce_chunks: 2\n")
    assert paths(resolve([str(f)], {})[0]) == (False, 2, False)
    assert paths(resolve([str(f), "fast=true"], {})[0]) == (True, 8, True)
    assert paths(resolve([str(f), "muon_batched=true"], {})[0]) == (False, 2, True)
    f.write_text("preset: tiny\nfused_proj: true\nce_chunks: 4\n")
    assert paths(resolve([str(f), "fast=false"], {})[0]) == (False, 1, False)


def test_fast_does_not_change_the_trial_identity():
    base = TrainConfig().override({"attn_gate": "headwise"})
    plain = base.override({"fast": False, "gate_gemm": "fused_pad64", "inductor_mode": "max-autotune"})
    assert config_hash(plain) == config_hash(base)
    assert config_hash(base.override({"attn_gate": "elementwise"})) != config_hash(base)


def test_a_trial_json_written_before_fast_existed_keeps_its_paths(tmp_path: Path):
    """Old trial.json files list fused_proj/ce_chunks/muon_batched (false, 1, false by the old defaults)
    and no `fast`: they resume on the path they started with."""
    old = TrainConfig().override({"fast": False}).flat()
    del old["fast"]
    f = tmp_path / "trial.json"
    f.write_text(json.dumps({"config": old, "trial": {"trial_id": "abc"}}))
    cfg, meta = resolve([str(f)], {})
    assert paths(cfg) == (False, 1, False) and meta["trial_id"] == "abc"


def test_the_fast_paths_train_like_the_plain_path_to_rounding(tmp_path: Path):
    """6 tiny steps (headwise gate): the fused GEMM and the chunked cross-entropy round differently, so
    the weights are not bitwise the plain path's, but the difference is a small fraction of what training
    moved them (measured 9e-4 of 0.11: fused_proj alone 7e-4, ce_chunks alone 8e-4; bench/fidelity.py
    measures longer runs), while muon_batched alone is bitwise (test_trainer_muon_reference.py)."""
    from tests.trainer_helpers import ckpt_model, data_cfg, max_abs_diff, single_env
    from trainer.build import build_model
    from trainer.loop import train
    from trainer.tracking import NullTracker

    runs = {}
    for name, fast in (("plain", False), ("fast", True)):
        cfg = data_cfg(tmp_path / name, fast=fast, attn_gate="headwise", save_final=True)
        assert paths(cfg) == ((True, 8, True) if fast else (False, 1, False))
        assert train(cfg, NullTracker(), env=single_env()).status == "FINISHED"
        runs[name] = ckpt_model(cfg.run.out_dir, "run")
    init = build_model(cfg, torch.device("cpu")).state_dict()
    update = max_abs_diff(runs["plain"], init)
    drift = max_abs_diff(runs["fast"], runs["plain"])
    assert 0 < drift < 0.02 * update, (drift, update)
