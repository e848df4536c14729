"""Process lifecycle of one training run: parse, set up, train, tear down, exit code."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from trainer.config import SECTIONS, TrainConfig
from trainer.errors import STORAGE_ERRNOS, ExitCode, GatesweepError
from trainer.overrides import resolve
from trainer.paths import check_writable, confine, storage_error
from trainer.record import sync_timeout
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


def open_record(cfg: TrainConfig, meta: dict, argv: list[str], env: DistEnv) -> tuple[TrainConfig, Tracker]:
    """The run's tracker (rank 0), tagged with the trial, with the config file as an artifact."""
    root = Path(cfg.run.out_dir) / "track"  # a launcher's trial: out_dir is the trial's own directory
    if "trial_id" not in meta and not cfg.run.run_id:
        # a run started by hand without a run_id shares out_dir with every other such run (the
        # reference's logs/ and experiments/): its record gets a directory of its own, so two runs
        # never merge into one record (and one MLflow run on `gatesweep sync runs/`). A run given
        # a run_id keeps out_dir/track, where a restart with the same run_id resumes it.
        from trainer.loop import shared_run_id

        cfg = cfg.override({"run_id": shared_run_id(cfg, env)}, source="run id")
        root = Path(cfg.run.out_dir) / "runs" / "adhoc" / cfg.run.run_id / "track"
    tracker = make_tracker(root) if env.is_main else NullTracker()
    tracker.set_tags(trial_tags(meta))
    for arg in argv:  # the resolved config file (trial.json / YAML) travels with the run
        if "=" not in arg and Path(arg).is_file():
            tracker.log_artifact(arg)
    return cfg, tracker


def main(argv: list[str], prog: str = "python -m trainer") -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE.format(prog=prog))
        return ExitCode.OK
    if "--help-config" in argv:
        from trainer.config_help import help_text

        print(help_text())
        return ExitCode.OK
    if "--print-config" in argv:
        return _print_config([a for a in argv if a != "--print-config"])
    startup = StartupClock()  # where start-up time goes: one console line after the first step
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        with startup.phase("config"):
            cfg, meta = resolve(argv)  # a bad config fails here, before torch is imported (~3 s)
            source = next((a for a in argv if "=" not in a), "command line")
            confine(cfg, source=source)  # out_dir and results_csv stay inside the project directory
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
