"""analysis.fmt: the study's train-time strings and 4-decimal losses."""

import math

import pytest

from analysis.fmt import (
    format_loss,
    format_p,
    format_signed,
    format_train_time,
    format_value,
    parse_train_time,
)
from trainer.errors import DataError


@pytest.mark.parametrize("ms, text", [
    (609112.3, "10m 9.1s"),  # the study's stage-1 const row
    (1570925.697, "26m 10.9s"),
    (592899.88, "9m 52.9s"),
    (45_200.0, "45.2s"),
    (0.0, "0.0s"),
    (3_723_400.0, "1h 2m 3.4s"),
    (3_600_000.0, "1h 0m 0.0s"),
    (599_960.0, "10m 0.0s"),  # 9m 59.96s rounds up: carried, never "9m 60.0s"
    (59_960.0, "1m 0.0s"),
])
def test_format_train_time(ms, text):
    assert format_train_time(ms) == text


def test_format_train_time_matches_the_study_formula_between_1_and_60_minutes():
    # the study: f"{int(ms // 60000)}m {(ms % 60000) / 1000:.1f}s"
    for ms in [60_000.0, 61_234.5, 593_163.2289886475, 1_476_879.0, 3_599_940.0, 314_542.78004169464]:
        assert format_train_time(ms) == f"{int(ms // 60000)}m {(ms % 60000) / 1000:.1f}s"


def test_format_train_time_missing_and_negative():
    assert format_train_time(float("nan")) == "NA"
    with pytest.raises(DataError, match="negative"):
        format_train_time(-1.0)


@pytest.mark.parametrize("text, ms", [
    ("10m 9.1s", 609_100.0), ("45.2s", 45_200.0), ("0m 45.2s", 45_200.0),
    ("1h 2m 3.4s", 3_723_400.0), ("62m 3.4s", 3_723_400.0), ("26m 10.9s", 1_570_900.0),
])
def test_parse_train_time(text, ms):
    assert parse_train_time(text) == pytest.approx(ms)


@pytest.mark.parametrize("ms", [609_100.0, 45_200.0, 3_723_400.0, 100.0, 7_200_000.0])
def test_parse_inverts_format(ms):
    assert parse_train_time(format_train_time(ms)) == pytest.approx(ms)


@pytest.mark.parametrize("bad", ["10:09.1", "10m", "ten minutes", "1h 2m"])
def test_parse_train_time_rejects_other_styles(bad):
    with pytest.raises(DataError, match="is not like"):
        parse_train_time(bad)


def test_loss_and_numbers():
    assert format_loss(3.8640209436416626) == "3.8640"  # keeps the trailing zero, as published
    assert format_loss(float("nan")) == "NA"
    assert format_signed(-0.01746, 4) == "-0.0175"
    assert format_signed(0.14, 2, "%") == "+0.14%"
    assert format_signed(math.nan) == ""
    assert format_p(0.014523) == "0.0145" and format_p(math.nan) == ""


@pytest.mark.parametrize("value, text", [
    (0.0036, "0.0036"), (0.00468, "0.00468"), (1500, "1500"), (1500.0, "1500"),
    ("elementwise", "elementwise"), (None, "NA"), (float("nan"), "NA"), (True, "True"),
])
def test_format_value_prints_like_the_study_csv(value, text):
    assert format_value(value) == text
