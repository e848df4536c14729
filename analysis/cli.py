"""`gatesweep table|report|import`: argv -> analysis calls -> stdout/files (`power`: analysis.power_cli).
Errors propagate as GatesweepError subclasses; the `gatesweep` dispatcher prints their one-line message and exits 2.

The tracking URI is --tracking-uri, else $MLFLOW_TRACKING_URI, else the default (sweeps.mlflow_runs).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from sweeps.errors import SpecError
from sweeps.mlflow_runs import DEFAULT_URI, resolve_uri
from trainer.cli_parser import Parser
from trainer.errors import ExitCode

URI_HELP = f"MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else {DEFAULT_URI})"

FORMATS = ("md", "csv", "console", "json")
_EXT = {"md": "md", "csv": "csv", "console": "txt", "json": "json"}


@dataclass(frozen=True)
class Target:
    """What to analyse: experiments (None = all), stages in block order (None = all), spec filter."""

    label: str
    experiments: list[str] | None
    stages: list[str] | None
    spec: str | None
    about: str = ""  # the spec's description: what the table is of (the demo's says what to expect)


def table_parser() -> Parser:
    p = stage_parser("table", "Seed-averaged table of a stage: statistics vs the none-gate baseline.")
    p.add_argument("--format", choices=FORMATS, default="console",
                   help="console (a box that fits the terminal, Markdown when piped; default), md, csv or json")
    p.add_argument("--json", action="store_true", help="the same as --format json: every column, as numbers")
    p.add_argument("--wide", action="store_true",
                   help="console: every column at its natural width (default: the first columns, and what fits)")
    p.add_argument("--compat", action="store_true",
                   help="the study's columns only: keys, seeds, final_loss, train_time")
    p.add_argument("--columns", help="comma-separated columns, in order (names as in --wide's or --format csv's "
                                     "table; with --compat the study's)")
    p.add_argument("--out", type=Path, help="write the table into this directory instead of stdout")
    p.add_argument("--skip-empty", action="store_true",
                   help=f"no runs yet (no store, experiment or trial runs): say so and exit 0 instead of "
                        f"{int(ExitCode.NO_INPUT)}")
    _add_adjust(p)
    p.add_argument("--no-time", action="store_true",
                   help="skip the time-matched columns (they read every finished run's val curve)")
    _add_step_times(p)
    p.add_argument("--log", action="store_true",
                   help="also log the decision table and per-configuration metrics on the stage's sweep run")
    return p


def table_main(argv: Sequence[str] | None = None) -> int:
    args = table_parser().parse_args(argv)
    if args.json:
        if args.format not in ("console", "json"):
            raise SpecError(f"--json and --format {args.format} ask for two formats; give one of them")
        args.format = "json"
    if args.compat and args.log:
        raise SpecError("--log writes the statistics table; drop --compat")
    from analysis import cache
    from sweeps.errors import NoRunsError

    target = target_of(args)
    decisions = _decisions(target, args.tracking_uri)
    key = None if args.log else cache.key("table", resolve_uri(args.tracking_uri), lambda: cache.inputs(
        _options(args), asdict(target), args.step_times, None if args.compat else decisions, render=True))
    text = (cache.get(key) or {}).get("text")
    if text is None:
        try:
            text = _table_text(args, target, decisions)
        except NoRunsError:
            if not args.skip_empty:
                raise
            print(f"({target.label}: no runs yet)")
            return 0
        cache.put(key, {"text": text})
    if args.out:
        path = args.out / f"{_slug(target.label)}_{'compat' if args.compat else 'table'}.{_EXT[args.format]}"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        except OSError as e:
            raise _storage_error(e, args.out) from None
        print(path)
    else:
        print(text, end="")
    return 0


def _table_text(args: argparse.Namespace, target: Target, decisions) -> str:
    """The table command's output text, computed from the store (analysis.cache keeps it)."""
    from analysis import render
    from analysis.fetch import fetch_runs
    from analysis.table import compat_table, stage_table

    runs = fetch_runs(target.experiments, stage=target.stages, spec=target.spec, tracking_uri=args.tracking_uri)
    if args.compat:
        df = compat_table(runs, stages=target.stages, columns=_split(args.columns))
        note, headers, numeric = "", None, None
    else:
        histories = None if args.no_time else _curves(runs, args.tracking_uri)
        runs, histories = _retime(runs, histories, args.step_times)
        numeric = _annotate(stage_table(runs, stages=target.stages, adjust=args.adjust, histories=histories,
                                        per_seed=True), decisions())
        about = f"{target.spec}: {target.about}" if target.about else ""
        note = "\n\n".join(t for t in (about, render.footer(numeric), render.reading_note(numeric, args.adjust)) if t)
        headers = render.DISPLAY_HEADERS
        df = numeric if args.format in ("csv", "json") else render.display_table(numeric)
        if args.columns:
            from analysis.console_table import HEADERS, pick

            df = pick(numeric, df, _split(args.columns) or [], csv=args.format in ("csv", "json"))
            headers = HEADERS
        if args.log:
            _log_decision(target, numeric, args.adjust, args.tracking_uri)
    fit = numeric if not (args.wide or args.columns) else None  # the terminal's columns are chosen for it
    return _render(df, args.format, title=target.label, note=note, headers=headers, fit=fit)


