"""Which GPU the next trial starts on: the local launcher's packing and start-up overlap policy.

Short trials lose the card to their start-up (imports, data, model init, loading compiled graphs,
validation at step 0) unless another trial trains meanwhile. Measured on one H200 (bench/results/
2026-12-04-h200-sweep-call{1,2}): a trial starting next to one that trains costs the latter ~2.5%, but two
trials *training* on one GPU by time-slicing run ~8% slower than one after the other (86 vs 80 ms per
step of one trial). So, per GPU:
- **just in time** (`trials_per_gpu: auto`, the default): one trial trains; the next is launched when
  the training one has about a start-up's time left (its pace from its metrics; the start-up from the
  trials that started before, 20 s until one has), so it takes over the card as the other ends;
- **share** (`trials_per_gpu: N`): up to N at a time, staggered: a new one only once the GPU's last
  started trial has taken its first step (launch to first optimizer step), so starts and ends spread out
  instead of a "wave" of trials starting (and idling the card) together;
- **memory** (auto): a second trial joins a GPU only if its free memory holds the largest per-trial
  footprint seen so far with a margin (read with nvidia-smi once trials on it have stepped).
Multi-GPU trials never share (GpuPool). Pure except `gpu_memory` and `visible_gpus` (nvidia-smi).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field

# Processes per GPU under `trials_per_gpu: auto`: the one that trains and the next one, starting.
AUTO_SHARE = 2
DEFAULT_STARTUP_S = 20.0  # a start-up (launch -> first step) before any was seen: forked ~14 s, fresh ~20 s
JIT_MARGIN_S = 2.0  # launch this much earlier than the estimate (a late start idles the card, an early one
# only shares it for a moment)
MIN_PACE_STEPS = 5  # steps a trial must have logged before its pace predicts its end
MEMORY_MARGIN = 1.15  # free memory needed for one more trial, relative to the largest footprint seen
STARTING_MAX_S = 900.0  # a trial that has not stepped by then no longer holds back the next start


class GpuPool:
    """Hands out disjoint sets of GPU ids; trials wait until enough are free (multi-GPU trials)."""

    def __init__(self, gpus: list[int]):
        self.free = list(gpus)
        self.total = len(gpus)

    def take(self, n: int) -> list[int] | None:
        if n > self.total:
            raise ValueError(f"a trial needs {n} GPUs but this machine has {self.total}")
        if len(self.free) < n:
            return None
        taken, self.free = self.free[:n], self.free[n:]
        return taken

    def give(self, gpus: list[int]) -> None:
        self.free = sorted(self.free + gpus)


def visible_gpus() -> list[int]:
    """GPU ids this launcher may use: CUDA_VISIBLE_DEVICES if set, else what nvidia-smi lists."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [int(x) for x in env.split(",") if x.strip().isdigit()]
    if shutil.which("nvidia-smi") is None:
        return []
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout
    return list(range(sum(1 for line in out.splitlines() if line.startswith("GPU "))))


def gpu_memory() -> dict[int, tuple[float, float]]:
    """{GPU index: (used MiB, total MiB)} from nvidia-smi; {} where it cannot be read (no GPUs here)."""
    if shutil.which("nvidia-smi") is None:
        return {}
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,memory.used,memory.total",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    mem = {}
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and all(p.replace(".", "", 1).isdigit() for p in parts):
            mem[int(parts[0])] = (float(parts[1]), float(parts[2]))
    return mem


@dataclass
class GpuLoad:
    """What runs on one GPU now."""

    gpu: int
    running: int = 0
    starting: int = 0  # launched, not yet past their first optimizer step
    free_mib: float | None = None  # None: unknown (no nvidia-smi)
    due: bool = True  # every trial training on it ends within about a start-up (just in time)


def pick_gpu(loads: list[GpuLoad], *, share: int, footprint_mib: float | None, check_memory: bool,
             jit: bool = False) -> int | None:
    """The GPU the next single-GPU trial starts on, or None to wait. Least loaded first; a GPU with a
    trial still starting is skipped (stagger); with `jit`, a GPU that runs trials takes the next only
    when they are `due`; with check_memory, only if its free memory holds `footprint_mib` x
    MEMORY_MARGIN (unknown footprint: wait for the running trials to step, when their memory is known)."""
    for g in sorted(loads, key=lambda g: (g.running, g.gpu)):
        if g.running >= share or g.starting or (jit and g.running and not g.due):
            continue
        if check_memory and g.running and g.free_mib is not None:
            if footprint_mib is None or g.free_mib < footprint_mib * MEMORY_MARGIN:
                continue
        return g.gpu
    return None


def remaining_s(first: tuple[float, int], last: tuple[float, int], total_steps: int, now: float) -> float | None:
    """Seconds a trial still needs at the pace between two of its (time, step) points (validations in
    between included), or None before MIN_PACE_STEPS steps."""
    steps = last[1] - first[1]
    if steps < MIN_PACE_STEPS:
        return None
    return (total_steps - last[1]) * (last[0] - first[0]) / steps - (now - last[0])


def footprint(used_mib: float, trials: int) -> float | None:
    """One trial's share of a GPU's used memory once all `trials` on it have stepped (their peak is
    then allocated: activations, gradients, optimizer state, the compiled graphs)."""
    return used_mib / trials if trials else None


