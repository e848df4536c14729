"""Render tables as Markdown, CSV or a console table. Pure: every function returns a string.

`display_table` turns the numeric stage table into strings (loss 4 dp, train time "10m 9.1s", signed
deltas); the CSV of the full table keeps full-precision numbers instead, for machines.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence

import pandas as pd

from analysis import fmt
from analysis.table import STAT_COLUMNS

DISPLAY_HEADERS = {
    "n": "n", "failed": "failed", "early_stopped": "early stopped",
    "final_val_loss": "final val loss", "std": "std", "ci95": "ci95",
    "train_time": "train time", "ms_per_step": "ms/step", "delta": "Δ loss",
    "delta_pct": "Δ %", "p_value": "p", "test": "test",
}


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """Stage table (numbers) -> strings for people; drops best_val_loss and raw train_time_ms."""
    keys = [c for c in table.columns if c not in STAT_COLUMNS]
    out = pd.DataFrame({k: [fmt.format_value(v) for v in table[k]] for k in keys}, dtype=object)
    for col in ("n", "failed", "early_stopped"):
        out[col] = [str(v) for v in table[col].astype(int).tolist()]
    out["final_val_loss"] = [fmt.format_loss(v) for v in table["final_val_loss"]]
    out["std"] = [_blank_nan(v, ".4f") for v in table["std"]]
    out["ci95"] = [_blank_nan(v, ".4f") for v in table["ci95"]]
    out["train_time"] = [fmt.format_train_time(v) for v in table["train_time_ms"]]
    out["ms_per_step"] = [_blank_nan(v, ".2f") for v in table["ms_per_step"]]
    out["delta"] = [fmt.format_signed(v, 4) for v in table["delta"]]
    out["delta_pct"] = [fmt.format_signed(v, 2, "%") for v in table["delta_pct"]]
    out["p_value"] = [fmt.format_p(v) for v in table["p_value"]]
    out["test"] = list(table["test"])
    return out


def footer(table: pd.DataFrame) -> str:
    """One line on runs left out of the statistics; empty when none were."""
    failed, early = sum(table["failed"].tolist()), sum(table["early_stopped"].tolist())
    if not failed and not early:
        return ""
    return f"Excluded from the statistics: {failed} failed run(s), {early} early-stopped run(s)."


def to_markdown(df: pd.DataFrame, headers: dict[str, str] | None = None) -> str:
    """A GitHub Markdown table; columns padded to equal width like the study's README tables."""
    names = [(headers or {}).get(str(c), str(c)) for c in df.columns]
    rows = [[_md_cell(v) for v in row] for row in df.itertuples(index=False)]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(names)]
    lines = [_md_line(names, widths), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += [_md_line(r, widths) for r in rows]
    return "\n".join(lines) + "\n"


def to_csv(df: pd.DataFrame) -> str:
    """CSV text with "\\n" line ends; values written as they are (strings stay verbatim)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(list(df.columns))
    for row in df.itertuples(index=False):
        writer.writerow([_csv_cell(v) for v in row])
    return buf.getvalue()


def to_console(df: pd.DataFrame, *, title: str = "", note: str = "", width: int = 200) -> str:
    """A boxed table via rich when installed, else aligned plain text."""
    headers = [DISPLAY_HEADERS.get(str(c), str(c)) for c in df.columns]
    rows = [[str(v) for v in row] for row in df.itertuples(index=False)]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        return _plain(headers, rows, title, note)
    table = Table(title=title or None, caption=note or None)
    for h in headers:
        table.add_column(h, no_wrap=True)
    for r in rows:
        table.add_row(*r)
    buf = io.StringIO()
    Console(file=buf, width=width, force_terminal=False, color_system=None).print(table)
    return buf.getvalue()


def _plain(headers: Sequence[str], rows: Sequence[Sequence[str]], title: str, note: str) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = [title] if title else []
    lines.append("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    if note:
        lines.append(note)
    return "\n".join(lines) + "\n"


def _md_line(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"


def _md_cell(v: object) -> str:
    return str(v).replace("|", "\\|")


def _csv_cell(v: object) -> object:
    if isinstance(v, float) and math.isnan(v):
        return ""
    return v


def _blank_nan(v: float, spec: str) -> str:
    return "" if v is None or math.isnan(v) else format(v, spec)
