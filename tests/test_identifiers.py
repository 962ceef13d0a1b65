"""Identifier formats: a slow per-value reference against the vectorized checks."""

from __future__ import annotations

import datetime as dt
import re

import numpy as np
import pyarrow as pa
from hypothesis import given
from hypothesis import strategies as st

from profiling.identifiers import (
    PHONE_PREFIXES,
    PROVINCE_CODES,
    canonical_phone,
    id_card_check_chars,
    id_card_invalid,
    ip_invalid,
    phone_invalid,
    region_invalid,
)


def reference_id_card_valid(value: str) -> bool:
    """GB 11643-1999 written out plainly."""
    if not re.fullmatch(r"[0-9]{17}[0-9Xx]", value) or value[:2] not in PROVINCE_CODES:
        return False
    try:
        birth = dt.date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
    except ValueError:
        return False
    if not 1900 <= birth.year <= 2099:
        return False
    total = sum(int(d) * (2 ** (17 - i) % 11) for i, d in enumerate(value[:17]))
    return value[17].upper() == "10X98765432"[total % 11]


def make_id(region: str, birth: dt.date, sequence: int) -> str:
    body = f"{region}{birth:%Y%m%d}{sequence:03d}"
    check = id_card_check_chars(np.frombuffer(body.encode(), dtype=np.uint8)[None, :] - ord("0"))
    return body + chr(check[0])


id_bodies = st.builds(make_id, st.sampled_from(["110105", "440305", "310104", "650102"]),
                      st.dates(dt.date(1900, 1, 1), dt.date(2025, 12, 31)), st.integers(0, 999))


def test_known_id_numbers():
    # The last has a correct check character but a birth year before 1900, which no living holder has.
    assert id_card_invalid(pa.array(["11010519491231002X", "11010519491231002x", "110105194912310021", None,
                                     "440524188001010014"])).to_pylist() == [False, False, True, None, True]
    assert reference_id_card_valid("440524188001010014") is False


@given(id_bodies)
def test_generated_ids_are_valid(value):
    assert reference_id_card_valid(value)
    assert id_card_invalid(pa.array([value])).to_pylist() == [False]


@given(id_bodies, st.integers(0, 16), st.integers(1, 9))
def test_any_single_digit_change_is_caught(value, position, delta):
    digit = (int(value[position]) + delta) % 10
    changed = value[:position] + str(digit) + value[position + 1:]
    assert id_card_invalid(pa.array([changed])).to_pylist() == [not reference_id_card_valid(changed)]
    if 6 > position >= 2 or position >= 14:  # region tail and sequence digits: only the checksum can tell
        assert reference_id_card_valid(changed) is False


@given(st.lists(st.one_of(st.none(), st.text(max_size=20), st.from_regex(r"[1-8][0-9]{16}[0-9X]", fullmatch=True)),
                max_size=30))
def test_id_card_check_agrees_with_reference(values):
    expected = [None if v is None else not reference_id_card_valid(v) for v in values]
    assert id_card_invalid(pa.array(values, pa.string())).to_pylist() == expected


def reference_phone_valid(value: str) -> bool:
    digits = re.sub(r"[\s\-.()]", "", value)
    digits = re.sub(r"^(?:\+86|0086|86)(1[0-9]{10})$", r"\1", digits)
    return re.fullmatch(r"1[3-9][0-9]{9}", digits) is not None


phones = st.builds(lambda p, rest, style: style.format(p + rest), st.sampled_from(PHONE_PREFIXES),
                   st.from_regex(r"[0-9]{8}", fullmatch=True),
                   st.sampled_from(["{}", "+86{}", "+86 {}", "0086{}", "86{}"]))


@given(st.lists(st.one_of(st.none(), phones, st.text(max_size=16)), max_size=30))
def test_phone_check_agrees_with_reference(values):
    expected = [None if v is None else not reference_phone_valid(v) for v in values]
    assert phone_invalid(pa.array(values, pa.string())).to_pylist() == expected


@given(phones)
def test_phone_formats_share_one_canonical_form(value):
    assert re.fullmatch(r"1[3-9][0-9]{9}", canonical_phone(pa.array([value]))[0].as_py())


def test_regions_and_ips():
    assert region_invalid(pa.array(["440305", "820000", "990000", "44030", "4403050", None])).to_pylist() == [
        False, False, True, True, True, None]
    assert ip_invalid(pa.array(["1.2.3.4", "255.255.255.255", "256.1.1.1", "1.2.3", "2001:db8::1", "x", None])
                      ).to_pylist() == [False, False, True, True, False, True, None]
