"""The launchers' side of tracking: one MLflow experiment per spec, a parent run per sweep
invocation, exactly one child run per trial id (reused across attempts, never duplicated).

Every backend goes through this class, so the analysis cannot tell which backend ran a trial.
When mlflow is not importable the store is disabled and the local records are the only state.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweeps.chain import trial_id_tags
from sweeps.errors import SpecError, TrackingError
from sweeps.expand import Trial
from sweeps.local_runs import write_trial_ids
from sweeps.mlflow_runs import resolve_uri, search_all
from sweeps.store_file import ensure_store, file_error
from trainer.record import read_json, write_json

SPEC_MARK = ".spec"  # <runs>/<spec>/.spec: the spec file (sweeps.spec.spec_file_id) that owns the name
SPEC_TAG = "gatesweep.spec_file."  # + spec name: the same, as a tag of the experiment
SWEEP_RECORDS = ".sweeps"  # <runs>/<spec>/.sweeps/<parent run id>.json: a sweep run's undelivered end
OPEN_MARK = ".open"  # <runs>/<spec>/.sweeps/<parent run id>.open: "host pid" of a sweep run not ended yet
# Env vars that a parent process (or mlflow.set_experiment) may have set and that would send child
# processes' runs to the wrong experiment/run: never pass them on.
LEAKY_ENV = ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "MLFLOW_PARENT_RUN_ID")


def clean_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a trial's processes: no inherited MLflow run/experiment ids, and none of
    the trainer's quick-start variables (LR=..., ATTNGATE=... in the user's shell would otherwise
    override the trial's own config in trial.json)."""
    from trainer.overrides import ENV_KEYS

    env = dict(os.environ if env is None else env)
    for k in LEAKY_ENV + tuple(ENV_KEYS):
        env.pop(k, None)
    return env


@dataclass(frozen=True)
class RunState:
    run_id: str
    status: str  # gatesweep status tag (FINISHED|FAILED|KILLED|EARLY_STOPPED|RUNNING) or MLflow's


