"""Sequential seeds on every backend: `gatesweep run` of a spec with `seeds: {initial, add, max, ...}`.

From the records - which planned seeds have FINISHED runs per configuration, and their final_val_loss
(the local record, else MLflow) - the rule (analysis.sequential.decide) replays its looks. The trials
the design needs now (every look so far, plus the next look's seeds for the undecided configurations
and their baselines) go to the backend like any trial list: finished ones are skipped, the others run,
resume or are submitted as usual. Local, Ray and Slurm with --wait run look after look in one
invocation, one sweep run; Slurm without --wait submits the next look and returns, and the next
`gatesweep run` decides on it and goes on. The decision log is runs/<spec>/sequential.json and the
sweep run's artifact sequential.json (tags gatesweep.sequential, gatesweep.seq.*).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from analysis.sequential import LOG_NAME, OPEN, Design, Outcome, decide
from cluster.common.prepare import Prepared, states_for
from cluster.common.state import TrialState
from cluster.common.trialdir import RUNS_ROOT
from sweeps.expand import Trial, gpu_hours
from sweeps.sequential import GATE_KEYS, baseline_pairs
from trainer.config import trial_identity
from trainer.record import read_json, write_json


@dataclass
class SeqState:
    design: Design
    configs: dict[str, list[Trial]]  # configuration label -> its planned trials, in seed order
    outcome: Outcome

    @property
    def required(self) -> list[Trial]:
        """The trials the design needs by now, in the expansion's (seed-major) order."""
        need = self.outcome.required()
        keep = {t.trial_id for name, ts in self.configs.items() for t in ts[:need.get(name, 0)]}
        return sorted((t for ts in self.configs.values() for t in ts if t.trial_id in keep), key=lambda t: t.index)

    def log(self) -> dict[str, Any]:
        configs = {name: {k: v for k, v in trial_identity(ts[0].config).items() if k != "seed"} | {"label": name}
                   for name, ts in self.configs.items()}
        return self.outcome.to_json(configs) | {"seeds": list(self.seeds)}

    @property
    def seeds(self) -> list[int]:
        return [t.seed for t in next(iter(self.configs.values()))]


def design_of(prep: Prepared) -> Design:
    seq = prep.spec.sequential
    assert seq is not None, "only sequential specs have looks"
    return Design(seq.looks, seq.alpha, seq.spending)


def configurations(trials: list[Trial]) -> dict[str, list[Trial]]:
    out: dict[str, list[Trial]] = {}
    for t in trials:
        out.setdefault(t.label or "base", []).append(t)
    return out


def comparison_pairs(configs: dict[str, list[Trial]]) -> dict[str, str]:
    """Gated configuration -> its baseline, by the resolved gate keys and the other design keys."""
    names = list(configs)
    points = [{k: getattr(configs[n][0].config.model, k) for k in GATE_KEYS}
              | {k: v for k, v in configs[n][0].design if k not in GATE_KEYS} for n in names]
    return {names[i]: names[j] for i, j in baseline_pairs(points, {}).items() if j is not None}


def finished_values(states: list[TrialState], store: Any) -> dict[str, dict[int, float]]:
    """Configuration -> seed -> final_val_loss of its FINISHED trials (local record, else MLflow)."""
    out: dict[str, dict[int, float]] = {}
    for s in states:
        if s.status != "FINISHED":
            continue
        value = (read_json(s.run_dir / "track" / "summary.json") or {}).get("final_val_loss")
        if value is None and store is not None and store.enabled and s.mlflow_run_id:
            value = store.client.get_run(s.mlflow_run_id).data.metrics.get("final_val_loss")
        if value is not None and math.isfinite(float(value)):
            out.setdefault(s.trial.label or "base", {})[s.trial.seed] = float(value)
    return out


def evaluate(prep: Prepared, states: list[TrialState] | None = None) -> SeqState:
    states = states_for(prep) if states is None else states
    configs = configurations(prep.trials)
    design = design_of(prep)
    values = finished_values(states, prep.store)
    outcome = decide(design, list(prep.spec.seeds), values, comparison_pairs(configs))
    return SeqState(design, configs, outcome)


