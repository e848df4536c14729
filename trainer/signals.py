"""Stop requests from signals (SIGTERM/SIGUSR2 from Slurm preemption or a time limit, SIGINT from Ctrl-C).

The handler only sets a flag; the loop checks it at step boundaries, where all ranks agree on it
through one all-reduce, save a checkpoint and stop - so a preempted run resumes exactly.
A second SIGINT falls through to Python's default (KeyboardInterrupt).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

import torch

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT)


class StopRequest:
    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS):
        self.signals = signals
        self.is_set = False
        self.signal_name = ""
        self._local = False
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self._local = True
        self.signal_name = signal.Signals(signum).name
        if signum == signal.SIGINT:  # a second Ctrl-C interrupts at once
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)

    def requested(self, env: Any) -> bool:
        """Collective when distributed: every rank must call it at the same step."""
        if env.distributed:
            flag = torch.tensor([1.0 if self._local else 0.0], device=env.device)
            env.all_reduce_sum(flag)
            self.is_set = self.is_set or flag.item() > 0
        else:
            self.is_set = self.is_set or self._local
        if self.is_set and not self.signal_name:
            self.signal_name = "signal on another rank"
        return self.is_set