class SweepStore:
    def __init__(self, uri: str | None, experiment: str):
        self.uri = resolve_uri(uri)
        self.experiment = experiment
        self.enabled = importlib.util.find_spec("mlflow") is not None
        self._client: Any = None
        self._exp_id: str | None = None
        self.parent_id: str | None = None
        self._held: list[str] | None = None  # inside one_parent(): the statuses its steps reported
        self._record_dir: Path | None = None  # where the open sweep run's mark lies (start_parent)

    # ------------------------------------------------------------ connection
    @property
    def client(self) -> Any:
        if self._client is None:
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
            from mlflow.tracking import MlflowClient

            # queries look at exists() first: a client is made to write. A new sqlite file is made whole by
            # one launcher at a time; a damaged one is named in one line before MLflow opens it.
            ensure_store(self.uri)
            self._client = MlflowClient(self.uri)
        return self._client

    def exists(self) -> bool:
        """False for a sqlite store whose file is not there (opening it would create it): queries
        (plan, status, dry runs, chained values) read it as empty instead."""
        return not (self.uri.startswith("sqlite:///") and not Path(self.uri.removeprefix("sqlite:///")).exists())

    def _existing_experiment_id(self) -> str | None:
        """The experiment's id if it exists; queries (plan, status) never create it, nor a sqlite file."""
        if self._exp_id is None:
            if not self.exists():
                return None
            try:
                exp = self.client.get_experiment_by_name(self.experiment)
            except Exception as e:  # noqa: BLE001 - connection errors come in many types
                raise _unreachable(self.uri, e) from None
            if exp is None or exp.lifecycle_stage == "deleted":
                return None
            self._exp_id = exp.experiment_id
        return self._exp_id

    @property
    def experiment_id(self) -> str:
        if self._exp_id is None:
            from trainer.mlflow_sync import ensure_experiment

            try:
                self._exp_id = ensure_experiment(self.client, self.experiment)
            except Exception as e:  # noqa: BLE001 - connection errors come in many types
                raise _unreachable(self.uri, e) from None
        return self._exp_id

    # ------------------------------------------------------------ queries
    def trial_runs(self, trials: Sequence[Trial]) -> dict[str, RunState]:
        """The child runs of these trials by trial_id (the newest if, against the rules, there are two).
        Only their specs' runs are read (a filter on the `spec` tag), not the whole experiment."""
        exp_id = self._existing_experiment_id() if self.enabled and trials else None
        if exp_id is None:
            return {}
        wanted = {t.trial_id for t in trials}
        out: dict[str, RunState] = {}
        for spec in sorted({t.spec for t in trials}):  # names are checked by the spec schema: safe to quote
            for r in search_all(self.client, [exp_id], f"tags.`gatesweep.kind` = 'trial' and tags.spec = '{spec}'"):
                tid = r.data.tags.get("trial_id")
                if tid in wanted:
                    out[tid] = RunState(r.info.run_id, r.data.tags.get("status") or r.info.status)
        return out

    # ------------------------------------------------------------ one spec file per name
    def check_spec(self, spec: str, spec_path: str, record_dir: Path, *, claim: bool = False) -> None:
        """A spec's name keys its runs (runs/<name>/, the `spec` tag the tables select by): refuse a second
        spec file under a name that another one already uses - in this project's runs/, else (a fresh
        checkout) in the experiment. `claim`: record this file as the name's owner in both."""
        from sweeps.spec import spec_file_id

        mine, mark = spec_file_id(spec_path), record_dir / SPEC_MARK
        owner = mark.read_text().strip() if mark.is_file() else self._experiment_tag(SPEC_TAG + spec)
        if owner and owner != mine:
            raise SpecError(f"{spec_path}: name: '{spec}' is already the name of the spec {owner} (runs in "
                            f"{record_dir}/, experiment '{self.experiment}'); two spec files with one name share "
                            f"their runs and tables: give this one a name of its own (e.g. name: {spec}-2), or if "
                            f"it is {owner} moved or renamed, write its path ({mine}) into {mark}")
        if not claim:
            return
        record_dir.mkdir(parents=True, exist_ok=True)
        if owner != mine:
            mark.write_text(mine + "\n")
        if self.enabled:
            from trainer.mlflow_sync import set_experiment_tag

            set_experiment_tag(self.client, self.experiment_id, SPEC_TAG + spec, mine)

    def _experiment_tag(self, key: str) -> str | None:
        """A tag of the experiment, if it exists and the store answers (else the local mark decides)."""
        try:
            exp_id = self._existing_experiment_id() if self.enabled else None
            return self.client.get_experiment(exp_id).tags.get(key) if exp_id else None
        except Exception:  # noqa: BLE001 - an unreachable or damaged store is reported by the step that needs it
            return None

    # ------------------------------------------------------------ parent run
    def start_parent(self, *, spec: str, stage: str, backend: str, n_trials: int, spec_path: str,
                     trial_ids: Sequence[str] = (), record_dir: Path | None = None) -> str | None:
        """`trial_ids`: the spec's whole expansion, so that a later stage chaining from this one can
        tell a finished stage from a half-run one (sweeps.chain). `record_dir` (runs/<spec>) gets a mark
        while the run is open: a rerun that finds the mark of a dead launcher retires its sweep run
        without searching the store first."""
        if not self.enabled:
            if record_dir is not None:
                self.check_spec(spec, spec_path, record_dir, claim=True)
                if trial_ids:  # no sweep run to carry them: a later stage chaining from this one reads them here
                    write_trial_ids(record_dir, stage, trial_ids, time.time())
            return None
        ids = trial_id_tags(trial_ids) if trial_ids else {}
        if self._held is not None and self.parent_id:
            if ids:  # a later step of the same sweep: what it needs by now
                from mlflow.entities import RunTag

                self.client.log_batch(self.parent_id, tags=[RunTag(k, v) for k, v in ids.items()])
            return self.parent_id
        tags = {"gatesweep.kind": "sweep", "spec": spec, "stage": stage, "backend": backend,
                "spec_path": spec_path, "gatesweep.host": socket.gethostname(), "gatesweep.pid": str(os.getpid())} | ids
        run = self.client.create_run(self.experiment_id, run_name=f"sweep-{spec}-{backend}", tags=tags)
        self.parent_id = run.info.run_id
        if record_dir is not None:  # the store took the sweep: this spec file now owns its name
            self.check_spec(spec, spec_path, record_dir, claim=True)
        if record_dir is not None:
            self._record_dir = record_dir / SWEEP_RECORDS
            self._record_dir.mkdir(parents=True, exist_ok=True)
            (self._record_dir / f"{self.parent_id}{OPEN_MARK}").write_text(f"{socket.gethostname()} {os.getpid()}\n")
        self.client.log_param(self.parent_id, "n_trials", n_trials)
        return self.parent_id

    def finish_parent(self, status: str, record_dir: Path | None = None, *, reachable: bool = True) -> None:
        """End the sweep run. If the server is away, the status waits in `record_dir/.sweeps/` for
        `gatesweep sync` (an outage must not hide the sweep's result or leave the run RUNNING).
        `reachable=False`: the launcher knows it is away (a request of the sweep failed): not asked again."""
        if self._held is not None:  # one step of a longer sweep: the end comes from one_parent()
            self._held.append(status)
            return
        if self.enabled and self.parent_id:
            try:
                if not reachable:
                    raise TimeoutError("the tracking server stopped answering during the sweep")
                self.client.set_terminated(self.parent_id, status)
            except Exception as e:  # noqa: BLE001 - connection errors come in many types
                where = "the next run of this spec marks it KILLED"
                if record_dir is not None:
                    (record_dir / SWEEP_RECORDS).mkdir(parents=True, exist_ok=True)
                    write_json(record_dir / SWEEP_RECORDS / f"{self.parent_id}.json", {
                        "run_id": self.parent_id, "status": status, "tracking_uri": self.uri, "time": time.time()})
                    where = f"`gatesweep sync {record_dir}` does it once the server is back"
                print(f"warning: could not mark sweep run {self.parent_id} {status} in MLflow ({type(e).__name__}); "
                      f"{where}", file=sys.stderr)
                if record_dir is None:  # the mark stays: the next run retires the sweep run
                    return
            else:
                _log_decision(self.uri, self.parent_id)
            if self._record_dir is not None:  # ended, or its end waits for `gatesweep sync`
                (self._record_dir / f"{self.parent_id}{OPEN_MARK}").unlink(missing_ok=True)

    @contextmanager
    def one_parent(self, record_dir: Path | None = None) -> Iterator[None]:
        """A sweep run in several steps (the looks of sequential seeds) stays one sweep run: the first
        start_parent creates it, later ones update its trial ids, and it ends when this block does, with
        the worst status a step reported (KILLED > FAILED > FINISHED; FAILED on an error)."""
        self._held = []
        try:
            yield
        except KeyboardInterrupt:
            self._held.append("KILLED")
            raise
        except BaseException:
            self._held.append("FAILED")
            raise
        finally:
            held, self._held = self._held, None
            if self.parent_id:
                worst = next((s for s in ("KILLED", "FAILED") if s in held), "FINISHED")
                self.finish_parent(worst, record_dir)

    def set_parent_tags(self, tags: dict[str, str]) -> None:
        if self.enabled and self.parent_id:
            for k, v in tags.items():
                self.client.set_tag(self.parent_id, k, v)

    def retire_stale_parents(self, spec: str, record_dir: Path | None = None) -> int:
        """Sweep runs of `spec` left RUNNING by a launcher on this host that is gone (SIGKILL, OOM, a
        closed terminal) are marked KILLED; a launcher on another host is never second-guessed.
        `record_dir`: the dead launchers' open marks there go too."""
        exp_id = self._existing_experiment_id() if self.enabled else None
        if exp_id is None:
            return 0
        runs = search_all(self.client, [exp_id], f"tags.`gatesweep.kind` = 'sweep' and tags.spec = '{spec}' "
                                                 "and attributes.status = 'RUNNING'")
        n = 0
        for r in runs:
            host, pid = r.data.tags.get("gatesweep.host"), r.data.tags.get("gatesweep.pid", "")
            if host == socket.gethostname() and pid.isdigit() and not _launcher_alive(int(pid)):
                self.client.set_tag(r.info.run_id, "failure_reason", f"launcher pid {pid} on {host} died")
                self.client.set_terminated(r.info.run_id, "KILLED")
                n += 1
        for mark in dead_launcher_marks(record_dir) if record_dir is not None else []:
            mark.unlink(missing_ok=True)
        return n

    def log_parent_artifact(self, path: str | Path) -> None:
        if self.enabled and self.parent_id:
            self.client.log_artifact(self.parent_id, str(path))

    # ------------------------------------------------------------ child runs
    def ensure_child(self, trial: Trial, run_dir: Path, *, backend: str,
                     existing: dict[str, RunState] | None = None) -> str | None:
        """The trial's one MLflow run (created on first use), recorded in track/mlflow.json so the
        trainer (or `gatesweep sync`) delivers the trial's record to it."""
        if not self.enabled:
            return None
        track = run_dir / "track"
        # written before any request: if the server is down right now, the trainer still knows where to
        # deliver its record once it is back
        state = self.note_uri(run_dir)
        known = (existing or {}).get(trial.trial_id)
        run_id = known.run_id if known else None
        from trainer.mlflow_sync import store_id

        here = store_id(self.client, self.uri, self.experiment_id)  # a run id means something in one store only
        if run_id is None and state.get("run_id") and state.get("experiment_id") == self.experiment_id \
                and state.get("store_id") == here:
            run_id = state["run_id"]
        tags = {"gatesweep.kind": "trial", "trial_id": trial.trial_id, "spec": trial.spec, "stage": trial.stage,
                "seed": str(trial.seed), "backend": backend, "status": "QUEUED", "label": trial.label,
                "gatesweep.run_uid": trial.trial_id}
        if self.parent_id:
            tags["mlflow.parentRunId"] = self.parent_id
        if run_id is None:
            run = self.client.create_run(self.experiment_id, run_name=trial.run_name, tags=tags)
            run_id = run.info.run_id
        else:
            for k, v in tags.items():
                self.client.set_tag(run_id, k, v)
        if state.get("run_id") != run_id or state.get("store_id") != here:
            state = {}  # a record delivered to another run (or store) starts over for this one
        state.pop("status_sent", None)  # the tag says QUEUED again: the attempt's end must be sent, even if unchanged
        state.update(tracking_uri=self.uri, run_id=run_id, experiment_id=self.experiment_id, store_id=here)
        write_json(track / "mlflow.json", state)
        return run_id

    def note_uri(self, run_dir: Path) -> dict[str, Any]:
        """Name this store in the trial's track/mlflow.json (no request): where its record goes."""
        track = run_dir / "track"
        track.mkdir(parents=True, exist_ok=True)
        state = read_json(track / "mlflow.json") or {}
        if state.get("tracking_uri") != self.uri:
            if state.get("tracking_uri"):  # delivered to another store: its run ids mean nothing here
                state = {}
            state["tracking_uri"] = self.uri
            write_json(track / "mlflow.json", state)
        return state

    def mark(self, run_id: str, status: str, reason: str = "") -> None:
        if not self.enabled:
            return
        self.client.set_tag(run_id, "status", status)
        if reason:
            key = "stop_reason" if status in ("FINISHED", "EARLY_STOPPED") else "failure_reason"
            self.client.set_tag(run_id, key, reason[:5000])
        mlflow_status = {"EARLY_STOPPED": "FINISHED", "QUEUED": "SCHEDULED"}.get(status, status)
        if mlflow_status in ("FINISHED", "FAILED", "KILLED"):
            self.client.set_terminated(run_id, mlflow_status)
        else:
            self.client.update_run(run_id, status=mlflow_status)


