"""The Ray backend's pure builders: the search block, sampled trials and their ids, ASHA rungs, the
best-LR table, the Ray-on-Slurm sbatch text, and `gatesweep run --backend ray --dry-run`. No Ray."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from cluster.common.search import Asha, parse_search, sample_points, search_trials
from cluster.errors import BackendError
from cluster.ray.on_slurm import RaySlurmJob, sbatch_text, size_allocation
from cluster.ray.plan import check_fits, trial_resources
from cluster.ray.summary import TrialOutcome, best_rows, parent_params_metrics
from gatesweep.cli import main as cli_main
from sweeps.errors import SpecError
from sweeps.expand import expand
from sweeps.spec import load_spec, parse_spec
from trainer.config import config_hash

REPO = Path(__file__).resolve().parents[1]
LR_SEARCH = REPO / "sweeps" / "lr_search.yaml"


def spec_with(search: dict, **top) -> object:
    doc = {"name": "s", "base": {"preset": "tiny", "num_iterations": 100}, "grid": {"attn_gate": ["none", "elementwise"]},
           "search": search, **top}
    return parse_spec(doc, "t.yaml")


def test_shipped_lr_search_parses_into_asha_over_training_steps():
    spec = load_spec(LR_SEARCH)
    plan = parse_search(spec)
    assert [(a.key, a.kind) for a in plan.axes] == [("learning_rate", "loguniform")]
    assert plan.scheduler == Asha(grace_period=50, reduction_factor=2.0, max_t=200)
    assert plan.scheduler.rungs() == [50, 100]
    trials = search_trials(plan, expand(spec))
    assert len(trials) == 2 * plan.num_samples  # the same draws for each gate variant
    by_gate = {g: sorted(t.config.optim.learning_rate for t in trials if t.config.model.attn_gate == g)
               for g in ("none", "elementwise")}
    assert by_gate["none"] == by_gate["elementwise"]
    assert all(0.001 <= lr <= 0.3 for lr in by_gate["none"])


def test_draws_are_seeded_rounded_and_in_bounds():
    plan = parse_search(spec_with({"space": {"learning_rate": {"loguniform": [1e-4, 1.0]}}, "num_samples": 50,
                                   "seed": 3}))
    a, b = sample_points(plan), sample_points(plan)
    assert a == b
    other = parse_search(spec_with({"space": {"learning_rate": {"loguniform": [1e-4, 1.0]}}, "num_samples": 50,
                                       "seed": 4}))
    assert sample_points(other) != a
    lrs = [p["learning_rate"] for p in a]
    assert all(1e-4 <= x <= 1.0 and float(f"{x:.3g}") == x for x in lrs)
    assert min(lrs) < 1e-3 and max(lrs) > 0.1  # log-uniform: every decade gets draws


def test_grid_axes_cross_the_random_draws():
    plan = parse_search(spec_with({"space": {"learning_rate": {"uniform": [0.01, 0.02]},
                                             "muon_lr_ratio": {"grid": [0.05, 0.1]}}, "num_samples": 2}))
    points = sample_points(plan)
    assert len(points) == 4
    assert sorted({p["muon_lr_ratio"] for p in points}) == [0.05, 0.1]
    assert all(list(p) == ["learning_rate", "muon_lr_ratio"] for p in points)


def test_sampled_trial_ids_follow_the_expand_rule():
    """A sampled trial's id is the config hash of its resolved config, so the same config written as a
    plain grid (what the local and Slurm backends would run) has the same id."""
    spec = spec_with({"space": {"learning_rate": {"grid": [0.01, 0.03]}}}, seeds=[0, 1])
    trials = search_trials(parse_search(spec), expand(spec))
    assert len(trials) == 8
    for t in trials:
        assert t.trial_id == config_hash(t.config)
        assert f"learning_rate={t.config.optim.learning_rate:g}" in t.label
    as_grid = dataclasses.replace(spec, grid=spec.grid + (("learning_rate", (0.01, 0.03)),), search={})
    assert {t.trial_id for t in expand(as_grid)} == {t.trial_id for t in trials}
    assert [t.seed for t in trials] == [0] * 4 + [1] * 4  # seed-major, as expand orders them


@pytest.mark.parametrize(("search", "field", "hint"), [
    ({"space": {"learning_rte": {"grid": [0.1]}}}, "search.space.learning_rte", "unknown key"),
    ({"space": {"learning_rate": {"normal": [0, 1]}}}, "search.space.learning_rate.normal", "valid keys"),
    ({"space": {"learning_rate": {"loguniform": [0.0, 1.0]}}}, "search.space.learning_rate.loguniform", "0 < low"),
    ({"space": {"attn_gate": {"grid": ["none"]}}}, "search.space.attn_gate", "grid axis"),
    ({"space": {"learning_rate": {"grid": [0.1, 0.2]}}, "num_samples": 3}, "search.num_samples", "repeat"),
    ({"space": {"learning_rate": {"grid": [0.1]}}, "scheduler": {"grace_period": 100}},
     "search.scheduler.grace_period", "not below max_t=100"),
    ({"space": {"learning_rate": {"grid": [0.1]}}, "scheduler": {"type": "pbt"}}, "search.scheduler.type", "asha"),
    ({"space": {"learning_rate": {"grid": [0.1]}}, "max_concurent_trials": 2}, "search.max_concurent_trials",
     "max_concurrent_trials"),
])
def test_search_errors_name_the_field_and_the_fix(search, field, hint):
    with pytest.raises(SpecError) as e:
        parse_search(spec_with(search))
    assert f"t.yaml: {field}" in str(e.value) and hint in str(e.value)


def test_asha_rungs_match_rays_placement():
    assert Asha(grace_period=10, reduction_factor=3, max_t=100).rungs() == [10, 30, 90]
    assert Asha(grace_period=50, reduction_factor=2, max_t=300).rungs() == [50, 100, 200]


def test_best_lr_per_gate_counts_only_finished_trials():
    out = [TrialOutcome("attn_gate=none", (("learning_rate", 0.01),), "a", "FINISHED", 3.0),
           TrialOutcome("attn_gate=none", (("learning_rate", 0.01),), "b", "FINISHED", 3.2),  # seed 2: mean 3.1
           TrialOutcome("attn_gate=none", (("learning_rate", 0.03),), "c", "FINISHED", 3.05),
           TrialOutcome("attn_gate=none", (("learning_rate", 0.3),), "d", "EARLY_STOPPED", float("nan")),
           TrialOutcome("attn_gate=elementwise", (("learning_rate", 0.3),), "e", "FAILED", float("nan")),
           TrialOutcome("attn_gate=elementwise", (("learning_rate", 0.1),), "f", "KILLED", float("nan")),
           TrialOutcome("attn_gate=elementwise", (("learning_rate", 0.01),), "g", "", float("nan"))]
    none, elementwise = best_rows(out)
    assert none.values == (("learning_rate", 0.03),) and none.trial_ids == ("c",)
    assert (none.finished, none.early_stopped, none.failed, none.not_run) == (3, 1, 0, 0)
    # an interrupted search: killed and never-started trials are not failures
    assert elementwise.values == () and (elementwise.failed, elementwise.not_run) == (1, 2)
    params, metrics = parent_params_metrics([none, elementwise])
    assert params == {"best.attn_gate_none.learning_rate": "0.03"}
    assert metrics == {"best.attn_gate_none.final_val_loss": 3.05}


def test_trial_resources_fall_back_to_cpu_and_check_the_cluster():
    trial = expand(load_spec(LR_SEARCH))[0]
    assert trial_resources(trial, cluster_gpus=8, cpus_per_trial=1) == {"cpu": 1, "gpu": 1}
    assert trial_resources(trial, cluster_gpus=0, cpus_per_trial=1) == {"cpu": 1, "gpu": 0}
    with pytest.raises(BackendError, match="cpus_per_trial"):
        check_fits({"cpu": 8, "gpu": 0}, {"CPU": 2.0})


def test_allocation_size_for_the_search():
    size = size_allocation(trial_gpus=1, cpus_per_trial=4, max_concurrent=12, num_trials=24, trial_timeout_min=30,
                           ray_opts={})
    assert size == {"nodes": 2, "gpus_per_node": 8, "cpus_per_node": 24, "timeout_min": 60}
    assert size_allocation(trial_gpus=0, cpus_per_trial=1, max_concurrent=2, num_trials=3, trial_timeout_min=10,
                           ray_opts={"nodes": 3, "timeout_min": 5})["nodes"] == 3


GOLDEN_SBATCH = """\
#!/bin/bash
# Ray on Slurm for spec lr_search (generated by `gatesweep run sweeps/lr_search.yaml --backend ray --dry-run`).
# A Ray head on the first node, a worker on each other node, the search driver on the head.
# Submit from the project directory with the environment the search needs (MLFLOW_TRACKING_URI).
#SBATCH --job-name=gs-ray-lr_search
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=16
#SBATCH --gpus-per-task=8
#SBATCH --time=120
#SBATCH --output=/shared/gs/slurm-ray-lr_search-%j.out
#SBATCH --account=proj7
#SBATCH --partition=gpu
set -euo pipefail
cd /shared/gs
module load cuda/12.4
PY=/shared/gs/.venv/bin/python
RAY=/shared/gs/.venv/bin/ray
state=/shared/gs/runs/lr_search/_tune/slurm-"$SLURM_JOB_ID"
mkdir -p "$state"
# Token auth stays on: a fresh token, readable by you only, shared by the nodes through the filesystem.
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$state/auth_token"
(umask 077; "$PY" -c 'import secrets; print(secrets.token_hex(32), end="")' > "$RAY_AUTH_TOKEN_PATH")
unset MLFLOW_EXPERIMENT_ID MLFLOW_EXPERIMENT_NAME MLFLOW_RUN_ID MLFLOW_PARENT_RUN_ID  # inherited ids would send the runs to another experiment
export RAY_USAGE_STATS_ENABLED="${RAY_USAGE_STATS_ENABLED:-0}"  # no telemetry calls from compute nodes
mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
head=${nodes[0]}
# Each node's address as Slurm knows it (NodeAddr), as an IPv4 address for Ray: Ray's own guess (the
# interface of the default route) can be another network than the one the nodes share.
node_ip() { getent ahostsv4 "$(scontrol show node "$1" | tr ' ' '\\n' | sed -n 's/^NodeAddr=//p')" | awk 'NR==1{print $1}'; }
head_ip=$(node_ip "$head")
# A head on loopback is a one-machine cluster: Ray's single-machine mode keeps every server on it.
case "$head_ip" in 127.*) export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0;; esac
port=$((20000 + SLURM_JOB_ID % 10000))  # two searches on one node must not collide
srun --nodes=1 --ntasks=1 --cpus-per-task="$SLURM_CPUS_PER_TASK" -w "$head" "$RAY" start --head --node-ip-address="$head_ip" --port=$port --include-dashboard=false --num-cpus="$SLURM_CPUS_PER_TASK" --num-gpus=8 --block --temp-dir="/tmp/ray-$SLURM_JOB_ID-$head" &
for _ in $(seq 60); do "$RAY" status --address="$head_ip:$port" >/dev/null 2>&1 && break; sleep 2; done
for node in "${nodes[@]:1}"; do
  srun --nodes=1 --ntasks=1 --cpus-per-task="$SLURM_CPUS_PER_TASK" -w "$node" "$RAY" start --address="$head_ip:$port" --node-ip-address="$(node_ip "$node")" --num-cpus="$SLURM_CPUS_PER_TASK" --num-gpus=8 --block --temp-dir="/tmp/ray-$SLURM_JOB_ID-$node" &
