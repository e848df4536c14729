"""`gatesweep`: one entry point. argv is parsed here; the work happens in the packages.

Global options (gatesweep.global_options: `--tracking-uri`, `--json`, `-v`, `-q`, `-V`, `-h`) are accepted
before or after any subcommand; argv errors name the closest valid word (trainer.cli_parser). Every
user error (GatesweepError) prints one line and exits with its kind's code (trainer.errors.ExitCode:
2 bad input, 66 nothing to analyse yet, 69 store or cluster unreachable); 1 means some trials failed,
75 a resumable stop, 130 an interrupt. A closed stdout (`| head`) ends the command quietly.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from gatesweep import global_options
from gatesweep.global_options import HELP, UsageError
from sweeps.mlflow_runs import DEFAULT_URI
from trainer.cli_parser import Parser
from trainer.config import did_you_mean
from trainer.console import set_verbosity, verbosity
from trainer.errors import ExitCode, GatesweepError

DELEGATED = {  # parsed by their own packages (see _dispatch); listed here so that --help shows them
    "table": "seed-averaged stage table with statistics (gatesweep table -h)",
    "report": "Markdown report with tables and figures (gatesweep report -h)",
    "power": "seeds per configuration needed to detect a loss difference (gatesweep power -h)",
    "import": "import a legacy results CSV and logs into MLflow (gatesweep import -h)",
    "train": "run the trainer in this process (gatesweep train --help-config lists the keys)",
    "data": "make or check token shards: fineweb, text, synth (gatesweep data -h)",
}
URI_HELP = f"MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else {DEFAULT_URI})"
OVERRIDES_HELP = ("key=value: a trainer key for every trial (learning_rate=0.01), or a spec field: seeds=0,1, "
                  "grid.KEY=a,b (replace an axis), resources.*, backend.*, tracking.experiment, estimate.*")


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("gatesweep")
    except PackageNotFoundError:
        return "unknown (not installed; run make setup)"


def _parser() -> Parser:
    p = Parser(prog="gatesweep", description="Attention-gating sweeps on the ModernArch GPT.",
               epilog=f"{HELP}.\nexit codes: 0 ok, 1 some trials failed, 2 bad input, 66 no runs yet, "
                      "69 tracking store or cluster unreachable, 75 resumable stop, 130 interrupted",
               formatter_class=argparse.RawDescriptionHelpFormatter)
    # listed for -h and shell completion; global_options.split() takes them out of argv wherever they stand
    p.add_argument("--tracking-uri", metavar="URI", default=argparse.SUPPRESS, help=URI_HELP)
    p.add_argument("--json", action="store_true", help="machine-readable output (plan, run, status, sync, table)")
    p.add_argument("-v", "--verbose", action="count", help="details and tracebacks (-vv: library debug logs)")
    p.add_argument("-q", "--quiet", action="store_true", help="results, warnings and errors only")
    p.add_argument("-V", "--version", action="version", version=f"gatesweep {version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)

    def command(name: str, text: str, **kwargs: Any) -> Parser:
        return sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".", epilog=HELP + ".",
                              **kwargs)

    s = command("plan", "the trial table, GPU-hour estimate and what is finished", strict=False)
    _spec_args(s)
    s.add_argument("--json", action="store_true", help="print the trials as JSON (id, config, status)")

    s = command("run", "run a spec's trials on a backend", strict=False)
    _spec_args(s)
    s.add_argument("--backend", choices=("local", "slurm", "ray"), default=None,
                   help="where the trials run (default: the spec's backend.default, else local)")
    s.add_argument("--dry-run", action="store_true", help="print what would run or be submitted; write nothing")
    s.add_argument("--check", action="store_true",
                   help="slurm: only ask sbatch --test-only whether every job array would be accepted")
    s.add_argument("--max-parallel", type=int, default=None, metavar="N",
                   help="local/ray: trials at a time (default: backend.local.max_parallel, else 1)")
    s.add_argument("--wait", action="store_true", help="slurm: block with a progress display until the jobs end")
    for opt, what in (("partition", "partition"), ("account", "account to charge"), ("qos", "quality of service"),
                      ("constraint", "node features (e.g. h100)")):
        s.add_argument(f"--{opt}", default=None, help=f"slurm: {what} (overrides backend.slurm.{opt})")
    s.add_argument("--timeout-min", type=int, default=None, metavar="MIN",
                   help="slurm: time limit per job in minutes (overrides backend.slurm.timeout_min)")
    s.add_argument("--max-requeues", type=int, default=None, metavar="N",
                   help="slurm: requeues of a job (stop signal, lost node; overrides backend.slurm.max_requeues)")
    s.add_argument("--array-parallelism", type=int, default=None, metavar="N",
                   help="slurm: array tasks running at once (overrides backend.slurm.array_parallelism)")
    s.add_argument("--looks", type=int, default=None, metavar="N",
                   help="sequential seeds: run at most N looks now, then stop between looks (rerun to go on)")
    s.add_argument("--json", action="store_true",
                   help="print {trial_id: {status, job_id}} as JSON when done; progress goes to stderr")

    s = command("status", "per-trial state from the tracking store (and squeue)", strict=False)
    _spec_args(s)
    s.add_argument("--json", action="store_true", help="print the trials' states as JSON")

    s = command("sync", "deliver local run records to MLflow (e.g. from GPU nodes)")
    s.add_argument("paths", nargs="*", help="run dirs, track dirs or roots (default: runs/)")
    s.add_argument("--json", action="store_true", help="print what was delivered as JSON")

    s = command("warmup", "fill a sweep's compile cache: every graph family of its trials, compiled at once",
                strict=False)
    _spec_args(s)

    command("schema", "print the JSON Schema of a sweep spec (for editors: yaml-language-server)")

    s = command("completion", "print the shell completion script (eval it in ~/.bashrc)")
    s.add_argument("shell", nargs="?", default="bash", choices=("bash", "zsh", "fish", "tcsh"),
                   help="the shell (default bash)")
    for name, text in DELEGATED.items():
        sub.add_parser(name, help=text, add_help=False,
                       usage="%(prog)s [CONFIG.yaml|trial.json] [key=value ...]" if name == "train" else None)
    return p


def _spec_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("spec", help="sweep spec YAML (e.g. sweeps/stage1.yaml)")
    arg = s.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)
    arg.completer = _complete_keys  # type: ignore[attr-defined]


def _complete_keys(prefix: str, **_: Any) -> list[str]:
    """Shell completion of KEY=VALUE: every trainer key and spec field, as `key=`."""
    from sweeps.schema import override_keys

    return [k + "=" for k in override_keys() if k.startswith(prefix)]


JSON_COMMANDS = ("plan", "run", "status", "sync", "table")
NO_STORE = ("data", "schema", "completion")  # commands that consult no tracking store


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, Parser]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
    return dict(sub.choices)


def _applies(g: global_options.Globals, command: str) -> None:
    """Refuse a global option the command has no use for (exit 2), naming the way that works."""
    if g.json and command not in JSON_COMMANDS:
        raise UsageError(f"--json does not apply to `{command}`; it has no JSON output (commands with one: "
                         f"{', '.join(JSON_COMMANDS)})", command)
    if g.tracking_uri is not None and command in NO_STORE:
        raise UsageError(f"--tracking-uri does not apply to `{command}`: it reads no tracking store", command)


def _dispatch(argv: list[str]) -> int:
    g, command, rest = global_options.split(argv)
    set_verbosity(g.verbosity)
    if g.version:
        print(f"gatesweep {version()}")
        return ExitCode.OK
    parser = _parser()
    _autocomplete(parser)
    commands = _subcommands(parser)
    if command is None:
        if g.help:
            parser.print_help()
            return ExitCode.OK
        raise UsageError("no command given; e.g. gatesweep plan sweeps/demo.yaml")
    if command not in commands:
        raise UsageError(f"unknown command {command!r}{did_you_mean(command, list(commands))}")
    _applies(g, command)
    rest = (["--help"] if g.help else []) + rest + (["--json"] if g.json else [])
    uri = g.tracking_uri
    if command in DELEGATED:
        return _delegate(command, rest, uri, g.verbosity)
    args, extra = commands[command].parse_known_args(rest)
    if extra:  # key=value overrides may come after options too (`run SPEC --backend local lr=...`)
        stray = [e for e in extra if e.startswith("-") or "=" not in e]
        if stray:
            commands[command].error(commands[command].unknown_arguments(stray))
        args.overrides = list(args.overrides) + extra
    if command == "schema":
        from sweeps.json_schema import json_schema

        print(json_schema())
        return ExitCode.OK
    if command == "completion":
        return _print_completion(args.shell)
    from cluster import commands as run_commands

    if command == "plan":
        return run_commands.plan(args.spec, args.overrides, as_json=args.json, uri=uri)
    if command == "run":
        slurm_opts = {k: getattr(args, k) for k in ("partition", "account", "qos", "constraint", "timeout_min",
                                                   "max_requeues", "array_parallelism") if getattr(args, k) is not None}
        return run_commands.run(args.spec, args.overrides, backend=args.backend, dry_run=args.dry_run,
                                max_parallel=args.max_parallel, uri=uri, wait=args.wait, slurm_opts=slurm_opts,
                                max_looks=args.looks, check=args.check, as_json=args.json)
    if command == "status":
        return run_commands.status(args.spec, args.overrides, uri=uri, as_json=args.json)
    if command == "sync":
        return run_commands.sync(args.paths, uri, as_json=args.json)
    if command == "warmup":
        return run_commands.warmup(args.spec, args.overrides, uri)
    raise AssertionError(command)


def _delegate(command: str, rest: list[str], uri: str | None, verbosity: int) -> int:
    """The commands whose own packages parse their arguments (DELEGATED)."""
    if command == "data":
        from trainer import data_cli

        return data_cli.main(rest)
    if command == "train":
        if uri is not None:  # the trainer reads the URI where a launcher puts it: the environment
            os.environ["MLFLOW_TRACKING_URI"] = uri
        from trainer.main import main as train_main

        return train_main(rest, prog="gatesweep train", verbosity=verbosity)
    from analysis import cli as analysis_cli
    from analysis import power_cli
    from sweeps.mlflow_runs import resolve_uri
    from sweeps.store_file import store_errors

    rest += ["--tracking-uri", uri] if uri is not None else []
    with store_errors(resolve_uri(uri)):  # a damaged sqlite store: one line, exit 2, as for run and sync
        return {"table": analysis_cli.table_main, "report": analysis_cli.report_main,
                "power": power_cli.power_main, "import": analysis_cli.import_main}[command](rest)


def _usage_error(e: UsageError) -> int:
    """argv errors found before a parser ran: the same two lines as the parsers' own errors."""
    from analysis import cli as analysis_cli
    from analysis import power_cli
    from trainer import data_cli

    parser = _parser()
    own = {"table": analysis_cli.table_parser, "report": analysis_cli.report_parser,
           "power": power_cli.power_parser, "import": analysis_cli.import_parser, "data": data_cli._parser}
    target = own[e.command]() if e.command in own else _subcommands(parser).get(e.command or "", parser)
    target.error(str(e))  # exits 2


def _autocomplete(parser: argparse.ArgumentParser) -> None:
    """Answer a shell's completion request (argcomplete sets _ARGCOMPLETE) and exit; else nothing."""
    if "_ARGCOMPLETE" not in os.environ:
        return
    try:
        import argcomplete
    except ImportError:
        return
    argcomplete.autocomplete(parser)


def _print_completion(shell: str) -> int:
    try:
        import argcomplete
    except ImportError:
        raise GatesweepError("shell completion needs argcomplete: pip install 'gatesweep[cli]' (or make setup)") from None
    print(argcomplete.shellcode(["gatesweep"], shell=shell), end="")
    return ExitCode.OK


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # mlflow sets its loggers to INFO when imported ("Creating initial MLflow database tables..."); it
    # reads this variable at import, so it must be set before anything imports mlflow.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    try:
        code = _dispatch(argv)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below
        return code
    except UsageError as e:
        return _usage_error(e)
    except GatesweepError as e:
        if verbosity() > 0:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        # `gatesweep status SPEC | head -1`: the reader left. No traceback, and nothing more to write:
        # stdout goes to /dev/null so that the interpreter's own flush at exit cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + 13  # as a process ended by SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
