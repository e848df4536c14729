"""Delivery off the local launcher's critical path (tracking servers only): a thread of its own takes the
records of ended trials to the server, so that the launcher's loop - start trials, notice their ends -
never waits on it (a hung server answers nothing; each request then costs CALL_DEADLINE_S).

While the outage (cluster/local/outage.py) is on, the courier holds its queue and probes the server
every PROBE_S; the first answer ends the outage. At the sweep's end each record left gets one more try
(after one more probe) and what the server still does not take is left to `gatesweep sync`. Each trial
stays locked until its record is delivered (or the sweep ends), so no other launcher delivers it at the
same time. A file store (sqlite) has no courier: the launcher is its single writer, and a file does not
hang.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from cluster.common.delivery import deliver
from cluster.common.trialdir import TrialLock
from cluster.local.outage import Outage, answers

PROBE_S = 5.0  # seconds between probes while the server is away


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
        tried_at_close: set[int] = set()
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue or id(self._queue[0]) in tried_at_close:
                    return  # at the sweep's end every record left has had its last try
                item, closing = self._queue[0], self._closing
            if closing:
                tried_at_close.add(id(item))
            if self.outage.active and not self._answers():
                if closing:
                    return  # still away at the end: `gatesweep sync` delivers later
                self._pause()
                continue
            state, lock = item
            with self._cond:
                self._queue.popleft()
            if deliver(state.run_dir, self.store, quiet=True):
                lock.release()
                continue
            self.outage.seen()  # and the record waits at the back of the queue (one bad record blocks none)
            with self._cond:
                self._queue.append(item)
            if not closing:
                self._pause()

    def _answers(self) -> bool:
        """Does the server answer again? Ends the outage if so."""
        if not answers(self.store.uri):
            return False
        self.outage.over()
        return True

    def _pause(self) -> None:
        deadline = time.monotonic() + self.probe_s
        with self._cond:
            while not self._closing and time.monotonic() < deadline:
                self._cond.wait(deadline - time.monotonic())
