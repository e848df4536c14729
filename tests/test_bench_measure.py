"""The benchmark's pure helpers (bench/measure.py), so a GPU session never finds them broken: the step
line parser on both trainers' log format, the reference patch (data paths and counts only), the FLOP
count behind MFU, and the result table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench.measure import flops_per_token, markdown_table, parse_log, patch_reference

HYPER = """class Hyperparameters:
    input_bin : str = 'data/fineweb10B/fineweb_train_*.bin' # input .bin to train on
    input_val_bin : str = 'data/fineweb10B/fineweb_val_*.bin' # input .bin to eval validation loss on
    batch_size : int = 8*64 # batch size, in sequences, across all devices
    device_batch_size : int = 64 # batch size, in sequences, per device
    num_iterations : int = 5100 # number of iterations to run
    learning_rate : float = 0.0036
    warmdown_iters : int = 1450 # number of iterations of linear warmup/warmdown
    val_loss_every : int = 125 # every how many steps to evaluate val loss?
    val_tokens : int = 10485760 # how many tokens of validation data?
"""


def test_patch_changes_only_the_named_hyperparameters():
    out = patch_reference(HYPER, num_iterations=60, input_bin="/tmp/r/train_*.bin", val_loss_every=0)
    lines = out.splitlines()
    assert "    num_iterations : int = 60 # number of iterations to run" in lines
    assert "    input_bin : str = '/tmp/r/train_*.bin' # input .bin to train on" in lines
    assert "    val_loss_every : int = 0 # every how many steps to evaluate val loss?" in lines
    assert "    learning_rate : float = 0.0036" in lines and "    warmdown_iters : int = 1450" in out
    assert len(lines) == len(HYPER.splitlines())
    with pytest.raises(ValueError, match="not a patchable"):
        patch_reference(HYPER, learning_rate=0.1)  # the math stays the reference's
    with pytest.raises(ValueError, match="no Hyperparameters line"):
        patch_reference("x = 1\n", num_iterations=5)


def test_step_times_are_the_differences_of_consecutive_train_times():
    lines = []
    t = 0
    for s in range(1, 41):
        # compile in the first steps, clock reset at step 10, one slow step (30) among steady 105 ms ones
        t = 0 if s == 10 else t + (2000 if s < 10 else (505 if s == 30 else 105))
        lines.append(f"step:{s}/40 train_loss:{5 - s / 100:.4f} train_time:{t}ms step_avg:{t / max(s - 10, 1):.2f}ms")
    lines += ["step:40/40 val_loss:4.1234 train_time:4200ms step_avg:140.00ms", "peak memory consumption: 1234 MiB"]
    st = parse_log("\n".join(lines))
    assert st.steps == 40 and st.final_val_loss == 4.1234 and st.peak_mib == 1234
    # steps after the first 15 only: 25 deltas, one of them 505 -> the median ignores it, the mean not
    assert st.step_ms_median == 105 and st.step_ms_mean == pytest.approx(105 + 400 / 25)
    assert len(st.train_losses) == 40 and st.train_losses[0] == 4.99


def test_flops_per_token_and_gate_shares():
    base = flops_per_token()
    # 12 layers x 12 d^2 MACs + lm_head, x6 for fwd+bwd, plus causal attention: ~0.80 GFLOP/token
    assert 0.78e9 < base < 0.82e9
    assert flops_per_token(gate="headwise") / base - 1 == pytest.approx(0.0004, abs=0.0002)
    assert flops_per_token(gate="elementwise") / base - 1 == pytest.approx(0.053, abs=0.003)


def test_markdown_table_formats_cells():
    text = markdown_table([{"label": "ours", "step_ms": 138.04, "tokens": 474_000.0, "peak": None}],
                          ["label", "step_ms", "tokens", "peak"])
    assert text == "| label | step_ms | tokens | peak |\n|---|---|---|---|\n| ours | 138 | 474000 |  |\n"


def test_bench_plans_cover_every_variant_and_gpu_count():
    from bench.run import plan_jobs

    ours = {"fused_proj": True}
    full = plan_jobs("full", 60, ours)
    labels = {j.label for lane in full for j in lane}
    assert {"ours-none-cold", "ours-none-warm", "ours-headwise", "ours-elementwise", "ours-const",
            "ours-headwise-ns", "ours-elementwise-value", "ref-cold", "ref-warm"} == labels
    value = next(j for lane in full for j in lane if j.label == "ours-elementwise-value")
    assert value.overrides == {"fused_proj": True, "gate_pos": "value"} and value.gate == "elementwise"
    assert [[j.gpus for j in lane] for lane in plan_jobs("scaling", 30, ours, n_gpus=4)] == [[1], [2], [4]]
    assert [[j.gpus for j in lane] for lane in plan_jobs("scaling", 30, ours, n_gpus=2)] == [[1], [2]]
    for lane in plan_jobs("ablations", 60, ours):  # each option against a baseline run on the same GPU
        base, option = lane
        assert base.overrides == ours and option.overrides != ours and base.cache != option.cache


# ---------------------------------------------------------------- single-card plans and the summary
def _all(plan: str) -> list:
    from bench.plans import plan_jobs

    (lane,) = plan_jobs(plan, 40, {})
    return lane


def test_single_card_plans_run_everything_the_issue_asks_on_one_gpu():
    one, two = _all("single1"), _all("single2")
    jobs = {j.label: j for j in one + two}
    assert all(j.gpus == 1 for j in jobs.values())
    assert [j.label for j in one[:3]] == ["ref-cold", "ours-none-cold", "ours-none-warm"]
    gates = {(j.gate, j.overrides.get("gate_act", "sigmoid"), j.overrides.get("gate_pos", "sdpa"))
             for j in jobs.values() if j.label.startswith("ours-") and j.batch == 64}
    assert gates == {("none", "sigmoid", "sdpa"), ("headwise", "sigmoid", "sdpa"), ("elementwise", "sigmoid", "sdpa"),
                     ("const", "sigmoid", "sdpa"), ("headwise", "ns_sigmoid", "sdpa"),
                     ("elementwise", "sigmoid", "value")}
    # warm = the second trial of a sweep: same local cache, the portable cache the cold run saved
    cold, warm, mega = jobs["ours-none-cold"], jobs["ours-none-warm"], jobs["ours-none-mega"]
    assert jobs["ours-none"].overrides["save_compile_cache"] == cold.overrides["save_compile_cache"]
    assert cold.overrides["save_compile_cache"] == warm.overrides["compile_cache"] == mega.overrides["compile_cache"]
    assert warm.cache == cold.cache != mega.cache and warm.overrides["seed"] != cold.overrides.get("seed", 0)
    study = [j for j in two if j.label.startswith("study-")]
    assert {j.label for j in study} == {"study-none", "study-headwise", "study-elementwise", "study-const",
                                        "study-headwise-ns"}
    assert all(j.batch == 32 and j.overrides["device_batch_size"] == 32 and j.data and "offline_train" in j.data[0]
               for j in study)
    for part in (one, two):  # a candidate's baseline runs in the same call, before it
        labels = [j.label for j in part]
        for i, j in enumerate(part):
            assert not j.baseline or j.baseline in labels[:i], j.label
    assert {next(iter(set(j.overrides) - {"seed"}), None) for j in jobs.values() if j.label.startswith("cand-")} >= {
        "gate_gemm", "cd_tuning", "compile_mode", "inductor_mode", "sdpa_backend", "fast"}


def test_every_planned_trainer_command_is_a_valid_config():
    """A typo in a plan's override would cost a GPU call: every job's key=value list resolves."""
    from bench.plans import command, plan_jobs
    from trainer.overrides import resolve

    for plan in ("single1", "single2", "smoke", "full", "variants", "ablations", "scaling"):
        for lane in plan_jobs(plan, 40, {}, n_gpus=8):
            for job in lane:
                argv, _ = command(job, "T", "V", Path("/tmp/x"), "python3")
                if job.kind == "ours":
                    cfg, _ = resolve(argv[argv.index("trainer") + 1:], {})
                    assert cfg.model.attn_gate == job.gate and cfg.run.num_iterations == 40


def test_budget_keeps_the_order_and_skips_what_does_not_fit():
    from bench.plans import Job, fits

    jobs = [Job("a", "ours", est_s=100), Job("b", "ours", est_s=300), Job("c", "ours", est_s=50)]
    run, skip = fits(jobs, 200)
    assert [j.label for j in run] == ["a", "c"] and [j.label for j in skip] == ["b"]


def test_dry_run_prints_the_plan_without_a_gpu():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "bench/run.py", "--plan", "single1", "--steps", "40", "--dry-run",
                          "--budget", "400"], cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("lane 0:") and "of 400s" in lines[0]
    assert any(ln.startswith("  [ref-cold]") for ln in lines)
    assert any("would be skipped" in ln for ln in lines)  # 400 s cannot hold all of single1
    assert any("gate_gemm=fused_pad64" in ln for ln in lines)


def _result(label: str, step_ms: float, gate: str = "none", startup: float = 30.0, baseline: str = "",
            overrides: dict | None = None, exit_code: int = 0, batch: int = 64) -> dict:
    return {"label": label, "kind": "ref" if label.startswith("ref") else "ours", "gate": gate, "gpus": 1,
            "startup_s": startup, "step_ms": step_ms, "spread": 0.01, "tokens_per_s": 1, "mfu": 0.5,
            "peak_mib": 1, "final_val_loss": 7.0, "exit_code": exit_code, "overrides": overrides or {},
            "cache": "ours", "log": "", "note": "", "baseline": baseline, "batch": batch}


CALL1 = {"meta": {"card": "NVIDIA H200", "torch": "2.11.0+cu130", "date": "2026-12-04 10:00 UTC", "plan": "single1",
                  "skipped": ["cand-none-model"]},
         "results": [_result("ref-cold", 143.0, startup=160.0), _result("ours-none-cold", 121.0, startup=34.0),
                     _result("ours-none-warm", 121.5, startup=12.5), _result("ours-headwise", 124.0, "headwise"),
                     _result("ours-elementwise", 126.0, "elementwise"),
                     _result("cand-headwise-fused_pad64", 122.0, "headwise", baseline="ours-headwise",
                             overrides={"gate_gemm": "fused_pad64"}),
                     _result("cand-none-cd_tuning", 117.0, baseline="ours-none-cold", overrides={"cd_tuning": True})]}
CALL2 = {"meta": {"card": "NVIDIA H200", "torch": "2.11.0+cu130", "date": "2026-12-04 10:20 UTC", "plan": "single2",
                  "skipped": []},
         "results": [_result("ours-none", 122.0, startup=15.0), _result("ours-const", 123.0, "const"),
                     _result("study-none", 64.0, batch=32), _result("study-headwise", 60.0, "headwise", batch=32),
                     _result("cand-none-plain", 140.0, baseline="ours-none", overrides={"fast": False}),
                     _result("ours-none-mega", 122.0, startup=14.0, overrides={"compile_cache": "/m.bin"}),
                     _result("cand-none-cudnn", float("nan"), baseline="ours-none", exit_code=1)],
         "ns_check": {"cuda compiled: transposed twins bitwise": False}}


def test_summary_from_synthetic_calls():
    from bench.summary import summarize

    previous = {"scaling_efficiency": {"1": 1.0, "2": 0.9051}, "sources": {"scaling": "old", "step_and_start": "x"}}
    s = summarize([CALL1, CALL2], previous, {"step_and_start": "new"})
    assert (s["card"], s["torch"], s["date"]) == ("NVIDIA H200", "2.11.0+cu130", "2026-12-04 10:00 UTC")
    # every figure compares jobs of one call: each call's own ours-none(-cold) is its baseline; part 2's
    # baseline (maybe warm: the machine may still hold part 1's caches) is no cold start
    assert s["ref_step_ms"] == 143.0 and s["ours_step_ms"] == 121.0 and s["step_ratio"] == round(121 / 143, 4)
    assert s["headwise_overhead"] == round(124 / 121 - 1, 4) and s["const_overhead"] == round(123 / 122 - 1, 4)
    assert s["headwise_ns_overhead"] is None  # not measured: None, not a made-up value
    assert (s["cold_start_s"], s["warm_start_s"], s["portable_cache_start_s"]) == (34.0, 12.5, 14.0)
    assert s["best_step_ratio"] == {"label": "cand-none-cd_tuning", "ratio": round(117 / 143, 4)}
    # the study config's headwise run (32 x 1024 tokens) is no candidate for the 64 x 1024 overhead
    assert s["best_headwise_overhead"] == {"label": "cand-headwise-fused_pad64", "overhead": round(122 / 121 - 1, 4)}
    assert set(s["candidates"]) == {"cand-headwise-fused_pad64", "cand-none-cd_tuning", "cand-none-plain"}
    assert s["candidates"]["cand-none-plain"]["vs_baseline"] == round(140 / 122, 4)
    assert s["study_step_ms"] == {"none": 64.0, "headwise": 60.0}
    assert s["failed"] == ["cand-none-cudnn"] and s["skipped"] == ["cand-none-model"]
    assert s["scaling_efficiency"] == {"1": 1.0, "2": 0.9051}
    assert s["sources"] == {"scaling": "old", "step_and_start": "new"}
    assert s["ns_batching_bitwise"] == {"cuda compiled: transposed twins bitwise": False}
    assert s["targets_met"] == {"step_ratio<=0.85": True, "headwise<=0.01": False, "elementwise<=0.03": False,
                                "cold<=60s": True, "warm<=12s": False, "scaling>=0.9": True, "sweep>=0.9": None}


def test_summary_cli_files_the_calls_and_keeps_what_they_did_not_measure(tmp_path: Path):
    import json

    from bench.summary import main

    results = tmp_path / "bench" / "results"
    results.mkdir(parents=True)
    (results / "summary.json").write_text(json.dumps({"scaling_efficiency": {"2": 0.9},
                                                      "sources": {"scaling": "bench/results/old"}}))
    dirs = []
    for i, call in enumerate((CALL1, CALL2)):
        d = tmp_path / f"out{i}"
        d.mkdir()
        (d / "results.json").write_text(json.dumps({k: v for k, v in call.items() if k != "ns_check"}))
        (d / "table.md").write_text("| t |")
        dirs.append(str(d))
    (tmp_path / "out1" / "ns_check.json").write_text(json.dumps(CALL2["ns_check"]))
    assert main([*dirs, "--name", "h200-single", "--results", str(results)]) == 0
    dest = results / "2026-12-04-h200-single"
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == [
        "call1/results.json", "call1/table.md", "call2/ns_check.json", "call2/results.json", "call2/table.md"]
    s = json.loads((results / "summary.json").read_text())
    assert s["scaling_efficiency"] == {"2": 0.9} and s["sources"]["scaling"] == "bench/results/old"
    assert s["sources"]["step_and_start"].startswith("bench/results/2026-12-04-h200-single (single1+single2")
    assert s["ns_batching_bitwise"] == CALL2["ns_check"]


@pytest.mark.parametrize("part,first", [("1", "[ref-cold]"), ("2", "[ours-none]")])
def test_next_session_script_plans_within_the_call(tmp_path: Path, part: str, first: str):
    """bench/next_session.sh with BENCH_DRY_RUN=1: the shell around the plan works, the plan runs on GPU
    0 alone within the call's budget, and its outputs go to $OUT."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python3").symlink_to(sys.executable)
    env = dict(os.environ, OUT=str(tmp_path / "out"), BENCH_DRY_RUN="1",
               PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    if part == "1":  # the reference script must be there (carried as .ref); a stand-in will do for planning
        (repo / ".ref").mkdir(exist_ok=True)
        created = not (repo / ".ref" / "train_gpt2.py").exists()
        if created:
            (repo / ".ref" / "train_gpt2.py").write_text("# stand-in\n")
    try:
        res = subprocess.run(["bash", "bench/next_session.sh", part], cwd=repo, env=env, capture_output=True, text=True,
                             timeout=120)
    finally:
        if part == "1" and created:
            (repo / ".ref" / "train_gpt2.py").unlink()
    assert res.returncode == 0, res.stdout + res.stderr
    log = (tmp_path / "out" / "session.log").read_text()
    lane = next(ln for ln in log.splitlines() if ln.startswith("lane 0:"))
    m = re.search(r"estimated (\d+)s of (\d+)s", lane)
    assert m, lane
    planned, budget = float(m[1]), float(m[2])
    assert planned <= budget <= 505
    assert next(ln for ln in log.splitlines() if ln.startswith("  [")).startswith(f"  {first}")
    assert f"part {part} exit 0" in log


def test_summary_reproduces_the_published_figures_of_the_2026_11_27_call():
    """Summarizing the committed 2026-11-27 call gives back the figures published from it then (README,
    summary.json of that date): the summary's arithmetic on a real results file."""
    from bench.summary import load_call, summarize

    results = Path(__file__).resolve().parents[1] / "bench" / "results"
    s = summarize([load_call(results / "2026-11-27-smoke-h200")], {}, {})
    assert (s["ref_step_ms"], s["ours_step_ms"], s["step_ratio"]) == (143, 138, 0.965)
    assert (s["headwise_overhead"], s["elementwise_overhead"]) == (0.0652, 0.0362)
    assert (s["cold_start_s"], s["warm_start_s"], s["ref_cold_start_s"]) == (52.3, 20.8, 188.0)


FIRST_STEP_LINE = (
    "first step done 12.4s after train() began (4.1s set-up), 15.3s after process start; phases: python 0.10s, "
    "config 0.01s, import torch 2.60s, dist 0.02s, preflight 0.05s, tracking 0.01s, data 0.03s, model init 1.40s, "
    "to device 0.90s, compiler imports wait 1.20s, optimizers 0.05s, checkpoint 0.00s, compile cache 0.02s, "
    "compile wrap 0.01s, nvidia-smi wait 0.00s, record 0.05s, first batch 0.00s, forward 6.10s, backward 1.50s, "
    "optimizer step 0.60s, other 0.64s; overlapped: cuda context 0.80s, compiler imports 3.40s; fx graph cache "
    "6 hit / 0 miss, aot autograd cache 3 hit / 0 miss; compile timers: _compile.compile_inner 4.22s, "
    "OutputGraph.call_user_compiler 2.72s")


def test_first_step_line_gives_every_phase_to_results_json():
    """The trainer's first-step line (trainer/startup.py) as bench/run.py files it in results.json."""
    from bench.measure import parse_first_step
    from bench.run import startup_breakdown

    out = startup_breakdown(FIRST_STEP_LINE, 17.9)
    assert out["first_step_s"] == 12.4 and out["setup_s"] == 4.1 and out["since_process_s"] == 15.3
    assert out["outside_s"] == 2.6  # launcher + polling: what the trainer's own clock does not see
    assert list(out["phases"])[:3] == ["python", "config", "import torch"] and len(out["phases"]) == 21
    assert out["phases"]["to device"] == 0.9 and out["phases"]["other"] == 0.64
    assert sum(out["phases"].values()) == pytest.approx(15.3, abs=0.1)
    assert out["overlapped"] == {"cuda context": 0.8, "compiler imports": 3.4}
    assert out["cache"] == {"fx_hit": 6, "fx_miss": 0, "aot_hit": 3, "aot_miss": 0}
    assert out["compile_timers"]["OutputGraph.call_user_compiler"] == 2.72
    # the lines of earlier calls (results of 2026-12-03) still give their totals
    old = parse_first_step("first step done 22.6s after train() began (13.8s data, model, optimizers); fx graph "
                           "cache 6 hit / 0 miss, aot autograd cache 3 hit / 0 miss")
    assert old == {"first_step_s": 22.6, "setup_s": 13.8, "cache": {"fx_hit": 6, "fx_miss": 0, "aot_hit": 3,
                                                                     "aot_miss": 0}}
    assert startup_breakdown("", 30.0) == {} and parse_first_step("step:1/40 train_loss:10.8") == {}


def test_one_gpu_jobs_start_the_way_a_sweep_starts_a_one_gpu_trial():
    """No torchrun around a one-GPU trainer (cluster/local.py starts such a trial as `python -m trainer`);
    the reference and multi-GPU jobs keep it."""
    from bench.plans import Job, command

    one = command(Job("a", "ours"), "T", "V", Path("/tmp/x"), "py")[0]
    assert one[:3] == ["py", "-m", "trainer"] and "torch.distributed.run" not in one
    two = command(Job("b", "ours", gpus=2), "T", "V", Path("/tmp/x"), "py")[0]
    assert two[:5] == ["py", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    ref = command(Job("r", "ref"), "T", "V", Path("/tmp/x"), "py")[0]
    assert ref[1:3] == ["-m", "torch.distributed.run"]


def test_summary_gives_no_verdict_inside_the_calls_noise():
    """A 1% target cannot be judged from jobs whose step times spread 7-11%: a gate measured faster than no
    gate (2026-12-04's targets call: headwise -6%) gets no verdict, nor does a ratio within its noise."""
    from bench.summary import summarize

    def r(label: str, ms: float, spread: float, gate: str = "none") -> dict:
        return _result(label, ms, gate) | {"spread": spread}

    call = {"meta": {"card": "NVIDIA H200", "torch": "2.11.0+cu130", "date": "2026-12-04 19:59 UTC", "plan": "targets",
                     "steps": 40, "skipped": []},
            "results": [r("ref-cold", 158.0, 0.032), r("ours-none-warm", 148.0, 0.07),
                        r("ours-headwise", 139.0, 0.059, "headwise"), r("ours-elementwise", 150.0, 0.2, "elementwise")]}
    s = summarize([call], {}, {})
    assert s["headwise_overhead"] == round(139 / 148 - 1, 4) and s["noise"]["headwise_overhead"] > 0.01
    met = s["targets_met"]
    assert met["headwise<=0.01"] is None  # -6% is below -noise: inconsistent, not "met"
    assert met["elementwise<=0.03"] is None  # +1.4% but the noise spans 3%
    assert met["step_ratio<=0.85"] is False  # 0.937: above 0.85 by more than the noise
    quiet = {**call, "results": [x | {"spread": 0.005} for x in call["results"]]}
    assert summarize([quiet], {}, {})["targets_met"]["step_ratio<=0.85"] is False


def test_a_job_of_our_trainer_is_measured_where_the_trainer_writes_its_log(tmp_path: Path, monkeypatch):
    """bench/run.py runs our trainer with out_dir = its working directory, which the trainer treats as a hand
    run (runs/manual/<run_id>/); the bench must still find the log, or every figure of a call is NaN (the
    2026-12-05 targets call measured nothing that way). A tiny CPU job through run_job itself."""
    import bench.run as bench_run
    from bench.plans import Job
    from tests.sweep_helpers import TINY_BASE, write_data

    write_data(tmp_path)
    monkeypatch.setattr(bench_run, "WORK", tmp_path / "work")
    tiny = {k: v for k, v in TINY_BASE.items() if k not in ("train_files", "val_files")}
    job = Job("cpu-none", "ours", overrides=tiny | {"device": "cpu", "compile": False, "num_iterations": 30,
                                                    "val_every": 0, "warmdown_iters": 0}, steps=30, batch=4)
    res = bench_run.run_job(job, [], str(tmp_path / "data/train_*.bin"), str(tmp_path / "data/val_*.bin"),
                            peak_tflops=1.0, timeout_s=300)
    assert res.exit_code == 0, res.tail
    assert bench_run.job_logs(tmp_path / "work" / "runs" / "cpu-none")
    assert res.step_ms > 0 and res.final_val_loss == res.final_val_loss  # measured, not NaN
    assert res.startup_s > 0
