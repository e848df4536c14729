"""User-facing errors. The CLI prints the message on one line and exits with code 2.

Every message names where the problem is (file and/or field) and how to fix it; asserts are kept
for programmer invariants only.
"""


class GatesweepError(Exception):
    """Base class of errors caused by user input (config, spec, data, environment)."""

    exit_code = 2


class ConfigError(GatesweepError):
    """A trainer config value, override or environment variable is invalid."""


class DataError(GatesweepError):
    """A data file is missing, malformed or too small for the configured batch."""


class SpecError(GatesweepError):
    """A sweep spec (YAML) is invalid."""


class BackendError(GatesweepError):
    """A launcher backend is unavailable or misconfigured."""


class TrackingError(GatesweepError):
    """The tracking store cannot be reached or holds inconsistent records."""


class NoRunsError(TrackingError):
    """The store is reachable but holds nothing to analyse yet (no database, experiment or runs)."""


class StorageError(GatesweepError):
    """A file the run writes cannot be written: disk full, read-only filesystem, no permission."""
