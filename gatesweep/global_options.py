"""The options of every `gatesweep` command, lifted out of argv wherever they stand.

`gatesweep --json status SPEC`, `gatesweep status SPEC --json` and `gatesweep status --json SPEC` are
one command: the global options (below) are taken out of argv before or after the subcommand, and the
subcommand's own parser sees the rest. An option before the subcommand that is not global is an error
(with the closest global option), never ignored; `-h` before the subcommand is the subcommand's help.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trainer.config import did_you_mean
from trainer.errors import GatesweepError

TAKES_VALUE = ("--tracking-uri",)
FLAGS = ("-V", "--version", "-h", "--help", "--json", "-v", "--verbose", "-q", "--quiet")
# -vv counts twice, as `ssh -vv`
_COUNTED = {"-v": 1, "--verbose": 1, "-vv": 2, "-vvv": 3}
HELP = ("global options, before or after the command: --tracking-uri URI, --json (plan, run, status, sync, "
        "table), -v/--verbose (details, tracebacks; -vv more), -q/--quiet (results, warnings and errors "
        "only), -V/--version, -h/--help")


class UsageError(GatesweepError):
    """argv itself is wrong (exit 2); `command` names whose usage applies (None: the top level)."""

    def __init__(self, message: str, command: str | None = None):
        super().__init__(message)
        self.command = command


@dataclass
class Globals:
    tracking_uri: str | None = None
    json: bool = False
    verbose: int = 0
    quiet: bool = False
    version: bool = False
    help: bool = False
    seen: list[str] = field(default_factory=list)  # the options as typed (for "does not apply" errors)

    @property
    def verbosity(self) -> int:
        """trainer.console's level: -1 quiet, 0 normal, 1.. verbose."""
        return -1 if self.quiet else self.verbose


def split(argv: list[str]) -> tuple[Globals, str | None, list[str]]:
    """(global options, the subcommand or None, the subcommand's own arguments)."""
    g = Globals()
    command: str | None = None
    rest: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":  # everything after it is the subcommand's, verbatim
            rest += argv[i:]
            break
        taken = _take(g, argv, i, before=command is None)
        if taken:
            i += taken
            continue
        if command is None:
            if a.startswith("-"):
                name = a.split("=", 1)[0]
                raise UsageError(f"unknown option {name} before the command"
                                 f"{did_you_mean(name, [*TAKES_VALUE, *FLAGS], n=1, cutoff=0.7) or ' (options of a command go after it)'}")
            command = a
        else:
            rest.append(a)
        i += 1
    if g.quiet and g.verbose:
        raise UsageError("-q/--quiet and -v/--verbose contradict each other; give one of them", command)
    return g, command, rest


def _take(g: Globals, argv: list[str], i: int, *, before: bool) -> int:
    """How many words of argv at i are a global option (0: none), recorded in g."""
    a = argv[i]
    name, eq, value = a.partition("=")
    if name in TAKES_VALUE:
        if not eq:
            if i + 1 >= len(argv):
                raise UsageError(f"{name} needs a value (e.g. {name} http://127.0.0.1:5055)")
            value = argv[i + 1]
        g.tracking_uri = value
        g.seen.append(name)
        return 1 if eq else 2
    if a in ("-h", "--help"):
        if not before:  # after the subcommand: its own parser prints its help
            return 0
        g.help = True
    elif a in ("-V", "--version"):
        g.version = True
    elif a == "--json":
        g.json = True
    elif a in _COUNTED:
        g.verbose += _COUNTED[a]
    elif a in ("-q", "--quiet"):
        g.quiet = True
    else:
        return 0
    g.seen.append(a)
    return 1
