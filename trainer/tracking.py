"""A small tracking interface with a local-file record that always works.

The local record (`<out_dir>/track/`) is the source of truth: params.json, tags.json,
metrics.jsonl (one point per line), artifacts/, summary.json, status.json. When mlflow is
importable and a tracking URI is configured, a background forwarder (trainer.mlflow_sync) tails the
record into MLflow with retries, so a dead or absent server never stops training; whatever it could
not deliver, `gatesweep sync` delivers later from the same files (GPU nodes without network too).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from trainer.record import RUN_UID_TAG, TERMINAL, note_run_id, read_json, repair_tail, write_json

log = logging.getLogger(__name__)

# Environment variables that look like credentials never reach params, tags or artifacts.
_SECRET_MARKERS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "API_KEY", "APIKEY", "CREDENTIAL", "PRIVATE_KEY",
                   "ACCESS_KEY", "AUTH")


def looks_secret(name: str) -> bool:
    upper = name.upper()
    return any(m in upper for m in _SECRET_MARKERS)


def redact(text: str, env: Mapping[str, str] | None = None) -> str:
    """Replace the values of credential-looking environment variables inside `text`."""
    source: Mapping[str, str] = os.environ if env is None else env
    for key, value in source.items():
        if looks_secret(key) and value and len(value) >= 4 and value in text:
            text = text.replace(value, f"<redacted:{key}>")
    return text


class Tracker(Protocol):
    def log_params(self, params: dict[str, Any]) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_artifact(self, path: str | os.PathLike[str]) -> None: ...
    def log_summary(self, summary: dict[str, float]) -> None: ...
    def finish(self, status: str, reason: str = "") -> None: ...


class NullTracker:
    """For non-zero ranks: every call is a no-op."""

    def log_params(self, params: dict[str, Any]) -> None: pass
    def set_tags(self, tags: dict[str, str]) -> None: pass
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: pass
    def log_artifact(self, path: str | os.PathLike[str]) -> None: pass
    def log_summary(self, summary: dict[str, float]) -> None: pass
    def finish(self, status: str, reason: str = "") -> None: pass


class LocalTracker:
    """Append-only local record; safe to tail from another thread or process."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        (self.root / "artifacts").mkdir(parents=True, exist_ok=True)
        self._metrics_path = self.root / "metrics.jsonl"
        repair_tail(self._metrics_path)
        self._metrics: int | None = os.open(self._metrics_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if read_json(self.root / "status.json") is None or self.status() in TERMINAL:
            self._set_status("RUNNING", "")

    def status(self) -> str:
        return (read_json(self.root / "status.json") or {}).get("status", "")

    def _set_status(self, status: str, reason: str) -> None:
        path = self.root / "status.json"
        obj = {"status": status, "reason": redact(reason), "time": time.time()}
        try:
            write_json(path, obj)
        except OSError:
            if not path.exists():
                raise
            # A full disk has no block for the temp file of an atomic write, but the old status.json's
            # block can be rewritten in place: the trial must not stay RUNNING because the disk is full.
            with open(path, "r+b") as f:
                f.write(json.dumps(obj, sort_keys=True, default=str).encode())
                f.truncate()

    def log_params(self, params: dict[str, Any]) -> None:
        # Config values are user text (notes, paths): a credential pasted into one must not be recorded.
        clean = {k: redact(v) if isinstance(v, str) else v for k, v in params.items()}
        merged = {**(read_json(self.root / "params.json") or {}), **clean}
        write_json(self.root / "params.json", merged)

    def set_tags(self, tags: dict[str, str]) -> None:
        if RUN_UID_TAG in tags:  # who writes here: `gatesweep sync` refuses a record two runs wrote into
            note_run_id(self.root, str(tags[RUN_UID_TAG]))
        merged = {**(read_json(self.root / "tags.json") or {}), **{k: redact(str(v)) for k, v in tags.items()}}
        write_json(self.root / "tags.json", merged)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        ts = int(time.time() * 1000)
        data = "".join(json.dumps({"key": k, "value": float(v), "step": int(step), "ts": ts}) + "\n"
                       for k, v in metrics.items()).encode()
        assert self._metrics is not None, "log_metrics after finish"
        size = os.fstat(self._metrics).st_size
        try:
            view = memoryview(data)
            while view:  # a full disk may take part of a write before it fails
                view = view[os.write(self._metrics, view):]
        except OSError as e:
            with contextlib.suppress(OSError):
                os.ftruncate(self._metrics, size)  # no torn line: readers and the next run see whole points
            raise OSError(e.errno, e.strerror, str(self._metrics_path)) from None

    def log_artifact(self, path: str | os.PathLike[str]) -> None:
        src = Path(path)
        dst = self.root / "artifacts" / src.name
        if src.resolve() != dst.resolve():
            tmp = dst.with_name(dst.name + ".tmp")
            data = src.read_bytes()
            try:
                try:
                    text = data.decode()
                except UnicodeDecodeError:  # binary: as is
                    shutil.copyfile(src, tmp)
                else:  # a config file (trial.json, YAML) may carry a pasted credential, like params do
                    tmp.write_text(redact(text), encoding="utf-8")
                os.replace(tmp, dst)
            except BaseException:
                tmp.unlink(missing_ok=True)  # no half-written copy on a full disk
                raise

    def log_summary(self, summary: dict[str, float]) -> None:
        merged = {**(read_json(self.root / "summary.json") or {}), **summary}
        write_json(self.root / "summary.json", merged)

    def finish(self, status: str, reason: str = "") -> None:
        try:
            self._set_status(status, reason)
        finally:
            if self._metrics is not None:
                os.close(self._metrics)
                self._metrics = None


class ForwardingTracker(LocalTracker):
    """LocalTracker plus a background thread that delivers the record to MLflow."""

    def __init__(self, root: str | os.PathLike[str], forwarder: Any):
        super().__init__(root)
        self.forwarder = forwarder
        forwarder.start()

    def finish(self, status: str, reason: str = "") -> None:
        try:
            super().finish(status, reason)
        finally:
            self.forwarder.stop()  # final delivery attempt, bounded in time; never raises


def make_tracker(root: str | os.PathLike[str], *, is_main: bool = True) -> Tracker:
    """Local record always; MLflow forwarding when mlflow is importable and a URI is configured
    (MLFLOW_TRACKING_URI, or a `track/mlflow.json` a launcher wrote)."""
    if not is_main:
        return NullTracker()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    sync_state = read_json(root / "mlflow.json") or {}
    uri = sync_state.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri or os.environ.get("GATESWEEP_TRACKING", "") == "local":
        return LocalTracker(root)
    try:
        from trainer.mlflow_sync import Forwarder
    except ImportError:
        log.warning("mlflow is not importable: tracking to %s only; run `gatesweep sync` later", root)
        return LocalTracker(root)
    return ForwardingTracker(root, Forwarder(root, uri))
