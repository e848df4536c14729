"""`data text` with the real GPT-2 tokenizer (tiktoken built offline from the shared ranks file)."""

from __future__ import annotations

import os
import socket
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from trainer.data_cli import main as data_main
from trainer.errors import DataError
from trainer.shards import read_shard
from trainer.textdata import EOT, load_gpt2_encoding, split_documents, write_text_dataset

RANKS = Path(os.environ.get("GATESWEEP_GPT2_TIKTOKEN", "/work/shared/data/tokenizer/gpt2.tiktoken"))

DOCS = [
    "Hello world",
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    "must be in want of a wife.",
    "The quick brown fox jumps over the lazy dog.",
    "A literal <|endoftext|> inside a file is just text.",
    "Call me Ishmael. Some years ago - never mind how long precisely - I thought I would sail about.",
    "In the beginning was the Word.",
    "To be, or not to be, that is the question.",
    "All happy families are alike; each unhappy family is unhappy in its own way.",
]


@cache
def encoding() -> Any:
    if not RANKS.is_file():
        pytest.fail(f"{RANKS} is missing: set GATESWEEP_GPT2_TIKTOKEN to a gpt2.tiktoken ranks file")
    return load_gpt2_encoding(RANKS)


def write_docs(tmp_path: Path) -> list[Path]:
    paths = []
    for i, d in enumerate(DOCS):
        p = tmp_path / "src" / f"doc{i}.txt"
        p.parent.mkdir(exist_ok=True)
        p.write_text(d + "\n", encoding="utf-8")
        paths.append(p)
    return paths


def split_on_eot(tokens: np.ndarray) -> list[tuple[int, ...]]:
    starts = np.flatnonzero(tokens == EOT).tolist() + [tokens.size]
    assert starts[0] == 0, "a shard must start with <|endoftext|>"
    return [tuple(tokens[a:b].tolist()) for a, b in zip(starts[:-1], starts[1:])]


def test_known_ids() -> None:
    enc = encoding()
    assert enc.encode("Hello world") == [15496, 995]
    assert enc.encode(" the") == [262]
    assert enc.encode("<|endoftext|>", allowed_special="all") == [EOT]


def test_split_is_by_document_disjoint_complete_and_deterministic(tmp_path: Path) -> None:
    files = write_docs(tmp_path)
    kw: dict[str, Any] = dict(val_fraction=0.25, seed=3, tokenizer_file=RANKS)
    info = write_text_dataset(files, tmp_path / "a", **kw)
    assert [Path(p).name for p in info.val_files] == ["text_val_000000.bin"]
    assert [Path(p).name for p in info.train_files] == ["text_train_000001.bin"]
    val_docs = split_on_eot(np.asarray(read_shard(info.val_files[0])))
    train_docs = split_on_eot(np.asarray(read_shard(info.train_files[0])))
    expected = {(EOT, *encoding().encode_ordinary(d)) for d in DOCS}
    assert set(val_docs).isdisjoint(train_docs)
    assert set(val_docs) | set(train_docs) == expected and len(val_docs) + len(train_docs) == len(DOCS)
    assert (EOT, 15496, 995) in expected  # "Hello world" as its own document
    assert info.num_val_docs == len(val_docs) >= 1 and info.val_tokens == sum(map(len, val_docs))
    # The literal special-token text stays ordinary text: one EOT per document, none inside.
    assert sum(t == EOT for d in val_docs + train_docs for t in d) == len(DOCS)

    again = write_text_dataset(files, tmp_path / "b", **kw)
    for x, y in zip(info.val_files + info.train_files, again.val_files + again.train_files):
        assert Path(x).read_bytes() == Path(y).read_bytes()
    other = write_text_dataset(files, tmp_path / "c", **{**kw, "seed": 4})
    assert Path(other.val_files[0]).read_bytes() != Path(info.val_files[0]).read_bytes()


def test_val_fraction_is_by_tokens_in_whole_documents() -> None:
    sizes = [100] * 20
    val, train = split_documents(sizes, val_fraction=0.1, seed=0)
    assert len(val) == 2 and sorted(val + train) == list(range(20))
    assert split_documents(sizes, val_fraction=0.1, seed=0) == (val, train)
    val, train = split_documents([1000, 1], val_fraction=0.99, seed=1)
    assert len(val) == 1 and len(train) == 1  # never an empty side


def test_blank_line_documents_and_small_shards(tmp_path: Path) -> None:
    src = tmp_path / "book.txt"
    paragraphs = [f"Paragraph number {i} says something about the sea and the ship." for i in range(30)]
    src.write_text("\n\n  \n".join(paragraphs) + "\n", encoding="utf-8")
    info = write_text_dataset([src], tmp_path / "out", prefix="book", val_fraction=0.2, seed=0,
                              shard_tokens=64, split_blank_lines=True, tokenizer_file=RANKS)
    assert info.num_val_docs + info.num_train_docs == 30
    names = [Path(p).name for p in info.train_files]
    assert names[:2] == ["book_train_000001.bin", "book_train_000002.bin"] and len(names) > 2
    sizes = [read_shard(p).size for p in info.train_files]
    assert all(s == 64 for s in sizes[:-1]) and 0 < sizes[-1] <= 64
    train = np.concatenate([read_shard(p) for p in info.train_files])
    assert train.size == info.train_tokens and len(split_on_eot(train)) == info.num_train_docs


def test_cli_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = write_docs(tmp_path)
    rc = data_main(["text", *map(str, files), "--out", str(tmp_path / "cli"), "--tokenizer-file", str(RANKS),
                    "--val-fraction", "0.2", "--seed", "1"])
    out = capsys.readouterr().out
    assert rc == 0 and out.startswith("text: wrote 1 train + 1 val shards") and out.count("\n") == 1
    assert sorted(p.name for p in (tmp_path / "cli").iterdir()) == ["text_train_000001.bin", "text_val_000000.bin"]


def test_user_errors(tmp_path: Path) -> None:
    files = write_docs(tmp_path)
    with pytest.raises(DataError, match=r"missing\.txt: no such text file"):
        write_text_dataset([tmp_path / "missing.txt"], tmp_path / "o", tokenizer_file=RANKS)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.txt: not valid UTF-8 at byte 3; convert it"):
        write_text_dataset([latin1, files[0]], tmp_path / "o", tokenizer_file=RANKS)
    with pytest.raises(DataError, match=r"1 document\(s\) cannot be split.*--split-blank-lines"):
        write_text_dataset(files[:1], tmp_path / "o", tokenizer_file=RANKS)
    with pytest.raises(DataError, match=r"--val-fraction=1\.0 must be in \(0, 1\)"):
        write_text_dataset(files, tmp_path / "o", val_fraction=1.0, tokenizer_file=RANKS)
    wrong = tmp_path / "wrong.tiktoken"
    wrong.write_bytes(b"SGVsbG8= 0\n")
    with pytest.raises(DataError, match=r"wrong\.tiktoken: sha256 is not the GPT-2 ranks file"):
        load_gpt2_encoding(wrong)
    assert not (tmp_path / "o").exists()  # nothing is written before every input checked out


def test_get_encoding_without_network_names_the_offline_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # tiktoken fetches over HTTPS; route that through a proxy address on loopback where nothing listens.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-cache"))
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(var, f"http://127.0.0.1:{port}")
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    import tiktoken.registry

    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})  # no encoding built earlier in this process
    with pytest.raises(DataError, match=r"get_encoding\('gpt2'\) failed .*needs network - pass --tokenizer-file"):
        load_gpt2_encoding(None)
