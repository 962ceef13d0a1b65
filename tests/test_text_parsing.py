"""Parsing CSV text into the model's types, against Python's own parsers as the slow reference."""

from __future__ import annotations

import datetime as dt
import math

import pyarrow as pa
from hypothesis import given
from hypothesis import strategies as st

from profiling.schema import TABLES
from profiling.validation import coerce_column

AMOUNT = TABLES["orders"]["amount"]
PLACED_AT = TABLES["orders"]["placed_at"]
BIRTHDAY = TABLES["accounts"]["birthday"]
CROSS_BORDER = TABLES["waybills"]["cross_border"]
ITEMS = TABLES["orders"]["items"]


def reference_number(text: str) -> float | None:
    """A finite decimal number in ASCII, optionally padded with ASCII blanks, or None."""
    stripped = text.strip(" \t\n\f\r")
    if not stripped or any(c.isalpha() and c not in "eE" or c.isspace() for c in stripped) or "_" in stripped:
        return None
    try:
        value = float(stripped)
    except ValueError:
        return None
    return value if math.isfinite(value) and stripped.isascii() else None


def parse(field, texts):
    values, bad = coerce_column(field, pa.array(texts, pa.string()), "test.csv")
    return values.to_pylist(), bad.tolist()


numberish = st.one_of(st.floats(allow_nan=False, allow_infinity=False).map(repr),
                      st.integers(-10**9, 10**9).map(str),
                      st.from_regex(r"\s*[+-]?[0-9]{0,4}\.?[0-9]{0,3}([eE][+-]?[0-9]{1,2})?\s*", fullmatch=True),
                      st.text(max_size=8))


@given(st.lists(numberish, max_size=20))
def test_numbers_parse_like_python(texts):
    values, bad = parse(AMOUNT, texts)
    for text, value, is_bad in zip(texts, values, bad):
        expected = reference_number(text)
        if not text.strip():
            assert value is None and not is_bad  # blank: missing, not malformed
        elif expected is None:
            assert value is None and is_bad, text
        else:
            assert not is_bad and value == expected, text


@given(st.lists(st.datetimes(dt.datetime(1970, 1, 1), dt.datetime(2100, 1, 1),
                             timezones=st.sampled_from([dt.timezone.utc, dt.timezone(dt.timedelta(hours=8)),
                                                        dt.timezone(dt.timedelta(hours=-5, minutes=-30))])),
                max_size=20))
def test_timestamps_with_offsets_become_the_same_utc_instant(moments):
    texts = [m.isoformat() for m in moments]
    values, bad = parse(PLACED_AT, texts)
    assert not any(bad)
    assert values == [m.astimezone(dt.timezone.utc).replace(microsecond=m.microsecond) for m in moments]


def test_timestamp_forms():
    values, bad = parse(PLACED_AT, ["2025-01-02T03:04:05Z", "2025-01-02 03:04:05", "2025-01-02", "2025-13-01", "soon"])
    utc = dt.timezone.utc
    assert values[:3] == [dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=utc), dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=utc),
                          dt.datetime(2025, 1, 2, tzinfo=utc)]  # no offset means UTC
    assert bad == [False, False, False, True, True]


@given(st.lists(st.dates(dt.date(1900, 1, 1), dt.date(2100, 1, 1)), max_size=20))
def test_dates(days):
    values, bad = parse(BIRTHDAY, [d.isoformat() for d in days])
    assert values == days and not any(bad)


def test_booleans():
    values, bad = parse(CROSS_BORDER, ["true", "False", " 1 ", "no", "Y", "maybe", None, "2"])
    assert values == [True, False, True, False, True, None, None, None]
    assert bad == [False, False, False, False, False, True, False, True]


@given(st.lists(st.lists(st.from_regex(r"I[0-9]{1,6}", fullmatch=True), min_size=1, max_size=5), max_size=10))
def test_lists_split_on_semicolons(item_lists):
    values, bad = parse(ITEMS, [" ; ".join(items) for items in item_lists])
    assert values == item_lists and not any(bad)
