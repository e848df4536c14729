"""The synthetic source: deterministic, learnable, and its stated entropy is the real one."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from trainer.errors import DataError
from trainer.shards import read_shard
from trainer.synth import BOS, SynthSpec, generate, token_logprobs, write_synth_dataset


def conditional_entropy(keys: np.ndarray, outcomes: np.ndarray) -> float:
    """Plug-in H(outcome | key) in nats from counts."""
    _, joint = np.unique(keys * 100_000 + outcomes, return_counts=True)
    _, marg = np.unique(keys, return_counts=True)
    n = outcomes.size
    return float((-(joint * np.log(joint)).sum() + (marg * np.log(marg)).sum()) / n)


def test_deterministic_and_seeded() -> None:
    spec = SynthSpec()
    a = generate(spec, 50_000, stream_seed=1)
    np.testing.assert_array_equal(a, generate(spec, 50_000, stream_seed=1))
    assert not np.array_equal(a, generate(spec, 50_000, stream_seed=2))
    assert not np.array_equal(a, generate(SynthSpec(seed=1), 50_000, stream_seed=1))
    assert a.size == 50_000 and a[0] == BOS and 0 <= a.min() and a.max() < spec.vocab_size


def test_documents_are_well_formed() -> None:
    spec = SynthSpec()
    x = generate(spec, 300_000, stream_seed=3)
    bos = np.flatnonzero(x == BOS)
    assert not np.any(np.diff(bos) == 1)  # no empty document, also across parallel-stream seams
    mean_len = np.diff(bos).mean()
    assert 0.8 / spec.end_prob < mean_len < 1.2 / spec.end_prob  # geometric lengths with mean 1/end_prob
    assert np.isfinite(token_logprobs(spec, x)).all()  # every token is possible under the stated process


def test_dataset_files_and_stated_entropy(tmp_path: Path) -> None:
    info = write_synth_dataset(tmp_path, train_tokens=300_001, val_tokens=100_000, seed=0, num_train_shards=3)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["synth.json", "synth_train_000001.bin", "synth_train_000002.bin",
                     "synth_train_000003.bin", "synth_val_000000.bin"]
    train = [read_shard(p) for p in info.train_files]
    assert sum(t.size for t in train) == 300_001 and all(t[0] == BOS for t in train)
    val = read_shard(tmp_path / "synth_val_000000.bin")
    assert val.size == 100_000

    # The stated figure is the mean -log p_true over the val shard as written to disk.
    direct = -token_logprobs(SynthSpec(seed=0), np.asarray(val)).mean()
    assert info.entropy_nats_per_token == pytest.approx(direct, rel=1e-12)
    record = json.loads((tmp_path / "synth.json").read_text())
    assert record["entropy_nats_per_token"] == pytest.approx(direct, rel=1e-12)
    assert record["vocab_size"] == 512 and record["ln_vocab"] == pytest.approx(math.log(512))
    assert record["generator"]["copy_offset"] == SynthSpec().copy_offset

    # Learnable and far from uniform: 1.5-3 nats against ln(512) = 6.24.
    assert 1.5 < info.entropy_nats_per_token < 3.0
    assert info.entropy_nats_per_token < info.unigram_entropy_nats - 2 < info.ln_vocab - 2
    # Different train shards are different samples.
    assert not np.array_equal(train[0][:1000], train[1][:1000])


def test_stated_entropy_matches_a_count_estimate() -> None:
    # Small vocabulary, so that counts over every (context, next token) cell are dense.
    spec = SynthSpec(vocab_size=17, num_classes=4, class_fanout=2, copy_offset=3, copy_prob=0.4, end_prob=0.02)
    x = generate(spec, 2_000_000, stream_seed=5)
    stated = -token_logprobs(spec, x).mean()
    # The sufficient context, derived here from the data alone: the previous token, and the token
    # copy_offset back if it lies inside the current document (after its BOS), else -1. Only the
    # past may enter the key, so "inside" is judged from the previous token's document position.
    idx = np.arange(x.size)
    prev_pos = (idx - np.maximum.accumulate(np.where(x == BOS, idx, 0)))[:-1]
    k = spec.copy_offset
    t = idx[1:]
    src = np.where(prev_pos + 1 > k, x[np.maximum(t - k, 0)], -1)
    keys = x[:-1] * 100 + (src + 1)
    counted = conditional_entropy(keys, x[1:])
    # The plug-in estimate is the best cross-entropy of any predictor of this context, so it can only be
    # below a correct p_true, by about (#cells)/(2n) ~ 0.0006 here. Getting end_prob 0.02 -> 0.03 or
    # copy_prob 0.4 -> 0.35 wrong in the formula moves the stated figure by +0.002 / +0.003.
    assert 0 <= stated - counted < 0.0015, (counted, stated)
    # Without the copy source the next token is much less predictable: the copy is real.
    assert conditional_entropy(x[:-1], x[1:]) > stated + 0.2


def test_default_process_needs_attention() -> None:
    spec = SynthSpec()
    x = generate(spec, 2_000_000, stream_seed=7)
    stated = -token_logprobs(spec, x).mean()
    # A bigram model (what a network without attention can learn) is >1.5 nats worse; the plug-in
    # estimate is biased low, so the true gap is larger still.
    assert conditional_entropy(x[:-1], x[1:]) > stated + 1.5


def test_bad_arguments() -> None:
    with pytest.raises(DataError, match="BOS"):
        token_logprobs(SynthSpec(), np.array([5, 0, 3]))
    with pytest.raises(DataError, match="class_fanout"):
        generate(SynthSpec(class_fanout=99), 10, 0)
    with pytest.raises(DataError, match="--shards"):
        write_synth_dataset("/nonexistent-never-written", train_tokens=1, val_tokens=10, seed=0, num_train_shards=2)


def test_cli_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from trainer.data_cli import main

    rc = main(["synth", "--out", str(tmp_path), "--train-tokens", "100000", "--val-tokens", "20000",
               "--shards", "2", "--seed", "4"])
    out = capsys.readouterr().out
    info = json.loads((tmp_path / "synth.json").read_text())
    assert rc == 0 and out.count("\n") == 1
    assert out.startswith(f"synth: wrote 2 train + 1 val shards to {tmp_path} (100,000 train / 20,000 val tokens)")
    assert f"{info['entropy_nats_per_token']:.4f} nats/token" in out and "ln(vocab=512) 6.238" in out
    assert info["generator"]["seed"] == 4
