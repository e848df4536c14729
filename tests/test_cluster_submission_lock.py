"""One launcher at a time submits a spec: a second one waits until the first has recorded its job
ids (else it would see QUEUED trials without a job, take them for stale and submit them again)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from cluster.common.trialdir import submission_lock


def test_a_second_submitter_waits_for_the_first(tmp_path: Path, capsys):
    order: list[str] = []
    entered = threading.Event()

    def second() -> None:
        with submission_lock(tmp_path / "spec"):
            order.append("second")
            entered.set()

    with submission_lock(tmp_path / "spec"):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.5)
        assert not entered.is_set()  # blocked while the first holds the lock
        order.append("first done")
    assert entered.wait(5)
    t.join()
    assert order == ["first done", "second"]
    assert "waiting for another launcher to finish submitting spec" in capsys.readouterr().err
    with submission_lock(tmp_path / "spec"):  # released again: no wait
        pass
