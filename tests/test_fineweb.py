"""`data fineweb` against a real HTTP server on loopback that speaks the hub's /resolve/ layout, driven
by the real huggingface_hub client."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from trainer.errors import DataError
from trainer.fineweb import REPO_ID, download_fineweb, fineweb_filenames
from trainer.shards import HEADER_BYTES, peek_shard, read_shard, write_shard

REPO_ROOT = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"
PREFIX = f"/datasets/{REPO_ID}/resolve/main/"


class HubServer:
    """Serves `files` (name -> bytes) and records every request as (method, filename)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.status = 200  # answer every request with this status instead, when not 200
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self) -> None:
                self._answer(body=False)

            def do_GET(self) -> None:
                self._answer(body=True)

            def _answer(self, *, body: bool) -> None:
                name = self.path.split("?")[0].removeprefix(PREFIX)
                hub.requests.append((self.command, name))
                data = hub.files.get(name) if self.path.startswith(PREFIX) else None
                if hub.status != 200:
                    self.send_response(hub.status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if data is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("X-Error-Message", "Entry not found")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("X-Repo-Commit", COMMIT)
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def log_message(self, *args: object) -> None:  # keep pytest output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def add_shard(self, name: str, tokens: np.ndarray, tmp: Path) -> None:
        path = tmp / "served" / name
        write_shard(path, tokens)
        self.files[name] = path.read_bytes()

    def gets(self) -> list[str]:
        return [n for m, n in self.requests if m == "GET"]


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    server = HubServer()
    server.thread.start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    rng = np.random.default_rng(0)
    for name in fineweb_filenames(3):
        server.add_shard(name, rng.integers(0, 50257, size=1000 + len(server.files)), tmp_path)
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def test_download_two_chunks_then_rerun_fetches_nothing(hub: HubServer, tmp_path: Path) -> None:
    out = tmp_path / "fw"
    res = download_fineweb(2, out)
    names = ["fineweb_val_000000.bin", "fineweb_train_000001.bin", "fineweb_train_000002.bin"]
    assert [Path(p).name for p in res.downloaded] == names
    assert sorted(hub.gets()) == sorted(names)  # chunk 3 is served but was not asked for
    for n in names:
        assert (out / n).read_bytes() == hub.files[n]
        assert peek_shard(out / n) == len(hub.files[n]) // 2 - HEADER_BYTES // 2
    assert res.tokens == sum(peek_shard(out / n) for n in names)

    before = len(hub.requests)
    again = download_fineweb(2, out)
    assert again.downloaded == [] and len(again.skipped) == 3
    assert len(hub.requests) == before  # not even a HEAD

    # Growing to 3 chunks fetches only the new one.
    third = download_fineweb(3, out)
    assert [Path(p).name for p in third.downloaded] == ["fineweb_train_000003.bin"]


def test_a_bad_local_file_is_replaced(hub: HubServer, tmp_path: Path) -> None:
    out = tmp_path / "fw"
    download_fineweb(1, out)
    victim = out / "fineweb_train_000001.bin"
    victim.write_bytes(victim.read_bytes()[:-10])  # truncated, as after a crash outside hf_hub
    res = download_fineweb(1, out)
    assert [Path(p).name for p in res.downloaded] == ["fineweb_train_000001.bin"]
    assert victim.read_bytes() == hub.files["fineweb_train_000001.bin"]


def test_corrupt_served_file_is_removed_and_reported(hub: HubServer, tmp_path: Path) -> None:
    good = hub.files["fineweb_train_000001.bin"]
    hub.files["fineweb_train_000001.bin"] = good[: len(good) - 100]  # header promises more tokens
    out = tmp_path / "fw"
    with pytest.raises(DataError) as e:
        download_fineweb(1, out)
    msg = str(e.value)
    assert "fineweb_train_000001.bin" in msg and "truncated" in msg and "removed" in msg
    assert "\n" not in msg
    assert not (out / "fineweb_train_000001.bin").exists()
    assert read_shard(out / "fineweb_val_000000.bin").size > 0  # the good one before it stays


def test_missing_file_is_a_clear_error(hub: HubServer, tmp_path: Path) -> None:
    del hub.files["fineweb_train_000002.bin"]
    with pytest.raises(DataError, match=r"fineweb_train_000002\.bin: not found in dataset kjj0/fineweb10B-gpt2 "
                                        r"at http://127\.0\.0\.1:\d+; lower --chunks"):
        download_fineweb(2, tmp_path / "fw")
    assert not (tmp_path / "fw" / "fineweb_train_000002.bin").exists()


def test_http_error_is_a_clear_error(hub: HubServer, tmp_path: Path) -> None:
    # 403 is not retried by hf_hub (connection errors are, for ~23 s, which is why none is tested here).
    hub.status = 403
    with pytest.raises(DataError, match=r"fineweb_val_000000\.bin: cannot fetch from kjj0/fineweb10B-gpt2 at "
                                        r"http://127\.0\.0\.1:\d+ \(403 .*\); check the network"):
        download_fineweb(1, tmp_path / "fw")


def test_chunks_out_of_range() -> None:
    with pytest.raises(DataError, match=r"--chunks=0 must be in \[1, 103\]"):
        fineweb_filenames(0)
    with pytest.raises(DataError, match="--chunks=104"):
        fineweb_filenames(104)


def test_cli_in_a_fresh_process_reads_the_environment(hub: HubServer, tmp_path: Path) -> None:
    # A new interpreter imports huggingface_hub with HF_ENDPOINT/HF_HOME already set, as a user's shell does.
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    code = "import sys; from trainer.data_cli import main; sys.exit(main(sys.argv[1:]))"
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-c", code, "fineweb", "--chunks", "1", "--dir", str(out)],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "downloaded 2" in proc.stdout and "skipped 0" in proc.stdout
    assert sorted(p.name for p in out.glob("*.bin")) == ["fineweb_train_000001.bin", "fineweb_val_000000.bin"]


def test_cli_offline_mode_is_a_clear_error(hub: HubServer, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    code = "import sys; from trainer.data_cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, "fineweb", "--chunks", "1", "--dir", str(tmp_path / "o")],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "DataError: fineweb_val_000000.bin: HF_HUB_OFFLINE is set" in proc.stderr
    assert hub.requests == []
