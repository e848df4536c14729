"""Which GPU the next trial starts on: the local launcher's packing and start-up overlap policy.

Short trials lose the card to their start-up (imports, data, model init, loading compiled graphs,
validation at step 0) unless another trial trains meanwhile. Measured on one H200 (bench/results/
*-h200-sweep): trials sharing a GPU by time-slicing give about the throughput of one trial alone, so
what decides a sweep's throughput is that some trial is always training. The policy, per GPU:
- **stagger**: a trial starts on a GPU only when no other trial there is still starting (launch to first
  optimizer step), so starts and ends spread out and each start-up overlaps the others' training
  instead of all trials of a "wave" starting (and idling the card) together;
- **share**: at most `share` trials per GPU (`backend.local.trials_per_gpu`; `auto` = AUTO_SHARE);
- **memory** (auto only): a second trial joins a GPU only if its free memory holds the largest per-trial
  footprint seen so far with a margin (read with nvidia-smi once trials on it have stepped).
Multi-GPU trials never share (GpuPool). Pure except `gpu_memory` and `visible_gpus` (nvidia-smi).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field

# Trials per GPU under `trials_per_gpu: auto`: two keep the card busy (one trains while the next starts);
# more add memory and context switches and hide only start-ups longer than a trial's remaining work.
AUTO_SHARE = 2
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


def pick_gpu(loads: list[GpuLoad], *, share: int, footprint_mib: float | None, check_memory: bool) -> int | None:
    """The GPU the next single-GPU trial starts on, or None to wait. Least loaded first; a GPU with a
    trial still starting is skipped (stagger); with check_memory, a GPU that already runs trials takes
    one more only if its free memory holds `footprint_mib` x MEMORY_MARGIN (unknown footprint: wait for
    the running trials to step, which is when their memory is known)."""
    for g in sorted(loads, key=lambda g: (g.running, g.gpu)):
        if g.running >= share or g.starting:
            continue
        if check_memory and g.running and g.free_mib is not None:
            if footprint_mib is None or g.free_mib < footprint_mib * MEMORY_MARGIN:
                continue
        return g.gpu
    return None


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
    trials: dict[int, int] = field(default_factory=dict)  # trial key -> gpu
    starting: dict[int, float] = field(default_factory=dict)  # trial key -> launch time (monotonic)
    footprint_mib: float | None = None

    def loads(self, now: float, memory: dict[int, tuple[float, float]]) -> list[GpuLoad]:
        out = []
        for g in self.gpus:
            keys = [k for k, gpu in self.trials.items() if gpu == g]
            starting = sum(1 for k in keys if k in self.starting and now - self.starting[k] < STARTING_MAX_S)
            used_total = memory.get(g)
            out.append(GpuLoad(g, len(keys), starting, None if used_total is None else used_total[1] - used_total[0]))
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
                        check_memory=self.check_memory)

    def add(self, key: int, gpu: int, now: float) -> None:
        self.trials[key] = gpu
        self.starting[key] = now

    def stepped(self, key: int) -> None:
        self.starting.pop(key, None)

    def remove(self, key: int) -> None:
        self.trials.pop(key, None)
        self.starting.pop(key, None)


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
    """(trials per GPU, check memory) for backend.local.trials_per_gpu: a number is taken as given;
    auto (or unset) is AUTO_SHARE with the memory check."""
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
    now = time.monotonic()
    gpu = packer.pick(now, {})
    if gpu is not None and packer.check_memory and gpu in packer.trials.values():
        mem = memory.read()
        packer.observe(mem)
        gpu = packer.pick(now, mem)
    return None if gpu is None else [gpu]
