"""Process lifecycle of one training run: parse, set up, train, tear down, exit code."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from trainer.config import SECTIONS, TrainConfig, did_you_mean
from trainer.errors import STORAGE_ERRNOS, ConfigError, ExitCode, GatesweepError
from trainer.overrides import resolve
from trainer.paths import check_writable, confine, storage_error
from trainer.record import record_run_ids, sync_timeout
from trainer.runlog import start_nvidia_smi
from trainer.startup import StartupClock
from trainer.tracking import NullTracker, Tracker, make_tracker

if TYPE_CHECKING:  # torch is imported after the config is checked
    from trainer.dist import DistEnv

EXIT_CODES = {"FINISHED": ExitCode.OK, "EARLY_STOPPED": ExitCode.OK, "FAILED": ExitCode.TRIALS_FAILED,
              "KILLED": ExitCode.RESUMABLE}

USAGE = """usage: {prog} [CONFIG.yaml|trial.json] [key=value ...]
       {prog} --help-config          every key with its type, default and meaning
       {prog} --print-config [CONFIG] [key=value ...]   the resolved config, then exit
  e.g. torchrun --standalone --nproc_per_node=2 -m trainer preset=tiny num_iterations=200
  env: ATTNGATE GATEPOS GATEACT LR SEED NUM_ITERATIONS WARMUP_ITERS WARMDOWN_ITERS VAL_EVERY
  exit: 0 finished, 1 failed, 2 bad input, 75 stopped by a signal after a checkpoint (rerun to resume)
"""


def trial_tags(meta: dict) -> dict[str, str]:
    tags = {k: str(v) for k, v in meta.get("tags", {}).items()}
    for key in ("trial_id", "spec", "stage", "seed", "experiment", "backend"):
        if key in meta:
            tags[key] = str(meta[key])
    if "trial_id" in meta:
        tags.setdefault("gatesweep.kind", "trial")
    return tags


MANUAL_ROOT = Path("runs") / "manual"  # hand runs' own directories, beside the launchers' runs/<spec>/


def hand_run_dirs(cfg: TrainConfig, meta: dict, env: DistEnv) -> tuple[TrainConfig, Path]:
    """(config, record directory) of this run. A launcher's trial writes into its own out_dir. A run
    started by hand gets a directory of its own, so that two runs never merge into one record (nor one
    MLflow run on `gatesweep sync`): with out_dir the project directory (the default) everything goes to
    runs/manual/<run_id>/ (logs, checkpoints, track/, curve.csv), where the same run_id resumes; without
    a run_id, in an out_dir the person chose, the record goes to <out_dir>/runs/manual/<run_id>/track."""
    out = Path(cfg.run.out_dir)
    if "trial_id" in meta:
        return cfg, out / "track"
    from trainer.loop import shared_run_id

    given = bool(cfg.run.run_id)
    cfg = cfg.override({"run_id": shared_run_id(cfg, env)}, source="run id")
    if os.path.abspath(out) == os.getcwd():
        own = MANUAL_ROOT / cfg.run.run_id
        return cfg.override({"out_dir": str(own)}, source="hand run"), own / "track"
    if not given:
        return cfg, out / MANUAL_ROOT / cfg.run.run_id / "track"
    _refuse_shared_record(out / "track", cfg.run.run_id)
    return cfg, out / "track"


def _refuse_shared_record(root: Path, run_id: str) -> None:
    """A record another run id wrote into is not this run's: refuse before anything is written."""
    others = [r for r in record_run_ids(root) if r != run_id]
    if others:
        raise ConfigError(f"out_dir={root.parent}: its record {root} belongs to run {others[0]}; run_id={run_id} "
                          f"would merge into it. Use run_id={others[0]} to resume that run, another out_dir, or "
                          "leave out_dir out (each hand run then gets runs/manual/<run_id>/)")


def open_record(cfg: TrainConfig, meta: dict, argv: list[str], env: DistEnv) -> tuple[TrainConfig, Tracker]:
    """The run's tracker (rank 0), tagged with the trial, with the config file as an artifact."""
    cfg, root = hand_run_dirs(cfg, meta, env)
    tracker = make_tracker(root) if env.is_main else NullTracker()
    tracker.set_tags(trial_tags(meta))
    for arg in argv:  # the resolved config file (trial.json / YAML) travels with the run
        if "=" not in arg and Path(arg).is_file():
            tracker.log_artifact(arg)
    return cfg, tracker


