"""Delivery off the local launcher's critical path (tracking servers only): a thread of its own takes the
records of ended trials to the server, so that the launcher's loop - start trials, notice their ends -
never waits on it (a hung server answers nothing; each request then costs CALL_DEADLINE_S).

While the outage (cluster/local/outage.py) is on, the courier holds its queue and probes the server
every PROBE_S; the first answer ends the outage. Each trial stays locked until its record is delivered
(or the sweep ends), so no other launcher delivers it at the same time. A file store (sqlite) has no
courier: the launcher is its single writer and a file does not hang.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from cluster.common.delivery import deliver
from cluster.common.trialdir import TrialLock
from cluster.local.outage import Outage

PROBE_S = 5.0


class Courier:
    def __init__(self, store: Any, outage: Outage, *, probe_s: float = PROBE_S):
        self.store, self.outage, self.probe_s = store, outage, probe_s
        self._queue: deque[tuple[Any, TrialLock]] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name="gatesweep-courier", daemon=True)
        self._thread.start()

    def hand(self, state: Any, lock: TrialLock) -> None:
        """Deliver this ended trial's record (the courier releases its lock once it is delivered)."""
        with self._cond:
            self._queue.append((state, lock))
            self._cond.notify()

    def close(self) -> list[Any]:
        """End of the sweep: deliver what is queued while the server answers; a server still away is not
        waited for. Returns the trials whose records are still undelivered (their locks released)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()
        left = [state for state, lock in self._queue]
        for _, lock in self._queue:
            lock.release()
        self._queue.clear()
        return left

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue or (self._closing and self.outage.active):
                    return
                state, lock = self._queue[0]
            if self.outage.active and not self._answers():
                self._pause()
                continue
            if deliver(state.run_dir, self.store, quiet=True):
                with self._cond:
                    self._queue.popleft()
                lock.release()
            else:
                self.outage.seen()

    def _answers(self) -> bool:
        """One cheap request: does the server answer again? (ends the outage if so)."""
        try:
            self.store.client.get_experiment(self.store.experiment_id)
        except Exception:  # noqa: BLE001 - any failure means: still away
            return False
        self.outage.over()
        return True

    def _pause(self) -> None:
        deadline = time.monotonic() + self.probe_s
        with self._cond:
            while not self._closing and time.monotonic() < deadline:
                self._cond.wait(deadline - time.monotonic())
