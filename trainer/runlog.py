"""The run record in the reference's formats: `logs/<run_id>.txt` and `experiments/results.csv`.

Log: '='*100, the trainer's code, '='*100, git SHA/dirty flag and resolved config (JSON), then
`Running pytorch ... compiled for CUDA ...`, `nvidia-smi:` and its output, '='*100, then the
reference's step lines - so existing modded-nanogpt log parsers keep working.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import re
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer.csvsafe import safe_cell
from trainer.errors import ConfigError
from trainer.tracking import redact

SEP = "=" * 100
RESULTS_COLUMNS = ("run_id", "date", "git_commit", "seed", "attn_gate", "gate_pos", "gate_act", "learning_rate",
                   "batch_size", "device_batch_size", "sequence_length", "num_iterations", "warmdown_iters",
                   "final_val_loss", "best_val_loss", "train_time_ms", "ms_per_step", "gpu_name", "n_gpus", "notes")
RESULTS_HEADER = ",".join(RESULTS_COLUMNS)
RESULTS_DIRS = ("experiments", "runs")
TRAINER_DIR = Path(__file__).resolve().parent


def trainer_code() -> str:
    parts = []
    for f in sorted(TRAINER_DIR.glob("*.py")):
        parts.append(f"# ---- trainer/{f.name}\n{f.read_text()}")
    return "\n".join(parts)


def git_info(cwd: Path = TRAINER_DIR) -> tuple[str, bool]:
    """(sha, dirty); ('unknown', False) outside a git checkout (e.g. a Slurm code snapshot).
    GATESWEEP_GIT_SHA (set by launchers that snapshot the code) wins."""
    if os.environ.get("GATESWEEP_GIT_SHA"):
        sha = os.environ["GATESWEEP_GIT_SHA"]
        return sha.removesuffix("-dirty"), sha.endswith("-dirty")
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        sha = res.stdout.strip()
        if res.returncode != 0 or not re.fullmatch(r"[0-9a-f]{40}", sha):  # e.g. a copy with an empty .git
            return "unknown", False
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
        return sha, dirty
    except (OSError, subprocess.SubprocessError):
        return "unknown", False


def nvidia_smi() -> str:
    try:
        return subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return "(nvidia-smi not available)\n"


def start_nvidia_smi() -> Callable[[], str]:
    """Start nvidia-smi now (about a second on a GPU node) and return a call that waits for its output:
    the run's set-up overlaps it instead of waiting for it before the first step."""
    try:
        proc = subprocess.Popen(["nvidia-smi"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    except OSError:
        return lambda: "(nvidia-smi not available)\n"

    def output() -> str:
        try:
            return proc.communicate(timeout=20)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return "(nvidia-smi timed out)\n"

    return output


def header(config: dict[str, Any], sha: str, dirty: bool, smi: str | None = None) -> str:
    import torch  # here, not at import: `python -m trainer` starts nvidia-smi before torch is imported

    out = io.StringIO()
    out.write(SEP + "\n")
    out.write(trainer_code())
    out.write("\n" + SEP + "\n")
    out.write(f"git: {sha}{' (dirty)' if dirty else ''}\n")
    out.write("config: " + json.dumps(config, sort_keys=True) + "\n")
    out.write(f"Running pytorch {torch.version.__version__} compiled for CUDA {torch.version.cuda}\nnvidia-smi:\n")
    out.write((nvidia_smi() if smi is None else smi) + "\n")
    out.write(SEP + "\n")
    return redact(out.getvalue())


def val_line(step: int, num_iterations: int, val_loss: float, train_time_ms: float, timed_steps: float) -> str:
    return (f"step:{step}/{num_iterations} val_loss:{val_loss:.4f} train_time:{train_time_ms:.0f}ms "
            f"step_avg:{train_time_ms / (timed_steps - 1):.2f}ms")


def train_line(step: int, num_iterations: int, train_loss: float, approx_time_ms: float, timed_steps: float) -> str:
    return (f"step:{step}/{num_iterations} train_loss:{train_loss:.4f} train_time:{approx_time_ms:.0f}ms "
            f"step_avg:{approx_time_ms / timed_steps:.2f}ms")


class RunLog:
    """Append-only text log; opened in append mode so a resumed run continues the same file."""

    def __init__(self, path: Path, head: str | None):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not path.exists()
        self._f = open(path, "a", buffering=1)
        if fresh and head is not None:
            self._f.write(head)
        elif not fresh:
            self._f.write(f"resumed: pid {os.getpid()}\n")

    def line(self, text: str) -> None:
        self._f.write(redact(text) + "\n")  # reasons and paths may carry user text, like the header

    def close(self) -> None:
        self._f.close()


def _cell(value: Any) -> Any:
    """Numbers stay numbers (unquoted); text is one line (a row is a line: the exactly-once check and
    line-based tools rely on it), formula-safe (trainer.csvsafe) and, written with QUOTE_NONNUMERIC,
    always quoted."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    return safe_cell(" ".join(str(value).splitlines()))


def row_text(row: dict[str, Any]) -> str:
    buf = io.StringIO()
    csv.writer(buf, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n").writerow(
        [_cell(row.get(k, "")) for k in RESULTS_COLUMNS])
    return redact(buf.getvalue())  # notes are user text


def results_file_problem(path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None, *,
                         located: bool = False) -> str | None:
    """Why `path` (relative to `root`, default the working directory) is not a results table this
    project owns, or None. Being inside the project is not enough (`results_csv: .venv/bin/activate`
    appended a row that a shell then ran): a results file is a `.csv` that is not hidden, not executable,
    a regular file holding our header when it exists (the link's target too, for a symlink), and -
    `located` (a path the project confines) - under root's experiments/ or runs/."""
    root = root or os.getcwd()
    p = Path(path)
    full = Path(os.path.abspath(Path(root, p)))
    real = Path(os.path.realpath(full))
    for name in dict.fromkeys((full.name, real.name)):  # a symlink's target too
        if not name.lower().endswith(".csv"):
            return "is not a .csv file" + (f" (a link to {real})" if name == real.name != full.name else "")
        if name.startswith("."):
            return "is a hidden file"
    if located:
        parts = _below(full, Path(os.path.abspath(root))) or _below(real, Path(os.path.realpath(root)))
        if parts is None or len(parts) < 2 or parts[0] not in RESULTS_DIRS:
            return "is not under the project's experiments/ or runs/"
    try:
        st = os.stat(real)
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    return _file_problem(real, st)


def _below(path: Path, root: Path) -> tuple[str, ...] | None:
    return path.relative_to(root).parts if path.is_relative_to(root) else None


def _file_problem(path: Path, st: os.stat_result) -> str | None:
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if st.st_mode & 0o111:
        return "is an executable file, not a results table"
    if st.st_size:
        with open(path, "rb") as f:
            first = f.read(len(RESULTS_HEADER) + 2).split(b"\n", 1)[0].rstrip(b"\r")
        if first != RESULTS_HEADER.encode():
            return "holds a file that is not a gatesweep results table (its first line is not our header)"
    return None


RESULTS_FIX = "point results_csv at a .csv file under experiments/ or runs/ (e.g. experiments/results.csv)"


def has_row(text: str, run_id: str) -> bool:
    """True if the CSV text holds a row of `run_id` (its run_id column, wherever the header puts it)."""
    rows = csv.reader(io.StringIO(text))
    header = next(rows, [])
    col = header.index("run_id") if "run_id" in header else 0
    try:
        return any(len(r) > col and r[col] == run_id for r in rows)
    except csv.Error:  # a damaged file: appending is the safer error
        return False


def append_result(path: str | os.PathLike[str], row: dict[str, Any]) -> bool:
    """Append the run's row exactly once: under an exclusive lock (concurrent runs never interleave),
    and only if no row of its run_id is there yet, so a run restarted after a kill between the append
    and its FINISHED status adds no second row, while one killed before the append writes it on
    restart. A last line without its newline (a hand edit, a full disk) is ended first, so the row
    never merges into it. Returns False if the row was already there."""
    p = Path(path)
    problem = results_file_problem(p)
    if problem:
        raise ConfigError(f"results_csv={str(path)[:300]} {problem}; {RESULTS_FIX}")
    p.parent.mkdir(parents=True, exist_ok=True)
    line = row_text(row)
    with open(p, "a+", newline="", encoding="utf-8", errors="replace") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            # checked again on the open file: it may have been replaced since
            problem = _file_problem(p, os.fstat(f.fileno()))
            if problem:
                raise ConfigError(f"results_csv={str(path)[:300]} {problem}; {RESULTS_FIX}")
            f.seek(0)
            text = f.read()
            if has_row(text, str(row["run_id"])):
                return False
            head = RESULTS_HEADER + "\n" if not text else ("" if text.endswith("\n") else "\n")
            f.write(head + line)
            f.flush()
            os.fsync(f.fileno())
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
    return True