OPTIONS = ("-h", "--help", "--help-config", "--print-config")


def main(argv: list[str], prog: str = "python -m trainer", verbosity: int = 0) -> int:
    """verbosity: -1 warnings only (gatesweep train -q), 0 the console lines, 1 debug logs too (-v)."""
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE.format(prog=prog))
        return ExitCode.OK
    stray = [a for a in argv if a.startswith("-") and "=" not in a and a not in OPTIONS]
    if stray:  # else "--dryrun" would be read as a config file's name
        print(f"error: {prog}: unknown option {stray[0]}{did_you_mean(stray[0], OPTIONS, n=1, cutoff=0.7)}\n"
              f"usage: {prog} [CONFIG.yaml|trial.json] [key=value ...]  ({prog} -h for every option)", file=sys.stderr)
        return ExitCode.BAD_INPUT
    if "--help-config" in argv:
        from trainer.config_help import help_text

        print(help_text())
        return ExitCode.OK
    if "--print-config" in argv:
        return _print_config([a for a in argv if a != "--print-config"])
    startup = StartupClock()  # where start-up time goes: one console line after the first step
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO)
    try:
        with startup.phase("config"):
            cfg, meta = resolve(argv)  # a bad config fails here, before torch is imported (~3 s)
            source = next((a for a in argv if "=" not in a), "command line")
            # out_dir and results_csv stay inside the project (or a configured root), unless typed here
            confine(cfg, source=source, typed=frozenset(a.split("=", 1)[0].strip().rsplit(".", 1)[-1] for a in argv if "=" in a))
            check_writable(cfg.run.out_dir, "out_dir")
            check_writable(cfg.run.results_csv, "results_csv")
            sync_timeout()  # GATESWEEP_SYNC_TIMEOUT is read at the run's end: a bad value is refused now
        if cfg.run.device != "cpu" and os.environ.get("RANK", "0") == "0" and shutil.which("nvidia-smi"):
            startup.nvidia_smi = start_nvidia_smi()  # for the run log; runs while torch is imported
        with startup.phase("import torch"):
            from trainer import dist
            from trainer.build import preflight
            from trainer.loop import train
        with startup.phase("dist"):
            env = dist.setup(cfg.run.device)
    except GatesweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    try:
        with startup.phase("preflight"):
            preflight(cfg, env)  # bad data or batch arithmetic fails here, before any record exists
        with startup.phase("tracking"):
            cfg, tracker = open_record(cfg, meta, argv, env)
        summary = train(cfg, tracker, env=env, startup=startup)
    except GatesweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # a full disk or a read-only directory: one line, and the run can resume later
        if e.errno not in STORAGE_ERRNOS:
            raise
        err = storage_error(e, cfg.run.out_dir)
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    finally:
        dist.teardown()
    if env.is_main:
        print(f"{summary.status}: final_val_loss={summary.final_val_loss:.4f} "
              f"train_time={summary.train_time_ms:.0f}ms log={summary.log_path}"
              + (f" ({summary.reason})" if summary.reason else ""))
    return EXIT_CODES[summary.status]


def exit_process(code: int) -> None:
    """End `python -m trainer` with os._exit once output is flushed. By then the run's record is
    closed and its status written (train() finishes the tracker; the process group is destroyed).
    The interpreter's teardown of torch writes nothing, costs ~0.7 s per trial, and under gloo can
    abort a rank that finished cleanly: a compiled DDP model outlives main() in dynamo's caches, and
    its process group's worker threads met finalization ("terminate called without an active
    exception", SIGABRT, seen once in CI on a FINISHED 2-rank run)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def _print_config(argv: list[str]) -> int:
    """The config the run would use (preset < file < env < key=value), as YAML; nothing is started."""
    import yaml

    try:
        cfg, meta = resolve(argv)
    except GatesweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    body = {section: dataclasses.asdict(getattr(cfg, section)) for section in SECTIONS}
    print(yaml.safe_dump(body | ({"trial": meta} if meta else {}), sort_keys=False), end="")
    return ExitCode.OK