def report_parser() -> Parser:
    p = stage_parser("report", "Write reports/<stage>/README.md with tables and figures.")
    p.add_argument("--out", type=Path, default=Path("reports"), help="reports root (default: reports)")
    p.add_argument("--no-attach", action="store_true", help="do not upload to the sweep's parent run")
    _add_adjust(p)
    _add_step_times(p)
    return p


def report_main(argv: Sequence[str] | None = None) -> int:
    args = report_parser().parse_args(argv)
    from analysis import cache, report_files

    target = target_of(args)
    out_dir = args.out / _slug(target.label)
    folder = report_files.Folder(out_dir)
    decisions = _decisions(target, args.tracking_uri)
    key = cache.key("report", resolve_uri(args.tracking_uri),
                    lambda: cache.inputs(_options(args), asdict(target), args.step_times, decisions))
    written = folder.intact(key)  # a repeated call on an unchanged store: nothing to read or write
    if written is None:
        try:
            written = _write_report(folder, target, args, decisions, key)
        except OSError as e:  # a full disk while the figures are written: one line, like the trainer's
            raise _storage_error(e, out_dir) from None
    print(out_dir / "README.md")
    if not args.no_attach:
        parent = _attach(target, written, args.tracking_uri)
        print(f"attached {len(written)} file(s) to sweep run {parent}" if parent
              else "no sweep run (tag gatesweep.kind=sweep) found; nothing attached")
    return 0


def _storage_error(e: OSError, out_dir: Path) -> Exception:
    """StorageError (exit 2) for a write the disk refused (full, read-only, no permission); else `e`."""
    from trainer.errors import STORAGE_ERRNOS, StorageError

    if e.errno not in STORAGE_ERRNOS:
        return e
    return StorageError(f"{e.filename or out_dir}: {e.strerror}; free space or make {out_dir} writable, or write "
                        "elsewhere with --out DIR, then run the command again")


def import_parser() -> Parser:
    p = Parser(prog="gatesweep import", description=(
        "Import a legacy results CSV (and logs/<run_id>.txt) as MLflow runs in the trainer's schema; or "
        "attach val curves (a curve CSV: run_id, step, val_loss, train_time_ms) or a folder of "
        "<run_id>.txt logs to runs imported before."))
    p.add_argument("file", type=Path, help="results CSV, curve CSV, or a folder of <run_id>.txt logs")
    p.add_argument("--logs", type=Path, help="with a results CSV: directory with <run_id>.txt logs")
    p.add_argument("--stage", help="with a results CSV: stage of every row (else the CSV's 'stage' column)")
    p.add_argument("--experiment", default=None, help="MLflow experiment (default gatesweep-import)")
    p.add_argument("--tracking-uri", default=None, metavar="URI", help=URI_HELP)
    return p


