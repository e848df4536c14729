"""The bad-input corpus (tests/bad_inputs/cases.yaml): malformed YAML, unknown keys, wrong types,
unknown gates, LR <= 0, batches that do not divide, missing and broken shards, bad overrides, a chained
value from a stage that never ran, unavailable backends... each through the real CLI in a fresh
directory, against the real MLflow server. Every case: exit code 2, exactly one line on stderr naming
the file, the field and the fix, no MLflow run created, and the directory left as it was."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests.sweep_helpers import PYTHON, cli_env, count_all_runs, cwd_snapshot
from trainer.shards import HEADER_BYTES, write_shard

pytestmark = pytest.mark.mlflow
CORPUS = Path(__file__).parent / "bad_inputs"
CASES: list[dict[str, Any]] = yaml.safe_load((CORPUS / "cases.yaml").read_text())
TINY = ["preset=tiny", "vocab_size=64", "n_embd=32", "n_head=2", "sequence_length=32", "batch_size=4",
        "device_batch_size=4", "val_tokens=256", "num_iterations=5", "warmdown_iters=2", "val_every=0",
        "train_files=data/train_*.bin", "val_files=data/val_*.bin", "out_dir=out", "results_csv=experiments/results.csv"]


def _data(d: Path) -> None:
    """Good shards and one broken shard of each kind."""
    rng = np.random.default_rng(0)
    write_shard(d / "train_000.bin", rng.integers(0, 64, 20_000))
    write_shard(d / "val_000.bin", rng.integers(0, 64, 2_000))
    write_shard(d / "bigvocab_000.bin", rng.integers(0, 500, 20_000))
    write_shard(d / "small_000.bin", rng.integers(0, 64, 100))
    good = (d / "train_000.bin").read_bytes()
    header = np.frombuffer(good[:HEADER_BYTES], dtype="<i4").copy()
    for name, index, value in (("badmagic", 0, 12345), ("badversion", 1, 7)):
        h = header.copy()
        h[index] = value
        (d / f"{name}_000.bin").write_bytes(h.tobytes() + good[HEADER_BYTES:])
    (d / "truncated_000.bin").write_bytes(good[: HEADER_BYTES + 2 * 1000])


def _argv(case: dict[str, Any]) -> list[str]:
    tool, *args = case["argv"]
    args = [a for arg in args for a in (TINY if arg == "@tiny" else [arg])]
    return [PYTHON, "-m", {"gatesweep": "gatesweep", "trainer": "trainer"}[tool], *args]


def _run(case: dict[str, Any], root: Path, template: Path, uri: str) -> dict[str, Any]:
    cwd = root / case["id"]
    shutil.copytree(template, cwd)
    before = cwd_snapshot(cwd)
    env = cli_env(uri, **{k: v.format(venv_bin=Path(PYTHON).parent) for k, v in case.get("env", {}).items()})
    t0 = time.monotonic()
    res = subprocess.run(_argv(case), cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
                         stdin=subprocess.DEVNULL)
    return {"rc": res.returncode, "stdout": res.stdout, "stderr": res.stderr, "seconds": time.monotonic() - t0,
            "changed": sorted(set(cwd_snapshot(cwd).items()) ^ set(before.items())),
            "pwned": (cwd / "PWNED").exists()}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory, mlflow_server, slurm_cluster) -> dict[str, Any]:
    """All cases at once (4 at a time: most fail within 0.3 s, the data cases import torch)."""
    root = tmp_path_factory.mktemp("bad_inputs")
    template = root / "_template"
    shutil.copytree(CORPUS / "specs", template / "specs")
    shutil.copytree(CORPUS / "trainer", template / "trainer")
    _data(template / "data")
    runs_before = count_all_runs(mlflow_server.uri)
    t0 = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        results = dict(zip([c["id"] for c in CASES],
                           pool.map(lambda c: _run(c, root, template, mlflow_server.uri), CASES)))
    results["_wall"] = time.monotonic() - t0
    results["_runs"] = (runs_before, count_all_runs(mlflow_server.uri))
    return results


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_bad_input_fails_with_one_clear_line(outcomes: dict[str, Any], case: dict[str, Any]):
    out = outcomes[case["id"]]
    lines = out["stderr"].splitlines()
    assert out["rc"] == case.get("rc", 2), out
    assert len(lines) == 1 and lines[0].startswith("error: "), out["stderr"]
    for part in case["expect"]:
        assert part in lines[0], (part, lines[0])
    assert out["stdout"] == "", out["stdout"]
    assert out["changed"] == [], f"left behind or modified: {out['changed']}"
    assert not out["pwned"]


def test_corpus_figures(outcomes: dict[str, Any]):
    """At least 30 cases, none of them created an MLflow run; the figures go into the README."""
    before, after = outcomes["_runs"]
    assert after == before, f"{after - before} MLflow run(s) created by bad inputs"
    clear = [c["id"] for c in CASES if outcomes[c["id"]]["rc"] == c.get("rc", 2)
             and len(outcomes[c["id"]]["stderr"].splitlines()) == 1]
    slowest = max((outcomes[c["id"]]["seconds"], c["id"]) for c in CASES)
    print(f"\nbad inputs tried: {len(CASES)}, clear one-line errors (exit 2): {len(clear)}, "
          f"MLflow runs created: {after - before}, wall {outcomes['_wall']:.1f}s, slowest {slowest[1]} "
          f"{slowest[0]:.1f}s", file=sys.stderr)
    assert len(CASES) >= 30 and len(clear) == len(CASES)
    # the README's Reliability row states these figures: keep it true
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert f"| {len(CASES)} tried → {len(clear)} one-line errors" in readme
