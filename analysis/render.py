"""Render tables as Markdown, CSV or a console table. Pure: every function returns a string.

`display_table` turns the numeric stage table into strings (loss 4 dp, train time "10m 9.1s", signed
deltas, "[lo, hi]" intervals, n marked "2†" below 3 seeds); the CSV of the full table keeps
full-precision numbers instead, for machines. `reading_note` is the paragraph on how to read them.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import textwrap
from collections.abc import Sequence

import pandas as pd

from analysis import fmt
from analysis.seq_table import SEQUENTIAL_VERDICTS, has_sequential
from analysis.stats import MIN_SEEDS
from analysis.table import NOT_KEYS
from sweeps.text_table import text_table
from trainer.csvsafe import safe_cell

LOW_N_MARK = "†"
SHARED_MARK = "‡"  # the row's runs shared a GPU with other trials: not speed figures
DISPLAY_HEADERS = {
    "n": "n", "failed": "failed", "early_stopped": "early stopped",
    "final_val_loss": "final val loss", "std": "std", "ci95": "ci95",
    "train_time": "train time", "ms_per_step": "ms/step", "delta": "Δ loss", "delta_ci": "Δ 95% CI",
    "delta_pct": "Δ %", "p_value": "p", "p_adj": "p adj", "test": "test",
    "loss_at_base_time": "loss @ base time ≈", "delta_time": "Δ time ≈", "delta_time_ci": "Δ time 95% CI",
    "p_time_adj": "p time adj", "n_pairs": "n pairs",
    # a spec with sequential seeds (analysis.seq_table): the design's verdict first, fixed-n numbers labelled
    "seq_verdict": "verdict (sequential seeds)", "delta_rci": "Δ RCI (sequential)",
    "delta_ci_fixed": "Δ 95% CI (fixed-n)", "p_adj_fixed": "p adj (fixed-n, not the design's)",
    "p_time_adj_fixed": "p time adj (fixed-n)",
}
ADJUST_NAMES = {"holm": "Holm", "bh": "Benjamini-Hochberg", "none": "no"}


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """Stage table (numbers) -> strings for people; drops best_val_loss and raw train_time_ms.
    The time-matched columns appear only when some row has them; `n pairs` only where rows ran
    different seeds (a paired Δ is then over fewer seeds than a row's n). A table with the rows of a
    sequential design shows the design's verdict and repeated CI before the fixed-n Δ CI and p adj,
    whose headers say they are fixed-n (analysis.seq_table)."""
    keys = [c for c in table.columns if c not in NOT_KEYS]
    out = pd.DataFrame({k: [fmt.format_value(v) for v in table[k]] for k in keys}, dtype=object)
    out["n"] = [f"{n}{LOW_N_MARK if n < MIN_SEEDS else ''}" for n in table["n"].astype(int)]
    if shows_pairs(table):
        out["n_pairs"] = [_pairs_cell(int(k)) for k in table["n_pairs"]]
    for col in ("failed", "early_stopped"):
        out[col] = [str(v) for v in table[col].astype(int).tolist()]
    out["final_val_loss"] = [fmt.format_loss(v) for v in table["final_val_loss"]]
    out["std"] = [fmt.format_spread(v) for v in table["std"]]
    out["ci95"] = [fmt.format_spread(v) for v in table["ci95"]]
    shared = [SHARED_MARK if bool(x) else "" for x in table["gpu_shared"]]
    out["train_time"] = [fmt.format_train_time(v) + m for v, m in zip(table["train_time_ms"], shared, strict=True)]
    out["ms_per_step"] = [_blank_nan(v, ".2f") + (m if v == v else "")
                          for v, m in zip(table["ms_per_step"], shared, strict=True)]
    sequential = has_sequential(table)
    if sequential:
        out["seq_verdict"] = [_verdict_cell(v, s) for v, s in zip(table["seq_verdict"], table["seq_stop"], strict=True)]
    out["delta"] = [fmt.format_signed(v, 4) for v in table["delta"]]
    if sequential:
        out["delta_rci"] = _intervals(table, "rci_low", "rci_high")
    out["delta_ci_fixed" if sequential else "delta_ci"] = _intervals(table, "delta_ci_low", "delta_ci_high")
    out["delta_pct"] = [fmt.format_signed(v, 2, "%") for v in table["delta_pct"]]
    out["p_value"] = [fmt.format_p(v) for v in table["p_value"]]
    out["p_adj_fixed" if sequential else "p_adj"] = [fmt.format_p(v) for v in table["p_adj"]]
    out["test"] = list(table["test"])
    if has_time_matched(table):
        out["loss_at_base_time"] = [_blank_nan(v, ".4f") for v in table["loss_at_base_time"]]
        out["delta_time"] = [fmt.format_signed(v, 4) for v in table["delta_time"]]
        out["delta_time_ci"] = _intervals(table, "delta_time_ci_low", "delta_time_ci_high")
        # the design decides on the final loss only: its time-matched tests are fixed-n, like p adj
        out["p_time_adj_fixed" if sequential else "p_time_adj"] = [fmt.format_p(v) for v in table["p_time_adj"]]
    return out


def has_time_matched(table: pd.DataFrame) -> bool:
    return bool(table["loss_at_base_time"].notna().any() or (table["time_note"] != "").any())


def shows_pairs(table: pd.DataFrame) -> bool:
    """`n pairs` is worth a column: rows of different n, or a paired row on fewer seeds than it ran."""
    pairs, n = table["n_pairs"].tolist(), table["n"].tolist()
    return len(set(n)) > 1 or any(0 < k != m for k, m in zip(pairs, n, strict=True))


def _pairs_cell(k: int) -> str:
    return "" if k == 0 else f"{k}{LOW_N_MARK if k < MIN_SEEDS else ''}"


def _verdict_cell(verdict: str, stop: str) -> str:
    """"better, decided at look 3 (n=6): p=2.97e-05 <= 0.00292"; undecided and open rows say it already."""
    return f"{verdict}, {stop}" if verdict in ("better", "worse") else stop


def footer(table: pd.DataFrame) -> str:
    """Lines on runs left out of the statistics and rows without a time-matched Δ; empty when none."""
    lines = []
    failed, early = sum(table["failed"].tolist()), sum(table["early_stopped"].tolist())
    if failed or early:
        lines.append(f"Excluded from the statistics: {failed} failed run(s), {early} early-stopped run(s).")
    if table["gpu_shared"].astype(bool).any():
        lines.append(f"{SHARED_MARK} These runs shared a GPU with other trials (backend.local.trials_per_gpu > 1): "
                     "their train time and ms/step are not speed figures; `--step-times` puts them on step times "
                     "measured one process at a time (bench/run.py --plan study).")
    notes = [n for n in table["time_note"] if n]
    if notes:
        counts = {n: notes.count(n) for n in dict.fromkeys(notes)}
        lines.append("No time-matched Δ for " + "; ".join(f"{k} row(s): {n}" for n, k in counts.items()) + ".")
    return "\n".join(lines)


def reading_note(table: pd.DataFrame, adjust: str = "holm") -> str:
    """The paragraph under every table on how to read Δ, its CI, p, p adj, † and the time columns; for
    the rows of a sequential design, the verdict and its repeated CI instead of p adj."""
    m = sum(1 for p in table["p_value"].tolist() if not math.isnan(p))
    how = ADJUST_NAMES.get(adjust, adjust)
    sequential = table["seq_verdict"].isin(SEQUENTIAL_VERDICTS) if has_sequential(table) else None
    fixed = m if sequential is None else sum(1 for p, s in zip(table["p_value"], sequential, strict=True)
                                             if not s and not math.isnan(p))
    text = (
        "How to read: Δ = mean final val loss of the row minus its `attn_gate=none` baseline (negative = "
        "the row is better), over the seeds both rows ran when at least 2 are common - a paired t-test on "
        "the per-seed differences (n pairs; where the rows ran different numbers of seeds, Δ is not the "
        "difference of their means) - else over all their seeds with Welch's t; Δ 95% CI comes from the "
        f"same test as p. p is the raw two-sided p-value; p adj is {how}-adjusted across the {m} "
        "comparison(s) of this table")
    if fixed:
        rows = "" if sequential is None else " (rows without a sequential verdict)"
        text += f": call a difference real{rows} only when p adj < 0.05, whatever p says."
    else:
        text += "."
    if sequential is not None:
        text += (
            " Rows with a verdict (sequential seeds) were decided by the spec's group-sequential design: read "
            "that verdict - the design's decision, at the look where it was reached - and Δ RCI, a repeated "
            "confidence interval at the look whose data decided (the last look when undecided), "
            "Δₖ ± t(1 - pₖ/2, nₖ - 1)·sₖ/√nₖ with that look's nominal level pₖ: it covers the true Δ with "
            "probability >= 95% wherever the design stopped, and excludes 0 exactly when the design decided. "
            "Their Δ 95% CI, p and p adj are fixed-n numbers over the seeds in hand, shown raw: they ignore "
            "the looks and are not the design's test.")
    if any(bool(v) for v in table["low_n"].tolist()):
        text += (f" {LOW_N_MARK} marks n < {MIN_SEEDS} seeds (or pairs): with 2 a paired test has 1 degree of "
                 "freedom, its CI is wide and its p fragile - add seeds (`gatesweep power` says how many).")
    if has_time_matched(table):
        text += (" Time-matched (≈, an approximation): the row's val loss at the baseline's final train "
                 "time, interpolated linearly on its val-loss-vs-train-time curve (a faster run holds its "
                 "final loss); Δ time, its CI and p time adj are computed as above. Approximate because "
                 "the row's LR schedule was not compressed to end at that time.")
        if sequential is not None:
            text += (" The sequential design decided on the final val loss only: its time-matched tests are "
                     "fixed-n too, over whatever seeds the design ran (p time adj (fixed-n)).")
    return text


def to_markdown(df: pd.DataFrame, headers: dict[str, str] | None = None) -> str:
    """A GitHub Markdown table; columns padded to equal width like the study's README tables."""
    names = [(headers or {}).get(str(c), str(c)) for c in df.columns]
    rows = [[_md_cell(v) for v in row] for row in df.itertuples(index=False)]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(names)]
    lines = [_md_line(names, widths), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += [_md_line(r, widths) for r in rows]
    return "\n".join(lines) + "\n"


def to_csv(df: pd.DataFrame) -> str:
    """CSV text with "\\n" line ends; numbers written as they are, text made formula-safe (`safe_cell`)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    # csv quotes a field holding "\n" but not one holding a lone "\r", which ends the row in a spreadsheet
    quoted = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_NONNUMERIC)
    writer.writerow([safe_cell(str(c)) for c in df.columns])
    for row in df.itertuples(index=False):
        out = [_csv_cell(v) for v in row]
        (quoted if any(isinstance(v, str) and "\r" in v for v in out) else writer).writerow(out)
    return buf.getvalue()


def to_console(df: pd.DataFrame, *, title: str = "", note: str = "", width: int | None = None,
               headers: dict[str, str] | None = None) -> str:
    """A boxed table via rich when installed, else aligned plain text. `width`: the terminal's (default).
    A table wider than that keeps its natural width (no cell is ever cut); the note below wraps at it.
    (`gatesweep table` on a terminal shows analysis.console_table's fitted view; this is its --wide.)"""
    width = width or shutil.get_terminal_size().columns
    names = [(headers or DISPLAY_HEADERS).get(str(c), str(c)) for c in df.columns]
    rows = [[str(v) for v in row] for row in df.itertuples(index=False)]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        return _plain(names, rows, title, note)
    table = Table(title=title or None)
    for h in names:
        table.add_column(h, no_wrap=True)
    for r in rows:
        table.add_row(*r)
    buf = io.StringIO()
    natural = Console(file=io.StringIO(), width=100_000).measure(table).maximum
    Console(file=buf, width=max(width, natural), force_terminal=False, color_system=None).print(table)
    if note:
        paragraphs = [textwrap.fill(p, width) for line in note.splitlines() for p in [line]]
        buf.write("\n".join(paragraphs) + "\n")
    return buf.getvalue()


def to_json(df: pd.DataFrame, *, title: str = "") -> str:
    """{"table": title, "columns": [...], "rows": [{column: value}]}: numbers as numbers, NaN as null."""
    rows = [{str(k): _json_value(v) for k, v in zip(df.columns, row, strict=True)} for row in df.itertuples(index=False)]
    return json.dumps({"table": title, "columns": [str(c) for c in df.columns], "rows": rows}, indent=1) + "\n"


def _json_value(v: object) -> object:
    if hasattr(v, "item"):  # numpy scalars
        v = v.item()  # type: ignore[union-attr]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v if isinstance(v, (str, int, float, bool)) or v is None else str(v)


def _plain(headers: Sequence[str], rows: Sequence[Sequence[str]], title: str, note: str) -> str:
    return text_table(headers, rows, title=title) + (f"\n{note}" if note else "") + "\n"


def _md_line(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"


def _md_cell(v: object) -> str:
    return str(v).replace("|", "\\|")


def _csv_cell(v: object) -> object:
    if isinstance(v, float) and math.isnan(v):
        return ""
    return safe_cell(v) if isinstance(v, str) else v


def _intervals(table: pd.DataFrame, low: str, high: str) -> list[str]:
    return ["" if math.isnan(lo) or math.isnan(hi) else f"[{lo:+.4f}, {hi:+.4f}]"
            for lo, hi in zip(table[low], table[high], strict=True)]


def _blank_nan(v: float, spec: str) -> str:
    return "" if v is None or math.isnan(v) else format(v, spec)
