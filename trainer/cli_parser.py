"""The argparse parser of every `gatesweep` command, with the same error contract as our own errors.

argparse's own errors print the whole usage first and the message last, without a hint. Ours print
one line first - the command, what is wrong and the closest valid word (a misspelt option, choice or
subcommand) - then the command's own usage in one line, and exit 2 (trainer.errors.ExitCode).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from trainer.config import did_you_mean
from trainer.errors import ExitCode


class Parser(argparse.ArgumentParser):
    """`strict` (default): an unknown argument is an error of this parser - its usage, not the
    top-level one. A command that takes key=value overrides anywhere sets strict=False and sorts the
    leftovers itself (unknown_arguments)."""

    def __init__(self, *args: Any, strict: bool = True, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.strict = strict

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        args = list(sys.argv[1:] if args is None else args)
        unknown = self._unknown_option(args)
        if unknown:  # said first: argparse would complain about a missing argument before it
            self.error(self.unknown_arguments([unknown]))
        ns, extra = super().parse_known_args(args, namespace)
        if extra and self.strict:
            self.error(self.unknown_arguments(extra))
        assert ns is not None  # argparse returns the namespace it filled
        return ns, extra

    def _unknown_option(self, args: list[str]) -> str | None:
        """The first word that looks like an option of this parser and is none (not a value of one)."""
        if any(isinstance(a, argparse._SubParsersAction) for a in self._actions):
            # the words after the subcommand are its parser's to judge
            args = args[:next((i for i, w in enumerate(args) if not w.startswith("-")), len(args))]
        takes_value = {o for a in self._actions if a.nargs != 0 for o in a.option_strings}
        known = [o for a in self._actions for o in a.option_strings]
        skip = False
        for word in args:
            if word == "--":
                return None
            if skip:
                skip = False
                continue
            if not word.startswith("-") or word == "-" or self._negative_number_matcher.match(word):
                continue
            name = word.split("=", 1)[0]
            match = [o for o in known if o == name] or (
                [o for o in known if o.startswith(name) and o.startswith("--")] if self.allow_abbrev else [])
            if not match:
                return word
            skip = "=" not in word and len(match) == 1 and match[0] in takes_value
        return None

    def unknown_arguments(self, extra: Sequence[str]) -> str:
        """'unknown option --dryrun (did you mean '--dry-run'?)' for the first stray word."""
        word = extra[0]
        if word.startswith("-"):
            name = word.split("=", 1)[0]
            options = [o for a in self._actions for o in a.option_strings if o.startswith("--") or len(name) == 2]
            return f"unknown option {name}{did_you_mean(name, options, n=1, cutoff=0.7)}"
        return f"unexpected argument {word!r}" + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        choices = action.choices
        if choices is None or value in choices:
            return
        names = [str(c) for c in choices]
        what = "command" if isinstance(action, argparse._SubParsersAction) else "value"
        raise argparse.ArgumentError(action, f"unknown {what} {value!r}{did_you_mean(str(value), names)}; "
                                             f"choose from {', '.join(names)}")

    def one_line_usage(self) -> str:
        """`gatesweep run SPEC [KEY=VALUE ...] [options]`: the positionals in full, options folded."""
        if self.usage:
            return self.usage % {"prog": self.prog}
        words = [self.prog]
        for a in self._actions:
            if a.option_strings or a.help == argparse.SUPPRESS:
                continue
            fmt = self._get_formatter()
            metavar = str(a.metavar or a.dest.upper())
            words.append(fmt._format_args(a, metavar)  # noqa: SLF001 - argparse's own rendering
                         if not isinstance(a, argparse._SubParsersAction) else metavar)
        return " ".join(words + ["[options]"])

    def error(self, message: str) -> NoReturn:
        print(f"error: {self.prog}: {message}", file=sys.stderr)
        print(f"usage: {self.one_line_usage()}  ({self.prog} -h for every option)", file=sys.stderr)
        sys.exit(ExitCode.BAD_INPUT)
