"""Sequential seeds in a spec: seeds added per undecided configuration until a stopping rule decides.

    seeds: {initial: [1337, 1338], add: [2337, 3337, 4337, 5337, 6337, 7337], max: 8, per_look: 2,
            stop: {p_adj: 0.05, spending: obf}}

Planned looks: n_1 = len(initial), n_{k+1} = min(n_k + per_look, max), ..., max. The spec's seed list
is initial + add[:max - len(initial)] (what `plan` counts and estimates); the run loop runs a
configuration's first n_k of them at look k (the rule: analysis.sequential). Every gated design point
is compared with the `attn_gate: none` point that agrees on its other keys, so a sequential spec needs
one for each. Pure: parsing takes the spec loader's error context.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

SEQ_KEYS = ("initial", "add", "max", "per_look", "stop")
STOP_KEYS = ("p_adj", "spending")
SPENDING = ("obf", "pocock")
GATE_KEYS = ("attn_gate", "gate_pos", "gate_act")
BASELINE_GATE = "none"


@dataclass(frozen=True, kw_only=True)
class Sequential:
    initial: int  # seeds every configuration runs first (n_1)
    max: int
    per_look: int
    alpha: float = 0.05  # familywise, over every comparison of the spec
    spending: str = "obf"

    @property
    def looks(self) -> tuple[int, ...]:
        looks = [self.initial]
        while looks[-1] < self.max:
            looks.append(min(looks[-1] + self.per_look, self.max))
        return tuple(looks)

    def to_json(self) -> dict[str, Any]:
        return {"looks": list(self.looks), "alpha": self.alpha, "spending": self.spending}


def parse_sequential(ctx: Any, m: Mapping[str, Any], field_path: str) -> tuple[tuple[int, ...], Sequential]:
    """(the planned seeds in order, the design). `ctx`: sweeps.spec's error context."""
    ctx.keys(m, SEQ_KEYS, field_path)
    initial = _seed_list(ctx, m.get("initial"), f"{field_path}.initial", minimum=2,
                         why="the paired t-test of the first look needs at least 2 seeds")
    add = _seed_list(ctx, m.get("add", []), f"{field_path}.add", minimum=0, why="")
    seeds = initial + add
    dup = sorted({s for s in seeds if seeds.count(s) > 1})
    if dup:
        raise ctx.error(field_path, f"seed(s) {dup} appear twice in initial + add; every seed once")
    if "max" not in m:
        raise ctx.error(f"{field_path}.max", f"required: the most seeds a configuration may get (e.g. max: "
                                             f"{len(seeds)})")
    top = ctx.int_(m["max"], f"{field_path}.max", 1)
    per_look = ctx.int_(m.get("per_look", len(initial)), f"{field_path}.per_look", 1)
    if top > len(seeds):
        raise ctx.error(f"{field_path}.max", f"{top} exceeds the {len(seeds)} seeds of initial + add; add seeds "
                                             f"to `add` or lower max")
    if top <= len(initial):  # the last look takes what is left, so any max above initial gives a second one
        raise ctx.error(f"{field_path}.max", f"{top} leaves no look after the {len(initial)} initial seeds: nothing "
                                             f"sequential; raise max above {len(initial)} or write seeds as a plain list")
    alpha, spending = _stop(ctx, ctx.mapping(m.get("stop"), f"{field_path}.stop"), f"{field_path}.stop")
    return seeds[:top], Sequential(initial=len(initial), max=top, per_look=per_look, alpha=alpha, spending=spending)


def _seed_list(ctx: Any, value: Any, field_path: str, *, minimum: int, why: str) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) < minimum:
        need = f"a list of at least {minimum} seeds ({why})" if minimum else "a list of seeds"
        raise ctx.error(field_path, f"expected {need}, got {value!r}")
    return tuple(ctx.int_(s, f"{field_path}[{i}]") for i, s in enumerate(value))


def _stop(ctx: Any, m: Mapping[str, Any], field_path: str) -> tuple[float, str]:
    ctx.keys(m, STOP_KEYS, field_path)
    alpha = m.get("p_adj", 0.05)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise ctx.error(f"{field_path}.p_adj", f"expected a familywise level between 0 and 1 (e.g. 0.05), got {alpha!r}")
    spending = m.get("spending", "obf")
    if spending not in SPENDING:
        raise ctx.error(f"{field_path}.spending", f"{spending!r} is not one of {', '.join(SPENDING)} (O'Brien-Fleming "
                                                  "or Pocock type alpha spending)")
    return float(alpha), str(spending)


# ---------------------------------------------------------------- comparisons
def baseline_pairs(points: Sequence[Mapping[str, Any]], base: Mapping[str, Any]) -> dict[int, int | None]:
    """Gated design point index -> index of its baseline: the `attn_gate: none` point that agrees on
    every non-gate key (the table's grouping), preferring equal gate_pos/gate_act; None if there is none."""
    def gate(p: Mapping[str, Any], key: str) -> Any:
        return p.get(key, base.get(key, {"attn_gate": BASELINE_GATE, "gate_pos": "sdpa", "gate_act": "sigmoid"}[key]))

    def others(p: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in p.items() if k not in GATE_KEYS}

    nones = [j for j, p in enumerate(points) if gate(p, "attn_gate") == BASELINE_GATE]
    out: dict[int, int | None] = {}
    for i, p in enumerate(points):
        if i in nones:
            continue
        cands = [j for j in nones if others(points[j]) == others(p)]
        same = [j for j in cands if all(gate(points[j], k) == gate(p, k) for k in GATE_KEYS[1:])]
        out[i] = (same or cands or [None])[0]
    return out


def check_baselines(path: str, points: Sequence[Mapping[str, Any]], base: Mapping[str, Any],
                    labels: Sequence[str]) -> None:
    """A sequential spec compares every gated point with a baseline: refuse one that cannot."""
    from sweeps.errors import SpecError

    pairs = baseline_pairs(points, base)
    if not pairs:
        raise SpecError(f"{path}: seeds: sequential seeds decide comparisons with the attn_gate: none baseline, and "
                        "this spec has no gated design point; add one (grid: {attn_gate: [none, headwise]}) or "
                        "write seeds as a plain list")
    missing = [labels[i] for i, j in pairs.items() if j is None]
    if missing:
        raise SpecError(f"{path}: seeds: sequential seeds compare each gated design point with the attn_gate: none "
                        f"point of the same other keys, and {', '.join(missing)} has none; add that baseline "
                        "point (grid or include) or write seeds as a plain list")
