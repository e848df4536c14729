"""`gatesweep`: one entry point. argv is parsed here; the work happens in the packages.

Every user error (GatesweepError) prints one line and exits 2; nothing is half-written.
"""

from __future__ import annotations

import argparse
import os
import sys

from trainer.errors import GatesweepError

COMMANDS = ("plan", "run", "status", "sync", "warmup", "table", "report", "power", "import", "train", "data")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gatesweep", description="Attention-gating sweeps on the ModernArch GPT.")
    p.add_argument("--tracking-uri", default=None, help="MLflow URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("plan", help="the trial table, GPU-hour estimate and what is finished")
    s.add_argument("spec")
    s.add_argument("overrides", nargs="*", help="key=value (trainer keys, seeds=, resources.*, backend.*)")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("run", help="run a spec's trials on a backend")
    s.add_argument("spec")
    s.add_argument("overrides", nargs="*")
    s.add_argument("--backend", choices=("local", "slurm", "ray"), default=None)
    s.add_argument("--dry-run", action="store_true", help="print what would run/submit and exit")
    s.add_argument("--max-parallel", type=int, default=None)
    s.add_argument("--wait", action="store_true", help="slurm: block with a progress display")
    for opt in ("partition", "account", "qos", "constraint"):
        s.add_argument(f"--{opt}", default=None)
    s.add_argument("--timeout-min", type=int, default=None)
    s.add_argument("--max-requeues", type=int, default=None)
    s.add_argument("--array-parallelism", type=int, default=None)
    s.add_argument("--looks", type=int, default=None, metavar="N",
                   help="sequential seeds: run at most N looks now, then stop between looks (rerun to go on)")

    s = sub.add_parser("status", help="per-trial state from the tracking store (and squeue)")
    s.add_argument("spec")
    s.add_argument("overrides", nargs="*")

    s = sub.add_parser("sync", help="deliver local run records to MLflow (e.g. from GPU nodes)")
    s.add_argument("paths", nargs="*", help="run dirs, track dirs or roots (default: runs/)")

    s = sub.add_parser("warmup", help="fill a sweep's compile cache with its first trial's graphs")
    s.add_argument("spec")
    s.add_argument("overrides", nargs="*")
    # parsed by their own packages (see _dispatch); listed here so that --help shows them
    for name, text in DELEGATED.items():
        sub.add_parser(name, help=text, add_help=False)
    return p


DELEGATED = {
    "table": "seed-averaged stage table with statistics (gatesweep table -h)",
    "report": "Markdown report with tables and figures (gatesweep report -h)",
    "power": "seeds per configuration needed to detect a loss difference (gatesweep power -h)",
    "import": "import a legacy results CSV and logs into MLflow (gatesweep import -h)",
    "train": "run the trainer in this process (gatesweep train key=value ...)",
    "data": "make or check token shards: fineweb, text, synth (gatesweep data -h)",
}


def _global_uri(argv: list[str]) -> tuple[str | None, list[str]]:
    """`gatesweep --tracking-uri URI table ...`: the global option in front of a delegated command."""
    if argv and argv[0].startswith("--tracking-uri="):
        return argv[0].split("=", 1)[1], argv[1:]
    if len(argv) > 2 and argv[0] == "--tracking-uri" and argv[2] in DELEGATED:
        return argv[1], argv[2:]
    return None, argv


def _dispatch(argv: list[str]) -> int:
    # Subcommands owned by other packages parse their own arguments.
    uri, rest = _global_uri(argv)
    if rest and rest[0] in DELEGATED and uri is not None:
        if rest[0] in ("data", "train"):
            print(f"error: --tracking-uri does not apply to `{rest[0]}`; set MLFLOW_TRACKING_URI instead",
                  file=sys.stderr)
            return 2
        rest = rest + ["--tracking-uri", uri]
    if rest and rest[0] in ("table", "report", "power", "import"):
        from analysis import cli as analysis_cli

        return {"table": analysis_cli.table_main, "report": analysis_cli.report_main,
                "power": analysis_cli.power_main, "import": analysis_cli.import_main}[rest[0]](rest[1:])
    if rest and rest[0] == "data":
        from trainer import data_cli

        return data_cli.main(rest[1:])
    if rest and rest[0] == "train":
        from trainer.main import main as train_main

        return train_main(rest[1:])
    parser = _parser()
    # key=value overrides may come after options too (`run SPEC --backend local lr=...`).
    args, extra = parser.parse_known_args(argv)
    stray = [e for e in extra if e.startswith("-") or "=" not in e]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    from cluster import commands

    if args.command == "plan":
        return commands.plan(args.spec, args.overrides, as_json=args.json, uri=args.tracking_uri)
    if args.command == "run":
        slurm_opts = {k: getattr(args, k) for k in ("partition", "account", "qos", "constraint", "timeout_min",
                                                   "max_requeues", "array_parallelism") if getattr(args, k) is not None}
        return commands.run(args.spec, args.overrides, backend=args.backend, dry_run=args.dry_run,
                            max_parallel=args.max_parallel, uri=args.tracking_uri, wait=args.wait,
                            slurm_opts=slurm_opts, max_looks=args.looks)
    if args.command == "status":
        return commands.status(args.spec, args.overrides, uri=args.tracking_uri)
    if args.command == "sync":
        return commands.sync(args.paths, args.tracking_uri)
    if args.command == "warmup":
        return commands.warmup(args.spec, args.overrides, args.tracking_uri)
    raise AssertionError(args.command)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # mlflow sets its loggers to INFO when imported ("Creating initial MLflow database tables..."); it
    # reads this variable at import, so it must be set before anything imports mlflow.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    try:
        return _dispatch(argv)
    except GatesweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
