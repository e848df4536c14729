"""Real filesystem failures for tests: a full disk (ENOSPC) and a read-only directory (EROFS).

A command runs in a private mount namespace - `unshare --mount` as root, else a user namespace that
maps the caller to root - where a tmpfs of a few pages is mounted over a directory (writes there
fail with the kernel's own ENOSPC, part-way through a write when a page runs out) or a directory is
bind-mounted read-only. Nothing outside the namespace sees either mount; the tmpfs vanishes with the
namespace, so a script copies what the test inspects to the real disk before it ends.
"""

from __future__ import annotations

import functools
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

CANDIDATES = (["unshare", "--mount"], ["unshare", "--user", "--map-root-user", "--mount"])


@functools.cache
def namespace_prefix() -> list[str] | None:
    """The first unshare command line that can mount a tmpfs here, or None."""
    with tempfile.TemporaryDirectory() as d:
        for prefix in CANDIDATES:
            if prefix == CANDIDATES[0] and os.geteuid() != 0:
                continue
            try:
                res = subprocess.run([*prefix, "sh", "-c", f"mount -t tmpfs -o size=16k tmpfs {d}"],
                                     capture_output=True, timeout=30)
            except (OSError, subprocess.SubprocessError):
                continue
            if res.returncode == 0:
                return list(prefix)
    return None


def in_namespace(script: str, *, cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a bash script in a private mount namespace (its mounts: `small_fs DIR SIZE`, `read_only DIR`)."""
    prefix = namespace_prefix()
    if prefix is None:
        pytest.skip("needs a private mount namespace (unshare --mount, or user namespaces) to make a real "
                    "full or read-only filesystem")
    preamble = ('set -u\n'
                'small_fs() { mkdir -p "$1" && mount -t tmpfs -o "size=$2" tmpfs "$1"; }\n'
                'read_only() { mkdir -p "$1" && mount --bind "$1" "$1" && mount -o remount,bind,ro "$1"; }\n')
    return subprocess.run([*prefix, "bash", "-c", preamble + script], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
