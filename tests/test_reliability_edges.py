"""Inputs refused (or accepted) at the edge (issue #16, item 11); the one-line cases are in the
bad-input corpus (tests/bad_inputs/cases.yaml), these need more than one line of checking:

- a 427-byte YAML alias bomb ("billion laughs", ~387 million values once expanded) as a trainer config
  and as a spec: refused with one line under a 1 GiB address-space limit; it used to be expanded by
  the repr in an error message (17-27 s, then MemoryError at the limit);
- duplicate keys refused, `<<` merge keys still allowed, recursive aliases refused, quoted text bounded;
- the largest seed torch takes is accepted and seeds the trainer, one more is refused;
- a UTF-8 byte-order mark in a trainer config (JSON or YAML) and in a spec is accepted;
- a real `torchrun` with more CPU ranks than cores stops at start with the one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.sweep_helpers import PYTHON, cli_env, write_data
from tests.trainer_helpers import TORCHRUN
from trainer.config import TrainConfig
from trainer.errors import ConfigError
from trainer.overrides import read_config_file


def alias_bomb(indent: str = "") -> str:
    """Nine levels of nine aliases: 9**9 = 387,420,489 strings from a few hundred bytes."""
    lines = [f'{indent}- &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for prev, name in zip("abcdefg", "bcdefgh"):
        lines.append(f"{indent}- &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    lines.append(f"{indent}- [" + ", ".join(["*h"] * 9) + "]")
    return "\n".join(lines) + "\n"


# Runs a command under a 1 GiB address-space limit and reports its exit code, stderr, time and peak
# RSS. A separate small process: a child forked from this torch-sized test process would count the
# parent's memory in its own peak RSS.
MEASURE = """
import json, os, resource, subprocess, sys, time
limit = lambda: resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30))
t0 = time.monotonic()
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=limit)
err = p.stderr.read()
_, status, usage = os.wait4(p.pid, 0)
print(json.dumps({"rc": os.waitstatus_to_exitcode(status), "stderr": err, "seconds": time.monotonic() - t0,
                  "rss_mib": usage.ru_maxrss / 1024}))
