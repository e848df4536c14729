"""The stage table on a terminal: the columns a reader needs first, then as many more as fit the width.

First come the configuration (its key columns), n, the mean with its 95% CI, Δ with its CI and p adj -
or, for a sequential design, the design's verdict and Δ with its repeated CI. Those are always shown:
cells that are text (the configuration, a verdict, an interval) wrap inside their column when the
terminal is narrow, and the key columns merge into one when even that is too wide. Every other column
follows in order of use while the table still fits without wrapping; a line under the table names the
ones left out. `gatesweep table --wide` shows every column at its natural width, `--columns` the ones
named. Markdown and CSV (a pipe, --format md|csv) are not this module's: they keep every column.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from analysis.render import DISPLAY_HEADERS
from analysis.seq_table import has_sequential
from analysis.table import NOT_KEYS
from sweeps.errors import SpecError
from trainer.config import did_you_mean

# the cells the compact view makes of two display columns each
COMBINED = {"mean_ci": "mean ± 95% CI", "delta_and_ci": "Δ loss [95% CI]", "delta_and_rci": "Δ loss [RCI]"}
HEADERS = DISPLAY_HEADERS | COMBINED | {"config": "config"}
# what the first columns already say (the combined cells' parts)
COVERED = ("final_val_loss", "ci95", "delta", "delta_ci", "delta_rci")
# the rest, most useful first
MORE = ("n_pairs", "p_value", "test", "delta_ci_fixed", "p_adj_fixed", "std", "delta_pct", "train_time",
        "ms_per_step", "loss_at_base_time", "delta_time", "delta_time_ci", "p_time_adj", "p_time_adj_fixed",
        "failed", "early_stopped")
WRAPS = ("config", "seq_verdict", "mean_ci", "delta_and_ci", "delta_and_rci")  # text that may take two lines
BORDER, PAD = 1, 3  # rich's box: one rule at the left, then per column 1 + cell + 1 and a rule


@dataclass(frozen=True)
class Fitted:
    frame: pd.DataFrame  # the columns to show, in order, named as in HEADERS
    left_out: list[str]  # display columns not shown, in order of use


def keys_of(display: pd.DataFrame) -> list[str]:
    return [c for c in display.columns if c not in NOT_KEYS and c not in HEADERS]


def with_combined(display: pd.DataFrame) -> pd.DataFrame:
    """The display table plus the compact view's cells: `3.5159 ± 0.0078`, `-0.0175 [-0.0225, -0.0124]`."""
    out = display.copy()
    out["mean_ci"] = [f"{m} ± {c}" if c else m for m, c in zip(display["final_val_loss"], display["ci95"], strict=True)]
    fixed = "delta_ci" if "delta_ci" in display.columns else "delta_ci_fixed"
    out["delta_and_ci"] = _joined(display, "delta", fixed)
    if "delta_rci" in display.columns:
        out["delta_and_rci"] = _joined(display, "delta", "delta_rci")
    return out


def _joined(display: pd.DataFrame, delta: str, interval: str) -> list[str]:
    if interval not in display.columns:
        return [str(v) for v in display[delta]]
    return [f"{d} {i}".strip() for d, i in zip(display[delta], display[interval], strict=True)]


def first_columns(numeric: pd.DataFrame, display: pd.DataFrame) -> list[str]:
    keys = keys_of(display)
    if has_sequential(numeric):
        return [*keys, "n", "mean_ci", "seq_verdict", "delta_and_rci"]
    return [*keys, "n", "mean_ci", "delta_and_ci", "p_adj"]


def fit(numeric: pd.DataFrame, display: pd.DataFrame, width: int) -> Fitted:
    """The columns that fit `width` (see the module's docstring)."""
    full = with_combined(display)
    first = first_columns(numeric, display)
    frame = pd.DataFrame(full[first])
    if _min_width(frame) > width and len(keys_of(display)) > 1:  # one config column wraps where keys cannot
        keys = keys_of(display)
        config = [" ".join(str(v) for v in row) for row in full[keys].itertuples(index=False)]
        frame = pd.concat([pd.DataFrame({"config": config}, index=full.index), full[first[len(keys):]]], axis=1)
    known = [c for c in MORE if c in full.columns]
    others = [c for c in display.columns if c not in known and c not in COVERED and c not in first
              and c not in keys_of(display)]  # a column added to the display table later is never lost
    more = [c for c in known + others if c not in frame.columns]
    extra: list[str] = []
    for col in more:  # in order of use, while the whole table fits on one line per row
        if _natural_width(pd.concat([frame, full[[*extra, col]]], axis=1)) <= width:
            extra.append(col)
    return Fitted(pd.concat([frame, full[extra]], axis=1), [c for c in more if c not in extra])


def render(fitted: Fitted, *, title: str, note: str, width: int) -> str:
    """The fitted table boxed by rich at `width` (text cells wrap), then the left-out line and the note."""
    import io
    import textwrap

    from rich.console import Console
    from rich.table import Table

    frame = fitted.frame
    table = Table(title=title or None)
    for col in frame.columns:
        table.add_column(HEADERS.get(str(col), str(col)), no_wrap=col not in WRAPS, overflow="fold")
    for row in frame.itertuples(index=False):
        table.add_row(*(str(v) for v in row))
    buf = io.StringIO()
    Console(file=buf, width=width, force_terminal=False, color_system=None).print(table)
    text = "\n\n".join(t for t in (left_out_line(fitted.left_out), note) if t)
    if text:
        buf.write("\n".join(textwrap.fill(line, width) if line else "" for line in text.splitlines()) + "\n")
    return buf.getvalue()


def pick(numeric: pd.DataFrame, display: pd.DataFrame, names: Sequence[str], *, csv: bool) -> pd.DataFrame:
    """`--columns a,b,c` of the statistics table: CSV picks from the numeric columns, the others from the
    displayed ones (and the compact view's combined cells); an unknown name is an error naming the valid ones."""
    source = numeric if csv else with_combined(display)
    valid = [str(c) for c in source.columns]
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise SpecError(f"--columns: unknown column '{unknown[0]}'{did_you_mean(unknown[0], valid)}; columns of "
                        f"this table{' (CSV)' if csv else ''}: {', '.join(valid)}")
    return pd.DataFrame(source[list(names)])


def left_out_line(left_out: Sequence[str]) -> str:
    """Under a fitted table: what is not shown and how to see it."""
    if not left_out:
        return ""
    names = ", ".join(HEADERS.get(c, c) for c in left_out)
    return (f"{len(left_out)} more column(s) not shown at this width: {names}. `--wide` shows every column, "
            f"`--columns` the ones you name (e.g. --columns {','.join(left_out[:3])}).")


def _natural_width(frame: pd.DataFrame) -> int:
    return BORDER + sum(PAD + _width(frame, c, wrap=False) for c in frame.columns)


def _min_width(frame: pd.DataFrame) -> int:
    return BORDER + sum(PAD + _width(frame, c, wrap=c in WRAPS) for c in frame.columns)


def _width(frame: pd.DataFrame, col: str, *, wrap: bool) -> int:
    """A column's width on one line each, or, where it may wrap, its longest word (header included)."""
    texts = [HEADERS.get(col, col), *(str(v) for v in frame[col])]
    if wrap:
        return max(len(w) for t in texts for w in (t.split() or [""]))
    return max(len(t) for t in texts)
