"""Code snapshots: queued jobs run the code of submit time. Pure tests of the snapshot itself, and a
held Slurm job whose checkout is edited while it waits."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from cluster.slurm.snapshot import MARKER, PACKAGES, content_hash, source_root, take_snapshot
from sweeps.spec import Resources
from tests.slurm_helpers import PROBE, probe_results, squeue, submit_probe, wait_until


def checkout_copy(dest: Path, mark: str) -> Path:
    """The project's packages copied to `dest`, plus a module whose value the test changes."""
    for pkg in PACKAGES:
        shutil.copytree(source_root() / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (dest / "trainer" / "_probe_mark.py").write_text(f"MARK = {mark!r}\n")
    return dest


def test_snapshot_is_reused_when_unchanged_and_new_after_an_edit(tmp_path):
    src = checkout_copy(tmp_path / "checkout", "v1")
    sweep = tmp_path / "runs" / "spec"
    first = take_snapshot(sweep, src)
    assert first.parent == (sweep / ".snapshots").resolve() and first.name == content_hash(src)
    assert (first / MARKER).is_file() and (first / "trainer" / "_probe_mark.py").read_text() == "MARK = 'v1'\n"
    assert not list(first.rglob("__pycache__"))
    (src / "trainer" / "__pycache__").mkdir(exist_ok=True)
    (src / "trainer" / "__pycache__" / "x.pyc").write_bytes(b"bytecode is not code")
    assert take_snapshot(sweep, src) == first  # unchanged tree: the same directory, nothing copied
    (src / "trainer" / "_probe_mark.py").write_text("MARK = 'v2'\n")
    second = take_snapshot(sweep, src)
    assert second != first and (second / "trainer" / "_probe_mark.py").read_text() == "MARK = 'v2'\n"
    assert (first / "trainer" / "_probe_mark.py").read_text() == "MARK = 'v1'\n"
    assert sorted(p.name for p in (sweep / ".snapshots").iterdir()) == sorted([first.name, second.name])


@pytest.mark.slurm
def test_editing_the_checkout_while_a_job_waits_does_not_change_it(slurm_cluster, tmp_path):
    src = checkout_copy(tmp_path / "checkout", "v1")
    snapshot = take_snapshot(tmp_path / "runs" / "probe", src)
    probe = "from trainer._probe_mark import MARK\n" + PROBE
    job = submit_probe(tmp_path, Resources(nodes=1, gpus_per_node=0, cpus_per_task=1), snapshot=snapshot,
                       probe=probe, extra=(("hold", True),))
    try:
        assert wait_until(lambda: squeue(job)[0], 10, "the job in squeue") == "PENDING"
        # while the job waits, the checkout changes (an edit, a `git checkout`)
        (src / "trainer" / "_probe_mark.py").write_text("MARK = 'v2'\n")
        (src / "cluster" / "slurm_job.py").write_text("raise SystemExit('the edited checkout was imported')\n")
    finally:
        subprocess.run(["scontrol", "release", job], check=True)
    (seen,) = probe_results(tmp_path, 1, job)
    assert seen["mark"] == "v1"
    assert Path(seen["trainer"]).is_relative_to(snapshot) and Path(seen["cluster"]).is_relative_to(snapshot)
