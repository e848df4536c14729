"""Where a run may write: inside the project directory it runs in.

A trainer config, and so a sweep spec, names files the trainer writes: `out_dir` (logs, checkpoints,
the record) and `results_csv` (appended to). Unchecked, a spec from someone else could append a
results row to ~/.bashrc (`results_csv: /root/.bashrc`) or put logs anywhere with `../../`. Both are
resolved against the working directory - the project root, for the CLI and for every launcher (Slurm
jobs and Ray workers run in the launcher's directory) - and refused with the key and the fix when
they leave it. (`run_id`, a file name under out_dir, is checked in trainer.config: a plain name.)

What the person running the command chose is not confined: a path typed as key=value on the trainer's
own command line (`python -m trainer out_dir=/scratch/me/run1`), and anything under a configured root -
$SCRATCH (a cluster's scratch filesystem) and every directory in GATESWEEP_OUTPUT_ROOTS (os.pathsep-
separated) - for specs too. GATESWEEP_ALLOW_OUTSIDE_PATHS=1 turns the check off altogether. A symlink
inside the project counts as inside: it was placed by the project's owner, not by a spec.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from trainer.config import RunConfig, TrainConfig
from trainer.errors import ConfigError, StorageError
from trainer.runlog import RESULTS_FIX, results_file_problem
from trainer.yamlsafe import short

ALLOW_ENV = "GATESWEEP_ALLOW_OUTSIDE_PATHS"
ROOTS_ENV = "GATESWEEP_OUTPUT_ROOTS"
WRITTEN_KEYS = ("out_dir", "results_csv")


def inside(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> bool:
    """`path` (relative to `root` unless absolute) names a place under `root`, `..` resolved."""
    full = Path(root, path)  # an absolute `path` replaces root
    if Path(os.path.abspath(full)).is_relative_to(os.path.abspath(root)):
        return True
    return Path(os.path.realpath(full)).is_relative_to(os.path.realpath(root))  # root reached via a symlink


def output_roots(environ: Mapping[str, str]) -> list[Path]:
    """The configured roots outside the project where runs may write: $SCRATCH, GATESWEEP_OUTPUT_ROOTS."""
    listed = environ.get(ROOTS_ENV, "").split(os.pathsep) + [environ.get("SCRATCH", "")]
    return [Path(p) for p in listed if p.strip() and Path(p).is_absolute()]


def confine(cfg: TrainConfig, *, source: str, root: str | os.PathLike[str] | None = None,
            environ: Mapping[str, str] | None = None, typed: frozenset[str] = frozenset()) -> None:
    """Raise ConfigError if out_dir or results_csv leaves `root` (default: the working directory) and
    every configured root, or if results_csv is not a results table the project owns
    (trainer.runlog.results_file_problem). `typed`: keys the person gave on the command line - theirs to
    choose where, though results_csv must still be a results table."""
    env = os.environ if environ is None else environ
    allowed = env.get(ALLOW_ENV, "") == "1"
    root = Path.cwd() if root is None else Path(root)
    roots = output_roots(env)
    for key in WRITTEN_KEYS if not allowed else ():
        value = getattr(cfg.run, key)
        if key in typed or inside(value, root) or any(inside(Path(root, value), r) for r in roots):
            continue
        default = getattr(RunConfig(), key)
        configured = f" or under {', '.join(map(str, roots))}" if roots else ""
        raise ConfigError(f"{source}: {key}={short(value, 300)} is outside the project directory {root}{configured}; "
                          f"use a path inside it (e.g. {key}={default}), add its filesystem to {ROOTS_ENV} (e.g. "
                          f"{ROOTS_ENV}=$SCRATCH), type it on the trainer's command line, or set {ALLOW_ENV}=1")
    # inside the project is not enough: a file there can be one a shell runs (.venv/bin/activate)
    value = cfg.run.results_csv
    located = not allowed and "results_csv" not in typed and inside(value, root)
    problem = results_file_problem(value, root, located=located)
    if problem:
        raise ConfigError(f"{source}: results_csv={short(value, 300)} {problem}; {RESULTS_FIX}")


def check_writable(path: str | os.PathLike[str], key: str | None, *, fix: str | None = None) -> None:
    """Refuse before training when `path` (a file or directory the run writes, which may not exist
    yet) cannot be written: a read-only experiments/ would otherwise fail only after the last step.
    `key`: the config key that names `path` (None: no key does); `fix`: the advice, if not to move it."""
    p = Path(path)
    probe = p
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and (probe == p or probe.is_dir()) and os.access(probe, os.W_OK):
        return
    why = "is not a directory" if probe.exists() and not probe.is_dir() else "is not writable"
    if probe.exists() and probe.is_dir() and os.statvfs(probe).f_flag & os.ST_RDONLY:
        why = "is on a read-only filesystem"
    where = f"{key}={short(str(path), 300)}" if key else str(path)[:300]
    fix = fix or f"make it writable or point {key} elsewhere inside the project"
    raise StorageError(f"{where}: {probe} {why}; {fix}, then run again")


def storage_error(e: OSError, where: str | os.PathLike[str]) -> StorageError:
    """A one-line StorageError for an OSError in STORAGE_ERRNOS raised while writing under `where`."""
    target = e.filename if e.filename is not None else f"a file under {where}"
    return StorageError(f"{target}: {e.strerror or os.strerror(e.errno or 0)}; free space or make it writable, "
                        "then run again: the run resumes from its last checkpoint")
