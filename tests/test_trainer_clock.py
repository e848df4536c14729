"""train_time as the reference counts it (steps 10..N, eval and checkpoints excluded), and across a
resume: the restart's compile steps are not timed but counted at the measured mean. A fake clock."""

from __future__ import annotations

import pytest

from trainer.clock import TrainClock


class FakeTime:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def run(clock: TrainClock, now: FakeTime, steps: range, step_s: dict[int, float], *, eval_at=(), eval_s=5.0):
    """Drive the clock like trainer.loop: begin_step, optional eval (paused), then the step's work."""
    for step in steps:
        clock.begin_step(step)
        if step in eval_at:
            clock.pause()
            now.t += eval_s
            clock.start()
        now.t += step_s.get(step, 0.1)


def test_fresh_run_times_steps_10_to_n_only():
    now = FakeTime()
    clock = TrainClock(start_step=0, now=now)
    slow = {0: 30.0, 1: 20.0}  # compile in the first steps: not counted
    run(clock, now, range(0, 30), slow, eval_at=(10, 20))
    assert clock.total_ms(30) == pytest.approx(20 * 100.0)  # steps 10..29 at 0.1 s, evals excluded


def test_a_resume_does_not_count_the_restarts_compile():
    now = FakeTime()
    # steps 10..19 took 1.0 s before the checkpoint at step 20
    clock = TrainClock(start_step=20, train_ms=1000.0, resumed=True, now=now)
    slow = {20: 40.0, 21: 15.0}  # recompile after the restart
    run(clock, now, range(20, 50), slow)
    # 10 warm-up steps counted at the pre-resume mean (0.1 s), then 20 timed steps at 0.1 s
    assert clock.total_ms(50) == pytest.approx(1000.0 + 10 * 100.0 + 20 * 100.0)
    # what the old arithmetic would have said: the 55 s of compile inside train_time
    assert clock.raw_ms() < 10_000


def test_a_run_ending_inside_the_warmup_window_is_estimated_too():
    now = FakeTime()
    clock = TrainClock(start_step=40, train_ms=3000.0, resumed=True, now=now)  # 30 steps, 0.1 s each
    run(clock, now, range(40, 45), {40: 60.0})
    assert clock.total_ms(45) == pytest.approx(3000.0 + 5 * 100.0)


def test_resume_at_step_10_uses_the_mean_measured_after_the_warmup():
    now = FakeTime()
    clock = TrainClock(start_step=10, train_ms=0.0, resumed=True, now=now)
    run(clock, now, range(10, 40), {10: 50.0})
    assert clock.total_ms(40) == pytest.approx(30 * 100.0)


def test_resume_before_step_10_behaves_like_a_fresh_run():
    now = FakeTime()
    clock = TrainClock(start_step=5, train_ms=123.0, resumed=True, now=now)
    run(clock, now, range(5, 30), {5: 30.0})
    assert clock.total_ms(30) == pytest.approx(20 * 100.0)
