"""The filesystem of runs/ must share its locks between hosts (#23 item 7): launchers refuse a runs/
directory whose mount keeps flock per host (NFS nolock / local_lock, Lustre localflock or no flock)
before anything is written, and warn where the mount cannot tell (FUSE, CIFS, BeeGFS)."""

from __future__ import annotations

from pathlib import Path

import pytest

import cluster.common.runs_fs as runs_fs
from cluster.common.runs_fs import Mount, check_runs_filesystem, mount_for, parse_mounts, verdict
from tests.slurm_helpers import gatesweep, unique, write_spec
from trainer.errors import StorageError

NFS = "srv:/export /shared nfs4 rw,relatime,vers=4.2,{opt}proto=tcp,local_lock={ll},addr=10.0.0.5 0 0"


@pytest.mark.parametrize(("line", "expected"), [
    (NFS.format(opt="", ll="none"), None),  # NFSv4: locks are part of the protocol
    ("srv:/e /shared nfs rw,vers=3,hard,proto=tcp,local_lock=none 0 0", None),  # v3 through lockd
    (NFS.format(opt="", ll="all"), "refuse"),
    (NFS.format(opt="", ll="flock"), "refuse"),
    ("srv:/e /shared nfs rw,vers=3,nolock,local_lock=all 0 0", "refuse"),
    ("10.0.0.1@o2ib:/fs /shared lustre rw,flock,lazystatfs 0 0", None),
    ("10.0.0.1@o2ib:/fs /shared lustre rw,localflock,lazystatfs 0 0", "refuse"),
    ("10.0.0.1@o2ib:/fs /shared lustre rw,lazystatfs 0 0", "refuse"),  # flock() fails: ENOSYS
    ("sshfs#me@h:/p /shared fuse.sshfs rw,nosuid,nodev 0 0", "warn"),
    ("//srv/share /shared cifs rw,vers=3.0 0 0", "warn"),
    ("beegfs_nodev /shared beegfs rw,cfgFile=/etc/beegfs/beegfs-client.conf 0 0", "warn"),
    ("gluster:/vol /shared fuse.glusterfs rw,default_permissions 0 0", None),
    ("/dev/vda /shared ext4 rw,relatime 0 0", None),
])
def test_what_each_mount_gives_the_locks(line: str, expected: str | None):
    (m,) = parse_mounts(line)
    found = verdict(m)
    assert (found[0] if found else None) == expected, found


def test_the_mount_of_a_path_is_the_longest_mount_point_above_it():
    mounts = parse_mounts("/dev/vda / ext4 rw 0 0\nsrv:/e /shared nfs4 rw,local_lock=all 0 0\n"
                          "srv:/p /shared/my\\040project nfs4 rw,local_lock=none 0 0\n")
    assert mount_for("/shared/x/runs", mounts) == Mount("/shared", "nfs4", ("rw", "local_lock=all"))
    assert mount_for("/shared/my project/runs", mounts).point == "/shared/my project"  # type: ignore[union-attr]
    assert mount_for("/sharedother", mounts).point == "/"  # type: ignore[union-attr]


def test_a_runs_dir_with_host_local_locks_is_refused_and_a_fuse_one_warned(tmp_path: Path, capsys):
    runs = tmp_path / "runs" / "spec"
    with pytest.raises(StorageError, match=r"local_lock=all: its locks are local to each host.*run the same trial"):
        check_runs_filesystem(runs, f"srv:/e {tmp_path} nfs4 rw,local_lock=all 0 0\n")
    check_runs_filesystem(runs, f"sshfs#h:/p {tmp_path} fuse.sshfs rw 0 0\n")
    assert "warning:" in capsys.readouterr().err
    check_runs_filesystem(runs, f"srv:/e {tmp_path} nfs4 rw,local_lock=none 0 0\n")  # fine: no error, no warning
    assert capsys.readouterr().err == ""


def test_gatesweep_run_refuses_before_writing_anything(tmp_path: Path, monkeypatch):
    """The launcher's edge: exit 2 with the mount, the reason and the fix; no runs/ directory, no record."""
    monkeypatch.chdir(tmp_path)
    mounts = tmp_path / "mounts"
    mounts.write_text(f"/dev/vda / ext4 rw 0 0\nsrv:/e {tmp_path} nfs rw,vers=3,nolock 0 0\n")
    monkeypatch.setattr(runs_fs, "MOUNTS", mounts)
    name = unique("nolock")
    write_spec(tmp_path / "spec.yaml", name, gates=["none"], resources={"gpus_per_node": 0})
    code, out, err = gatesweep(["--tracking-uri", "http://127.0.0.1:9", "run", "spec.yaml", "--backend", "local"])
    assert code == 2, out + err
    assert "nfs mounted with nolock" in err and "README" in err
    assert not (tmp_path / "runs").exists()
