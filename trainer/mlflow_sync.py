"""Deliver a local tracking record (trainer.tracking.LocalTracker) to MLflow, idempotently.

`sync_record` is the one delivery routine: the in-process Forwarder calls it in a loop while a run
trains, and `gatesweep sync DIR` calls it afterwards. Progress (the MLflow run id, the byte offset of
delivered metric lines, delivered artifacts, the status sent) lives in `track/mlflow.json`, so a
record is never delivered twice and an interrupted delivery continues where it stopped. That progress
holds for one store only: `store_id` names it (a sqlite file's identity, or a server's experiment and
its creation time), and a record meets a store that is not that one (moved aside and made anew, restored
from a backup, another server) is delivered to it again from the start, to the run with its
`gatesweep.run_uid` found there, else a new one - exactly once, as MLflow keeps one copy of a point.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from trainer.errors import STORAGE_ERRNOS, DataError
from trainer.mlflow_sqlite import metric_writer
from trainer.record import (
    KEPT_ON_NEW_STORE,
    TERMINAL,
    file_store_id,
    metric_chunks,
    read_json,
    record_pending,
    record_run_ids,
    sync_timeout,
    write_json,
)

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "gatesweep-adhoc"
_MLFLOW_STATUS = {"FINISHED": "FINISHED", "FAILED": "FAILED", "KILLED": "KILLED", "EARLY_STOPPED": "FINISHED"}


def _digest(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


# MLflow's experiment kind: these experiments hold training runs, not GenAI traces (sweeps.mlflow_ui says
# what the 3.17 UI does with it)
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """The experiment's id; created (or restored) as a training-runs experiment if need be."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        if EXPERIMENT_KIND[0] not in exp.tags:  # made before gatesweep set the kind; never overrides a choice
            set_experiment_tag(client, exp.experiment_id, *EXPERIMENT_KIND)
        return exp.experiment_id
    try:
        return client.create_experiment(name, tags=dict([EXPERIMENT_KIND]))
    except Exception:  # created concurrently by another process
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def set_experiment_tag(client: MlflowClient, experiment_id: str, key: str, value: str) -> None:
    """MLflow's set_experiment_tag, safe when another process sets the same tag at the same moment (two
    launchers of one spec starting together): MLflow's SQL store inserts a new tag without an upsert, so
    the second insert fails on the unique key; the tag already holding `value` is success."""
    try:
        client.set_experiment_tag(experiment_id, key, value)
    except Exception:
        if client.get_experiment(experiment_id).tags.get(key) != value:
            raise


