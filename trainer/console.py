"""What a command says besides its result - notes, skipped work, progress - and how much of it (-q/-v).

The level lives on the `gatesweep.console` logger (logging's registry, not a global of ours): NOTSET by
default (notes shown), WARNING with -q (results, warnings and errors only), DEBUG with -v (details too,
and a traceback with an error). The text itself is printed plainly, as before: these are console
lines for a person, not log records.
"""

from __future__ import annotations

import logging
import sys

_LOG = logging.getLogger("gatesweep.console")
QUIET, NORMAL, VERBOSE = -1, 0, 1


def set_verbosity(level: int) -> None:
    """-q (QUIET), nothing (NORMAL) or -v (VERBOSE, -vv more) for this process; library loggers follow:
    WARNING normally, ERROR when quiet, INFO (DEBUG at -vv) when verbose."""
    _LOG.setLevel(logging.WARNING if level < 0 else logging.DEBUG if level > 0 else logging.NOTSET)
    if level != NORMAL:
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger().setLevel(logging.ERROR if level < 0 else logging.INFO if level == 1 else logging.DEBUG)


def verbosity() -> int:
    level = _LOG.level
    return NORMAL if level == logging.NOTSET else QUIET if level >= logging.WARNING else VERBOSE


def quiet() -> bool:
    return verbosity() == QUIET


def note(text: str, *, err: bool = False) -> None:
    """A line a person likes to see but a script does not need (hidden by -q)."""
    if not quiet():
        print(text, file=sys.stderr if err else sys.stdout, flush=err)


def detail(text: str, *, err: bool = True) -> None:
    """A line only -v shows (what exactly runs, where its output goes)."""
    if verbosity() == VERBOSE:
        print(text, file=sys.stderr if err else sys.stdout, flush=True)
