"""Errors of specs and of the tracking store as the sweeps, launchers and analysis read it."""

from __future__ import annotations

from trainer.errors import ExitCode, GatesweepError, Unavailable


class SpecError(GatesweepError):
    """A sweep spec (YAML), an override or a command-line argument about it is invalid (exit 2)."""


class TrackingError(Unavailable):
    """The tracking store cannot be reached or read (exit 69)."""


class StoreFileError(GatesweepError):
    """The tracking store's file (sqlite) is damaged, half-created or of an older schema (exit 2)."""


class NoRunsError(GatesweepError):
    """The store is reachable but holds nothing to analyse yet: no database, experiment or runs (exit 66)."""

    exit_code = ExitCode.NO_INPUT
