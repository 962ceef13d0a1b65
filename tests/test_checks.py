"""The one module of parameter checks: the same mistake reads the same in every package."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dp import PrivacyParameterError
from profiling.checks import check_int, check_number, check_probability


@given(st.integers(-10**6, 10**6), st.integers(-100, 100), st.one_of(st.none(), st.integers(0, 10**4)))
def test_check_int_accepts_exactly_the_whole_numbers_in_range(value, minimum, span):
    maximum = None if span is None else minimum + span
    inside = value >= minimum and (maximum is None or value <= maximum)
    if inside:
        assert check_int(value, "n", minimum=minimum, maximum=maximum) == value
        assert check_int(np.int64(value), "n", minimum=minimum, maximum=maximum) == value
    else:
        with pytest.raises(ValueError, match=rf"^n must be .*, got {value}$"):
            check_int(value, "n", minimum=minimum, maximum=maximum)


@pytest.mark.parametrize(("value", "options", "message"), [
    (0, {}, "k must be a positive integer, got 0"),
    (True, {}, "k must be a positive integer, got True"),
    (2.0, {}, "k must be a positive integer, got 2.0"),
    ("3", {}, "k must be a positive integer, got '3'"),
    (999, {"minimum": 1000, "where": "in job.toml"}, "k in job.toml must be a whole number of at least 1,000, got 999"),
    (11, {"maximum": 10}, "k must be a whole number between 1 and 10, got 11"),
])
def test_check_int_names_the_parameter_and_what_it_must_be(value, options, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        check_int(value, "k", **options)


@pytest.mark.parametrize(("value", "options", "message"), [
    (math.nan, {}, "alpha is NaN; pass a finite number"),
    (math.inf, {}, "alpha is infinite; pass a finite number"),
    (True, {}, r"alpha must be a number, got True \(bool\)"),
    (-1.0, {"minimum": 0}, "alpha must be >= 0, got -1.0"),
    (0, {"positive": True}, "alpha must be > 0, got 0"),
])
def test_check_number_refuses_nan_infinity_and_out_of_range(value, options, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        check_number(value, "alpha", **options)
    assert check_number(2, "alpha", minimum=0, positive=True) == 2.0


@pytest.mark.parametrize("value", [0.0, 1.0, -0.5, math.nan])
def test_check_probability_is_strictly_between_0_and_1(value):
    with pytest.raises(ValueError, match="confidence"):
        check_probability(value, "confidence")
    assert check_probability(0.5, "confidence") == 0.5


def test_a_package_keeps_its_own_error_class():
    with pytest.raises(PrivacyParameterError, match="^max_partitions in the query must be a positive integer, got 0$"):
        check_int(0, "max_partitions", where="in the query", error=PrivacyParameterError)
