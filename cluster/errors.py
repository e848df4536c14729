"""Errors the launchers raise: a backend that cannot run here or that the scheduler refuses."""

from __future__ import annotations

from trainer.errors import GatesweepError, Unavailable


class BackendError(GatesweepError):
    """A launcher backend is misconfigured, or a job was refused (exit 2: fix the input)."""


class BackendUnavailable(BackendError, Unavailable):
    """The backend or its scheduler cannot be reached or is not installed here (exit 69)."""