done
# The driver waits until backend.ray.nodes nodes have joined, then runs the search on them.
code=0
"$PY" -m gatesweep run sweeps/lr_search.yaml --backend ray \\
    backend.ray.address="$head_ip:$port" \\
    backend.ray.nodes=2 \\
    'notes=lr search' \\
    --max-parallel 16 || code=$?
exit $code  # Slurm ends the Ray steps with the job
"""


def test_ray_on_slurm_sbatch_golden():
    job = RaySlurmJob(spec_name="lr_search", spec_path="sweeps/lr_search.yaml", workdir="/shared/gs",
                      python="/shared/gs/.venv/bin/python", nodes=2, gpus_per_node=8, cpus_per_node=16,
                      timeout_min=120, sbatch_options={"partition": "gpu", "account": "proj7", "qos": ""},
                      setup=("module load cuda/12.4",), overrides=("notes=lr search",), max_parallel=16)
    text = sbatch_text(job)
    assert text == GOLDEN_SBATCH
    if shutil.which("bash"):
        check = subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True)
        assert check.returncode == 0, check.stderr


HOSTILE_SBATCH = {"partition": "gpu --qos=high", "account": "$(touch PWNED)", "qos": "`touch PWNED`",
                  "constraint": "x'y\"z&&touch PWNED", "comment": "a b #c"}


def test_ray_on_slurm_directives_are_quoted_like_the_slurm_backends(tmp_path):
    """Each #SBATCH value reaches sbatch as one word (sbatch splits its directives as a shell would):
    a space in a value or in the project path neither injects an option nor breaks --output."""
    import re
    import shlex

    workdir = str(tmp_path / "my project $(touch PWNED)")
    job = RaySlurmJob(spec_name="s", spec_path="sweeps/s.yaml", workdir=workdir, python="/v/bin/python", nodes=1,
                      gpus_per_node=0, cpus_per_node=2, timeout_min=5, sbatch_options=dict(HOSTILE_SBATCH))
    text = sbatch_text(job)
    flags = dict(re.findall(r"^#SBATCH --([a-z-]+)=(.*)$", text, re.MULTILINE))
    for key, value in HOSTILE_SBATCH.items():
        assert shlex.split(flags[key]) == [value], (key, flags[key])
    assert shlex.split(flags["output"]) == [f"{workdir}/slurm-ray-s-%j.out"]
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0
    assert not list(tmp_path.rglob("PWNED"))


def test_dry_run_prints_space_asha_trials_and_the_slurm_recipe(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no runs/ in the repository; nothing may be written at all
    assert cli_main(["run", str(LR_SEARCH), "--backend", "ray", "--dry-run", "--partition", "gpu"]) == 0
    out = capsys.readouterr().out
    spec = load_spec(LR_SEARCH)
    trials = search_trials(parse_search(spec), expand(spec))
    assert "learning_rate: loguniform [0.001, 0.3]" in out
    assert "ASHA on val_loss (min), unit = training steps: grace_period 50, reduction_factor 2, max_t 200" in out
    assert "rungs at steps [50, 100]" in out and "trials: 12, up to 2 at a time" in out
    for t in trials:
        assert f"{t.trial_id}  {t.label}" in out
    assert '"$RAY" start --head --node-ip-address="$head_ip"' in out
    assert 'start --address="$head_ip:$port"' in out
    assert f"-m gatesweep run {LR_SEARCH} --backend ray" in out and "#SBATCH --partition=gpu" in out
    assert list(tmp_path.iterdir()) == []


def test_overriding_a_searched_key_is_an_error_not_a_silent_no_op(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli_main(["run", str(LR_SEARCH), "--backend", "ray", "--dry-run", "learning_rate=0.01"]) == 2
    err = capsys.readouterr().err
    assert "search.space: learning_rate is searched by this spec" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_ray_on_slurm_takes_the_checked_slurm_options(capsys, tmp_path, monkeypatch):
    """The recipe gets the same options as the Slurm backend (extra, memory), checked the same way: a
    newline in a value would end the #SBATCH comment and start a shell command."""
    monkeypatch.chdir(tmp_path)
    args = ["run", str(LR_SEARCH), "--backend", "ray", "--dry-run", "backend.slurm.extra.exclusive=true",
            "backend.slurm.extra.mail-type=END", "resources.mem_gb=64"]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --exclusive\n" in out and "#SBATCH --mail-type=END\n" in out and "#SBATCH --mem=64GB\n" in out
    assert cli_main(["run", str(LR_SEARCH), "--backend", "ray", "--dry-run", "--partition", "gpu\ntouch /tmp/x"]) == 2
    err = capsys.readouterr().err
    assert "with --partition: backend.slurm.partition: 'gpu\\ntouch /tmp/x' contains a control character" in err
    assert list(tmp_path.iterdir()) == []


def test_plan_and_status_of_a_search_spec_list_its_sampled_trials(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = load_spec(LR_SEARCH)
    sampled = [t.trial_id for t in search_trials(parse_search(spec), expand(spec))]
    assert cli_main(["plan", str(LR_SEARCH), "--json"]) == 0
    assert [t["trial_id"] for t in json.loads(capsys.readouterr().out)] == sampled
    assert cli_main(["status", str(LR_SEARCH)]) == 0
    out = capsys.readouterr().out
    assert all(tid in out for tid in sampled) and "PENDING: 12" in out
    assert list(tmp_path.iterdir()) == []