@dataclass
class Packer:
    """Per-GPU bookkeeping of single-GPU trials for the runner: which GPU each trial holds, which are
    still starting, the largest footprint seen. `share` from trials_per_gpu (auto: AUTO_SHARE with the
    memory check)."""

    gpus: list[int]
    share: int
    check_memory: bool
    jit: bool = False
    trials: dict[int, int] = field(default_factory=dict)  # trial key -> gpu
    starting: dict[int, float] = field(default_factory=dict)  # trial key -> launch time
    total: dict[int, int] = field(default_factory=dict)  # trial key -> its num_iterations
    pace: dict[int, tuple[tuple[float, int], tuple[float, int]]] = field(default_factory=dict)  # first, last point
    startups: list[float] = field(default_factory=list)  # launch -> first step, of the trials that stepped
    footprint_mib: float | None = None

    def startup_s(self) -> float:
        """The expected start-up: the median of those seen, DEFAULT_STARTUP_S before any."""
        s = sorted(self.startups)
        return s[len(s) // 2] if s else DEFAULT_STARTUP_S

    def due(self, key: int, now: float) -> bool:
        if key not in self.pace:
            return False
        left = remaining_s(*self.pace[key], self.total.get(key, 0), now)
        return left is not None and left <= self.startup_s() + JIT_MARGIN_S

    def loads(self, now: float, memory: dict[int, tuple[float, float]]) -> list[GpuLoad]:
        out = []
        for g in self.gpus:
            keys = [k for k, gpu in self.trials.items() if gpu == g]
            starting = [k for k in keys if k in self.starting and now - self.starting[k] < STARTING_MAX_S]
            used_total = memory.get(g)
            due = all(self.due(k, now) for k in keys if k not in starting)
            out.append(GpuLoad(g, len(keys), len(starting),
                               None if used_total is None else used_total[1] - used_total[0], due))
        return out

    def observe(self, memory: dict[int, tuple[float, float]]) -> None:
        """Update the footprint from GPUs whose trials have all stepped."""
        for g in self.gpus:
            keys = [k for k, gpu in self.trials.items() if gpu == g]
            if keys and not any(k in self.starting for k in keys) and g in memory:
                f = footprint(memory[g][0], len(keys))
                if f is not None:
                    self.footprint_mib = max(self.footprint_mib or 0.0, f)

    def pick(self, now: float, memory: dict[int, tuple[float, float]]) -> int | None:
        return pick_gpu(self.loads(now, memory), share=self.share, footprint_mib=self.footprint_mib,
                        check_memory=self.check_memory, jit=self.jit)

    def add(self, key: int, gpu: int, now: float, total_steps: int = 0) -> None:
        self.trials[key] = gpu
        self.starting[key] = now
        self.total[key] = total_steps

    def stepped(self, key: int, now: float | None = None) -> None:
        launched = self.starting.pop(key, None)
        if launched is not None and now is not None:
            self.startups.append(now - launched)

    def progress(self, key: int, point: tuple[float, int] | None) -> None:
        """A trial's newest (time, step): the first one seen and the latest make its pace."""
        if point is not None:
            self.pace[key] = (self.pace[key][0] if key in self.pace else point, point)

    def remove(self, key: int) -> None:
        for table in (self.trials, self.starting, self.total, self.pace):
            table.pop(key, None)


def default_parallel(max_parallel: int | None, gpus: list[int], nproc: int, trials_per_gpu: int | str | None
                     ) -> int:
    """Trials at a time when max_parallel is not given: every GPU slot (single-GPU trials: GPUs x share;
    multi-GPU trials: disjoint sets), or 1 on a machine without GPUs."""
    if max_parallel is not None:
        return int(max_parallel)
    if not gpus:
        return 1
    return len(gpus) * share_of(trials_per_gpu)[0] if nproc == 1 else max(len(gpus) // nproc, 1)


def share_of(trials_per_gpu: int | str | None) -> tuple[int, bool]:
    """(processes per GPU, auto) for backend.local.trials_per_gpu: a number is taken as given (staggered);
    auto (or unset) is AUTO_SHARE, just in time, with the memory check."""
    if trials_per_gpu is None or trials_per_gpu == "auto":
        return AUTO_SHARE, True
    return int(trials_per_gpu), False


class MemoryReader:
    """nvidia-smi's memory readings, read at most every `every` seconds (a call takes 0.05-0.5 s)."""

    def __init__(self, every: float = 5.0):
        self.every, self.at = every, -1e9
        self.value: dict[int, tuple[float, float]] = {}

    def read(self) -> dict[int, tuple[float, float]]:
        if time.monotonic() - self.at > self.every:
            self.value, self.at = gpu_memory(), time.monotonic()
        return self.value


def take_gpus(packer: Packer | None, pool: GpuPool | None, memory: MemoryReader, nproc: int) -> list[int] | None:
    """GPUs for the next trial, or None to wait: the packer's pick (nvidia-smi is read only when the
    pick would put another trial on a GPU that runs some) or, for multi-GPU trials, a disjoint set."""
    if packer is None:
        assert pool is not None
        return pool.take(nproc)
    now = time.time()  # wall clock: the trials' metrics are stamped with it
    gpu = packer.pick(now, {})
    if gpu is not None and packer.check_memory and gpu in packer.trials.values():
        mem = memory.read()
        packer.observe(mem)
        gpu = packer.pick(now, mem)
    return None if gpu is None else [gpu]
