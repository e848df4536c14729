"""Display formatting in the study's style: train time as "10m 9.1s", losses to 4 decimals.

The study (ESE 3060 gated-attention project, notebooks/final_figures.ipynb) formatted a mean train
time as ``f"{int(ms // 60000)}m {(ms % 60000) / 1000:.1f}s"``. `format_train_time` reproduces that
digit for digit for 1 min <= t < 60 min, and decides the cases the study never hit:

- under a minute: ``"45.2s"`` (the study would print ``"0m 45.2s"``);
- an hour or more: ``"1h 2m 3.4s"`` (the study would print ``"62m 3.4s"``);
- seconds that round up to 60.0 carry into the minute: ``"10m 0.0s"``, never ``"9m 60.0s"``.

Rounding is Python's ``format(x, ".1f")`` on the binary value (round-half-even on exact ties), the
same call the study made, so published strings are reproduced exactly.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from trainer.errors import DataError

_MS_PER_MIN = 60_000
_TIME_RE = re.compile(r"^\s*(?:(\d+)h\s*)?(?:(\d+)m\s*)?(\d+(?:\.\d*)?)s\s*$")
MISSING = "NA"


def format_train_time(ms: float) -> str:
    """Milliseconds -> "10m 9.1s" (see the module docstring for sub-minute and hour cases)."""
    if ms is None or math.isnan(ms):
        return MISSING
    if ms < 0:
        raise DataError(f"train time {ms} ms is negative; train_time_ms must be >= 0")
    minutes = int(ms // _MS_PER_MIN)
    seconds = format((ms % _MS_PER_MIN) / 1000.0, ".1f")
    if seconds == "60.0":  # e.g. 59.96 s rounds up: carry instead of printing "60.0s"
        minutes, seconds = minutes + 1, "0.0"
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h {minutes}m {seconds}s"
    if minutes:
        return f"{minutes}m {seconds}s"
    return f"{seconds}s"


def parse_train_time(text: str) -> float:
    """Inverse of `format_train_time`: "1h 2m 3.4s" / "10m 9.1s" / "0m 45.2s" / "45.2s" -> ms.

    Also accepts the study's own over-an-hour form "62m 3.4s". The result is exact only to the
    0.1 s the string carries.
    """
    match = _TIME_RE.match(text)
    if not match:
        raise DataError(f"train time {text!r} is not like '10m 9.1s', '45.2s' or '1h 2m 3.4s'")
    hours, minutes, seconds = match.groups()
    total_s = int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds)
    return round(total_s * 1000.0, 6)


def format_loss(value: float) -> str:
    """A loss to 4 decimals ("3.8640"), as in the study's tables."""
    if value is None or math.isnan(value):
        return MISSING
    return format(value, ".4f")


def format_signed(value: float, decimals: int = 4, suffix: str = "") -> str:
    """A difference with an explicit sign ("+0.0021", "-0.49%"); a nonzero one too small for `decimals`
    in scientific notation ("+3.1e-05", never "+0.0000")."""
    if value is None or math.isnan(value):
        return ""
    text = f"{value:+.{decimals}f}"
    return f"{text if value == 0 or text.strip('+-0.') else f'{value:+.2g}'}{suffix}"


def format_spread(value: float, decimals: int = 4) -> str:
    """A std or CI half-width: `decimals` places, below 1e-3 in scientific notation ("4.2e-04", not
    "0.0004" or "0.0000"), exactly 0 as "0"; empty where undefined."""
    if value is None or math.isnan(value):
        return ""
    if value == 0:
        return "0"
    return format(value, ".1e" if abs(value) < 1e-3 else f".{decimals}f")


def format_p(value: float) -> str:
    """A p-value to 3 significant digits ("0.0123", "4.56e-05"); empty where undefined."""
    if value is None or math.isnan(value):
        return ""
    return format(value, ".3g")


def format_ordered(values: Sequence[float], digits: int = 3) -> list[str]:
    """Numbers that are compared in one sentence ("p=0.00291 <= 0.00292"), printed with one number of
    significant digits: the fewest, at least `digits`, at which values that differ print differently.
    Rounding to k significant digits is monotone, so the printed numbers then order exactly as the
    values do - "0.00291 <= 0.0029" (a level of 0.0029206 at 2 digits) cannot happen. Equal values print
    equal; NaN prints as "". 17 digits always suffice (Python's round-trip precision)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    k = digits
    while k < 17 and len({float(format(v, f".{k}g")) for v in finite}) < len(set(finite)):
        k += 1
    return [format(float(v), f".{k}g") if v is not None and math.isfinite(v) else "" for v in values]


def format_value(value: object) -> str:
    """A config value as the study's CSVs print it: 512, 0.00468, elementwise; NA when missing.

    Integral floats print without ".0" because MLflow params and pandas NaN-holes can turn an int
    column into floats; other floats use Python's shortest round-trip repr (pandas' to_csv does too).
    """
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return MISSING
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)