def record(prep: Prepared, state: SeqState) -> None:
    """The decision log, locally and on the sweep run (when this invocation has one)."""
    path = RUNS_ROOT / prep.spec.name / LOG_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, state.log())
    store = prep.store
    if store.enabled and store.parent_id:
        out = state.outcome
        decided = sum(d.status != OPEN for d in out.decisions.values())
        store.set_parent_tags({"gatesweep.sequential": "true", "gatesweep.seq.looks_done": str(out.looks_done),
                               "gatesweep.seq.stopped": f"{decided}/{len(out.decisions)}",
                               "gatesweep.seq.finished": str(out.finished).lower()})
        store.log_parent_artifact(path)


def summary_lines(state: SeqState) -> list[str]:
    out, design = state.outcome, state.design
    looks = ",".join(str(n) for n in design.looks)
    lines = [f"sequential seeds: looks at {looks} seeds per configuration ({design.spending} spending, familywise "
             f"alpha {design.alpha:g} over {len(out.decisions)} comparison(s), Holm); {out.looks_done} of "
             f"{len(design.looks)} look(s) complete"]
    for d in out.decisions.values():
        lines.append(f"  {d.name} vs {d.baseline}: {d.text(len(design.looks))}")
    if out.finished:
        lines.append(f"sequential seeds: every comparison stopped; {len(state.required)} of "
                     f"{sum(len(ts) for ts in state.configs.values())} planned trials were needed")
    return lines


def trial_notes(state: SeqState) -> dict[str, str]:
    """trial id -> its look ("look 2"), or why it will not run ("not needed")."""
    need = state.outcome.required()
    notes = {}
    for name, ts in state.configs.items():
        for i, t in enumerate(ts):
            look = next(k for k, n in enumerate(state.design.looks, start=1) if i < n)
            done = i >= need.get(name, 0) and state.outcome.stopped(name)
            notes[t.trial_id] = "not needed" if done else f"look {look}"
    return notes


def run_sequential(prep: Prepared, once: Callable[[Prepared], int], *, dry_run: bool, loop: bool,
                   max_looks: int | None = None) -> int:
    """`once(prep)` runs (or submits) a trial list on the chosen backend; `loop`: go on look after look;
    `max_looks`: run at most this many looks in this invocation (a GPU lease of fixed length), then stop
    cleanly between looks; the next `gatesweep run` decides on them and goes on."""
    if dry_run:
        state = evaluate(prep)
        print("\n".join(f"# {line}" for line in summary_lines(state)))
        print(f"# planned maximum: {len(prep.trials)} trials ({prep.spec.sequential.max} seeds per configuration), "  # type: ignore[union-attr]
              f"{gpu_hours(prep.trials, prep.spec.estimate_ms_per_step):.1f} GPU-hours at "
              f"{prep.spec.estimate_ms_per_step:g} ms/step")
        if state.outcome.finished:
            return 0
        print(f"# next: the {len(state.required)} trial(s) the design needs by look {_next_look(state)}")
        return once(replace(prep, trials=state.required))
    with prep.store.one_parent(RUNS_ROOT / prep.spec.name):
        seen: tuple[Any, ...] = ()
        looks_run = 0
        while True:
            state = evaluate(prep)
            record(prep, state)
            print("\n".join(summary_lines(state)))
            if state.outcome.finished:
                return 0
            progress = (state.outcome.looks_done, tuple(t.trial_id for t in state.required))
            if progress == seen:
                busy = [x for x in states_for(replace(prep, trials=state.required)) if x.status in ("RUNNING", "QUEUED")]
                why = (f"{len(busy)} of its trials run in another process; rerun once they end" if busy else
                       "a finished trial has no final val loss; see `gatesweep status`")
                print(f"look {_next_look(state)} is not complete: {why}", file=sys.stderr)
                return 1
            seen = progress
            print(f"look {_next_look(state)}: {len(state.required)} trial(s) needed by now (finished ones are skipped)")
            code = once(replace(prep, trials=state.required))
            looks_run += 1
            if code == 0 and loop and max_looks is not None and looks_run >= max_looks:
                state = evaluate(prep)
                record(prep, state)
                print("\n".join(summary_lines(state)))
                if not state.outcome.finished:
                    print(f"stopped after {looks_run} look(s) (--looks {max_looks}): run the same command again to "
                          "decide on them and go on")
                return 0
            if code != 0 or not loop:
                record(prep, evaluate(prep))
                if code == 0:
                    print("the next look is decided once these trials end: run the same command again (or with --wait)")
                return code


def _next_look(state: SeqState) -> int:
    return min(d.look for d in state.outcome.decisions.values() if d.status == OPEN)
