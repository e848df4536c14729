"""The edge checks of `gatesweep import`: what a results CSV, curve CSV or log may bring into MLflow.

Everything here raises `DataError` naming the file, the line, the column and the fix, before anything
is written. Config columns are checked with the trainer's own rules (`trainer.config`: types, choices
such as attn_gate in none|headwise|elementwise|const, integer bounds, cross-field checks), so an
imported run holds only values a trainer run could have logged. Losses and times must be finite and
>= 0: MLflow stores inf as 1.8e308 and a NaN summary makes a FINISHED run drop out of every table.
Free text (notes, gpu_name, unknown columns) is kept as it is, bounded in length; the CSVs the
toolkit writes neutralise spreadsheet formulas (`trainer.csvsafe.safe_cell`, used by `analysis.render.to_csv`
and the results.csv rows).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from trainer.config import FIELD_SECTION, RUN_ID_RE, TrainConfig
from trainer.config import coerce as trainer_coerce
from trainer.errors import ConfigError, DataError

# MLflow keeps a param value up to 6000 characters and a tag value up to 8000; the trainer cuts its
# own tags at 5000. One bound for every imported field keeps a row from failing half-way in MLflow.
MAX_FIELD_CHARS = 5000
# A column becomes a param key: MLflow's key rule (letters, digits, _ - . / : space, <= 250) narrowed
# to a plain identifier so that no header can start a formula or need quoting.
_COLUMN_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,249}$")
# Stage names are MLflow filter values (analysis.fetch.tag_filter) and table cells.
_STAGE_RE = re.compile(r"^[A-Za-z0-9_][\w.:/+\- ]{0,127}$")


def read_utf8(path: Path) -> str:
    """The file's text: UTF-8, a leading byte-order mark dropped (Excel writes one); anything else is
    refused with the line and byte that do not decode."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
                        "save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8 in > out)") from None


def check_columns(header: list[str], source: str) -> None:
    for col in header:
        if not _COLUMN_RE.fullmatch(col):
            raise DataError(f"{source}:1: column name {_cut(col)!r} is not a plain name (letters, digits, "
                            "_ . -, starting with a letter or _, at most 250); rename the column")


def check_field(value: str, column: str, source: str, line: int) -> None:
    if len(value) > MAX_FIELD_CHARS:
        raise DataError(f"{source}:{line}: column {column} holds {len(value):,} characters (at most "
                        f"{MAX_FIELD_CHARS:,}); shorten the field or drop the column")


def check_run_id(run_id: str, source: str, line: int) -> None:
    """A run id names its log file (<logs>/<run_id>.txt): a plain name, as the trainer's run_id."""
    if not RUN_ID_RE.fullmatch(run_id):
        raise DataError(f"{source}:{line}: run_id {_cut(run_id)!r} is not a plain name (letters, digits, "
                        "'_', '.', '-'; at most 128; it names <run_id>.txt logs); fix the id")


def check_stage(stage: str, where: str) -> None:
    if not _STAGE_RE.fullmatch(stage):
        raise DataError(f"{where}: stage {_cut(stage)!r} is not a plain name (letters, digits and _ . : / + - "
                        "space, starting with a letter, digit or _; at most 128); rename the stage")


def check_measure(name: str, value: object, raw: str | None, source: str, line: int) -> float:
    """A loss or a time: a finite number >= 0."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise DataError(f"{source}:{line}: {name}={_cut(raw)!r} is not a number")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise DataError(f"{source}:{line}: {name}={_cut(raw)!r} must be a finite number >= 0 (MLflow would "
                        "store inf as 1.8e308 and nan hides the run from every table); fix or remove the row")
    return number


def check_config(params: dict[str, object], source: str, line: int) -> dict[str, object]:
    """`params` with the trainer's config keys checked by the trainer's own rules and converted to its
    types (1500.0 -> 1500); every other column is free text and kept as it is."""
    known = {k: v for k, v in params.items() if k in FIELD_SECTION}
    where = f"{source}:{line}"
    try:
        checked = {k: trainer_coerce(FIELD_SECTION[k], k, v, source=where) for k, v in known.items()}
        TrainConfig().override(checked, source=where)  # the cross-field rules (lr > 0, batch arithmetic)
    except ConfigError as e:
        raise DataError(f"{e} (column of the trainer config; fix the value or drop the column)") from None
    return {**params, **checked}


def _cut(text: str | None, limit: int = 60) -> str | None:
    return text if text is None or len(text) <= limit else text[:limit] + "..."
