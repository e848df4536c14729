"""The benchmark's pure helpers (bench/measure.py), so a GPU session never finds them broken: the step
line parser on both trainers' log format, the reference patch (data paths and counts only), the FLOP
count behind MFU, and the result table."""

from __future__ import annotations

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
