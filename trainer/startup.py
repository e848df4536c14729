"""Where start-up time goes: named phases from process start to the first optimizer step.

`python -m trainer` creates a StartupClock before it imports torch; `train()` times its set-up and the
first step's parts with it and prints one console line after the first step (bench/measure.py parses
it). Phases are timed on the main thread in order; `other` is what no phase covers (so the phases add
up to the time since process start). Work that a background thread overlaps with them is listed
separately, under `overlapped`.

Prewarm overlaps the compiler's imports (torch._dynamo: ~2 s; torch.compile's inductor modules: ~2 s
more; pure Python, so they hold the GIL) and the CUDA context with the set-up steps that release the
GIL: reading shards, initialising the model on the CPU, copying it to the device. The imports touch no
random number generator (tests/test_trainer_startup.py checks it), so the model's initial weights are
the same as without the overlap.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # `python -m trainer` starts this clock before it imports torch
    import torch

# Imported by every run before its first step: torch.optim imports torch._dynamo on the first
# optimizer's construction, torch.compile imports inductor's compile_fx when it wraps a function.
EAGER_MODULES = ("torch._dynamo",)
COMPILE_MODULES = ("torch._dynamo", "torch._inductor.compile_fx")


def process_age() -> float | None:
    """Seconds since this process was started (exec), from /proc; None where there is no /proc."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


class StartupClock:
    def __init__(self, *, since_process_start: bool = True) -> None:
        """since_process_start: the clock starts at this process's exec (phase `python`: the interpreter
        and the imports before the clock), else now (a train() called by other code)."""
        now = time.perf_counter()
        age = process_age() if since_process_start else None
        self.origin = now - (age or 0.0)  # where `other` and the total count from, on the perf_counter scale
        self.from_process = age is not None
        self.phases: dict[str, float] = {"python": age} if age is not None else {}
        self.overlapped: dict[str, float] = {}
        self.sync: Callable[[], None] = lambda: None
        self.nvidia_smi: Callable[[], str] | None = None  # the run log's nvidia-smi, started before torch
        self.open = True  # False once the first step is reported: phase() is then free
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def phase(self, name: str, *, sync: bool = False) -> Iterator[None]:
        """Time the block as phase `name` (times add up); sync=True waits for the device at the end,
        so queued kernels count here and not in a later phase."""
        if not self.open:
            yield
            return
        t = time.perf_counter()
        try:
            yield
        finally:
            if sync:
                self.sync()
            self.add(name, time.perf_counter() - t)

    def add(self, name: str, seconds: float, *, overlapped: bool = False) -> None:
        with self._lock:
            table = self.overlapped if overlapped else self.phases
            table[name] = table.get(name, 0.0) + seconds

    def line(self, train_began: float, setup_done: float, extra: str = "") -> str:
        """The console line after the first step (and closes the clock)."""
        now = time.perf_counter()
        self.open = False
        total = now - self.origin
        other = total - sum(self.phases.values())
        phases = ", ".join(f"{k} {v:.2f}s" for k, v in [*self.phases.items(), ("other", other)])
        text = (f"first step done {now - train_began:.1f}s after train() began ({setup_done - train_began:.1f}s "
                f"set-up)" + (f", {total:.1f}s after process start" if self.from_process else "") + f"; phases: {phases}")
        if self.overlapped:
            text += "; overlapped: " + ", ".join(f"{k} {v:.2f}s" for k, v in self.overlapped.items())
        return text + (f"; {extra}" if extra else "")


class Prewarm:
    """A background thread that imports `modules` and, on CUDA, creates the device's context.

    wait() joins it (timed as the phase `compiler imports wait`): call it before the main thread
    could import any of the modules itself (the first optimizer), so that no two threads ever run
    the imports at once. Errors here are ignored: the main thread meets them again, with its own
    traceback, when it does the same work."""

    def __init__(self, clock: StartupClock, modules: tuple[str, ...], device: torch.device):
        self.clock, self.device = clock, device
        self.modules = [m for m in modules if m not in sys.modules]
        cuda = device.type == "cuda"
        self._thread = threading.Thread(target=self._run, args=(cuda,), name="gatesweep-prewarm", daemon=True) \
            if self.modules or cuda else None
        if self._thread is not None:
            self._thread.start()

    def _run(self, cuda: bool) -> None:
        if cuda:
            import torch

            t = time.perf_counter()
            with contextlib.suppress(Exception):
                torch.zeros((), device=self.device)  # the primary context: shared by every thread
            self.clock.add("cuda context", time.perf_counter() - t, overlapped=True)
        t = time.perf_counter()
        for name in self.modules:
            with contextlib.suppress(Exception):
                importlib.import_module(name)
        if self.modules:
            self.clock.add("compiler imports", time.perf_counter() - t, overlapped=True)

    def wait(self) -> None:
        if self._thread is not None:
            with self.clock.phase("compiler imports wait"):
                self._thread.join()
            self._thread = None
