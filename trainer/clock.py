"""The training clock: the reference's `train_time` (wall time of steps 10..N, validation and
checkpoints excluded), kept honest across a resume.

A fresh run, like the reference, starts timing at step 10, so compilation and warm-up stay out. A run
resumed at step S >= 10 compiles again in its first steps; counting them would put a restart's
compile time into `train_time` and `ms_per_step` (a Slurm requeue would make a trial look slower).
So those first `WARMUP` steps after a resume are not timed; they are counted at the mean step time
measured before the resume (or, with none measured, after the warm-up). The caller synchronises the
device before `pause`, `start` and `begin_step` at the points where the reference does.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

WARMUP = 10  # the reference's untimed steps at the start of a run


class TrainClock:
    def __init__(self, *, start_step: int, train_ms: float = 0.0, resumed: bool = False,
                 now: Callable[[], float] = time.perf_counter):
        self._now = now
        self._ms = train_ms  # timed steps, as the reference counts them
        self._t0 = now()
        self._running = True
        # a resume at S >= 10 leaves steps S .. S+WARMUP untimed, estimated at the end
        self._window = (start_step, start_step + WARMUP) if resumed and start_step >= WARMUP else None
        self._ms_before = train_ms
        self._in_window = self._window is not None

    # ------------------------------------------------------------ driving
    def begin_step(self, step: int) -> None:
        """Called at the top of every loop iteration (before validation of that step)."""
        if self._window is None and step == WARMUP:
            self._ms, self._t0 = 0.0, self._now()
        if self._window is not None and step == self._window[1]:
            self._ms, self._t0, self._in_window = self._ms_before, self._now(), False  # drop the warm-up

    def pause(self) -> None:
        if self._running:
            self._ms += 1000 * (self._now() - self._t0)
            self._running = False

    def start(self) -> None:
        if not self._running:
            self._t0, self._running = self._now(), True

    # ------------------------------------------------------------ reading
    def raw_ms(self) -> float:
        """Timed so far, the step in progress included; for checkpoints and the running averages."""
        return self._ms + (1000 * (self._now() - self._t0) if self._running else 0.0)

    def total_ms(self, step: int) -> float:
        """train_time at `step` with the untimed warm-up after a resume counted at the measured mean."""
        ms = self.raw_ms()
        if self._window is None:
            return ms
        lo, hi = self._window
        before = lo - WARMUP
        if self._in_window:  # still warming up (or the run ends inside the window)
            return self._ms_before + (self._ms_before / before) * (step - lo) if before > 0 else ms
        if before > 0:
            mean = self._ms_before / before
        elif step > hi:
            mean = (ms - self._ms_before) / (step - hi)
        else:
            return ms
        return ms + mean * (hi - lo) if math.isfinite(mean) else ms
