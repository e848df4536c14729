"""Pure helpers of the benchmark: log parsing, FLOP counts, the reference script patch, tables.

Both trainers print the reference's step lines, so one parser serves both:
`step:{s}/{N} train_loss:{x} train_time:{ms}ms step_avg:{a}ms` after each optimizer step (the
reference synchronises with .item() right before printing), so consecutive train_time values
differ by one step's wall time.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass

TRAIN_RE = re.compile(r"^step:(\d+)/(\d+) train_loss:(\S+) train_time:(\d+)ms step_avg:(\S+)ms")
VAL_RE = re.compile(r"^step:(\d+)/(\d+) val_loss:(\S+) train_time:(\d+)ms")
PEAK_RE = re.compile(r"peak memory consumption: (\d+) MiB")
FIRST_RE = re.compile(r"first step done ([\d.]+)s after train\(\) began \(([\d.]+)s (?:set-up|data, model, optimizers)\)"
                      r"(?:, ([\d.]+)s after process start)?")
CACHE_RE = re.compile(r"fx graph cache (\d+) hit / (\d+) miss, aot autograd cache (\d+) hit / (\d+) miss")


@dataclass
class LogStats:
    steps: int
    step_ms_median: float
    step_ms_mean: float
    step_ms_spread: float  # (p90 - p10) / median
    final_val_loss: float
    train_losses: list[float]
    peak_mib: int | None


def parse_log(text: str, *, skip: int = 15) -> LogStats:
    times: list[tuple[int, int]] = []
    losses: list[float] = []
    val = float("nan")
    peak = None
    for line in text.splitlines():
        if m := TRAIN_RE.match(line):
            times.append((int(m.group(1)), int(m.group(4))))
            losses.append(float(m.group(3)))
        elif m := VAL_RE.match(line):
            val = float(m.group(3))
        elif m := PEAK_RE.search(line):
            peak = int(m.group(1))
    # step k's wall time = train_time(k) - train_time(k-1); the clock resets at step 10, skip those.
    deltas = [t1 - t0 for (s0, t0), (s1, t1) in zip(times, times[1:]) if s1 == s0 + 1 and s0 >= skip]
    if not deltas:
        return LogStats(len(times), float("nan"), float("nan"), float("nan"), val, losses, peak)
    q = statistics.quantiles(deltas, n=10) if len(deltas) >= 2 else [deltas[0]] * 9
    med = statistics.median(deltas)
    return LogStats(len(times), med, statistics.fmean(deltas), (q[-1] - q[0]) / med, val, losses, peak)


def _timings(text: str) -> dict[str, float]:
    """'name 1.23s, other name 0.5s' -> {name: 1.23, other name: 0.5}."""
    out = {}
    for item in text.split(", "):
        name, _, value = item.strip().rpartition(" ")
        if name and value.endswith("s"):
            try:
                out[name] = float(value[:-1])
            except ValueError:
                continue
    return out


def parse_first_step(line: str) -> dict:
    """The trainer's first-step console line -> {first_step_s, setup_s, since_process_s, phases,
    overlapped, cache, compile_timers}; keys it does not carry are left out (older lines have no phases)."""
    m = FIRST_RE.search(line)
    if not m:
        return {}
    out: dict = {"first_step_s": float(m[1]), "setup_s": float(m[2])}
    if m[3]:
        out["since_process_s"] = float(m[3])
    for part in line[m.end():].split("; "):
        key, sep, rest = part.partition(": ")
        if sep and key in ("phases", "overlapped", "compile timers"):
            out[key.replace(" ", "_")] = _timings(rest)
        elif c := CACHE_RE.search(part):
            out["cache"] = {"fx_hit": int(c[1]), "fx_miss": int(c[2]), "aot_hit": int(c[3]), "aot_miss": int(c[4])}
    return out


def flops_per_token(*, n_layer: int = 12, d: int = 768, vocab: int = 50304, T: int = 1024, n_head: int = 6,
                    gate: str = "none") -> float:
    """Training FLOPs per token (2 FLOPs per MAC, x3 for forward+backward), causal attention at mean
    context (T+1)/2; norms, softmax and rotary ignored (../shared/notes/reference-trainer.md §4)."""
    block = 12 * 2 * d * d
    if gate == "elementwise":
        block += 2 * d * d
    elif gate == "headwise":
        block += 2 * d * n_head
    attn = 2 * 2 * d * (T + 1) / 2
    return 3 * (n_layer * (block + attn) + 2 * d * vocab)


PATCH_KEYS = ("input_bin", "input_val_bin", "batch_size", "device_batch_size", "num_iterations", "warmdown_iters",
              "val_loss_every", "val_tokens")


def patch_reference(source: str, **values: object) -> str:
    """Replace only the data paths and step/batch counts in the reference's Hyperparameters
    (lines like `    num_iterations : int = 5100 # ...`)."""
    unknown = set(values) - set(PATCH_KEYS)
    if unknown:
        raise ValueError(f"not a patchable hyperparameter: {sorted(unknown)}")
    out, done = [], set()
    for line in source.splitlines(keepends=True):
        m = re.match(r"^(\s*)(\w+)(\s*:\s*\w+\s*=\s*)([^#\n]*?)(\s*#.*)?$", line.rstrip("\n"))
        if m and m.group(2) in values and m.group(2) not in done:
            value = values[m.group(2)]
            line = f"{m.group(1)}{m.group(2)}{m.group(3)}{value!r}{m.group(5) or ''}\n"
            done.add(m.group(2))
        out.append(line)
    missing = set(values) - done
    if missing:
        raise ValueError(f"reference script has no Hyperparameters line for {sorted(missing)}")
    return "".join(out)


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "".join("| " + " | ".join(_cell(r.get(c)) for c in columns) + " |\n" for r in rows)


def _cell(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:.0f}"
    return "" if v is None else str(v)
