"""What the exactly-once guarantees need from the filesystem of runs/, and the check of it.

Every launcher, and every host a trial runs on, coordinates through runs/<spec>/: a trial's liveness
lock and the submission lock (flock), the delivery lock beside each record, the results.csv append lock,
and records and checkpoints replaced by rename. On a cluster that directory is shared, so its locks must
be seen by every host: an flock taken on one node must block the same flock on another, and be dropped
when its holder dies. NFS gives that (NFSv4 natively; v3 through lockd) unless mounted `nolock` or
`local_lock=flock|all`; Lustre only when mounted `-o flock` (`localflock` is per node, and without
either flock() fails); FUSE filesystems usually keep locks on the host that took them. Where the
mount says locks are host-local, a second launcher or a requeued job on another node would run a
trial twice: refuse. Where it cannot be told from the mount, warn.

Pure: `mount_for` and `verdict` read text; `check_runs_filesystem` reads /proc/self/mounts.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from trainer.errors import StorageError

MOUNTS = Path("/proc/self/mounts")
FIX = ("put runs/ (the project directory) on a filesystem whose locks every node sees, or remount it; "
       "see README, \"Running on a real cluster\"")


@dataclass(frozen=True)
class Mount:
    point: str
    fstype: str
    options: tuple[str, ...]


def parse_mounts(text: str) -> list[Mount]:
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 4:  # /proc/mounts writes a space in a path as \040
            out.append(Mount(fields[1].replace("\\040", " "), fields[2], tuple(fields[3].split(","))))
    return out


def mount_for(path: str, mounts: list[Mount]) -> Mount | None:
    """The mount `path` (absolute, symlinks resolved) lives on: the longest mount point above it."""
    best = None
    for m in mounts:
        inside = path == m.point or path.startswith(m.point.rstrip("/") + "/")
        if inside and (best is None or len(m.point) >= len(best.point)):
            best = m
    return best


def verdict(m: Mount) -> tuple[str, str] | None:
    """('refuse' | 'warn', why) for a mount whose flock is not shared by every host, else None."""
    opts = set(m.options)
    local_lock = next((o.split("=", 1)[1] for o in m.options if o.startswith("local_lock=")), "none")
    if m.fstype in ("nfs", "nfs4"):
        if "nolock" in opts or local_lock in ("flock", "all"):
            which = "nolock" if "nolock" in opts else f"local_lock={local_lock}"
            return "refuse", f"{m.fstype} mounted with {which}: its locks are local to each host"
        return None
    if m.fstype == "lustre":
        if "localflock" in opts:
            return "refuse", "lustre mounted with localflock: its locks are local to each host"
        if "flock" not in opts:
            return "refuse", "lustre mounted without -o flock: flock() fails on it"
        return None
    if m.fstype in ("fuse.glusterfs", "fuse.ceph-fuse", "fuse.cephfs"):
        return None  # these FUSE clients take cluster-wide locks
    if m.fstype.startswith("fuse") or m.fstype in ("cifs", "smb3", "9p", "beegfs"):
        return "warn", f"{m.fstype}: whether its locks are seen by every host depends on its server and options"
    return None


def check_runs_filesystem(runs_dir: Path, mounts_text: str | None = None) -> None:
    """StorageError (exit 2, before anything is written) where runs/'s locks are host-local; a warning
    where that cannot be told from the mount."""
    if mounts_text is None:
        try:
            mounts_text = MOUNTS.read_text()
        except OSError:
            return  # not Linux: nothing to read the mount from
    probe = runs_dir.resolve()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    m = mount_for(os.path.realpath(probe), parse_mounts(mounts_text))
    found = verdict(m) if m else None
    if found is None:
        return
    level, why = found
    where = f"{runs_dir} is on {m.point} ({why})" if m else str(runs_dir)
    if level == "refuse":
        raise StorageError(f"{where}: two hosts could run the same trial at once or record it twice; {FIX}")
    print(f"warning: {where}: exactly-once needs flock shared by every host; make sure it is", file=sys.stderr)
