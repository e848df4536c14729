"""The portable compile cache: `gatesweep warmup` saves what its trial compiled into the sweep's
compile cache (megacache.bin), every trial's config names that file, and a trainer whose FX-graph
and AOTAutograd caches are empty (another node) loads it and compiles no graph; without the file
it compiles as before. Real inductor on CPU: one cold compile of the tiny model (~1 min on 2 cores).

On CUDA the file also carries the Triton kernels; inductor's CPU C++ kernels are not in it (a
fresh CPU node rebuilds them from the cached graphs' source), so "another node" here keeps the
warm-up's compiled C++ kernels and loses only the graph caches, which is what the file restores."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from cluster.common.compile_cache import megacache_path
from cluster.common.trialdir import run_config
from sweeps.expand import expand
from sweeps.spec import load_spec
from tests.sweep_helpers import REPO, cli_env, gatesweep, trainer_cli, unique, write_data, write_spec
from trainer import megacache

HITS = re.compile(r"fx graph cache (\d+) hit / (\d+) miss")


def test_warmup_saves_the_portable_cache_and_a_node_with_empty_caches_loads_it(tmp_path: Path):
    name = unique("mega")
    write_data(tmp_path)
    spec = write_spec(tmp_path / "spec.yaml", name, seeds=[0], grid={"attn_gate": ["none"]},
                      base={"compile": "on", "num_iterations": 4, "warmdown_iters": 1, "val_every": 0})
    env = cli_env(None, GATESWEEP_TRACKING="local")
    res = gatesweep(["warmup", str(spec)], tmp_path, env, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    sweep = tmp_path / "runs" / name
    mega = sweep / ".compile-cache" / "megacache.bin"
    assert mega.is_file() and mega.stat().st_size > 0, res.stdout
    assert f"portable cache {mega.resolve()}" in res.stdout
    warm_out = res.stdout + res.stderr  # the trainer's console lines
    (hit, miss), = [tuple(map(int, m)) for m in HITS.findall(warm_out)]
    assert miss > 0 and re.search(r"compile cache .*megacache.bin: saved [1-9]\d* artifacts", warm_out)

    # the same trial on "another node": no FX-graph or AOTAutograd cache, the portable file from the sweep
    fresh = tmp_path / "node2"
    shutil.copytree(sweep / ".compile-cache" / "inductor", fresh / "inductor",
                    ignore=shutil.ignore_patterns("fxgraph", "aotautograd"))
    node_env = env | {"TORCHINDUCTOR_CACHE_DIR": str(fresh / "inductor"), "TRITON_CACHE_DIR": str(fresh / "triton")}
    out = tmp_path / "trial"
    args = [str(sweep / ".warmup" / "trial.json"), f"compile_cache={mega}", "save_compile_cache=",
            f"out_dir={out}", "run_id=node2", "results_csv=runs/node2/results.csv"]
    res = trainer_cli(args, tmp_path, node_env, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    log = res.stdout + res.stderr
    assert re.search(r"compile cache .*megacache.bin: loaded [1-9]\d* artifacts", log), log[-2000:]
    (hit, miss), = [tuple(map(int, m)) for m in HITS.findall(log)]
    assert hit > 0 and miss == 0, log[-2000:]


def test_every_trial_names_its_sweeps_portable_cache(tmp_path: Path):
    spec = write_spec(tmp_path / "spec.yaml", "names", seeds=[0])
    for trial in expand(load_spec(spec)):
        run_dir = tmp_path / "runs" / "names" / trial.trial_id
        assert run_config(trial, run_dir)["compile_cache"] == str(megacache_path(run_dir.parent))
        assert megacache_path(run_dir.parent) == (tmp_path / "runs" / "names" / ".compile-cache" /
                                                  "megacache.bin").resolve()


def test_a_missing_cache_file_is_a_note_not_an_error(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # empty: the file would load
    assert megacache.load("") == ""
    assert megacache.load(str(tmp_path / "none.bin")).endswith("not found; compiling")
    (tmp_path / "bad.bin").write_bytes(b"not a cache")
    assert megacache.load(str(tmp_path / "bad.bin")).endswith("; compiling")
    # a process that compiled nothing writes nothing (a fresh one: this test process may have compiled)
    code = f"from trainer import megacache; print(megacache.save({str(tmp_path / 'out.bin')!r}))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert "nothing compiled in this run" in res.stdout, res.stdout + res.stderr
    assert not (tmp_path / "out.bin").exists()


def test_a_warm_local_cache_is_not_rewritten_from_the_file(tmp_path: Path, monkeypatch):
    (tmp_path / "inductor" / "fxgraph" / "ab").mkdir(parents=True)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    (tmp_path / "mega.bin").write_bytes(b"x")
    assert megacache.local_cache_is_warm()
    assert megacache.load(str(tmp_path / "mega.bin")).endswith("the local compile cache is warm; not loaded")
