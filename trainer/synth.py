"""A learnable synthetic token source whose Bayes-optimal loss is known, for tiny CPU runs.

The process (token 0 is BOS; ordinary tokens 1..V-1 are split into `num_classes` classes):
  - a document is BOS followed by tokens; after each ordinary token the document ends (the next
    token is BOS) with probability `end_prob`, so lengths are geometric;
  - otherwise, once the document has more than `copy_offset` tokens, the next token copies the
    token `copy_offset` positions back with probability `copy_prob`;
  - else it is drawn from a class bigram: next class ~ T[class(prev)] (each class has
    `class_fanout` successor classes), then the token ~ E within that class. After BOS the
    first class is uniform.

The copy needs attention (a model that sees only the previous token pays several nats more), while
the class bigram is low-rank, so a 2-layer 128-dim model learns most of it in a few hundred steps.
Because the process is explicit, `token_logprobs` gives log p_true(x_t | x_<t) for every token and
its mean over the val shard is the loss of the Bayes-optimal predictor.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from trainer.errors import DataError
from trainer.shards import write_shard

BOS = 0
_STREAM_LEN = 4096  # columns per parallel stream: >> mean document length, so stream seams are rare


@dataclass(frozen=True, kw_only=True)
class SynthSpec:
    vocab_size: int = 512
    seed: int = 0
    """Seeds the transition tables (the 'language'); sampling gets its own stream_seed."""
    num_classes: int = 32
    class_fanout: int = 4
    """Successor classes per class (Dirichlet(1) weights)."""
    emission_alpha: float = 1.0
    """Dirichlet concentration of the token weights inside a class (smaller = peakier)."""
    copy_prob: float = 0.5
    copy_offset: int = 8
    end_prob: float = 1 / 256

    def validate(self) -> None:
        if not 2 <= self.num_classes <= self.vocab_size - 1 or self.vocab_size > 65536:
            raise DataError(f"SynthSpec: need 2 <= num_classes={self.num_classes} <= vocab_size-1 and "
                            f"vocab_size={self.vocab_size} <= 65536; adjust the fields")
        if not 1 <= self.class_fanout <= self.num_classes:
            raise DataError(f"SynthSpec: class_fanout={self.class_fanout} must be in [1, num_classes]")
        if not (0 <= self.copy_prob < 1 and 0 < self.end_prob < 1 and self.copy_offset >= 1
                and self.emission_alpha > 0):
            raise DataError("SynthSpec: need 0 <= copy_prob < 1, 0 < end_prob < 1, copy_offset >= 1, "
                            "emission_alpha > 0; fix the out-of-range field")


@dataclass(frozen=True)
class _Tables:
    token_class: np.ndarray  # (V,) class of each token; BOS gets the start row index C
    class_cdf: np.ndarray  # (C+1, C) cumulative T[row]; row C (after BOS) is uniform
    class_logp: np.ndarray  # (C+1, C) log T, -inf off the fanout
    members: np.ndarray  # (C, S) tokens of each class, padded with BOS
    member_cdf: np.ndarray  # (C, S) cumulative emission weights, padded with 1.0 (never drawn)
    emit_logp: np.ndarray  # (V,) log E[token | its class]; 0 for BOS (unused)


def _cdf(weights: np.ndarray) -> np.ndarray:
    # Dividing by the last cumsum makes every trailing entry exactly 1.0; with u < 1 and
    # "count of cdf <= u" as the index, zero-weight and padding slots can never be drawn.
    c = np.cumsum(weights, axis=-1)
    return c / c[..., -1:]


def _tables(spec: SynthSpec) -> _Tables:
    spec.validate()
    rng = np.random.default_rng(spec.seed)
    V, C, F = spec.vocab_size, spec.num_classes, spec.class_fanout
    token_class = np.empty(V, dtype=np.int64)
    token_class[BOS] = C
    token_class[1:] = rng.permutation(np.arange(V - 1) % C)
    T = np.zeros((C + 1, C))
    for c in range(C):
        T[c, rng.choice(C, size=F, replace=False)] = rng.dirichlet(np.ones(F))
    T[C] = 1.0 / C
    with np.errstate(divide="ignore"):
        class_logp = np.log(T)
    S = int(np.bincount(token_class[1:], minlength=C).max())
    members = np.zeros((C, S), dtype=np.int64)
    member_w = np.zeros((C, S))
    emit_logp = np.zeros(V)
    for c in range(C):
        toks = np.flatnonzero(token_class == c)
        w = rng.dirichlet(np.full(toks.size, spec.emission_alpha))
        members[c, : toks.size] = toks
        member_w[c, : toks.size] = w
        emit_logp[toks] = np.log(w)
    return _Tables(token_class, _cdf(T), class_logp, members, _cdf(member_w), emit_logp)


def _draw(cdf_rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One categorical draw per row of `cdf_rows` (inverse CDF, vectorized over rows)."""
    u = rng.random(cdf_rows.shape[0])
    return (cdf_rows <= u[:, None]).sum(axis=1)


def _generate_streams(spec: SynthSpec, tab: _Tables, num_streams: int, length: int,
                      rng: np.random.Generator) -> np.ndarray:
    """(length, num_streams) tokens; every stream starts with BOS. Streams are independent and are
    stepped together, one column per step, so the Python loop runs `length` times whatever the width."""
    k, M = spec.copy_offset, num_streams
    out = np.empty((length, M), dtype=np.int64)
    out[0] = BOS
    pos = np.zeros(M, dtype=np.int64)  # position of the previous token in its document (BOS = 0)
    for t in range(1, length):
        prev = out[t - 1]
        cls = _draw(tab.class_cdf[tab.token_class[prev]], rng)
        tok = tab.members[cls, _draw(tab.member_cdf[cls], rng)]
        pos += 1
        if t > k:
            copy = (pos > k) & (rng.random(M) < spec.copy_prob)
            tok = np.where(copy, out[t - k], tok)
        end = (prev != BOS) & (rng.random(M) < spec.end_prob)
        out[t] = np.where(end, BOS, tok)
        pos[end] = 0
    return out


