"""The Markdown text of `reports/<stage>/README.md`. Pure: strings in, a string out."""

from __future__ import annotations

from collections.abc import Sequence

ROW_ORDER_NOTE = (
    "Rows: stage blocks in the order requested; inside a block, configurations sorted by their "
    "key columns (text alphabetically, numbers ascending), as the study's tables are."
)
STATS_NOTE = (
    "Statistics over FINISHED runs only: mean and sample std (ddof=1) of the final val loss, ci95 = "
    "Student-t 95% half-width; Δ vs the `attn_gate=none` row with the same learning rate / iterations; "
    "Δ, p and the Δ 95% CI from a paired t-test on the seeds both rows ran when at least 2 are common "
    "(n pairs), Welch's t-test otherwise. For a spec with sequential seeds, the rows the design compared "
    "are decided by the design (its verdict and repeated CI; analysis/seq_table.py), not by p adj."
)


def render_report(
    title: str,
    *,
    source: str,
    table_md: str,
    compat_md: str,
    figures: Sequence[tuple[str, str]],
    files: Sequence[str],
    footer: str = "",
    reading_note: str = "",
) -> str:
    """`figures`: (caption, file name relative to the report); `files`: the table files beside it."""
    parts = [f"# {title}", "", source, "", "## Results", "", table_md.rstrip()]
    if footer:
        parts += ["", footer]
    if reading_note:
        parts += ["", reading_note]
    parts += ["", STATS_NOTE, "", ROW_ORDER_NOTE, "", "## Study-format table", "", compat_md.rstrip()]
    if figures:
        parts += ["", "## Figures"]
        for caption, name in figures:
            parts += ["", f"### {caption}", "", f"![{caption}]({name})"]
    if files:
        parts += ["", "## Files", ""] + [f"- [{f}]({f})" for f in files]
    return "\n".join(parts) + "\n"
