"""`gatesweep run sweeps/stage2.yaml --backend slurm --dry-run`: the trial-to-task table, the sbatch script
of the job array and the GPU-hour total, golden-file tested (paths, hash and SHA normalised); the
cluster is asked for its MaxArraySize, and nothing is submitted or written."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from cluster.slurm.snapshot import content_hash, git_sha, source_root
from tests.slurm_helpers import REPO, gatesweep
from tests.test_slurm_sbatch import check_golden

pytestmark = pytest.mark.slurm


def normalise(text: str, cwd: Path) -> str:
    """Machine-specific paths, the code hash and SHA out; trial ids (which change whenever a trainer
    config key is added) become <T1>, <T2>, ... in order of appearance, so the pairing still shows."""
    text = text.replace(str(cwd), "<CWD>").replace(sys.executable, "<PYTHON>").replace(str(REPO), "<REPO>")
    text = text.replace(content_hash(source_root()), "<HASH>")
    text = re.sub(re.escape(git_sha()) + r"\b", "<GIT_SHA>", text)
    ids: dict[str, str] = {}
    return re.sub(r"\b[0-9a-f]{12}\b", lambda m: ids.setdefault(m.group(0), f"<T{len(ids) + 1}>"), text)


def test_stage2_dry_run_golden(slurm_cluster, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = gatesweep(["run", str(REPO / "sweeps" / "stage2.yaml"), "--backend", "slurm", "--dry-run"])
    assert code == 0, err
    assert list(tmp_path.iterdir()) == []  # no runs/, no snapshot, no mlflow.db
    assert len(re.findall(r"^#   task +\d+  trial [0-9a-f]{12}", out, re.MULTILINE)) == 16
    assert "1 node(s) x 8 GPU(s) each, 8 rank(s) per node" in out
    for flag in ("--array=0-15%8", "--gpus-per-node=8", "--ntasks-per-node=8", "--nodes=1", "--time=45",
                 "--signal=USR2@90", "--requeue"):
        assert f"#SBATCH {flag}\n" in out, flag
    assert out.rstrip().endswith("= 5.1 GPU-hours\ndry run: nothing was submitted or written")
    check_golden("slurm_stage2_dry_run.txt", normalise(out, tmp_path))
