"""Turn a bench call's results into bench/results/<date>-<name>/ and the headline summary.json.

    python3 bench/summary.py RESULTS_DIR [RESULTS_DIR ...] --name h200-single [--sweep SWEEP_DIR]

Each RESULTS_DIR holds a call's results.json (and table.md, ns_check.json if present); the files are
copied into bench/results/<date>-<name>/ (one subfolder per call when there are several) and
bench/results/summary.json is rewritten from them. Figures a call did not measure (DDP scaling)
keep their previous values and sources. --sweep names a bench/sweep_throughput.py output (its
sweep_results.json): the sweep-throughput figures (issue #22) join the summary. `summarize` and
`sweep_figures` are pure and tested.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
# issue #22's targets (the cold start and scaling ones from #17 stay)
TARGETS = {"step_ratio": 0.85, "headwise_overhead": 0.01, "elementwise_overhead": 0.03, "cold_start_s": 60,
           "warm_start_s": 12, "scaling_2": 0.90, "sweep_throughput_ratio": 0.9}
# figures: "ours-none-cold" (part 1) is the only cold start; "ours-none" (part 2) is a baseline only
OVERHEADS = {"headwise_overhead": "ours-headwise", "elementwise_overhead": "ours-elementwise",
             "const_overhead": "ours-const", "headwise_ns_overhead": "ours-headwise-ns",
             "elementwise_value_overhead": "ours-elementwise-value"}


def _ok(r: dict | None) -> bool:
    return bool(r) and r.get("exit_code") == 0 and r.get("step_ms") == r.get("step_ms")  # NaN != NaN


def _ratio(a: dict | None, b: dict | None, minus: float = 0.0) -> float | None:
    return round(a["step_ms"] / b["step_ms"] - minus, 4) if a and b and _ok(a) and _ok(b) else None


def _noise(a: dict | None, b: dict | None, steps: int) -> float | None:
    """Two standard errors of the ratio of two jobs' median step times, from each job's spread (p90-p10
    over the median, about 2.56 sigma) over its timed steps (after step 15): the margin a verdict needs."""
    if not (a and b and _ok(a) and _ok(b)):
        return None
    n = max(steps - 16, 1)
    sigma = [1.25 * r["spread"] / 2.56 / n**0.5 for r in (a, b)]
    return round(2 * (sigma[0] ** 2 + sigma[1] ** 2) ** 0.5, 4)


def summarize(calls: list[dict], previous: dict, sources: dict[str, str]) -> dict[str, Any]:
    """Headline figures from one or more calls' results.json. Every ratio compares jobs of one call
    (a later call may run on another machine): overheads and candidates against that call's
    ours-none-cold, the step ratio in the call that ran the reference."""
    found = {r["label"]: (i, r) for i, call in enumerate(calls) for r in call["results"]}  # later calls win

    def get(label: str, call: int | None = None) -> dict | None:
        if call is not None:
            return next((r for r in calls[call]["results"] if r["label"] == label), None)
        return found[label][1] if label in found else None

    def base_of(call: int) -> dict | None:  # each call's baseline: our defaults, no gate
        return get("ours-none-cold", call) or get("ours-none", call) or get("ours-none-warm", call)

    def vs_base(label: str, minus: float = 0.0) -> float | None:
        return _ratio(found[label][1], base_of(found[label][0]), minus) if label in found else None

    meta = calls[0]["meta"]
    ref = get("ref-cold")
    ref_call = found["ref-cold"][0] if ref else len(calls) - 1
    base = base_of(ref_call)
    out: dict[str, Any] = {"card": meta["card"], "torch": meta["torch"], "date": meta["date"],
                           "ref_step_ms": ref["step_ms"] if ref and _ok(ref) else None,
                           "ours_step_ms": base["step_ms"] if base and _ok(base) else None,
                           "step_ratio": _ratio(base, ref)}
    out |= {key: vs_base(label, 1.0) for key, label in OVERHEADS.items()}
    steps = lambda i: int(calls[i]["meta"].get("steps", 40))  # noqa: E731
    out["noise"] = {"step_ratio": _noise(base, ref, steps(ref_call))} | {
        key: _noise(found[label][1], base_of(found[label][0]), steps(found[label][0])) if label in found else None
        for key, label in OVERHEADS.items()}
    start = lambda label: found[label][1]["startup_s"] if _ok(get(label)) else None  # noqa: E731
    out |= {"cold_start_s": start("ours-none-cold"), "warm_start_s": start("ours-none-warm"),
            "portable_cache_start_s": start("ours-none-mega"), "ref_cold_start_s": start("ref-cold")}
    out["candidates"] = {label: {"step_ms": r["step_ms"], "baseline": r["baseline"],
                                 "vs_baseline": _ratio(r, get(r["baseline"], i)), "startup_s": r["startup_s"],
                                 "overrides": {k: v for k, v in r["overrides"].items()
                                               if k not in ("save_compile_cache", "compile_cache")}}
                         for label, (i, r) in sorted(found.items()) if r.get("baseline") and _ok(r)}
    same = [r for r in calls[ref_call]["results"] if _ok(r) and r["gate"] == "none" and r["kind"] == "ours"
            and r.get("batch", 64) == 64 and r["overrides"].get("fast", True)] if ref else []
    best = min(same, key=lambda r: r["step_ms"], default=None)
    out["best_step_ratio"] = {"label": best["label"], "ratio": _ratio(best, ref)} if best else None
    heads = [(label, vs_base(label, 1.0)) for label, (_, r) in found.items()
             if _ok(r) and r["gate"] == "headwise" and r.get("batch", 64) == 64 and "gate_act" not in r["overrides"]]
    heads = [h for h in heads if h[1] is not None]
    bh = min(heads, key=lambda h: h[1], default=None)
    out["best_headwise_overhead"] = {"label": bh[0], "overhead": bh[1]} if bh else None
    out["study_step_ms"] = {label.removeprefix("study-"): r["step_ms"] for label, (_, r) in sorted(found.items())
                            if label.startswith("study-") and _ok(r)} or previous.get("study_step_ms", {})
    out["scaling_efficiency"] = previous.get("scaling_efficiency", {})
    ns = [c["ns_check"] for c in calls if c.get("ns_check")]
    out["ns_batching_bitwise"] = ns[-1] if ns else previous.get("ns_batching_bitwise")
    out["skipped"] = sorted({label for c in calls for label in c["meta"].get("skipped", [])} - set(found))
    out["failed"] = sorted(label for label, (_, r) in found.items() if r.get("exit_code") != 0)
    out["sweep_throughput_ratio"] = previous.get("sweep_throughput_ratio")
    out["sweep"] = previous.get("sweep", {})
    out["sources"] = {**{k: v for k, v in previous.get("sources", {}).items() if k in ("scaling", "sweep")},
                      **sources}
    out["targets_met"] = _targets(out)
    return out


def _targets(s: dict) -> dict[str, bool | None]:
    def le(v: float | None, limit: float) -> bool | None:
        return None if v is None else v <= limit

    def timed(key: str, floor: float | None = None) -> bool | None:
        """met / not met only outside the call's noise; an overhead below -noise (a gate that saves time)
        is an inconsistent measurement: no verdict (None)"""
        v, e = s[key], (s.get("noise") or {}).get(key) or 0.0
        if v is None or (floor is not None and v < floor - e):
            return None
        return True if v + e <= TARGETS[key] else False if v - e > TARGETS[key] else None

    eff = s["scaling_efficiency"].get("2")
    return {f"step_ratio<={TARGETS['step_ratio']}": timed("step_ratio"),
            f"headwise<={TARGETS['headwise_overhead']}": timed("headwise_overhead", 0.0),
            f"elementwise<={TARGETS['elementwise_overhead']}": timed("elementwise_overhead", 0.0),
            f"cold<={TARGETS['cold_start_s']}s": le(s["cold_start_s"], TARGETS["cold_start_s"]),
            f"warm<={TARGETS['warm_start_s']}s": le(s["warm_start_s"], TARGETS["warm_start_s"]),
            f"scaling>={TARGETS['scaling_2']}": None if eff is None else eff >= TARGETS["scaling_2"],
            f"sweep>={TARGETS['sweep_throughput_ratio']}": None if s.get("sweep_throughput_ratio") is None
            else s["sweep_throughput_ratio"] >= TARGETS["sweep_throughput_ratio"]}


def sweep_figures(res: dict) -> dict[str, Any]:
    """The headline figures of a bench/sweep_throughput.py call (its sweep_results.json)."""
    sw, single = res["sweep"], res["single"]
    forked = [t["own_startup_s"] for t in sw["per_trial"] if t.get("forked") and t.get("own_startup_s") is not None]
    keys = ("wall_s", "trials", "finished", "sweep_tokens_per_s", "single_tokens_per_s", "single_span_tokens_per_s",
            "ratio_like_for_like", "ratio_vs_single_wall",
            "ratio_with_warmup", "training_covered", "head_s", "tail_s", "startup_s_median", "startup_s_max",
            "forked", "concurrency", "after_head")
    return {"sweep_throughput_ratio": sw["sweep_throughput_ratio"],
            "sweep": {k: sw.get(k) for k in keys} | {
                "card": res["meta"]["card"], "torch": res["meta"]["torch"], "date": res["meta"]["date"],
                "spec": res["meta"]["spec"], "overrides": res["meta"]["overrides"],
                "gpu_busy": sw["gpu"].get("util_mean"), "gpu_mem_used_max_mib": sw["gpu"].get("mem_used_max"),
                "single_ms_per_step": single["ms_per_step"], "single_startup_s": single["startup_s"],
                "warmup_s": res.get("warmup", {}).get("wall_s"),
                "forked_startup_s_median": sorted(forked)[len(forked) // 2] if forked else None}}


def load_call(d: Path) -> dict:
    call = json.loads((d / "results.json").read_text())
    if (d / "ns_check.json").is_file():
        call["ns_check"] = json.loads((d / "ns_check.json").read_text())
    return call


def file_calls(a: argparse.Namespace, previous: dict) -> dict[str, Any]:
    """Copy the calls' files into bench/results/<date>-<name>/ and summarize them over `previous`."""
    calls = [load_call(d) for d in a.dirs]
    dest = a.results / f"{calls[0]['meta']['date'][:10]}-{a.name}"
    for i, d in enumerate(a.dirs):
        sub = dest / f"call{i + 1}" if len(a.dirs) > 1 else dest
        sub.mkdir(parents=True, exist_ok=True)
        for f in ("results.json", "table.md", "ns_check.json"):
            if (d / f).is_file():
                shutil.copy(d / f, sub / f)
    where = str(dest.relative_to(a.results.parent.parent)) if dest.is_relative_to(a.results.parent.parent) else str(dest)
    plans = "+".join(c["meta"]["plan"] for c in calls)
    sources = {"step_and_start": f"{where} ({plans}: one process at a time on one {calls[0]['meta']['card']})"}
    return summarize(calls, previous, sources)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("dirs", nargs="*", type=Path, help="targets/single calls (none: --sweep alone, the rest kept)")
    p.add_argument("--name", default="h200", help="e.g. h200-single: the folder is bench/results/<date>-<name>")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--sweep", type=Path, help="a bench/sweep_throughput.py output folder (sweep_results.json)")
    p.add_argument("--sweep-name", default="h200-sweep", help="its folder: bench/results/<date>-<sweep-name>")
    a = p.parse_args(argv)
    if not a.dirs and not a.sweep:
        p.error("name a call's results folder, or --sweep")
    summary_path = a.results / "summary.json"
    previous = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    summary = file_calls(a, previous) if a.dirs else previous | {"sources": dict(previous.get("sources", {}))}
    if a.sweep:
        res = json.loads((a.sweep / "sweep_results.json").read_text())
        if (a.sweep / "after_head.json").is_file():  # re-read from the records of a call made before after_head
            res["sweep"].setdefault("after_head", json.loads((a.sweep / "after_head.json").read_text())["after_head"])
        sdest = a.results / f"{res['meta']['date'][:10]}-{a.sweep_name}"
        sdest.mkdir(parents=True, exist_ok=True)
        for f in ("sweep_results.json", "sweep_table.md", "sweep_bench.log", "sweep_records.tgz", "session.log"):
            if (a.sweep / f).is_file() and not (sdest / f).exists():
                shutil.copy(a.sweep / f, sdest / f)
        summary |= sweep_figures(res)
        summary["sources"]["sweep"] = f"{sdest.relative_to(ROOT) if sdest.is_relative_to(ROOT) else sdest} " \
                                      "(bench/sweep_throughput.py)"
        summary["targets_met"] = _targets(summary)
    summary_path.write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
