"""The LR multiplier against the reference's LambdaLR semantics.

The reference builds `LambdaLR(opt, get_lr)` and calls `opt.step(); sched.step()` each iteration,
so the update at 0-based step s uses get_lr(s): warmup (s+1)/warmup_iters, then 1.0, then
(N - s)/warmdown_iters from s = N - warmdown_iters on.
"""

from __future__ import annotations

import pytest
import torch

from trainer.schedule import lr_factor


def reference_get_lr(it: int, *, num_iterations: int, warmup_iters: int, warmdown_iters: int) -> float:
    assert it <= num_iterations
    if it < warmup_iters:
        return (it + 1) / warmup_iters
    if it < num_iterations - warmdown_iters:
        return 1.0
    return (num_iterations - it) / warmdown_iters


def lambda_lr_trace(base_lr: float, **sched: int) -> list[float]:
    """The lr each opt.step() sees under the reference's LambdaLR, for steps 0..N-1."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=base_lr)
    lam = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: reference_get_lr(it, **sched))
    seen = []
    for s in range(sched["num_iterations"]):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        if s + 1 < sched["num_iterations"]:  # the reference's last sched.step() sets an lr no update uses
            lam.step()                        # (and divides by zero when warmdown_iters = 0)
    return seen


@pytest.mark.parametrize("sched", [
    dict(num_iterations=5100, warmup_iters=0, warmdown_iters=1450),  # the study's default
    dict(num_iterations=40, warmup_iters=5, warmdown_iters=12),
    dict(num_iterations=10, warmup_iters=3, warmdown_iters=7),  # warmup runs straight into warmdown
    dict(num_iterations=7, warmup_iters=0, warmdown_iters=0),
])
def test_equals_reference_lambda_lr(sched: dict[str, int]):
    base = 0.0036
    ours = [base * lr_factor(s, **sched) for s in range(sched["num_iterations"])]
    assert ours == lambda_lr_trace(base, **sched)


def test_shape_of_the_schedule():
    kw = dict(num_iterations=100, warmup_iters=10, warmdown_iters=20)
    f = [lr_factor(s, **kw) for s in range(101)]
    assert f[:10] == [(s + 1) / 10 for s in range(10)]  # linear warmup reaching 1.0 at s = 9
    assert f[9:80] == [1.0] * 71  # constant
    assert f[80:] == [(100 - s) / 20 for s in range(80, 101)]  # linear warmdown ...
    assert f[100] == 0.0 and f[99] == 1 / 20  # ... to exactly 0 at num_iterations


def test_steps_outside_the_run_are_rejected():
    kw = dict(num_iterations=10, warmup_iters=0, warmdown_iters=3)
    for bad in (-1, 11):
        with pytest.raises(ValueError, match="outside"):
            lr_factor(bad, **kw)
