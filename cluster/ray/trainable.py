"""One Ray Tune trial = one gatesweep trial, run in the trial's actor; val losses go to Tune.

Why a class Trainable and not a function with `ray.tune.report`: when Tune stops a function
trainable (ASHA's STOP), `report` raises SystemExit in the training thread and the actor exits
without waiting for that thread (checked on Ray 2.60: code after the SystemExit never ran), so the
trainer could not finish its record. Here `cleanup()` tells the trainer why it stops and joins it:
the record says EARLY_STOPPED (ASHA left a note in the run dir, see ray_callbacks.EarlyStopASHA)
or KILLED (the search was interrupted; the trial resumes on rerun), with summary and artifacts.

Reporting is synchronous: after each evaluation the trainer waits until Tune asks for the next
result (`step()`), so ASHA's decision applies at the step it judged.

Engines (one per way a trial runs):
- InProcessRun: 1-GPU or CPU trials, `trainer.loop.train(cfg, tracker, on_val=...)` in a thread.
- ReplayRun: a trial whose record is already FINISHED/EARLY_STOPPED is not trained again; its
  recorded val losses are reported so that ASHA's rungs hold the same values as before.
- cluster.ray.child.TorchrunRun: multi-GPU trials (torchrun child process, tailed record).
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from ray import tune

from cluster.common.state import DONE
from cluster.common.store import LEAKY_ENV
from cluster.common.trialdir import TrialLock, local_status
from cluster.errors import BackendError
from trainer.record import read_json, write_json

EARLY_STOP_NOTE = ".early_stop.json"
LOCK_WAIT_S = 30.0  # the driver takes a trial's lock for an instant when it checks liveness


# ---------------------------------------------------------------- the scheduler's note
def write_early_stop_note(run_dir: Path, step: int) -> None:
    write_json(Path(run_dir) / EARLY_STOP_NOTE, {"step": step, "time": time.time()})


def read_early_stop_note(run_dir: Path) -> dict[str, Any] | None:
    return read_json(Path(run_dir) / EARLY_STOP_NOTE)


def recorded_val_history(track: Path) -> list[tuple[int, float]]:
    """(step, val_loss) from a record's metrics.jsonl; the last value per step (resumed runs re-log)."""
    by_step: dict[int, float] = {}
    try:
        lines = (track / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        try:
            point = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a killed writer
        if point.get("key") == "val_loss":
            by_step[int(point["step"])] = float(point["value"])
    return sorted(by_step.items())


# ---------------------------------------------------------------- engines
class Engine(Protocol):
    def next_val(self) -> tuple[int, float, bool] | None:
        """(step, val_loss, last) of the next evaluation; None when the run ended without one."""
        ...

    def proceed(self) -> None:
        """Let the run go on past the evaluation it reported."""
        ...

    def finish(self, verdict: str) -> tuple[str, str]:
        """verdict: end | early | interrupt. Stops the run accordingly, waits for it, returns (status, reason)."""
        ...


class TrialInterrupted(KeyboardInterrupt):
    """Raised inside the trainer's on_val when the search stops: train() records KILLED."""


class InProcessRun:
    def __init__(self, trial_json: Path, run_dir: Path, forward: bool):
        from trainer.main import trial_tags
        from trainer.overrides import resolve
        from trainer.tracking import LocalTracker, make_tracker

        self.cfg, meta = resolve([str(trial_json)])
        self.run_dir = run_dir
        track = run_dir / "track"
        # With a sqlite store the driver is the only MLflow writer: the trial keeps a local record only.
        self.tracker = make_tracker(track) if forward else LocalTracker(track)
        self.tracker.set_tags(trial_tags(meta))
        self.tracker.log_artifact(trial_json)
        self._events: queue.Queue[tuple[int, float] | None] = queue.Queue()
        self._go = threading.Semaphore(0)
        self._verdict = "continue"
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"train-{run_dir.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from trainer.loop import train

        try:
            train(self.cfg, self.tracker, on_val=self._on_val)
        except BaseException as e:  # noqa: BLE001 - handed to step(), which raises it in Tune's thread
            self.error = e
        finally:
            self._events.put(None)

    def _on_val(self, step: int, val_loss: float) -> bool:
        self._events.put((step, val_loss))
        if step >= self.cfg.run.num_iterations:
            return False  # the last evaluation: the run ends whatever Tune decides
        self._go.acquire()
        if self._verdict == "interrupt":
            raise TrialInterrupted("the Ray search stopped before this trial finished; rerun the search to resume it")
        return self._verdict == "early"

    def next_val(self) -> tuple[int, float, bool] | None:
        item = self._events.get()
        if item is None:
            return None
        return item[0], item[1], item[0] >= self.cfg.run.num_iterations

    def proceed(self) -> None:
        self._go.release()

    def finish(self, verdict: str) -> tuple[str, str]:
        self._verdict = verdict
        self._go.release()
        self._thread.join()
        status, reason = local_status(self.run_dir)
        if self.error is not None and not isinstance(self.error, TrialInterrupted):
            reason = reason or f"{type(self.error).__name__}: {self.error}"
        return status, reason


class ReplayRun:
    """A finished trial: report its recorded evaluations, touch nothing."""

    def __init__(self, run_dir: Path):
        self.history = recorded_val_history(run_dir / "track")
        self.status = local_status(run_dir)

    def next_val(self) -> tuple[int, float, bool] | None:
        if not self.history:
            return None
        step, loss = self.history.pop(0)
        return step, loss, not self.history

    def proceed(self) -> None:
        pass

    def finish(self, verdict: str) -> tuple[str, str]:
        return self.status


# ---------------------------------------------------------------- the Tune trainable
def trial_payload(trial_id: str, label: str, run_dir: Path, *, workdir: Path, nproc: int, forward: bool,
                  num_iterations: int) -> dict[str, Any]:
    """What a Tune trial receives (its param_space entry): where the trial lives, how to run it."""
    return {"trial_id": trial_id, "label": label, "run_dir": str(run_dir.resolve()), "workdir": str(workdir),
            "nproc": nproc, "forward": forward, "num_iterations": num_iterations}


class TrialTrainable(tune.Trainable):
    """Reused across trials (reuse_actors): torch, mlflow and Ray Tune are imported once per actor, not
    once per trial (~10 s on 2 cores). A reused actor finishes its previous trial in reset_config."""

    def setup(self, config: dict[str, Any]) -> None:
        self._begin(config)

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        # Tune has just chdir'ed into the next trial's Tune dir; the previous run still writes relative paths
        os.chdir(self.payload["workdir"])
        self.cleanup()
        self._begin(new_config)
        return True

    def _begin(self, config: dict[str, Any]) -> None:
        p = config["trial"]
        os.chdir(p["workdir"])  # relative paths (data, runs/, experiments/) resolve as for the local backend
        for k in LEAKY_ENV:  # an inherited experiment/run id would redirect the trial's MLflow run
            os.environ.pop(k, None)
        self.payload = p
        self.run_dir = Path(p["run_dir"])
        self.num_iterations = int(p["num_iterations"])
        self.lock: TrialLock | None = None
        self.engine: Engine | None = None  # started by the first step(): after the driver's on_trial_start
        self.ended = False
        self.last_step = -1
        self.replay = local_status(self.run_dir)[0] in DONE

    def _start(self) -> Engine:
        from cluster.common.compile_cache import cache_env

        self.lock = TrialLock(self.run_dir)
        deadline = time.monotonic() + LOCK_WAIT_S
        while not self.lock.acquire():
            if time.monotonic() > deadline:
                raise BackendError(f"{self.run_dir} is run by another process (its .lock is held); "
                                   "let it finish or stop it, then rerun the search")
            time.sleep(0.5)
        (self.run_dir / EARLY_STOP_NOTE).unlink(missing_ok=True)
        os.environ.update(cache_env(self.run_dir.parent))
        trial_json = self.run_dir / "trial.json"
        if int(self.payload["nproc"]) > 1:
            from cluster.ray.child import TorchrunRun

            return TorchrunRun(trial_json, self.run_dir, int(self.payload["nproc"]), self.num_iterations,
                               forward=bool(self.payload["forward"]))
        return InProcessRun(trial_json, self.run_dir, forward=bool(self.payload["forward"]))

    def step(self) -> dict[str, Any]:
        if self.engine is None:
            # Tune calls the driver's on_trial_start (which writes trial.json and creates the trial's MLflow
            # run, as the local backend does when it starts a trial) between setup() and the first step().
            try:
                self.engine = ReplayRun(self.run_dir) if self.replay else self._start()
            except BaseException:
                self._release()
                raise
        elif self.last_step >= 0:
            self.engine.proceed()
        nxt = self.engine.next_val()
        if nxt is None:  # ended between evaluations: diverged, crashed, or a record without evaluations
            self._end("end")
            return {"done": True, "step": max(self.last_step, 0), "trial_id": self.payload["trial_id"],
                    "replay": self.replay}
        step, val_loss, last = nxt
        self.last_step = step
        result = {"val_loss": val_loss, "step": step, "trial_id": self.payload["trial_id"], "replay": self.replay}
        if last:
            self._end("end")
            result["done"] = True
        return result

    def _end(self, verdict: str) -> None:
        """Finish the run. A run that ended FAILED (diverged, a bad config) ends its Tune trial normally,
        its record saying why: Tune restarts only trials whose actor died (a lost node), and a failed
        trainer would fail the same way again."""
        assert self.engine is not None
        self.ended = True
        self.engine.finish(verdict)
        self._release()

    def _release(self) -> None:
        if getattr(self, "lock", None) is not None:
            self.lock.release()  # type: ignore[union-attr]
            self.lock = None

    def cleanup(self) -> None:
        """Tune is done with the trial: ASHA stopped it (its note is in the run dir), or the search was
        interrupted. Either way the run ends here, with its record complete."""
        engine = getattr(self, "engine", None)  # None: setup failed before the run started
        if engine is not None and not self.ended:
            self.ended = True
            early = read_early_stop_note(self.run_dir) is not None
            engine.finish("early" if early else "interrupt")
        self._release()

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        return None  # the trainer checkpoints itself (run_id = trial_id resumes it)

    def load_checkpoint(self, checkpoint: Any) -> None:
        pass
