"""torch.compile paths on CPU (inductor): both compile modes train and give eager's losses to rounding.

CUDA codegen is not exercised here, but the Python around it is: block.compile(), the compiled
loss head, the compiled Newton-Schulz, evaluation in grad mode when compiled. ~30 s cold on 2 cores.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.trainer_helpers import data_cfg, single_env
from trainer.loop import train
from trainer.tracking import NullTracker


@pytest.fixture(scope="module")
def eager(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[int, float]]:
    cfg = data_cfg(tmp_path_factory.mktemp("eager"), num_iterations=4, warmdown_iters=1, val_every=2)
    return train(cfg, NullTracker(), env=single_env()).val_history


@pytest.mark.parametrize("mode", ["blocks", "model"])
def test_compiled_run_matches_eager(tmp_path: Path, eager: list, mode: str):
    cfg = data_cfg(tmp_path, num_iterations=4, warmdown_iters=1, val_every=2, compile="on", compile_mode=mode)
    s = train(cfg, NullTracker(), env=single_env())
    assert s.status == "FINISHED"
    assert [st for st, _ in s.val_history] == [st for st, _ in eager] == [0, 2, 4]
    assert s.val_history[0][1] == pytest.approx(eager[0][1], abs=1e-5)  # before any update: same weights
    for (_, got), (_, want) in zip(s.val_history, eager):
        assert got == pytest.approx(want, abs=2e-3)  # fused kernels round differently; Muon's bf16 NS amplifies
    assert s.val_history[-1][1] < s.val_history[0][1]


def test_compile_threads_reaches_inductor_before_anything_compiles():
    """compile_threads=1 (set by the local launcher for trials whose graphs are cached) must be in
    inductor's config when the first compile starts its worker pool; 0 leaves inductor's default."""
    import torch._inductor.config as inductor_config

    from trainer.build import build_model, compile_model
    from trainer.config import TrainConfig
    from trainer.errors import ConfigError

    before = inductor_config.compile_threads
    cfg = TrainConfig.from_flat({"preset": "tiny", "compile_threads": 0})
    compile_model(cfg, build_model(cfg, torch.device("cpu")))  # wraps only: nothing compiles yet
    assert inductor_config.compile_threads == before
    try:
        cfg = cfg.override({"compile_threads": 1})
        compile_model(cfg, build_model(cfg, torch.device("cpu")))
        assert inductor_config.compile_threads == 1
    finally:
        inductor_config.compile_threads = before
    with pytest.raises(ConfigError, match="compile_threads=-1 must be >= 0"):
        TrainConfig.from_flat({"compile_threads": -1})
