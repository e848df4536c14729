"""Helpers of the Slurm backend tests: tiny specs derived from sweeps/demo.yaml, synthetic data,
the CLI in-process, and what Slurm itself reports (squeue, sacct) about the jobs."""

from __future__ import annotations

import contextlib
import io
import json
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from cluster.common.sbatch_options import SlurmOptions
from cluster.common.trialdir import local_status
from cluster.slurm.job import TrialJob
from cluster.slurm.launch import job_env
from cluster.slurm.sbatch import executor_params, setup_lines
from cluster.slurm.state import LIVE_STATES
from sweeps.spec import Resources
from trainer.record import read_json

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "sweeps" / "demo.yaml"
# The demo's design on a model small enough for 2 gloo ranks on 2 cores: 4 x 32-token micro-batches
# per rank, one val micro-batch per rank.
TINY_BASE = {"n_embd": 32, "sequence_length": 32, "batch_size": 8, "device_batch_size": 4, "val_tokens": 256,
             "num_iterations": 20, "warmdown_iters": 5, "val_every": 10, "device": "cpu", "compile": "off"}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def write_data(cwd: Path) -> None:
    """data/synth as the demo spec expects it (small: 200k train tokens)."""
    from trainer.data_cli import main as data_main

    with contextlib.redirect_stdout(io.StringIO()):
        assert data_main(["synth", "--out", str(cwd / "data" / "synth"), "--train-tokens", "200000",
                          "--val-tokens", "16384"]) == 0


def write_spec(path: Path, name: str, *, gates: list[str], base: dict[str, Any] | None = None,
               resources: dict[str, Any] | None = None, slurm: dict[str, Any] | None = None,
               experiment: str | None = None) -> Path:
    """sweeps/demo.yaml with a subset of its gates, one seed and the tiny model."""
    spec = yaml.safe_load(DEMO.read_text())
    spec.update(name=name, stage=name, seeds=[0], include=[])
    spec["grid"] = {"attn_gate": gates}
    spec["base"] = spec["base"] | TINY_BASE | (base or {})
    spec["resources"] = {"nodes": 1, "gpus_per_node": 2, "cpus_per_task": 1, "timeout_min": 10} | (resources or {})
    spec["backend"] = {"default": "slurm", "slurm": {"timeout_min": 10, "max_requeues": 2} | (slurm or {})}
    spec["tracking"] = {"experiment": experiment or f"gs-{name}"}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def gatesweep(args: list[str]) -> tuple[int, str, str]:
    """The CLI in this process (the test's cwd): (exit code, stdout, stderr)."""
    from gatesweep.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


def job_id(run_dir: Path) -> str:
    return str(read_json(run_dir / "slurm.json")["job_id"])


def squeue(job: str) -> tuple[str, str]:
    """(state, reason) of a job or array task, ('', '') once squeue no longer lists it."""
    out = subprocess.run(["squeue", "-h", "-r", "-j", job.split("_")[0], "-o", "%i|%T|%r", "--states=all"],
                         capture_output=True, text=True).stdout
    for line in out.splitlines():
        jid, state, reason = line.split("|")
        if jid == job:
            return state, reason
    return "", ""


def sacct(jobs: list[str], *, duplicates: bool = False, settle_s: float = 0.0) -> list[dict[str, str]]:
    """Accounting rows (allocations only) of the given jobs' arrays; every attempt with duplicates.
    settle_s: wait up to this long until every job has ended in accounting - a trial's record says
    FINISHED (and `--wait` returns) moments before its job's own end reaches slurmdbd."""
    arrays = sorted({j.split("_")[0] for j in jobs})
    cmd = ["sacct", "-X", "-n", "-P", "-o", "JobID,State,Start,End", "-j", ",".join(arrays)]

    def read() -> list[dict[str, str]]:
        out = subprocess.run(cmd + (["--duplicates"] if duplicates else []), capture_output=True, text=True,
                             check=True).stdout
        rows = [dict(zip(("job", "state", "start", "end"), line.split("|"))) for line in out.splitlines() if line]
        return [r for r in rows if r["job"] in jobs]

    if settle_s <= 0:
        return read()
    def ended() -> list[dict[str, str]] | None:
        rows = read()
        done = {r["job"] for r in rows} == set(jobs) and not any(r["state"] in LIVE_STATES for r in rows)
        return rows if done else None

    return wait_until(ended, settle_s, f"the jobs {jobs} to end in accounting", interval_s=0.5)


def wait_until(predicate: Any, timeout_s: float, what: str, interval_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def last_step(run_dir: Path) -> int:
    try:
        lines = (run_dir / "track" / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return -1
    return max((json.loads(line)["step"] for line in lines if line.strip()), default=-1)


def status(run_dir: Path) -> str:
    return local_status(run_dir)[0]


def job_log(run_dir: Path) -> str:
    """Every task's stdout and stderr of the trial's job (for assertion messages)."""
    folder = Path(read_json(run_dir / "slurm.json")["log"]).parent
    return "\n".join(f"---- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(folder.glob("*_log.*")))


# ---------------------------------------------------------------- probe jobs
PROBE = """
import json, os, sys
from pathlib import Path
import cluster.slurm.job, trainer
keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
        "CUDA_VISIBLE_DEVICES", "GATESWEEP_GIT_SHA", "TORCHINDUCTOR_CACHE_DIR", "MLFLOW_RUN_ID",
        "SLURMD_NODENAME", "SLURM_JOB_NODELIST")
seen = {k: os.environ.get(k) for k in keys}
seen["hostname"] = __import__("socket").gethostname()
seen |= {"cluster": cluster.slurm.job.__file__, "trainer": trainer.__file__, "mark": MARK}
Path(sys.argv[1], "rank%s.json" % os.environ["RANK"]).write_text(json.dumps(seen))
"""


def submit_probe(tmp: Path, resources: Resources, *, probe: str, snapshot: Path, extra: tuple = ()) -> str:
    """A TrialJob whose child is `probe` (argv[1] = the output folder), submitted like the launcher does."""
    import submitit

    sweep_dir = tmp / "runs" / "probe"
    opts = SlurmOptions(timeout_min=5, extra=extra)
    setup = setup_lines(snapshot, job_env("local", sweep_dir, "cafe-dirty"))
    ex = submitit.SlurmExecutor(folder=sweep_dir / ".slurm" / "%j", python=shlex.quote(sys.executable))
    ex.update_parameters(**executor_params(resources, opts, job_name="gs-probe", setup=setup))
    out = tmp / "seen"
    out.mkdir()
    job = TrialJob(trial_id="probe", run_dir=str(sweep_dir / "probe"), workdir=str(tmp),
                   command=[sys.executable, "-c", probe, str(out)], max_requeues=0, grace_s=5)
    return ex.submit(job).job_id


def probe_results(tmp: Path, n: int, job: str) -> list[dict]:
    import submitit

    j = submitit.SlurmJob(folder=tmp / "runs" / "probe" / ".slurm" / "%j", job_id=job, tasks=list(range(n)))
    j.results()  # raises with the task's traceback if any task failed
    return [json.loads((tmp / "seen" / f"rank{r}.json").read_text()) for r in range(n)]
