"""How far each same-math speed path drifts from the plain eager path (the reference's numerics).

Every variant trains from the same initial weights on the same tokens; after N steps its weights and
val loss are compared with the plain run (fast=false, eager). After one step the difference is the
paths' rounding; over hundreds of steps any rounding change grows into a different trajectory (the
weights drift apart as training amplifies it), so the val loss is the figure to judge, beside a
seed-1 plain run: what a different seed does. CPU by default (tiny preset on the synthetic source):
    python3 bench/fidelity.py --out bench/results/<date>-fidelity-cpu --steps 1,10,300
`--ns-check` (a GPU session) also checks the batched Newton-Schulz of the real model's shapes against
the per-matrix one, bitwise, eager and compiled.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.measure import markdown_table  # noqa: E402

VARIANTS: dict[str, dict] = {
    "plain": {},
    "fused_proj": {"fused_proj": True},
    "ce_chunks=8": {"ce_chunks": 8},
    "muon_batched": {"muon_batched": True},
    "compile": {"compile": "on"},
    "fast (all three)": {"fast": True},
    "fast + compile": {"fast": True, "compile": "on"},
    "plain seed=1": {"seed": 1},
}
# the demo spec's model on the synthetic source, with a headwise gate so the gate GEMM is exercised
BASE = {"preset": "tiny", "n_embd": 64, "sequence_length": 128, "batch_size": 16, "device_batch_size": 16,
        "val_tokens": 16384, "warmdown_iters": 90, "val_every": 0, "learning_rate": 0.02,
        "attn_gate": "headwise", "fast": False, "save_final": True}


def compare(a: dict, b: dict, init: dict) -> dict[str, float]:
    """Max |a - b| over all weights, the largest per-tensor ||a - b|| / ||b||, and the largest weight
    change training made (|b - init|) for scale."""
    import torch

    diff = max(float((a[k] - b[k]).abs().max()) for k in b)
    rel = max(float((a[k] - b[k]).norm() / b[k].norm()) for k in b)
    moved = max(float((b[k] - init[k]).abs().max()) for k in b)
    return {"max_abs": diff, "max_rel": rel, "max_update": moved,
            "bitwise": all(torch.equal(a[k], b[k]) for k in b)}


def run_variants(steps: int, data: Path, work: Path, device: str, names: list[str]) -> list[dict]:
    """One run per variant of `steps` steps; rows compared with the plain run (the first name)."""
    import torch

    from trainer.build import build_model
    from trainer.config import TrainConfig
    from trainer.dist import DistEnv
    from trainer.loop import train
    from trainer.tracking import NullTracker

    torch.set_num_threads(1)
    env = DistEnv(0, 0, 1, torch.device(device))
    files = {"train_files": str(data / "synth_train_*.bin"), "val_files": str(data / "synth_val_*.bin")}
    out: dict[str, dict] = {}
    rows = []
    for name in names:
        # the warmdown keeps its share of the run (90 of 300), so short runs take full-size steps
        cfg = TrainConfig.from_flat(BASE | files | {"num_iterations": steps, "warmdown_iters": 90 * steps // 300,
                                                    "device": device,
                                                    "out_dir": str(work / f"{name}-{steps}"), "run_id": "f",
                                                    "results_csv": str(work / "results.csv")} | VARIANTS[name])
        s = train(cfg, NullTracker(), env=env)
        state = torch.load(work / f"{name}-{steps}" / "checkpoints" / "f" / "latest.pt", map_location="cpu",
                           weights_only=False)
        out[name] = {"model": state["model"], "val": s.final_val_loss}
        if name == "plain":
            out["init"] = {"model": build_model(cfg, torch.device("cpu")).state_dict()}
        row = {"variant": name, "steps": steps, "final_val_loss": round(s.final_val_loss, 5),
               "val_diff": round(s.final_val_loss - out["plain"]["val"], 5)}
        if "seed" not in VARIANTS[name]:
            row |= compare(out[name]["model"], out["plain"]["model"], out["init"]["model"])
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def ns_check() -> dict[str, bool]:
    """Batched vs per-matrix Newton-Schulz on the 124M model's shapes (c_fc joins the transposed
    c_proj as its twin), bitwise, eager and compiled, on this machine's device."""
    import torch

    from trainer.muon import newton_schulz5

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator(device=dev).manual_seed(0)
    square = [torch.randn(768, 768, device=dev, generator=g) for _ in range(4)]
    fc = [torch.randn(3072, 768, device=dev, generator=g) for _ in range(2)]
    proj = [torch.randn(768, 3072, device=dev, generator=g) for _ in range(2)]
    out = {}
    for label, ns in (("eager", newton_schulz5), ("compiled", torch.compile(newton_schulz5))):
        same_shape = torch.equal(ns(torch.stack(square)), torch.stack([ns(m) for m in square]))
        batch = ns(torch.stack([m.mT for m in fc] + proj))
        twins = all(torch.equal(batch[i].mT, ns(m)) for i, m in enumerate(fc)) and all(
            torch.equal(batch[len(fc) + i], ns(m)) for i, m in enumerate(proj))
        out[f"{dev} {label}: same-shape stack bitwise"] = same_shape
        out[f"{dev} {label}: transposed twins bitwise"] = twins
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--steps", default="1,10,300", help="comma-separated run lengths")
    p.add_argument("--device", default="cpu")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated; plain is always run first")
    p.add_argument("--ns-check", action="store_true", help="only the Newton-Schulz batching check")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.ns_check:
        result = ns_check()
        (out / "ns_check.json").write_text(json.dumps(result, indent=1))
        print(json.dumps(result))
        return 0
    import torch

    from trainer.synth import write_synth_dataset

    names = ["plain"] + [n for n in args.variants.split(",") if n and n != "plain"]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_synth_dataset(data, train_tokens=2_000_000, val_tokens=65_536)
        rows = [row for n in map(int, args.steps.split(","))
                for row in run_variants(n, data, Path(tmp) / "runs", args.device, names)]
    meta = {"device": args.device, "torch": torch.__version__, "steps": args.steps, "base": BASE}
    (out / "fidelity.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    cols = ["variant", "steps", "bitwise", "max_abs", "max_rel", "max_update", "final_val_loss", "val_diff"]
    (out / "fidelity.md").write_text(f"{json.dumps(meta)}\n\n{markdown_table(rows, cols)}")
    print(markdown_table(rows, cols))
    return 0


if __name__ == "__main__":
    sys.exit(main())