def _unreachable(uri: str, e: Exception) -> Exception:
    """A damaged store file is named as such; anything else is an unreachable store."""
    return file_error(uri, e) or TrackingError(
        f"cannot reach the MLflow tracking store {uri} ({type(e).__name__}: {str(e)[:200]}); start it "
        "(make mlflow-up) or set MLFLOW_TRACKING_URI")


def dead_launcher_marks(record_dir: Path) -> list[Path]:
    """Open marks (start_parent) of sweep runs whose launcher on this host is gone."""
    out = []
    for mark in (record_dir / SWEEP_RECORDS).glob(f"*{OPEN_MARK}"):
        try:
            host, _, pid = mark.read_text().strip().partition(" ")
        except OSError:  # ended meanwhile
            continue
        if host == socket.gethostname() and not (pid.isdigit() and _launcher_alive(int(pid))):
            out.append(mark)
    return out


def _launcher_alive(pid: int) -> bool:
    """A live process with this pid that is a gatesweep launcher (not a recycled pid)."""
    try:
        return b"gatesweep" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _log_decision(uri: str, parent_id: str) -> None:
    """The sweep's decision table on its parent run (analysis.decision, which never raises); a
    launcher without the analysis extras (pandas, scipy) skips it."""
    try:
        from analysis.decision import log_sweep_decision
    except ImportError:
        return
    log_sweep_decision(uri, parent_id)


def sync_sweep_record(path: Path, uri: str | None) -> str:
    """Deliver one undelivered sweep-run end (see finish_parent); the file goes once delivered."""
    rec = read_json(path)
    from mlflow.tracking import MlflowClient

    MlflowClient(uri or rec["tracking_uri"]).set_terminated(rec["run_id"], rec["status"],
                                                            end_time=int(rec["time"] * 1000))
    path.unlink()
    return f"sweep run {rec['run_id']} marked {rec['status']}"