def generate(spec: SynthSpec, n_tokens: int, stream_seed: int) -> np.ndarray:
    """`n_tokens` tokens (int64) of the process, starting with BOS; deterministic in its arguments."""
    if n_tokens < 1:
        raise DataError(f"synth: n_tokens={n_tokens} must be >= 1")
    tab = _tables(spec)
    rng = np.random.default_rng([spec.seed, stream_seed])
    M = max(1, -(-n_tokens // _STREAM_LEN))
    # One spare column: a stream that ends on BOS drops it, so the next stream's BOS does not
    # follow a BOS (which the process never does); each stream still yields >= ceil(n/M) tokens.
    length = -(-n_tokens // M) + 1
    cols = _generate_streams(spec, tab, M, length, rng).T  # (M, length)
    keep = np.ones_like(cols, dtype=bool)
    keep[:, -1] = cols[:, -1] != BOS
    return cols[keep][:n_tokens]


def token_logprobs(spec: SynthSpec, tokens: np.ndarray) -> np.ndarray:
    """log p_true(x_t | x_<t) for t = 1..n-1 under the process (x_0 must be BOS)."""
    x = np.asarray(tokens, dtype=np.int64)
    if x.size == 0 or x[0] != BOS:
        raise DataError(f"synth: a token stream must start with BOS={BOS}; pass a whole synth shard")
    tab = _tables(spec)
    k, n = spec.copy_offset, x.size
    idx = np.arange(n)
    doc_start = np.maximum.accumulate(np.where(x == BOS, idx, 0))
    pos = idx - doc_start  # position in the document, BOS = 0
    prev, cur, cur_pos = x[:-1], x[1:], pos[1:]
    is_bos = cur == BOS
    cur_cls = np.where(is_bos, 0, tab.token_class[cur])  # BOS targets are handled separately
    bigram = np.exp(tab.class_logp[tab.token_class[prev], cur_cls] + tab.emit_logp[cur])
    copy_ok = cur_pos > k
    src = np.where(copy_ok, x[np.maximum(idx[1:] - k, 0)], -1)
    q = spec.copy_prob * copy_ok
    p_tok = q * (cur == src) + (1 - q) * bigram
    after_bos = prev == BOS
    p = np.where(after_bos, p_tok, (1 - spec.end_prob) * p_tok)
    p = np.where(is_bos, np.where(after_bos, 0.0, spec.end_prob), p)
    with np.errstate(divide="ignore"):
        return np.log(p)


@dataclass(frozen=True)
class SynthInfo:
    out_dir: str
    train_files: list[str]
    val_file: str
    vocab_size: int
    train_tokens: int
    val_tokens: int
    entropy_nats_per_token: float
    """Mean -log p_true(x_t | x_<t) over the val shard: the Bayes-optimal val loss."""
    unigram_entropy_nats: float
    ln_vocab: float


def unigram_entropy(tokens: np.ndarray, vocab_size: int) -> float:
    p = np.bincount(tokens, minlength=vocab_size) / tokens.size
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def write_synth_dataset(out_dir: str | Path, *, train_tokens: int = 4_000_000, val_tokens: int = 262_144,
                        seed: int = 0, num_train_shards: int = 2, spec: SynthSpec | None = None) -> SynthInfo:
    """Write synth_val_000000.bin, synth_train_000001.bin... and synth.json into `out_dir`.

    Val uses stream seed 0 and train shard i stream seed i, so the shards are independent samples
    of the same process."""
    spec = spec or SynthSpec(seed=seed)
    if num_train_shards < 1 or train_tokens < num_train_shards or val_tokens < 2:
        raise DataError(f"synth: need --shards >= 1, --train-tokens >= --shards and --val-tokens >= 2 "
                        f"(got {num_train_shards}, {train_tokens}, {val_tokens}); raise the counts")
    out = Path(out_dir)
    val = generate(spec, val_tokens, stream_seed=0)
    val_file = out / "synth_val_000000.bin"
    write_shard(val_file, val)
    train_files = []
    sizes = np.full(num_train_shards, train_tokens // num_train_shards)
    sizes[: train_tokens % num_train_shards] += 1
    for i, n in enumerate(sizes, start=1):
        path = out / f"synth_train_{i:06d}.bin"
        write_shard(path, generate(spec, int(n), stream_seed=i))
        train_files.append(str(path))
    info = SynthInfo(out_dir=str(out), train_files=train_files, val_file=str(val_file),
                     vocab_size=spec.vocab_size, train_tokens=train_tokens, val_tokens=val_tokens,
                     entropy_nats_per_token=float(-token_logprobs(spec, val).mean()),
                     unigram_entropy_nats=unigram_entropy(val, spec.vocab_size),
                     ln_vocab=math.log(spec.vocab_size))
    record = {**asdict(info), "generator": {"name": "class-bigram + copy", **asdict(spec)},
              "entropy_definition": "mean over val tokens t>=1 of -ln p_true(x_t | x_<t), full-document context"}
    (out / "synth.json").write_text(json.dumps(record, indent=2) + "\n")
    return info
