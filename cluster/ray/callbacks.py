"""Driver-side pieces of a Ray search: the ASHA that notes its early stops, and the callback that
prints progress and delivers records to MLflow.

Single-writer rule: with a sqlite store the trials keep local records only and this driver is the
one process that writes MLflow (it delivers each record with `sync_record`, while the trial runs
and once it ended). With an MLflow server each trial forwards its own record; the driver delivers
only what is left once a trial's process is gone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from cluster.common.trialdir import TrialLock, local_status
from cluster.ray.trainable import write_early_stop_note
from trainer.record import read_json

DELIVERY_INTERVAL_S = 5.0


class EarlyStopASHA(ASHAScheduler):
    """ASHA that writes a note into the run dir of each trial it stops before its last step, before
    Tune stops the actor: the trial's cleanup then records EARLY_STOPPED; without a note a stopped
    trial was interrupted (KILLED, resumed on rerun)."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._ids: dict[str, str] = {}  # Tune's trial id -> gatesweep's

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        self._ids[trial.trial_id] = str(trial.config["trial"]["trial_id"])
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP and not result.get("done") and not result.get("replay"):
            write_early_stop_note(Path(trial.config["trial"]["run_dir"]), int(result.get("step", -1)))
        return decision

    def rungs(self) -> list[dict[str, Any]]:
        """Each rung's step and the val loss ASHA recorded there per gatesweep trial id (lowest step first):
        a trial is recorded once per rung, when it first reports at or past the rung's step; a trial Tune
        restarted (its node lost) is not judged again at a rung it passed."""
        sign = float(self._metric_op or 1.0)  # the rungs hold metric_op * val_loss
        return [{"step": int(step), "val_loss": {self._ids.get(t, t): float(v) * sign for t, v in sorted(recorded.items())}}
                for bracket in self._brackets for step, recorded in reversed(bracket._rungs)]


def ended_line(label: str, run_dir: Path, replayed: bool) -> str:
    status, reason = local_status(run_dir)
    summary = read_json(run_dir / "track" / "summary.json") or {}
    best = summary.get("best_val_loss")
    tail = f" best val_loss {best:.4f}" if isinstance(best, float) and best == best else ""
    step = summary.get("final_step")
    at = f" at step {step}" if step is not None else ""
    why = f" ({reason[:120]})" if status not in ("FINISHED", "EARLY_STOPPED") and reason else ""
    return f"{label}: {'recorded earlier, ' if replayed else ''}{status or 'no status'}{at}{tail}{why}"


class SearchCallback(Callback):
    """Progress lines and MLflow delivery, keyed by the gatesweep trial id in each Tune trial's config."""

    def __init__(self, run_dirs: dict[str, Path], labels: dict[str, str], *, start: Callable[[str], None],
                 deliver: Callable[[Path], object], driver_writes: bool, replayed: set[str],
                 out: Callable[[str], None] = print):
        self.run_dirs, self.labels, self.start, self.deliver = run_dirs, labels, start, deliver
        self.driver_writes, self.replayed, self.out = driver_writes, replayed, out
        self.ended: list[str] = []  # Tune is done with them; their process may still be finishing
        self.reported: set[str] = set()
        self.last_delivery: dict[str, float] = {}

    @staticmethod
    def _tid(trial: Any) -> str:
        return str(trial.config["trial"]["trial_id"])

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        tid = self._tid(trial)
        if tid not in self.replayed:
            self.start(tid)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        tid = self._tid(trial)
        if self.driver_writes and tid not in self.replayed and \
                time.monotonic() - self.last_delivery.get(tid, 0.0) > DELIVERY_INTERVAL_S:
            self.last_delivery[tid] = time.monotonic()
            self.deliver(self.run_dirs[tid])

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ended.append(self._tid(trial))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ended.append(self._tid(trial))

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.settle(wait_s=0.0)

    def settle(self, wait_s: float) -> None:
        """Report (and, with sqlite, deliver) trials whose process has let go of their run dir."""
        deadline = time.monotonic() + wait_s
        while True:
            for tid in [t for t in self.ended if t not in self.reported]:
                run_dir = self.run_dirs[tid]
                if tid not in self.replayed and TrialLock(run_dir).held_elsewhere():
                    continue  # its process is still finishing the record
                self.reported.add(tid)
                if tid not in self.replayed:
                    self.deliver(run_dir)
                self.out(f"[{len(self.reported)}/{len(self.run_dirs)}] {ended_line(self.labels[tid], run_dir, tid in self.replayed)}")
            if len(self.reported) >= len(set(self.ended)) or time.monotonic() > deadline:
                return
            time.sleep(0.5)
