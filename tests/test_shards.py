"""The modded-nanogpt shard format: byte layout, round trips, and every malformed-file error."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from trainer.errors import DataError
from trainer.shards import (
    HEADER_BYTES,
    HEADER_INTS,
    MAGIC,
    VERSION,
    check_vocab,
    peek_shard,
    read_shard,
    resolve_shards,
    write_shard,
)


def test_layout_is_the_reference_bytes(tmp_path: Path) -> None:
    p = tmp_path / "s.bin"
    write_shard(p, [1, 2, 50256, 65535])
    raw = p.read_bytes()
    assert len(raw) == HEADER_BYTES + 8 and HEADER_INTS == 256
    header = np.frombuffer(raw[:HEADER_BYTES], dtype="<i4")
    assert header[:3].tolist() == [20240520, 1, 4] == [MAGIC, VERSION, 4]
    assert not header[3:].any()
    assert np.frombuffer(raw[HEADER_BYTES:], dtype="<u2").tolist() == [1, 2, 50256, 65535]


@pytest.mark.parametrize("mmap", [True, False])
def test_round_trip(tmp_path: Path, mmap: bool) -> None:
    tokens = np.random.default_rng(0).integers(0, 50257, size=10_001)
    p = tmp_path / "s.bin"
    write_shard(p, tokens)
    assert peek_shard(p) == tokens.size
    got = read_shard(p, mmap=mmap)
    assert got.dtype == np.uint16 and isinstance(got, np.memmap) == mmap
    np.testing.assert_array_equal(got, tokens)
    assert oct(p.stat().st_mode & 0o777) == oct(0o644)


def test_empty_shard(tmp_path: Path) -> None:
    p = tmp_path / "e.bin"
    write_shard(p, np.array([], dtype=np.int64))
    assert peek_shard(p) == 0 and read_shard(p).size == 0 and read_shard(p, mmap=False).size == 0


@pytest.mark.parametrize("bad", [[-1, 5], [65536], [1.5, 2.0]])
def test_write_rejects_ids_that_do_not_fit_uint16(tmp_path: Path, bad: list) -> None:
    p = tmp_path / "bad.bin"
    with pytest.raises(DataError, match=str(p)):
        write_shard(p, bad)
    assert not p.exists() and list(tmp_path.iterdir()) == []


def test_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "s.bin"
    write_shard(p, [7] * 10)
    before = p.read_bytes()

    def crash(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)  # fail after the payload is written, before the rename
    with pytest.raises(OSError, match="disk full"):
        write_shard(p, [9] * 1000)
    assert p.read_bytes() == before  # the old shard is intact
    assert [q.name for q in tmp_path.iterdir()] == ["s.bin"]  # and no temp file is left


def _raw(tmp_path: Path, header: list[int], n_payload_tokens: int) -> Path:
    h = np.zeros(HEADER_INTS, dtype="<i4")
    h[: len(header)] = header
    p = tmp_path / "raw.bin"
    p.write_bytes(h.tobytes() + np.zeros(n_payload_tokens, dtype="<u2").tobytes())
    return p


def test_wrong_magic(tmp_path: Path) -> None:
    p = _raw(tmp_path, [12345, 1, 3], 3)
    with pytest.raises(DataError) as e:
        peek_shard(p)
    msg = str(e.value)
    assert str(p) in msg and "12345" in msg and "20240520" in msg and "llm.c" in msg and "\n" not in msg


def test_wrong_version(tmp_path: Path) -> None:
    p = _raw(tmp_path, [MAGIC, 7, 3], 3)
    with pytest.raises(DataError, match=rf"{p}: shard version 7 != 1"):
        read_shard(p)


def test_truncated_payload(tmp_path: Path) -> None:
    p = _raw(tmp_path, [MAGIC, 1, 100], 60)
    with pytest.raises(DataError) as e:
        peek_shard(p)
    msg = str(e.value)
    assert str(p) in msg and "100 tokens" in msg and f"expected {HEADER_BYTES + 200} bytes" in msg
    assert f"found {HEADER_BYTES + 120}" in msg and "truncated" in msg and "re-download or regenerate" in msg


def test_payload_longer_than_header(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="longer than its header says"):
        peek_shard(_raw(tmp_path, [MAGIC, 1, 2], 3))


def test_shorter_than_header(tmp_path: Path) -> None:
    p = tmp_path / "tiny.bin"
    p.write_bytes(b"\x00" * 100)
    with pytest.raises(DataError, match=rf"{p}: file is 100 bytes, shorter than the 1024-byte shard header"):
        peek_shard(p)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_shard(tmp_path / "nope.bin")


def test_check_vocab(tmp_path: Path) -> None:
    toks = np.array([0, 3, 600, 2], dtype=np.uint16)
    check_vocab("f.bin", toks, 601)  # max id 600 fits
    with pytest.raises(DataError, match=r"f\.bin: token id 600 >= vocab_size=512; set vocab_size=640"):
        check_vocab("f.bin", toks, 512)
    with pytest.raises(DataError, match="vocab_size=50304"):
        check_vocab("g.bin", np.array([50256], dtype=np.uint16), 50000)


def test_resolve_shards_sorted_and_empty(tmp_path: Path) -> None:
    for name in ["x_train_000002.bin", "x_train_000001.bin", "x_val_000000.bin"]:
        write_shard(tmp_path / name, [1])
    got = resolve_shards(str(tmp_path / "x_train_*.bin"), field="train_files")
    assert [Path(g).name for g in got] == ["x_train_000001.bin", "x_train_000002.bin"]
    pattern = str(tmp_path / "nothing_*.bin")
    with pytest.raises(DataError) as e:
        resolve_shards(pattern, field="val_files")
    msg = str(e.value)
    assert msg.startswith(f"val_files={pattern!r} matches no files")
    assert "gatesweep data synth --out D" in msg and "gatesweep data fineweb" in msg

