"""User-facing errors and the process exit codes they map to. The CLI prints the message on one line
and exits with the error's `exit_code`.

Every message names where the problem is (file and/or field) and how to fix it; asserts are kept
for programmer invariants only. The errors of the layers above the trainer subclass these where they
are raised: `sweeps.errors` (SpecError, TrackingError, NoRunsError), `cluster.errors` (BackendError).
"""

from __future__ import annotations

import errno
from enum import IntEnum

# OSErrors that mean "this storage cannot take the write": the user can fix them, the run can resume.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})


class ExitCode(IntEnum):
    """What a `gatesweep` / `python -m trainer` exit code means (documented in the README)."""

    OK = 0
    TRIALS_FAILED = 1  # the command worked; some trials failed (status: some are FAILED)
    BAD_INPUT = 2  # usage, spec, config, data: fix the input and run again
    NO_INPUT = 66  # EX_NOINPUT: nothing to analyse yet (no store, experiment or runs)
    UNAVAILABLE = 69  # EX_UNAVAILABLE: the tracking store or the cluster cannot be reached
    RESUMABLE = 75  # EX_TEMPFAIL: stopped by a signal after a checkpoint; the same command resumes
    INTERRUPTED = 130  # Ctrl-C / SIGTERM of the launcher


class GatesweepError(Exception):
    """Base class of errors caused by user input or the environment; `exit_code` says which kind."""

    exit_code: int = ExitCode.BAD_INPUT


class Unavailable(GatesweepError):
    """Mixin base of errors for a service that cannot be reached right now (exit 69): retrying later,
    or starting it, fixes them; the input is fine."""

    exit_code = ExitCode.UNAVAILABLE


class ConfigError(GatesweepError):
    """A trainer config value, override or environment variable is invalid."""


class DataError(GatesweepError):
    """A data file is missing, malformed or too small for the configured batch."""


class StorageError(GatesweepError):
    """A file the run writes cannot be written: disk full, read-only filesystem, no permission."""
