"""Job arrays on the real Slurm: a sweep split into chunks under max_array_size, chained so that the
`%K` parallelism cap holds for the whole sweep, with the default sqlite MLflow store (the jobs track
locally, the waiting launcher delivers their records)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

import cluster.slurm.wait
from cluster.common.trialdir import RUNS_ROOT
from sweeps.expand import expand
from sweeps.spec import load_spec
from tests.slurm_helpers import gatesweep, job_id, job_log, sacct, status, unique, write_data, write_spec
from trainer.record import read_json

pytestmark = pytest.mark.slurm


def test_chunked_arrays_respect_the_parallelism_cap(slurm_cluster, tmp_path, monkeypatch):
    monkeypatch.setattr(cluster.slurm.wait, "POLL_S", 1.0)
    monkeypatch.chdir(tmp_path)
    write_data(tmp_path)
    name = unique("arrays")
    write_spec(tmp_path / "spec.yaml", name, gates=["none", "headwise", "elementwise"],
               base={"num_iterations": 10, "val_every": 5, "warmdown_iters": 2},
               resources={"gpus_per_node": 0}, slurm={"array_parallelism": 1, "max_array_size": 2})
    trials = expand(load_spec(tmp_path / "spec.yaml"))
    run_dirs = [RUNS_ROOT / name / t.trial_id for t in trials]

    code, out, err = gatesweep(["run", "spec.yaml", "--wait"])
    assert code == 0, err + "\n".join(job_log(d) for d in run_dirs)
    assert "single-writer file" in err and "make mlflow-up" in err  # sqlite: a warning with the fix
    assert "submitted 3 trial(s) as 2 Slurm job(s)" in out and f"sweep {name}: 3 finished, 0 not" in out
    ids = [job_id(d) for d in run_dirs]
    first, second = ids[0].split("_")[0], ids[2]
    assert ids[:2] == [f"{first}_0", f"{first}_1"] and "_" not in second  # 2 + 1 under max_array_size=2
    scripts = [Path(read_json(d / "slurm.json")["submission_file"]).read_text() for d in (run_dirs[0], run_dirs[2])]
    assert "#SBATCH --array=0-1%1" in scripts[0] and "--dependency" not in scripts[0]
    assert f"#SBATCH --dependency=afterany:{first}" in scripts[1] and "--array" not in scripts[1]

    # at most one trial ran at any time, across both arrays
    rows = sacct(ids, settle_s=60)
    assert sorted(r["state"] for r in rows) == ["COMPLETED"] * 3
    spans = sorted((datetime.fromisoformat(r["start"]), datetime.fromisoformat(r["end"])) for r in rows)
    assert all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:])), spans

    # the launcher delivered the local records into the sqlite store
    from mlflow import MlflowClient

    client = MlflowClient("sqlite:///mlflow.db")
    exp = client.get_experiment_by_name(f"gs-{name}")
    runs = client.search_runs([exp.experiment_id], "tags.`gatesweep.kind` = 'trial'")
    assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(t.trial_id for t in trials)
    for r in runs:
        assert r.info.status == "FINISHED" and r.data.tags["backend"] == "slurm"
        assert [m.step for m in client.get_metric_history(r.info.run_id, "val_loss")] == [0, 5, 10]
    assert all(status(d) == "FINISHED" for d in run_dirs)
