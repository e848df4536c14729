"""A tracking store that stopped answering, as the local launcher sees it.

Every request to a dead server costs seconds (the client's retries) and every trainer waits up to
GATESWEEP_SYNC_TIMEOUT at its end to deliver its record. Once the launcher has seen a request fail it
stops asking for OUTAGE_S: trials start without their MLflow run (the trainer or `gatesweep sync` creates
it), trainers get OFFLINE_ENV (one quick delivery attempt at their end, records stay local), ended
trials' records wait for the launcher's periodic retry. A success or the window's end resumes normal work.
"""

from __future__ import annotations

import time

OUTAGE_S = 30.0
# The trainer's final delivery: one attempt without retries (a refused connection fails at once).
OFFLINE_ENV = {"GATESWEEP_SYNC_TIMEOUT": "0", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}


class Outage:
    def __init__(self) -> None:
        self.until = 0.0

    def seen(self) -> None:
        """A request failed: do not wait on the store for the next OUTAGE_S."""
        self.until = time.monotonic() + OUTAGE_S

    def over(self) -> None:
        self.until = 0.0

    @property
    def active(self) -> bool:
        return time.monotonic() < self.until
