"""A Slurm controller that does not answer (issue #24 item 4): the real client binaries' "Unable to contact
slurm controller" is exit 69 with one line saying the controller is unreachable - not exit 2 with a hint
to check the partition. The shared cluster keeps running: the clients get a copy of its slurm.conf whose
SlurmctldPort is a free loopback port where no slurmctld listens."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sweeps.expand import expand
from sweeps.spec import load_spec
from tests.services import free_port
from tests.sweep_helpers import cli_env, cwd_snapshot, gatesweep, write_spec
from trainer.record import write_json

pytestmark = pytest.mark.slurm


def _conf_without_controller(slurm_cluster, where: Path) -> Path:
    """The cluster's slurm.conf with the controller's port moved to one nobody listens on."""
    text = Path(slurm_cluster.conf).read_text()
    port = free_port()
    text, n = re.subn(r"^SlurmctldPort=.*$", f"SlurmctldPort={port}", text, flags=re.M)
    assert n == 1, "slurm.conf has no SlurmctldPort line"
    where.mkdir(parents=True)
    conf = where / "slurm.conf"
    conf.write_text(text)
    for other in Path(slurm_cluster.conf).parent.glob("*.conf"):  # gres.conf beside it, as the clients expect
        if other.name != "slurm.conf":
            (where / other.name).write_text(other.read_text())
    return conf


def test_a_down_controller_is_exit_69_and_says_so(tmp_path: Path, slurm_cluster):
    work = tmp_path / "work"
    work.mkdir()
    spec = write_spec(work / "spec.yaml", "ctld-down")
    env = cli_env() | {"SLURM_CONF": str(_conf_without_controller(slurm_cluster, tmp_path / "etc"))}
    before = cwd_snapshot(work)
    for extra in (["--check"], []):  # asking first, and a real submission (which asks first too)
        res = gatesweep(["run", "spec.yaml", "--backend", "slurm", *extra], work, env, timeout=600)
        assert res.returncode == 69, (res.returncode, res.stdout, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: the Slurm controller is unreachable"), res.stderr
        assert "Unable to contact slurm controller" in lines[0] and "partition" not in lines[0]
        assert cwd_snapshot(work) == before  # nothing written, nothing submitted
    # `status` of a trial that Slurm runs asks squeue: the same answer, not "squeue failed"
    trial = expand(load_spec(spec))[0]
    run_dir = work / "runs" / "ctld-down" / trial.trial_id
    (run_dir / "track").mkdir(parents=True)
    write_json(run_dir / "slurm.json", {"job_id": "123"})
    write_json(run_dir / "track" / "status.json", {"status": "QUEUED", "reason": "submitted", "time": 0})
    res = gatesweep(["status", "spec.yaml"], work, env, timeout=600)
    assert res.returncode == 69 and res.stderr.startswith("error: the Slurm controller is unreachable (squeue:"), \
        res.stderr
