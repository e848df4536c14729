"""Sequential seeds: when to stop adding seeds to a comparison, without inflating false positives. Pure
(numpy/scipy); a sweep's decision log is read by analysis.decision_log (`decisions_for_spec`), what the
stage table makes of it is analysis.seq_table.

Design. A configuration gets seeds in planned looks n_1 < n_2 < ... < n_K = max; information fraction
t_k = n_k / max. At look k each open comparison (a gated configuration vs its `attn_gate: none`
baseline) has the table's p-value over its first n_k seeds (paired t-test by seed, Welch otherwise),
compared with the nominal level p_k(a) of a two-sided group-sequential test of size a.

Boundaries (analysis.seq_bounds). Lan-DeMets alpha spending, O'Brien-Fleming or Pocock type, turned
into nominal levels p_k(a) for the paired t-test at n_k seeds: the normal-theory levels, recalibrated
on simulated null t paths so that each look spends exactly its share of a with 2-8 seeds.

Multiplicity. The m comparisons of a table share alpha by the Holm graph of Maurer & Bretz (2013,
"Multiple testing in group sequential trials using graphical approaches", Stat Biopharm Res 5:311):
every hypothesis not yet rejected is tested at a / (number not yet rejected) with that level's
boundaries; a rejection recycles its alpha to the others, whose boundaries are recomputed at the
new level and applied to every look they have seen, the current one included. The first true
hypothesis to be rejected is rejected at a level <= a / m_0, by a path that crosses that level's
boundaries, so the familywise error stays <= m_0 * a / m_0 = a.

A comparison stops when it is rejected ("decided") or at the last look ("undecided at max"); the
baseline keeps receiving seeds while any comparison with it is open.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.special import stdtr

from analysis.decision_log import LOG_NAME, decisions_for_spec  # noqa: F401  (their home; imported from here too)
from analysis.fmt import format_ordered
from analysis.seq_bounds import fractions_of, t_levels

OPEN, DECIDED, UNDECIDED = "open", "decided", "undecided"


# ---------------------------------------------------------------- the stopping rule
@dataclass(frozen=True)
class Design:
    looks: tuple[int, ...]  # seeds per configuration at each planned look, increasing; the last is max
    alpha: float = 0.05
    spending: str = "obf"

    @property
    def fractions(self) -> tuple[float, ...]:
        return fractions_of(self.looks)

    def levels(self, alpha_j: float) -> tuple[float, ...]:
        return t_levels(self.looks, alpha_j, self.spending)


@dataclass
class Look:
    look: int  # 1-based
    n: int
    p: float
    threshold: float  # the nominal level this look's p was held against, at alpha_j
    alpha_j: float


@dataclass
class Decision:
    name: str
    baseline: str
    status: str = OPEN
    look: int = 1  # open: the look it waits for; decided: the look whose p crossed; undecided: the last
    stopped_at: int = 0  # the look after which it received no more seeds (0 while open)
    n: int = 0
    p: float = math.nan
    threshold: float = math.nan
    alpha_j: float = math.nan
    history: list[Look] = field(default_factory=list)

    def text(self, num_looks: int) -> str:
        return decision_text(self.status, self.look, self.stopped_at, self.n, self.p, self.threshold, num_looks)


def decision_text(status: str, look: int, stopped_at: int, n: int, p: float, threshold: float, num_looks: int) -> str:
    """A decision in words: "decided at look 3 (n=6): p=2.97e-05 <= 0.00292"; after Holm recycling raised
    the level of an earlier look's data, "decided at look 3 (data of look 2, n=4, crossed after Holm
    recycling): ..."; "undecided at max n=8: p=0.473 > 0.0409"; "open (look 2 of 4)". p and the level
    carry the digits that show their order (analysis.fmt.format_ordered)."""
    p_text, level = format_ordered([p, threshold])
    if status == DECIDED:
        when = (f"look {stopped_at} (data of look {look}, n={n}, crossed after Holm recycling)"
                if stopped_at and stopped_at != look else f"look {look} (n={n})")
        return f"decided at {when}: p={p_text} <= {level}"
    if status == UNDECIDED:
        p_text = f"p={p_text}" if math.isfinite(p) else "p undefined (no spread in the differences)"
        return f"undecided at max n={n}: {p_text} > {level}"
    return f"open (look {look} of {num_looks})"


@dataclass
class Outcome:
    design: Design
    decisions: dict[str, Decision]
    looks_done: int  # complete looks (0: the first look's seeds are not all in)

    @property
    def finished(self) -> bool:
        return all(d.status != OPEN for d in self.decisions.values())

    def required(self) -> dict[str, int]:
        """Seeds each configuration needs now: a stopped comparison keeps what it had, an open one (and
        its baseline) the seeds of the look it waits for."""
        need: dict[str, int] = {}
        for d in self.decisions.values():
            # a stopped comparison keeps the seeds it had when it stopped (more than d.n when an earlier
            # look's p crossed a level raised by a later rejection)
            n = self.design.looks[(d.stopped_at if d.status != OPEN else d.look) - 1]
            need[d.name] = max(need.get(d.name, 0), n)
            need[d.baseline] = max(need.get(d.baseline, 0), n)
        return need

    def stopped(self, name: str) -> bool:
        """No more seeds for this configuration: its comparison stopped, or (a baseline) all of its."""
        mine = [d for d in self.decisions.values() if name in (d.name, d.baseline)]
        return bool(mine) and all(d.status != OPEN for d in mine)

    def to_json(self, configs: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
        configs = configs or {}
        rows = []
        for d in self.decisions.values():
            row = asdict(d) | {"text": d.text(len(self.design.looks))}
            row |= {"config": dict(configs.get(d.name, {})), "baseline_config": dict(configs.get(d.baseline, {}))}
            rows.append(_json_safe(row))
        return {"design": asdict(self.design) | {"fractions": list(self.design.fractions)},
                "looks_done": self.looks_done, "finished": self.finished, "required": self.required(),
                "comparisons": rows}


def p_value(group: Mapping[Any, float], baseline: Mapping[Any, float]) -> float:
    """The table's two-sided test (analysis.stats.compare): paired t on the seeds both ran when at least
    2 are common, else Welch; NaN when undefined. Written out with scipy.special because the rule runs it
    thousands of times in its simulation; tests hold it equal to scipy.stats' t-tests and to the table's.
    (The rule itself always passes both sides the same seeds, those of one look.)"""
    g = {k: float(v) for k, v in group.items() if _finite(v)}
    b = {k: float(v) for k, v in baseline.items() if _finite(v)}
    common = [k for k in g if k in b]
    if len(common) >= 2:
        d = np.array([g[k] - b[k] for k in common])
        return _t_p(float(d.mean()), float(d.var(ddof=1)) / len(d), len(d) - 1.0)
    if len(g) >= 2 and len(b) >= 2:
        x, y = np.array(list(g.values())), np.array(list(b.values()))
        vx, vy = float(x.var(ddof=1)) / len(x), float(y.var(ddof=1)) / len(y)
        with np.errstate(divide="ignore", invalid="ignore"):
            df = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1))
        return _t_p(float(x.mean() - y.mean()), vx + vy, float(df))
    return math.nan


def _t_p(diff: float, var: float, df: float) -> float:
    if var == 0.0:
        return 0.0 if diff != 0.0 else math.nan  # as scipy: t = +-inf, or 0/0
    return float(2.0 * stdtr(df, -abs(diff) / math.sqrt(var)))


def decide(design: Design, seeds: Sequence[Any], values: Mapping[str, Mapping[Any, float]],
           pairs: Mapping[str, str]) -> Outcome:
    """Replay the rule over the planned looks with the values in hand.

    seeds: the planned seed order (look k uses seeds[:looks[k-1]]); values: configuration -> seed ->
    final loss of its finished runs; pairs: compared configuration -> its baseline. Deterministic in its
    inputs, so every invocation of the run loop reaches the same decisions from the same records."""
    decisions = {name: Decision(name, base) for name, base in pairs.items()}
    looks_done = 0
    for k, n in enumerate(design.looks, start=1):
        active = [d for d in decisions.values() if d.status == OPEN]
        if not active:
            break
        for d in active:
            d.look = k
        if not all(_has(values.get(c, {}), seeds[:n]) for d in active for c in (d.name, d.baseline)):
            break
        looks_done = k
        for d in active:
            sub = seeds[:n]
            p = p_value({s: values[d.name][s] for s in sub}, {s: values[d.baseline][s] for s in sub})
            d.history.append(Look(k, n, p, math.nan, math.nan))
        _holm(design, decisions, k)
        for d in active:
            if d.status == OPEN and k == len(design.looks):
                last = d.history[-1]
                d.status, d.n, d.p, d.threshold, d.alpha_j = UNDECIDED, last.n, last.p, last.threshold, last.alpha_j
                d.stopped_at = k
    return Outcome(design, decisions, looks_done)


def _holm(design: Design, decisions: Mapping[str, Decision], k: int) -> None:
    """At look k: reject at alpha / (number not rejected), recycling each rejection's alpha to the others;
    a raised level applies to every look a comparison has seen (the current one is preferred)."""
    while True:
        remaining = [d for d in decisions.values() if d.status != DECIDED]
        if not remaining:
            return
        alpha_j = design.alpha / len(remaining)
        levels = design.levels(alpha_j)
        rejected = False
        for d in remaining:
            if d.status != OPEN:
                continue
            for h in d.history:
                h.threshold, h.alpha_j = levels[h.look - 1], alpha_j
            crossed = [h for h in d.history if h.p <= h.threshold]
            if crossed:
                h = crossed[-1]
                d.status, d.look, d.n, d.p, d.threshold, d.alpha_j = DECIDED, h.look, h.n, h.p, h.threshold, h.alpha_j
                d.stopped_at = k
                rejected = True
        if not rejected:
            return


def _has(values: Mapping[Any, float], seeds: Sequence[Any]) -> bool:
    return all(s in values and _finite(values[s]) for s in seeds)


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _json_safe(obj: Any) -> Any:
    """NaN/inf -> None, so the log is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj
