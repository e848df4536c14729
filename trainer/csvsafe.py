"""The one rule for text written into a CSV file a person may open in a spreadsheet: OWASP's CSV-injection
guidance (https://owasp.org/www-community/attacks/CSV_Injection). A cell that starts with = + - @ tab or CR
is run by a spreadsheet as a formula (`=HYPERLINK(...)`, `+cmd|...`), so it gets a leading ' and is shown
as text. Used by the trainer's results.csv rows (trainer.runlog) and every CSV the analysis exports
(analysis.render.to_csv)."""

from __future__ import annotations

import re

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?%?")


def safe_cell(text: str) -> str:
    """`text` with a leading ' when a spreadsheet would evaluate it; a plain number such as -0.0123 stays
    a number."""
    if text.startswith(FORMULA_START) and not _PLAIN_NUMBER.fullmatch(text):
        return "'" + text
    return text