def import_main(argv: Sequence[str] | None = None) -> int:
    args = import_parser().parse_args(argv)
    from analysis.importer import DEFAULT_EXPERIMENT, import_histories, import_results, is_curves_file

    experiment = args.experiment or DEFAULT_EXPERIMENT
    if args.file.is_dir() or (args.file.is_file() and is_curves_file(args.file)):
        if args.logs or args.stage:
            raise SpecError(f"{args.file}: --logs/--stage apply to a results CSV; a curve CSV or logs "
                            "folder attaches to runs already imported - drop them")
        result = import_histories(args.file, experiment=experiment, tracking_uri=args.tracking_uri)
    else:
        result = import_results(args.file, logs_dir=args.logs, stage=args.stage, experiment=experiment,
                                tracking_uri=args.tracking_uri)
    print(result.summary())
    return 0


def read_spec_target(path: Path) -> tuple[str, str | None, str, str]:
    """(name, stage, experiment, description) of a spec, validated like every other command's spec."""
    from sweeps.spec import load_spec

    spec = load_spec(path)
    return spec.name, spec.stage or None, spec.experiment, spec.description


def _log_decision(target: Target, table, adjust: str, tracking_uri: str | None) -> None:
    import sys

    from analysis.decision import log_decision
    from analysis.fetch import call, find_sweep_run, open_client
    from sweeps.errors import NoRunsError

    if not target.stages or len(target.stages) != 1:
        raise SpecError("--log needs exactly one stage (the sweep run it writes to is per stage)")
    parent = find_sweep_run(target.experiments, spec=target.spec, stage=target.stages[0], tracking_uri=tracking_uri)
    if parent is None:
        raise NoRunsError(f"--log: no sweep run (tag gatesweep.kind=sweep) of stage {target.stages[0]}; "
                          "run or import the stage first")
    client, uri = open_client(tracking_uri)
    metrics = call(uri, lambda: log_decision(client, parent, table, title=target.label, adjust=adjust))
    print(f"logged the decision table and {len(metrics)} metrics on sweep run {parent}", file=sys.stderr)


def _curves(runs, tracking_uri: str | None):
    """val_loss and train_time_ms histories of the finished runs (for the time-matched columns)."""
    from analysis.fetch import fetch_histories
    from analysis.table import FINISHED
    from analysis.timematch import HISTORY_KEYS

    finished = runs[runs["status"] == FINISHED]["mlflow_run_id"].dropna().tolist()
    return fetch_histories(finished, HISTORY_KEYS, tracking_uri=tracking_uri)


def _add_step_times(p: argparse.ArgumentParser) -> None:
    p.add_argument("--step-times", type=Path, default=None, metavar="RESULTS_JSON",
                   help="put runs on step times measured one process at a time (bench/run.py results.json): "
                        "train time, ms/step and the time-matched columns of trials that shared a GPU")


def _retime(runs, histories, step_times: Path | None):
    """runs and histories on measured step times (analysis.steptimes), when --step-times is given."""
    if step_times is None:
        return runs, histories
    import sys

    from analysis import steptimes

    runs, histories, missing = steptimes.retime(runs, histories, steptimes.load(step_times))
    if missing:
        print(f"note: no step time in {step_times} for {', '.join(missing)}; those runs keep their own times",
              file=sys.stderr)
    return runs, histories


def _add_adjust(p: argparse.ArgumentParser) -> None:
    p.add_argument("--adjust", choices=("holm", "bh", "none"), default="holm",
                   help="multiplicity adjustment of p across the table's comparisons (default holm)")


def stage_parser(cmd: str, description: str) -> Parser:
    p = Parser(prog=f"gatesweep {cmd}", description=description)
    p.add_argument("spec", nargs="?", type=Path, help="sweep spec YAML (name, stage, tracking.experiment)")
    p.add_argument("--stage", action="append", help="stage name; repeat to stack stage blocks")
    p.add_argument("--experiment", action="append", help="MLflow experiment (repeatable; default: all)")
    p.add_argument("--tracking-uri", default=None, metavar="URI", help=URI_HELP)
    return p


