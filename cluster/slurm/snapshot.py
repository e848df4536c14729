"""Code snapshots for queued jobs: a trial waiting in the Slurm queue runs the code of submit time.

The packages are copied into `runs/<spec>/.snapshots/<content hash>/` and the job's PYTHONPATH points
there, so editing (or `git checkout`-ing) the tree while a sweep waits cannot change what it runs.
The hash covers every file's path and bytes: an unchanged tree reuses its snapshot, and a requeued
job finds the same code again. The git SHA (+ `-dirty`) of submit time travels as GATESWEEP_GIT_SHA,
because the snapshot itself is no git checkout (trainer.runlog.git_info reads it).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

PACKAGES = ("trainer", "sweeps", "cluster", "analysis", "gatesweep")
MARKER = "SNAPSHOT.json"


def source_root() -> Path:
    """The directory that holds the packages this process runs (the checkout, or site-packages)."""
    return Path(__file__).resolve().parents[2]


def _files(root: Path, packages: tuple[str, ...]) -> list[Path]:
    out = []
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*")):
            rel = path.relative_to(root)
            # bytecode and editor/tool droppings are not code; a stale .pyc must not change the hash
            if path.is_file() and "__pycache__" not in rel.parts and path.suffix not in (".pyc", ".pyo") \
                    and not any(part.startswith(".") for part in rel.parts):
                out.append(rel)
    return out


def content_hash(root: Path, packages: tuple[str, ...] = PACKAGES) -> str:
    h = hashlib.sha256()
    for rel in _files(root, packages):
        data = (root / rel).read_bytes()
        h.update(f"{rel.as_posix()}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()[:16]


def snapshot_dir(sweep_dir: Path, digest: str) -> Path:
    return sweep_dir.resolve() / ".snapshots" / digest


def take_snapshot(sweep_dir: Path, root: Path | None = None, packages: tuple[str, ...] = PACKAGES) -> Path:
    """Copy the packages under their content hash (reused when it exists); returns the directory."""
    root = root or source_root()
    digest = content_hash(root, packages)
    dest = snapshot_dir(sweep_dir, digest)
    if (dest / MARKER).is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: a job never sees a half-copied snapshot, and two launchers
    # snapshotting the same tree at once both end up with one complete directory.
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=dest.parent))
    try:
        for rel in _files(root, packages):
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / rel, tmp / rel)
        if content_hash(tmp, packages) != digest:  # the tree changed while we copied: do not lie
            raise RuntimeError(f"{root} changed while it was being snapshotted; submit again")
        (tmp / MARKER).write_text(json.dumps({"hash": digest, "source": str(root), "git_sha": git_sha(root),
                                              "time": time.time()}, indent=1))
        try:
            os.rename(tmp, dest)
        except OSError:  # another launcher won the race with the same content
            if not (dest / MARKER).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def git_sha(root: Path | None = None) -> str:
    """`<sha>` or `<sha>-dirty` of the checkout that holds the packages; 'unknown' outside git."""
    root = root or source_root()
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        sha = res.stdout.strip()
        if res.returncode != 0 or not re.fullmatch(r"[0-9a-f]{40}", sha):
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", *PACKAGES], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
