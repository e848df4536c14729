"""`gatesweep power`: seeds per configuration needed to detect a loss difference, from a stage's
spread (fixed seeds: analysis.power; a sequential spec: analysis.seq_power)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from analysis.cli import stage_parser, target_of
from sweeps.errors import SpecError
from trainer.cli_parser import Parser


def power_parser() -> Parser:
    p = stage_parser("power", "Seeds per configuration needed to detect a loss difference, from a stage's spread.")
    p.add_argument("--effect-pct", type=float, default=0.5, help="difference to detect, %% of the baseline loss")
    p.add_argument("--alpha", type=float, default=None,
                   help="family-wise level over the stage's comparisons (default 0.05; a sequential spec's p_adj)")
    p.add_argument("--power", type=float, default=0.8, help="target power")
    p.add_argument("--sd", type=float, default=None,
                   help="spread to plan with instead of the stage's (SD of per-seed differences when paired)")
    return p


def power_main(argv: Sequence[str] | None = None) -> int:
    args = power_parser().parse_args(argv)
    for name, value, ok in (("--effect-pct", args.effect_pct, args.effect_pct > 0),
                            ("--alpha", args.alpha, args.alpha is None or 0 < args.alpha < 1),
                            ("--power", args.power, 0 < args.power < 1),
                            ("--sd", args.sd, args.sd is None or args.sd > 0)):
        if not ok:
            raise SpecError(f"{name} {value}: out of range (effect-pct > 0, 0 < alpha, power < 1, sd > 0)")
    from analysis import power
    from analysis.fetch import fetch_runs
    from analysis.table import stage_table
    from trainer.errors import DataError

    target = target_of(args)
    seq = _sequential_of(args.spec) if args.spec is not None else None
    if seq is not None and args.alpha is not None and args.alpha != seq[0].alpha:
        raise SpecError(f"--alpha {args.alpha:g}: a sequential spec decides at its seeds.stop.p_adj "
                        f"({seq[0].alpha:g}); drop --alpha or change p_adj in {args.spec}")
    runs = fetch_runs(target.experiments, stage=target.stages, spec=target.spec, tracking_uri=args.tracking_uri)
    pairs, base_mean, n_now = power.stage_inputs(stage_table(runs, stages=target.stages, per_seed=True))
    if not pairs:
        raise DataError(f"{target.label}: no comparison with a finished baseline (attn_gate=none); nothing to plan")
    spread = power.pooled_spread(pairs)
    if args.sd is not None:
        spread = power.Spread(args.sd, 0, spread.paired)
    if not spread.sd > 0:
        raise DataError(f"{target.label}: the spread is undefined (fewer than 2 seeds per comparison); pass --sd")
    if seq is None:
        alpha = 0.05 if args.alpha is None else args.alpha
        plan = power.plan(spread, baseline_mean=base_mean, effect_pct=args.effect_pct, alpha=alpha,
                          target=args.power, comparisons=len(pairs), n_now=n_now)
        print(power.describe(target.label, spread, plan, effect_pct=args.effect_pct, alpha=alpha,
                             target=args.power, given_sd=args.sd is not None), end="")
        return 0
    _print_sequential_plan(target.label, spread, seq, args, base_mean=base_mean, n_now=n_now)
    return 0


def _sequential_of(spec_path: Path):
    """(the spec's sequential design, its number of comparisons), or None for a fixed-seeds spec."""
    from sweeps.sequential import baseline_pairs
    from sweeps.spec import design_points, load_spec

    spec = load_spec(spec_path)
    if spec.sequential is None:
        return None
    pairs = baseline_pairs([p for p, _ in design_points(spec)], spec.base_dict)
    return spec.sequential, sum(j is not None for j in pairs.values())


def _print_sequential_plan(label: str, spread, seq, args: argparse.Namespace, *, base_mean: float, n_now: int) -> None:
    from analysis import seq_power

    design, comparisons = seq
    print(seq_power.report(label, spread, design, comparisons=comparisons, n_now=n_now, base_mean=base_mean,
                           effect_pct=args.effect_pct, target=args.power, given_sd=args.sd is not None), end="")