def target_of(args: argparse.Namespace) -> Target:
    if args.spec is not None:
        name, stage, experiment, about = read_spec_target(args.spec)
        stages = args.stage or ([stage] if stage else None)
        # reports/<stage>/ as the study's layout; the spec name when the spec has no stage
        return Target(stage or name, args.experiment or [experiment], stages, name, about)
    if not args.stage:
        raise SpecError("give a spec file or --stage NAME (e.g. gatesweep table --stage stage1)")
    return Target("+".join(args.stage), args.experiment, list(args.stage), None)


def _render(df, fmt_name: str, *, title: str, note: str, headers, fit=None) -> str:
    """`fit`: the numeric statistics table, when the console's columns are to fit the terminal."""
    from analysis import render

    if fmt_name == "csv":
        return render.to_csv(df)
    if fmt_name == "json":
        return render.to_json(df, title=title)
    if fmt_name == "md" or not sys.stdout.isatty():  # console: a box on a terminal, Markdown into a pipe or file
        return render.to_markdown(df, headers) + (f"\n{note}\n" if note else "")
    if fit is not None:
        import shutil

        from analysis import console_table

        width = shutil.get_terminal_size().columns
        return console_table.render(console_table.fit(fit, df, width), title=title, note=note, width=width)
    return render.to_console(df, title=title, note=note, headers=headers)


def _write_report(folder, target: Target, args: argparse.Namespace, decisions, key: str | None) -> list[Path]:
    from analysis.fetch import fetch_runs
    from analysis.report_files import write_report
    from analysis.table import compat_table, stage_table

    runs = fetch_runs(target.experiments, stage=target.stages, spec=target.spec, tracking_uri=args.tracking_uri)
    runs, hist = _retime(runs, _curves(runs, args.tracking_uri), args.step_times)
    assert hist is not None  # _curves always gives a frame (empty without histories)
    numeric = _annotate(stage_table(runs, stages=target.stages, adjust=args.adjust, histories=hist, per_seed=True),
                        decisions())
    compat = compat_table(runs, stages=target.stages)
    return write_report(folder, runs, hist, numeric, compat, title=f"Report: {target.label}",
                        source=_source_line(runs, target), adjust=args.adjust, key=key)


def _decisions(target: Target, tracking_uri: str | None):
    """The spec's sequential decision log (analysis.decision_log), read once when first asked for."""
    import functools

    @functools.cache
    def read():
        if not target.spec:
            return None
        from analysis.decision_log import decisions_for_spec

        return decisions_for_spec(target.spec, tracking_uri=tracking_uri)
    return read


def _options(args: argparse.Namespace) -> dict:
    """The options a result depends on (not where it goes, nor the store: the key has its state)."""
    return {k: v for k, v in vars(args).items() if k not in ("tracking_uri", "spec", "out", "no_attach")}


def _annotate(table, log):
    from analysis.seq_table import with_log

    return with_log(table, log)


def _attach(target: Target, paths: list[Path], tracking_uri: str | None) -> str | None:
    from analysis.fetch import call, find_sweep_run, open_client

    stage = target.stages[0] if target.stages and len(target.stages) == 1 else None
    parent = find_sweep_run(target.experiments, spec=target.spec, stage=stage, tracking_uri=tracking_uri)
    if parent is None:
        return None
    client, uri = open_client(tracking_uri)
    for path in paths:
        call(uri, client.log_artifact, parent, str(path), f"report/{_slug(target.label)}")
    return parent


def _source_line(runs, target: Target) -> str:
    exps = ", ".join(target.experiments) if target.experiments else "all experiments"
    return f"{len(runs)} run(s) from MLflow ({exps}); stages: {', '.join(target.stages or ['all'])}."


def _split(text: str | None) -> list[str] | None:
    return [c.strip() for c in text.split(",") if c.strip()] if text else None


def _slug(text: str) -> str:
    from analysis.report_files import slug

    return slug(text)