def find_run(client: MlflowClient, experiment_id: str, key: str, value: str) -> str | None:
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{key}` = '{value}'", max_results=5)
    return runs[0].info.run_id if runs else None


_SERVER_IDS: dict[tuple[str, str], str] = {}  # (server URI, experiment id) -> its identity, asked once per process


def store_id(client: MlflowClient, uri: str | None, experiment_id: str | None) -> str | None:
    """The identity of the store a record goes to (see the module's docstring); None for a server before
    the record has an experiment there."""
    fid = file_store_id(uri)
    if fid is not None or not experiment_id:
        return fid
    key = (str(uri), str(experiment_id))
    if key not in _SERVER_IDS:
        from mlflow.exceptions import MlflowException

        try:
            exp = client.get_experiment(experiment_id)
            _SERVER_IDS[key] = f"{uri}#{experiment_id}@{exp.creation_time}"
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            return f"{uri}#{experiment_id}@missing"
    return _SERVER_IDS[key]


def _same_store(client: MlflowClient, uri: str | None, state: dict) -> dict:
    """`state` if its delivery went to the store at `uri`, else a fresh start for this store."""
    if not state.get("run_id"):
        return state
    if state.get("store_id") == store_id(client, uri, state.get("experiment_id")):
        return state
    log.warning("%s: the MLflow store at %s is not the one this record was delivered to (moved aside, made anew "
                "or restored since): delivering the whole record to it again", state.get("run_id"), uri)
    return {k: v for k, v in state.items() if k in KEPT_ON_NEW_STORE}


class _Progress:
    """track/mlflow.json, saved after each step of a delivery. A disk that refuses the write (full,
    read-only) does not stop the delivery: what was sent stays sent (MLflow keeps one copy of a point, so
    the next delivery sending it again is harmless) and the run still gets its end status."""

    def __init__(self, path: Path):
        self.path = path
        self.error: OSError | None = None

    def save(self, state: dict) -> None:
        try:
            write_json(self.path, state)
        except OSError as e:
            if e.errno not in STORAGE_ERRNOS:
                raise
            self.error = e


def _resolve_run(client: MlflowClient, root: Path, state: dict, uri: str | None, progress: _Progress) -> str:
    if state.get("run_id"):
        return state["run_id"]
    tags = read_json(root / "tags.json") or {}
    exp_id = ensure_experiment(client, tags.get("experiment") or DEFAULT_EXPERIMENT)
    uid = tags.get("gatesweep.run_uid") or root.resolve().as_posix()
    run_id = find_run(client, exp_id, "gatesweep.run_uid", uid)
    if run_id is None:
        run = client.create_run(exp_id, tags={"gatesweep.run_uid": uid},
                                run_name=tags.get("mlflow.runName") or None)
        run_id = run.info.run_id
    state.update(run_id=run_id, experiment_id=exp_id, store_id=store_id(client, uri, exp_id))
    if uri:
        state["tracking_uri"] = uri  # the store these ids belong to (record_pending compares it)
    progress.save(state)
    return run_id


def record_uri(root: str | os.PathLike[str], explicit: str | None = None) -> str | None:
    """Where a record goes: `explicit`, else the store it was started against (mlflow.json), else
    $MLFLOW_TRACKING_URI; None leaves the choice to the caller (or MLflow)."""
    state = read_json(Path(root) / "mlflow.json") or {}
    return explicit or state.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")


def sync_record(root: str | os.PathLike[str], tracking_uri: str | None = None) -> dict[str, Any]:
    """Deliver whatever of the record MLflow lacks. Raises on connection errors (callers retry)."""
    root = Path(root)
    writers = record_run_ids(root)
    if len(writers) > 1:  # their points would interleave in one MLflow run (train_loss 1..45, then 1..5)
        raise DataError(f"{root}: this record holds {len(writers)} runs ({', '.join(writers)}), not one; delivering "
                        "it would merge them into one MLflow run. Nothing was sent: keep the runs apart (each hand "
                        "run gets runs/manual/<run_id>/) and rerun them, or move this record aside")
    state_path = root / "mlflow.json"
    state = read_json(state_path) or {}
    uri = record_uri(root, tracking_uri)
    client = MlflowClient(uri)
    state = _same_store(client, uri, state)
    progress = _Progress(state_path)
    run_id = _resolve_run(client, root, state, uri, progress)
    delivered = 0

    params = read_json(root / "params.json") or {}
    if params and state.get("params_digest") != _digest(params):
        sent = set(state.get("params_sent", []))
        todo = [Param(k, str(v)[:6000]) for k, v in sorted(params.items()) if k not in sent]
        for i in range(0, len(todo), 100):  # MLflow: at most 100 params per batch
            client.log_batch(run_id, params=todo[i:i + 100])
        state.update(params_digest=_digest(params), params_sent=sorted(params))
        progress.save(state)

    tags = read_json(root / "tags.json") or {}
    if tags and state.get("tags_digest") != _digest(tags):
        client.log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in sorted(tags.items())])
        state["tags_digest"] = _digest(tags)
        progress.save(state)

    # streamed: a batch of points at a time from bounded reads, progress saved after each (a record of 10^6
    # lines is delivered in the memory of one batch, and an interrupted delivery continues from there)
    send = metric_writer(client, uri, run_id)
    damaged = 0
    try:
        for chunk, end, bad in metric_chunks(root / "metrics.jsonl", int(state.get("metrics_offset", 0)), send.batch):
            if chunk:
                send(chunk)
                delivered += len(chunk)
                state["metrics_sent"] = int(state.get("metrics_sent", 0)) + len(chunk)
            damaged += bad
            state["metrics_offset"] = end  # only past what was delivered
            state["metrics_damaged"] = int(state.get("metrics_damaged", 0)) + bad
            progress.save(state)
    finally:
        send.close()
    if damaged:
        log.warning("%s: %d damaged line(s) (a write cut short by a full disk or a crash): their fragments are "
                    "dropped, every whole point is delivered", root / "metrics.jsonl", damaged)

    summary = read_json(root / "summary.json") or {}
    if summary and state.get("summary_digest") != _digest(summary):
        step = int(summary.get("final_step", 0))
        ts = int(time.time() * 1000)
        metrics = [Metric(k, float(v), ts, step) for k, v in sorted(summary.items())
                   if isinstance(v, (int, float)) and k != "final_step"]
        if metrics:
            client.log_batch(run_id, metrics=metrics)
        state["summary_digest"] = _digest(summary)
        progress.save(state)

    sent_artifacts = state.setdefault("artifacts", {})
    art_dir = root / "artifacts"
    for f in sorted(art_dir.glob("*")) if art_dir.is_dir() else []:
        if f.name.endswith(".tmp") or not f.is_file():
            continue
        stamp = f"{f.stat().st_size}:{f.stat().st_mtime_ns}"
        if sent_artifacts.get(f.name) != stamp:
            client.log_artifact(run_id, str(f))
            sent_artifacts[f.name] = stamp
            progress.save(state)

    status = read_json(root / "status.json") or {}
    st = status.get("status", "")
    if st in TERMINAL and state.get("status_sent") != st:
        client.set_tag(run_id, "status", st)
        if status.get("reason"):  # why it failed / was killed, or why the scheduler stopped it
            key = "stop_reason" if st in ("FINISHED", "EARLY_STOPPED") else "failure_reason"
            client.set_tag(run_id, key, str(status["reason"])[:5000])
        client.set_terminated(run_id, _MLFLOW_STATUS[st], end_time=int(status.get("time", time.time()) * 1000))
        state["status_sent"] = st
        progress.save(state)
    elif st == "RUNNING" and state.get("status_sent") not in (None, "RUNNING"):
        client.update_run(run_id, status="RUNNING")  # a resumed attempt of a finished/killed run
        client.set_tag(run_id, "status", "RUNNING")
        state["status_sent"] = "RUNNING"
        progress.save(state)
    if progress.error is not None:
        e = progress.error
        log.warning("%s: delivered to MLflow, but the delivery's progress could not be saved (%s: %s); free space "
                    "or make it writable: until then each delivery sends the record again (MLflow keeps one copy "
                    "of each point)", root, state_path, e.strerror)
    return {"run_id": run_id, "metrics_delivered": delivered, "status": st,
            "progress_saved": progress.error is None}


def pending(root: str | os.PathLike[str], uri: str | None = None, *, ask_server: bool = False) -> bool:
    """True if the record holds anything the store at `uri` (default: the record's) has not received.
    `ask_server`: also ask a server whether it is still the store the record went to (once per
    experiment and process); a sqlite file's identity is read from the file."""
    if record_pending(Path(root), uri):
        return True
    target = record_uri(root, uri)
    if not ask_server or file_store_id(target) is not None:
        return False
    state = read_json(Path(root) / "mlflow.json") or {}
    return state.get("store_id") != store_id(MlflowClient(target), target, state.get("experiment_id"))


STOP_GRACE_S = 1.0  # beyond final_timeout, for the attempt in flight when the run ends


class Forwarder:
    """Background delivery while training; a failing server only delays delivery."""

    def __init__(self, root: str | os.PathLike[str], uri: str, *, interval: float = 2.0,
                 final_timeout: float | None = None):
        self.root, self.uri, self.interval = Path(root), uri, interval
        self.final_timeout = sync_timeout() if final_timeout is None else final_timeout
        # Fail fast instead of MLflow's default minutes of HTTP retries; we retry ourselves.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mlflow-forwarder", daemon=True)
        self.errors = 0
        self._last_error = ""
        self._saved = True  # the last delivery could save its progress (else the record looks pending forever)
        self.delivered = False

    def start(self) -> None:
        self._thread.start()

    def _attempt(self) -> bool:
        try:
            self._saved = sync_record(self.root, self.uri)["progress_saved"]
            return True
        except Exception as e:  # noqa: BLE001 - tracking must never kill training
            self.errors += 1
            msg = f"{type(e).__name__}: {e}"[:300]
            if msg != self._last_error:
                log.warning("MLflow delivery failed (will retry; the local record keeps everything): %s", msg)
                self._last_error = msg
            return False

    def _loop(self) -> None:
        delay = self.interval
        while not self._stop.wait(delay):
            delay = self.interval if self._attempt() else min(delay * 2, 30.0)
        # the run has ended (its status is written): what is left, until final_timeout. Here, in this
        # thread, so that stop() waits no longer than that even when a request hangs (a stopped server
        # accepts the connection and answers nothing); one attempt at a time, never two at once.
        deadline = time.monotonic() + self.final_timeout
        while True:
            if self._attempt() and (not self._saved or not pending(self.root)):
                self.delivered = True  # (a disk that refused the progress file was said by sync_record)
                return
            if time.monotonic() > deadline:
                return
            time.sleep(1.0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.final_timeout + STOP_GRACE_S)
        if not self.delivered:
            log.warning("MLflow %s: %s stays local; deliver it with `gatesweep sync %s`",
                        "unresponsive" if self._thread.is_alive() else "unreachable", self.root, self.root)
