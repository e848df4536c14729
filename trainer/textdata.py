"""`gatesweep data text`: local text files -> GPT-2 token shards in the modded-nanogpt format.

Every document starts with <|endoftext|> (50256), as in the reference's FineWeb shards. Whole
documents go to val or train (never split between them); val is `<prefix>_val_000000.bin...`, train
`<prefix>_train_000001.bin...`, each shard at most `shard_tokens` long.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainer.errors import DataError
from trainer.shards import write_shard

EOT = 50256
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
GPT2_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_BLANK_LINES = re.compile(r"\n[ \t\r\f\v]*\n")


@dataclass(frozen=True)
class TextInfo:
    train_files: list[str]
    val_files: list[str]
    num_train_docs: int
    num_val_docs: int
    train_tokens: int
    val_tokens: int


def load_gpt2_encoding(tokenizer_file: str | Path | None = None) -> Any:
    """The GPT-2 tiktoken encoding; from a local `gpt2.tiktoken` ranks file when given (offline)."""
    try:
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe
    except ImportError:
        raise DataError("tokenizing text needs tiktoken: pip install tiktoken (or gatesweep[data])") from None
    if tokenizer_file is None:
        try:
            return tiktoken.get_encoding("gpt2")
        except Exception as e:  # tiktoken fetches the ranks over HTTP; any failure means the same fix
            raise DataError(f"tiktoken.get_encoding('gpt2') failed ({type(e).__name__}); it downloads the "
                            f"GPT-2 ranks and needs network - pass --tokenizer-file PATH/gpt2.tiktoken") from None
    path = Path(tokenizer_file)
    if not path.is_file():
        raise DataError(f"--tokenizer-file {path}: no such file; point it at a gpt2.tiktoken ranks file")
    try:
        ranks = load_tiktoken_bpe(str(path), expected_hash=GPT2_RANKS_SHA256)
    except ValueError:
        raise DataError(f"--tokenizer-file {path}: sha256 is not the GPT-2 ranks file's "
                        f"({GPT2_RANKS_SHA256[:12]}...); use the gpt2.tiktoken that tiktoken expects") from None
    return tiktoken.Encoding(name="gpt2", explicit_n_vocab=EOT + 1, pat_str=GPT2_PAT,
                             mergeable_ranks=ranks, special_tokens={"<|endoftext|>": EOT})


def read_documents(files: Sequence[str | Path], *, split_blank_lines: bool = False) -> list[str]:
    """One document per file, or per blank-line-separated block with `split_blank_lines`."""
    docs: list[str] = []
    for f in files:
        try:
            text = Path(f).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise DataError(f"{f}: no such text file; check the FILES arguments") from None
        except UnicodeDecodeError as e:
            raise DataError(f"{f}: not valid UTF-8 at byte {e.start}; convert it with iconv -t UTF-8") from None
        except OSError as e:  # a directory, no permission, ...
            raise DataError(f"{f}: cannot read it as a text file ({e.strerror}); pass text files, "
                            "e.g. DIR/*.txt") from None
        parts = _BLANK_LINES.split(text) if split_blank_lines else [text]
        docs.extend(p for p in (p.strip("\n") for p in parts) if p.strip())
    return docs


def tokenize_documents(enc: Any, docs: Sequence[str]) -> list[np.ndarray]:
    # encode_ordinary: a literal "<|endoftext|>" inside a file is text, not a document boundary.
    return [np.array([EOT, *enc.encode_ordinary(d)], dtype=np.uint16) for d in docs]


def split_documents(num_tokens: Sequence[int], *, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of (val, train) documents: shuffle with `seed`, then take whole documents into val
    until it holds `val_fraction` of all tokens (at least one document each side)."""
    n = len(num_tokens)
    if not 0 < val_fraction < 1:
        raise DataError(f"--val-fraction={val_fraction} must be in (0, 1); e.g. 0.1")
    if n < 2:
        raise DataError(f"text: {n} document(s) cannot be split into train and val; pass more files "
                        f"or --split-blank-lines")
    order = np.random.default_rng(seed).permutation(n).tolist()
    target = val_fraction * sum(num_tokens)
    n_val, acc = 0, 0
    while n_val < n - 1 and (n_val == 0 or acc < target):
        acc += num_tokens[order[n_val]]
        n_val += 1
    return order[:n_val], order[n_val:]


def _write_split(tokens: np.ndarray, out: Path, name: str, first_index: int, shard_tokens: int) -> list[str]:
    paths = []
    for i, start in enumerate(range(0, tokens.size, shard_tokens)):
        path = out / f"{name}_{first_index + i:06d}.bin"
        write_shard(path, tokens[start: start + shard_tokens])
        paths.append(str(path))
    return paths


def write_text_dataset(files: Sequence[str | Path], out_dir: str | Path, *, prefix: str = "text",
                       val_fraction: float = 0.1, seed: int = 0, shard_tokens: int = 10**8,
                       split_blank_lines: bool = False, tokenizer_file: str | Path | None = None) -> TextInfo:
    if shard_tokens < 1:
        raise DataError(f"--shard-tokens={shard_tokens} must be >= 1; the reference uses 100000000")
    docs = read_documents(files, split_blank_lines=split_blank_lines)
    toks = tokenize_documents(load_gpt2_encoding(tokenizer_file), docs)
    val_idx, train_idx = split_documents([t.size for t in toks], val_fraction=val_fraction, seed=seed)
    out = Path(out_dir)
    val = np.concatenate([toks[i] for i in val_idx])
    train = np.concatenate([toks[i] for i in train_idx])
    # Same numbering as the reference: val counts from 000000, train from 000001.
    val_files = _write_split(val, out, f"{prefix}_val", 0, shard_tokens)
    train_files = _write_split(train, out, f"{prefix}_train", 1, shard_tokens)
    return TextInfo(train_files=train_files, val_files=val_files, num_train_docs=len(train_idx),
                    num_val_docs=len(val_idx), train_tokens=int(train.size), val_tokens=int(val.size))
