"""Live sweep progress (done / running / failed, ETA): rich on a terminal, plain lines otherwise."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from cluster.common.trialdir import local_status
from trainer.console import quiet


def _tail(run_dir: Path) -> list[bytes]:
    try:
        with open(run_dir / "track" / "metrics.jsonl", "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 4096))
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def last_step(run_dir: Path) -> int | None:
    """The newest step in a trial's metrics record (reads only the file's tail)."""
    for line in reversed(_tail(run_dir)):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError):
            continue
    return None


def last_train_point(run_dir: Path) -> tuple[float, int] | None:
    """(unix time, step) of the newest train_loss point (the file's tail only): a trial's pace."""
    for line in reversed(_tail(run_dir)):
        try:
            p = json.loads(line)
            if p["key"] == "train_loss":
                return p["ts"] / 1000, int(p["step"])
        except (ValueError, KeyError):
            continue
    return None


def eta_seconds(durations: list[float], remaining: int, running_elapsed: list[float], parallel: int) -> float | None:
    """Mean finished-trial duration x trials still to start / parallelism + what running ones have left."""
    if not durations:
        return None
    mean = sum(durations) / len(durations)
    left_running = max([max(mean - e, 0.0) for e in running_elapsed], default=0.0)
    return left_running + mean * remaining / max(parallel, 1)


def outcome_line(title: str, results: dict[str, str], bad: list[tuple[str, str, str]], *, skipped: int = 0,
                 limit: int = 3) -> str:
    """A sweep's last line: how many finished and, for the trials that did not, which, how they ended and
    why - `bad` holds (trial, status, reason) - the first `limit` of them, then a count."""
    told = [f"{status} {trial}: {reason[:300] or 'no reason recorded'}" for trial, status, reason in bad[:limit]]
    more = f"; {len(bad) - limit} more: gatesweep status shows them" if len(bad) > limit else ""
    return (f"sweep {title}: {len(results) - len(bad) - skipped} finished, {len(bad)} not "
            f"({'; '.join(told) + more if told else '-'})")


def failures(states: list[Any], bad: dict[str, str]) -> list[tuple[str, str, str]]:
    """(trial, status, reason) of the trials in `bad` ({trial_id: status}), the reason from their records."""
    out = []
    for s in sorted((s for s in states if s.trial.trial_id in bad), key=lambda s: s.trial.index):
        t = s.trial
        out.append((f"{t.trial_id} ({t.label or '-'} seed={t.seed})", bad[t.trial_id], local_status(s.run_dir)[1]))
    return out


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
    def __init__(self, title: str, total: int, *, parallel: int, stream: Any = None):
        self.title, self.total, self.parallel = title, total, parallel
        self.stream = stream or sys.stderr
        self.done = self.failed = self.killed = 0
        self.durations: list[float] = []
        self.running: dict[str, tuple[float, Path, int]] = {}  # label -> (start, run_dir, num_iterations)
        self._last_plain = ""
        self._live: Any = None
        self.silent = quiet()  # -q: the command's result lines only
        if not self.silent and getattr(self.stream, "isatty", lambda: False)():
            try:
                from rich.live import Live

                self._live = Live(self._render(), refresh_per_second=2, transient=False)
            except ImportError:
                self._live = None

    def __enter__(self) -> Progress:
        if self._live is not None:
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.__exit__(None, None, None)
        else:
            self._plain(force=True)

    def started(self, label: str, run_dir: Path, num_iterations: int) -> None:
        key, i = label, 2
        while key in self.running:  # trials may share a label (seeds): each one counts
            key, i = f"{label} #{i}", i + 1
        self.running[key] = (time.monotonic(), run_dir, num_iterations)
        self.refresh()

    def ended(self, label: str, status: str) -> None:
        key = next((k for k in self.running if k == label or k.startswith(f"{label} #")), label)
        start = self.running.pop(key, (time.monotonic(), None, 0))[0]
        if status in ("FINISHED", "EARLY_STOPPED"):
            self.done += 1
            self.durations.append(time.monotonic() - start)
        elif status == "KILLED":
            self.killed += 1
        else:
            self.failed += 1
        self.refresh()

    def summary(self) -> str:
        queued = self.total - self.done - self.failed - self.killed - len(self.running)
        now = time.monotonic()
        eta = eta_seconds(self.durations, queued, [now - s for s, _, _ in self.running.values()], self.parallel)
        return (f"[{self.title}] done {self.done}/{self.total}  running {len(self.running)}  "
                f"failed {self.failed}  killed {self.killed}  queued {queued}  ETA {fmt_duration(eta)}")

    def _render(self) -> Any:
        from rich.table import Table

        table = Table(title=self.summary(), show_edge=False)
        table.add_column("running trial")
        table.add_column("step", justify="right")
        for label, (_, run_dir, n) in self.running.items():
            step = last_step(run_dir)
            table.add_row(label, f"{step if step is not None else '-'}/{n}")
        return table

    def _plain(self, force: bool = False) -> None:
        line = self.summary()
        if self.silent:
            return
        if force or line != self._last_plain:
            print(line, file=self.stream, flush=True)
            self._last_plain = line

    def refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._render())
        else:
            self._plain()

    def tick(self) -> None:
        """Periodic redraw: only the live view moves; plain output prints on events alone."""
        if self._live is not None:
            self._live.update(self._render())