"""


def _limited(cmd: list[str], cwd: Path) -> dict:
    res = subprocess.run([PYTHON, "-c", MEASURE, *cmd], cwd=cwd, env=cli_env(), capture_output=True, text=True,
                         timeout=120)  # a hang guard, not a benchmark
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_an_alias_bomb_is_refused_with_one_line_in_little_memory(tmp_path: Path):
    (tmp_path / "bomb.yaml").write_text("notes:\n" + alias_bomb("  "))
    (tmp_path / "spec.yaml").write_text("name: bomb\nbase:\n  preset: tiny\n  notes:\n" + alias_bomb("    "))
    assert len((tmp_path / "bomb.yaml").read_bytes()) == 427
    for cmd, expect in (([PYTHON, "-m", "trainer", "bomb.yaml"], "error: bomb.yaml: not valid YAML (line 7, column 9)"),
                        ([PYTHON, "-m", "gatesweep", "plan", "spec.yaml"],
                         "error: spec.yaml: malformed YAML (line 10, column 11)")):
        out = _limited(cmd, tmp_path)
        lines = out["stderr"].splitlines()
        assert out["rc"] == 2 and len(lines) == 1, out["stderr"][-3000:]
        assert lines[0].startswith(expect) and "aliases expand to more than 100,000 values" in lines[0], lines[0]
        print(f"\n{cmd[2:]}: refused in {out['seconds']:.2f} s, peak RSS {out['rss_mib']:.0f} MiB", file=sys.stderr)
        assert out["rss_mib"] < 100  # the expanded bomb would take gigabytes


def test_duplicate_keys_merge_keys_and_bounded_messages():
    from trainer import yamlsafe

    with pytest.raises(yamlsafe.RefusedYAML, match=r"duplicate key 'lr' \(first on line 1\)"):
        yamlsafe.load("lr: 1\nseed: 0\nlr: 2\n")
    with pytest.raises(yamlsafe.RefusedYAML, match="recursive alias"):
        yamlsafe.load("a: &x [1, *x]\n")
    # `<<:` merges a base mapping whose keys the mapping then overrides: not a duplicate
    assert yamlsafe.load("base: &b {lr: 1, seed: 0}\nrun:\n  <<: *b\n  lr: 2\n")["run"] == {"lr": 2, "seed": 0}
    huge = "k" * 1_000_000
    with pytest.raises(yamlsafe.RefusedYAML) as e:
        yamlsafe.load(f"? {huge}\n: 1\n? {huge}\n: 2\n")  # explicit keys: no 1024-character limit
    assert len(yamlsafe.problem(e.value)) < 200
    assert yaml.SafeLoader in yamlsafe.StrictLoader.__mro__  # still safe_load underneath: no python tags
    with pytest.raises(yaml.constructor.ConstructorError):
        yamlsafe.load('x: !!python/object/apply:os.system ["true"]\n')


SEED_MAX = 2**63 - 1  # int64: what torch's and numpy's generators and every store of the seed hold


def test_the_largest_seed_torch_takes_is_the_limit():
    cfg = TrainConfig().override({"seed": SEED_MAX})
    torch.manual_seed(cfg.run.seed)  # what trainer.build does with it
    with pytest.raises(ConfigError, match=r"seed=9223372036854775808 is out of range"):
        TrainConfig().override({"seed": SEED_MAX + 1})
    with pytest.raises(ConfigError, match=r"seed=-1 must be in \[0, 2\*\*63 - 1\]"):
        TrainConfig().override({"seed": -1})


def test_a_byte_order_mark_is_accepted(tmp_path: Path):
    bom = b"\xef\xbb\xbf"
    (tmp_path / "trial.json").write_bytes(bom + json.dumps({"config": {"learning_rate": 0.01}}).encode())
    (tmp_path / "cfg.yaml").write_bytes(bom + b"learning_rate: 0.02\n")
    assert read_config_file(str(tmp_path / "trial.json"))[0] == {"learning_rate": 0.01}
    assert read_config_file(str(tmp_path / "cfg.yaml"))[0] == {"learning_rate": 0.02}
    from sweeps.spec import load_spec

    (tmp_path / "spec.yaml").write_bytes(bom + b"name: bom\nbase: {preset: tiny}\nseeds: [0]\n")
    assert load_spec(tmp_path / "spec.yaml").name == "bom"


def test_more_cpu_ranks_than_cores_stop_at_start(tmp_path: Path):
    """One rank more than this process may use cores: the ranks stop before the rendezvous with the
    line (torchrun then reports the failed workers); before, the ranks shared the cores and trained."""
    cores = len(os.sched_getaffinity(0))
    ranks = cores + 1
    write_data(tmp_path)
    args = ["preset=tiny", "vocab_size=64", "n_embd=32", "n_head=2", "sequence_length=32", f"batch_size={4 * ranks}",
            "device_batch_size=4", f"val_tokens={128 * ranks}", "num_iterations=2", "warmdown_iters=1", "val_every=0",
            "train_files=data/train_*.bin", "val_files=data/val_*.bin", "out_dir=out", "device=cpu", "compile=off"]
    res = subprocess.run([TORCHRUN, "--standalone", f"--nproc_per_node={ranks}", "--local-addr=127.0.0.1", "-m",
                          "trainer", *args], cwd=tmp_path, env=cli_env(GATESWEEP_TRACKING="local"),
                         capture_output=True, text=True, timeout=300)
    line = (f"error: {ranks} CPU ranks on this machine but only {cores} CPU core(s) available: run with "
            f"--nproc_per_node={cores} or fewer")
    assert res.returncode != 0
    # torchrun stops the other workers once one has failed: some may not get to print the line
    assert any(ln.startswith(line) for ln in res.stderr.splitlines()), res.stderr[-3000:]
    assert not (tmp_path / "out").exists()
