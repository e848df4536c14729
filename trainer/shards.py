"""The modded-nanogpt token shard: 256 int32 header ints ([0]=magic, [1]=version, [2]=ntok), then
ntok uint16 tokens. The format is the reference's `data/fineweb.py`; every reader and writer of token
files in gatesweep goes through this module so the checks and messages live in one place.
"""

from __future__ import annotations

import glob
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from trainer.errors import DataError

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
MAX_TOKEN = 65535  # uint16 storage; a GPT-2 id (<= 50256) always fits

PathLike = str | os.PathLike


def write_shard(path: PathLike, tokens: np.ndarray | Sequence[int]) -> None:
    """Write `tokens` as one shard. The file appears complete or not at all (temp file + rename)."""
    path = Path(path)
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise DataError(f"{path}: tokens must be a 1-D sequence, got shape {arr.shape}; flatten them first")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{path}: tokens must be integers, got dtype {arr.dtype}; tokenize the text first")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > MAX_TOKEN):
        raise DataError(f"{path}: token ids must be in [0, {MAX_TOKEN}] to fit uint16, found range "
                        f"[{int(arr.min())}, {int(arr.max())}]; use a tokenizer with < 65536 ids")
    if arr.size > np.iinfo(np.int32).max:
        raise DataError(f"{path}: {arr.size} tokens do not fit the int32 count in the header; "
                        f"write several shards (the reference uses 10^8 tokens each)")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (MAGIC, VERSION, arr.size)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(header.tobytes())
            f.write(arr.astype("<u2", copy=False).tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; shards are shared data
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_header(path: PathLike) -> np.ndarray:
    """The 256 header ints, validated against magic, version and the file size."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
    except FileNotFoundError:
        raise DataError(f"{path}: shard file does not exist; check the file pattern or regenerate the data") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read the shard ({e.strerror}); check the path and its permissions") from None
    if len(raw) < HEADER_BYTES:
        raise DataError(f"{path}: file is {size} bytes, shorter than the {HEADER_BYTES}-byte shard header; "
                        f"it is truncated or not a token shard - re-download or regenerate it")
    header = np.frombuffer(raw, dtype="<i4")
    if header[0] != MAGIC:
        # Early llm.c files were raw uint16 tokens with no header, so their "magic" is two token ids.
        raise DataError(f"{path}: magic number {int(header[0])} != {MAGIC}: not a modded-nanogpt shard "
                        f"(maybe an old headerless llm.c-format file); regenerate it with `gatesweep data` "
                        f"or re-download it")
    if header[1] != VERSION:
        raise DataError(f"{path}: shard version {int(header[1])} != {VERSION}; only version {VERSION} "
                        f"(uint16 tokens) is supported - regenerate the file")
    ntok = int(header[2])
    expected = HEADER_BYTES + 2 * ntok
    if ntok < 0 or size != expected:
        state = "truncated" if size < expected else "longer than its header says"
        raise DataError(f"{path}: header says {ntok} tokens, so expected {expected} bytes, found {size} "
                        f"({state}); re-download or regenerate the file")
    return header


def peek_shard(path: PathLike) -> int:
    """Token count of a shard, from its (validated) header."""
    return int(read_header(path)[2])


def read_shard(path: PathLike, *, mmap: bool = True) -> np.ndarray:
    """The shard's tokens as uint16: a read-only memmap (no copy) or, with mmap=False, an array in RAM."""
    ntok = peek_shard(path)
    if mmap:
        if ntok == 0:  # np.memmap refuses zero-length maps
            return np.zeros(0, dtype=np.uint16)
        return np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(ntok,))
    with open(path, "rb") as f:
        f.seek(HEADER_BYTES)
        return np.frombuffer(f.read(2 * ntok), dtype="<u2").astype(np.uint16)


def check_vocab(path: PathLike, tokens: np.ndarray, vocab_size: int) -> None:
    """Raise if any token id would index past the model's embedding table."""
    if tokens.size == 0:
        return
    top = int(tokens.max())
    if top >= vocab_size:
        raise DataError(f"{path}: token id {top} >= vocab_size={vocab_size}; set vocab_size={_round_up(top + 1)} "
                        f"(or more) or use data made for this vocabulary")


# (device, inode, size, mtime_ns, vocab_size) of shards whose ids all fit: the trainer's preflight and
# its loaders open the same shards, and a full scan of a 10^8-token shard reads 200 MB.
_VOCAB_CHECKED: set[tuple[int, int, int, int, int]] = set()


def check_vocab_once(path: PathLike, tokens: np.ndarray, vocab_size: int) -> None:
    """check_vocab, skipped for a file this process already checked against vocab_size (same inode,
    size and modification time: a rewritten shard is checked again)."""
    st = os.stat(path)
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, vocab_size)
    if key not in _VOCAB_CHECKED:
        check_vocab(path, tokens, vocab_size)
        _VOCAB_CHECKED.add(key)


def _round_up(n: int, multiple: int = 128) -> int:
    # Embedding tables are padded to a multiple of 128 (50257 -> 50304 in the reference).
    return -(-n // multiple) * multiple


def resolve_shards(pattern: str, *, field: str) -> list[str]:
    """The files matching `pattern`, sorted (the reference's order)."""
    files = sorted(glob.glob(os.path.expanduser(pattern)))
    if not files:
        raise DataError(f"{field}={pattern!r} matches no files; create data with `gatesweep data synth --out D` "
                        f"(tiny runs), `gatesweep data text FILES --out D` or `gatesweep data fineweb`, "
                        f"or fix the pattern")
    return files
