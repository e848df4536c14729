"""Pure arithmetic of bench/sweep_throughput.py: a sweep's trials as timelines, and its throughput
against one trial running alone (tested without a GPU in tests/test_bench_sweep.py).

A trial's timeline comes from its records: launched (trial.json written by the launcher), first
optimizer step (the first train_loss point), ended (status.json). "Training" is the span from the
first step to the end (validation inside it included: the card is busy then too).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

IMPORT_TORCH = re.compile(r"import torch ([\d.]+)s")
SINCE_PROCESS = re.compile(r"([\d.]+)s after process start")


@dataclass
class TrialTimes:
    trial_id: str
    label: str
    launched: float  # unix seconds
    first_step: float | None
    ended: float | None
    steps: int  # train steps logged
    tokens: int  # steps x tokens per step
    status: str
    ms_per_step: float | None  # the trainer's own figure (shared card: not a speed figure)
    startup_s: float | None  # launched -> first step
    own_startup_s: float | None  # the trainer's "after process start" (a forked trial: since its fork)
    forked: bool | None  # import torch took < 0.1 s: forked from the warm trainer


def trial_times(run_dir: Path) -> TrialTimes:
    """Read one trial directory written by the local launcher."""
    meta = json.loads((run_dir / "trial.json").read_text())
    cfg, trial = meta["config"], meta.get("trial", {})
    points = [json.loads(ln) for ln in (run_dir / "track" / "metrics.jsonl").read_text().splitlines() if ln.strip()] \
        if (run_dir / "track" / "metrics.jsonl").is_file() else []
    train = sorted((p["ts"] / 1000, p["step"]) for p in points if p["key"] == "train_loss")
    status_file = run_dir / "track" / "status.json"
    status = json.loads(status_file.read_text()) if status_file.is_file() else {}
    summary_file = run_dir / "track" / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    out = (run_dir / "stdout.log").read_text(errors="replace") if (run_dir / "stdout.log").is_file() else ""
    line = next((ln for ln in out.splitlines() if "first step done" in ln), "")
    imp, since = IMPORT_TORCH.search(line), SINCE_PROCESS.search(line)
    launched = (run_dir / "trial.json").stat().st_mtime
    first = train[0][0] if train else None
    steps = train[-1][1] if train else 0
    per_step = cfg["batch_size"] * cfg["sequence_length"]
    ms = summary.get("ms_per_step")
    return TrialTimes(run_dir.name, trial.get("label", ""), launched, first, status.get("time"), steps,
                      steps * per_step, status.get("status", ""), ms if isinstance(ms, (int, float)) else None,
                      None if first is None else round(first - launched, 2),
                      float(since.group(1)) if since else None, float(imp.group(1)) < 0.1 if imp else None)


def train_points(run_dir: Path) -> list[tuple[float, int]]:
    """(unix time, step) of every train_loss point of a trial."""
    f = run_dir / "track" / "metrics.jsonl"
    points = [json.loads(ln) for ln in f.read_text().splitlines() if ln.strip()] if f.is_file() else []
    return sorted((p["ts"] / 1000, p["step"]) for p in points if p["key"] == "train_loss")


def step_ms_by_regime(trials: list[TrialTimes], points: dict[str, list[tuple[float, int]]], val_every: int
                      ) -> dict[str, dict[str, float]]:
    """The median time of one trial's step (two consecutive train points, no validation in between) by
    what ran on the card meanwhile: "T training, S starting" -> {"steps", "median_ms"}. One trial alone
    against two training shows what time-slicing costs; one training beside one starting, what a
    start-up costs the trial that trains."""
    spans = [(t.launched, t.first_step, t.ended) for t in trials if t.first_step is not None and t.ended]
    out: dict[str, list[float]] = {}
    for pts in points.values():
        for (a, s0), (b, s1) in zip(pts, pts[1:]):
            if s1 != s0 + 1 or (val_every and s0 % val_every == 0):
                continue
            mid = (a + b) / 2
            key = (f"{sum(1 for _, f, e in spans if f <= mid < e)} training, "
                   f"{sum(1 for la, f, _ in spans if la <= mid < f)} starting")
            out.setdefault(key, []).append(b - a)
    return {k: {"steps": len(v), "median_ms": round(1000 * sorted(v)[len(v) // 2], 1)} for k, v in sorted(out.items())}


def concurrency(trials: list[TrialTimes], t0: float, t1: float, step_s: float = 0.5) -> dict[int, dict[str, float]]:
    """{k: {"seconds", "steps_per_s"}}: how long exactly k trials were training, and the steps all of
    them made per second meanwhile, with each trial's steps spread evenly between its first step and
    its end (coarse: step_ms_by_regime times the steps themselves)."""
    spans = [(t.first_step, t.ended, t.steps) for t in trials
             if t.first_step is not None and t.ended is not None and t.ended > t.first_step]
    out: dict[int, dict[str, float]] = {}
    t = t0
    while t < t1:
        live = [(a, b, n) for a, b, n in spans if a <= t < b]
        k = len(live)
        rate = sum(n / (b - a) for a, b, n in live)
        slot = out.setdefault(k, {"seconds": 0.0, "steps": 0.0})
        slot["seconds"] += step_s
        slot["steps"] += rate * step_s
        t += step_s
    return {k: {"seconds": round(v["seconds"], 1), "steps_per_s": round(v["steps"] / v["seconds"], 3)}
            for k, v in sorted(out.items())}


def covered(trials: list[TrialTimes], t0: float, t1: float) -> float:
    """Fraction of [t0, t1] during which at least one trial was training."""
    spans = sorted((max(t.first_step, t0), min(t.ended, t1)) for t in trials
                   if t.first_step is not None and t.ended is not None)
    total, end = 0.0, t0
    for a, b in spans:
        a = max(a, end)
        if b > a:
            total += b - a
            end = b
    return total / (t1 - t0) if t1 > t0 else 0.0


def throughput(trials: list[TrialTimes], wall_s: float, single: dict[str, Any]) -> dict[str, Any]:
    """The sweep's training tokens per second of wall time against one trial alone: single's tokens
    per step over its ms/step (the trainer's train_time: validation excluded, as issue #22 counts it);
    like for like, over its span from first step to end (its validations and diagnostics included, as
    every trial of the sweep does them); and, for context, over its whole wall time (start-up too)."""
    done = [t for t in trials if t.status == "FINISHED"]
    tokens = sum(t.tokens for t in done)
    sweep_tps = tokens / wall_s if wall_s > 0 else 0.0
    single_tps = single["tokens_per_step"] / (single["ms_per_step"] / 1000) if single.get("ms_per_step") else None
    single_wall_tps = single["tokens"] / single["wall_s"] if single.get("wall_s") else None
    single_span_tps = single["tokens"] / single["span_s"] if single.get("span_s") else None
    return {"trials": len(trials), "finished": len(done), "tokens": tokens, "wall_s": round(wall_s, 1),
            "sweep_tokens_per_s": round(sweep_tps), "single_tokens_per_s": round(single_tps) if single_tps else None,
            "single_wall_tokens_per_s": round(single_wall_tps) if single_wall_tps else None,
            "sweep_throughput_ratio": round(sweep_tps / single_tps, 4) if single_tps else None,
            "single_span_tokens_per_s": round(single_span_tps) if single_span_tps else None,
            "ratio_like_for_like": round(sweep_tps / single_span_tps, 4) if single_span_tps else None,
            "ratio_vs_single_wall": round(sweep_tps / single_wall_tps, 4) if single_wall_tps else None}


def summarize_sweep(trials: list[TrialTimes], t0: float, t1: float, single: dict[str, Any],
                    gpu: dict[str, Any] | None = None) -> dict[str, Any]:
    out = throughput(trials, t1 - t0, single)
    starts = [t.startup_s for t in trials if t.startup_s is not None]
    first = min((t.first_step for t in trials if t.first_step is not None), default=None)
    last = max((t.ended for t in trials if t.ended is not None), default=None)
    out |= {"training_covered": round(covered(trials, t0, t1), 4),
            "head_s": None if first is None else round(first - t0, 1),
            "tail_s": None if last is None else round(t1 - last, 1),
            "startup_s_median": sorted(starts)[len(starts) // 2] if starts else None,
            "startup_s_max": max(starts) if starts else None,
            "forked": sum(1 for t in trials if t.forked), "concurrency": concurrency(trials, t0, t1),
            # the same ratios once the card trains (first step -> end): what a longer sweep tends to, as
            # the head (launcher, the first trial's start-up) is paid once per sweep, not per trial
            "after_head": None if first is None else
            {k: v for k, v in throughput(trials, t1 - first, single).items()
             if k in ("sweep_throughput_ratio", "ratio_like_for_like")},
            "gpu": gpu or {}, "per_trial": [asdict(t) for t in trials]}
    return out


def table(s: dict[str, Any]) -> str:
    """A short Markdown summary (the reply shows the end of the output)."""
    rows = [("trials finished", f"{s['finished']}/{s['trials']}"), ("sweep wall s", s["wall_s"]),
            ("sweep tokens/s", s["sweep_tokens_per_s"]), ("single-run tokens/s (ms/step)", s["single_tokens_per_s"]),
            ("**sweep_throughput_ratio**", s["sweep_throughput_ratio"]),
            ("ratio like for like (single run's first step to end: its validations too)", s["ratio_like_for_like"]),
            ("ratio vs single run's wall", s["ratio_vs_single_wall"]), ("time with a trial training", s["training_covered"]),
            ("head s (start -> first step)", s["head_s"]),
            ("ratio / like for like after the head (first step -> end)",
             " / ".join(str(v) for v in (s.get("after_head") or {}).values())), ("tail s (last end -> exit)", s["tail_s"]),
            ("trial start-up s median / max", f"{s['startup_s_median']} / {s['startup_s_max']}"),
            ("trials forked from the warm trainer", s["forked"]),
            ("GPU busy (NVML utilization mean)", s["gpu"].get("util_mean")),
            ("GPU memory used max MiB", s["gpu"].get("mem_used_max"))]
    conc = ", ".join(f"{k}: {v['seconds']}s @ {v['steps_per_s']} steps/s" for k, v in s["concurrency"].items())
    return "| figure | value |\n|---|---|\n" + "".join(f"| {a} | {b} |\n" for a, b in rows) + \
        f"\nconcurrency (trials training: seconds @ all their steps/s): {conc}\n"
