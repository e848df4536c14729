"""Child processes that die with the process that started them (no orphan keeps writing a trial)."""

from __future__ import annotations

import ctypes
import os
import signal

from trainer.errors import ExitCode

PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int | None = None) -> None:
    """In a child between fork and exec (Popen's preexec_fn): SIGTERM when the parent dies, so the
    trainer checkpoints and exits. `parent`: the launcher's pid; if it died before the prctl took
    effect no signal will come, so the child exits at once (resumable)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass
    if parent is not None and os.getppid() != parent:
        os._exit(ExitCode.RESUMABLE)
