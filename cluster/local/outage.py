"""A tracking server that stopped answering - dead, or hung (SIGSTOPped, overloaded) - as the local
launcher sees it: tracking must never hold up scheduling.

- Every request of the launcher has a deadline (CALL_DEADLINE_S, no retries, while a sweep runs: a
  hung server answers nothing, and the store's defaults wait 20 s three times per request).
- Before a trial's MLflow run is created, a quick probe (`answers`, 2 s) checks that the server
  answers at all. The first probe or request that fails or times out starts the outage: the launcher's loop asks the server
  nothing more (trials start without their MLflow run, which the trainer or `gatesweep sync` creates;
  trainers get OFFLINE_ENV: one quick delivery attempt at their end, records stay local) until the
  courier (cluster/local/courier.py), which delivers ended trials' records from a thread of its own,
  gets an answer again.
- A trainer run by this launcher waits at most LAUNCHED_SYNC_TIMEOUT_S for the server at its end: what
  it could not deliver, the courier delivers.
"""

from __future__ import annotations

import os
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

CALL_DEADLINE_S = 10
PROBE_TIMEOUT_S = 2.0  # /health answers at once when the server is up; a hung one answers nothing
LAUNCHED_SYNC_TIMEOUT_S = 1.0
# The trainer's final delivery during an outage: one attempt without retries (a refused connection fails
# at once, a hung server after the request's timeout).
OFFLINE_ENV = {"GATESWEEP_SYNC_TIMEOUT": "0", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": str(CALL_DEADLINE_S)}


class Outage:
    """Set by the first failed request; cleared by the courier once the server answers."""

    def __init__(self) -> None:
        self._down = threading.Event()

    def seen(self) -> None:
        self._down.set()

    def over(self) -> None:
        self._down.clear()

    @property
    def active(self) -> bool:
        return self._down.is_set()


# What a trainer's own requests get (its forwarder runs beside training, so patience costs nothing there;
# its final delivery is bounded by GATESWEEP_SYNC_TIMEOUT): the store's defaults, or the user's values.
TRAINER_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "20", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2"}
_outer: dict[str, str | None] = {}  # the values call_deadline replaced


@contextmanager
def call_deadline(seconds: float = CALL_DEADLINE_S) -> Iterator[None]:
    """MLflow's HTTP requests from this process fail after `seconds`, without retries, inside the block
    (MLflow reads these variables at each request). Trainers started meanwhile get trainer_http_env()."""
    keys = {"MLFLOW_HTTP_REQUEST_TIMEOUT": str(seconds), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    saved = {k: os.environ.get(k) for k in keys}
    _outer.update(saved)
    os.environ.update(keys)
    try:
        yield
    finally:
        _outer.clear()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def trainer_http_env() -> dict[str, str]:
    """A trainer's request settings: the user's (from before call_deadline), else TRAINER_HTTP_DEFAULTS."""
    user = _outer if _outer else os.environ
    return {k: user.get(k) or default for k, default in TRAINER_HTTP_DEFAULTS.items()}


def answers(uri: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Does the server answer (any HTTP response to /health within `timeout`)? A request of its own, not
    MLflow's: quick even where MLflow's requests would wait CALL_DEADLINE_S. An error page is an answer
    (a proxy, an auth layer in front of the server)."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False
