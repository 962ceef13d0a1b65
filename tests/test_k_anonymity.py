from __future__ import annotations

from collections import Counter

import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from profiling.errors import PortraitError
from profiling.k_anonymity import (
    DEFAULT_K,
    amount_band,
    default_quasi_identifiers,
    enforce_k_anonymity,
)

_ROW = st.tuples(st.sampled_from(["11", "31", "44", None]),
                 st.sampled_from(["18-24", "25-34", "35-44", None]),
                 st.sampled_from(["female", "male", None]),
                 st.integers(0, 1_000))


def _table(rows: list[tuple]) -> pa.Table:
    columns = list(zip(*rows)) if rows else [[], [], [], []]
    return pa.table({"province": pa.array(columns[0], pa.string()), "age_band": pa.array(columns[1], pa.string()),
                     "gender": pa.array(columns[2], pa.string()), "amount": pa.array(columns[3], pa.int64())})


@given(rows=st.lists(_ROW, max_size=120), k=st.integers(1, 12))
def test_suppression_matches_a_counter_reference(rows, k):
    result = enforce_k_anonymity(_table(rows), k=k)
    assert result.quasi_identifiers == ("province", "age_band", "gender")
    reference = Counter(r[:3] for r in rows)
    expected = [r for r in rows if reference[r[:3]] >= k]
    kept = list(zip(*(result.table.column(c).to_pylist() for c in result.table.column_names)))
    assert kept == expected
    assert result.rows_kept + result.rows_suppressed == len(rows)
    assert result.classes == len(reference)
    assert result.smallest_class == min(reference.values(), default=0)
    assert result.class_sizes == dict(Counter(reference.values()))
    after = Counter(r[:3] for r in kept)
    assert all(size >= k for size in after.values())
    assert result.smallest_kept_class == min(after.values(), default=0)


def test_pandas_in_pandas_out_and_a_readable_repr():
    frame = pd.DataFrame({"province": ["44"] * 10 + ["11"], "person_id": [f"p{i}" for i in range(11)]})
    result = enforce_k_anonymity(frame)
    assert isinstance(result.table, pd.DataFrame)
    assert list(result.table["province"]) == ["44"] * DEFAULT_K
    assert repr(result) == ("KAnonymityResult(k=10, quasi_identifiers=['province'], classes=2, smallest_class=1, "
                            "smallest_kept_class=10, rows_kept=10, rows_suppressed=1)")


def test_explicit_columns_and_defaults():
    assert default_quasi_identifiers(["person_id", "birthday", "region", "destination_province", "amount"]) == [
        "birthday", "region", "destination_province"]
    table = pa.table({"city": ["a", "a", "b"], "x": [1, 2, 3]})
    assert enforce_k_anonymity(table, ["city"], k=2).rows_suppressed == 1
    # no quasi-identifier at all: one class
    assert enforce_k_anonymity(pa.table({"x": [1, 2, 3]}), k=3).rows_kept == 3


@pytest.mark.parametrize("k, error, message", [
    (0, ValueError, "k must be >= 1"),
    (float("nan"), ValueError, "whole number"),
    (2.5, ValueError, "whole number"),
    (True, TypeError, "integer"),
    ("10", TypeError, "integer"),
])
def test_bad_k_is_refused(k, error, message):
    with pytest.raises(error, match=message):
        enforce_k_anonymity(pa.table({"province": ["11"]}), k=k)


def test_unknown_column_names_the_present_ones():
    with pytest.raises(PortraitError, match=r"quasi-identifier column\(s\) zip not in the table; it has province"):
        enforce_k_anonymity(pa.table({"province": ["11"]}), ["zip"])
    with pytest.raises(TypeError, match="not one string"):
        enforce_k_anonymity(pa.table({"province": ["11"]}), "province")


def test_many_wide_quasi_identifiers_take_the_row_wise_path():
    # 6 columns of ~1500 distinct values: their combinations do not fit in one int64 key
    values = [f"v{i % 1500}" for i in range(3000)]
    table = pa.table({f"q{c}": values for c in range(6)})
    result = enforce_k_anonymity(table, list(table.column_names), k=2)
    assert (result.classes, result.rows_kept, result.smallest_class) == (1500, 3000, 2)
    result = enforce_k_anonymity(table.slice(0, 2000), list(table.column_names), k=2)
    assert (result.rows_kept, result.rows_suppressed) == (1000, 1000)


def _band_reference(amount: float) -> str:
    """Plain reference: walk the 1-2-5 bands upwards."""
    if amount < 0:
        return "<0"
    if amount < 1:
        return "[0, 1)"
    low = 1
    while True:
        for step, high in ((1, 2), (2, 5), (5, 10)):
            if amount < high * low:
                return f"[{step * low}, {high * low})"
        low *= 10


@given(amounts=st.lists(st.one_of(st.none(), st.floats(-1e3, 1e12, allow_nan=False),
                                  st.sampled_from([1.0, 2.0, 5.0, 10.0, 1000.0, 999.99999999, 0.999])),
                        max_size=60))
def test_amount_band_matches_a_plain_reference(amounts):
    assert amount_band(pa.array(amounts, pa.float64())).to_pylist() == [
        None if a is None else _band_reference(a) for a in amounts]


def test_classes_over_a_generalized_column_keep_the_exact_values():
    table = pa.table({"order_id": ["o1", "o2", "o3", "o4"], "amount": [101.5, 150.25, 199.0, 250.0]})
    result = enforce_k_anonymity(table, ["amount"], k=2, generalized={"amount": amount_band})
    assert result.table.column("amount").to_pylist() == [101.5, 150.25, 199.0]
    assert (result.rows_suppressed, result.classes_suppressed, result.generalized) == (1, 1, ("amount",))
    report = result.report()
    assert report["quasi_identifiers"] == ["amount"] and list(report["generalized"]) == ["amount"]
    assert report["class_sizes"] == [{"size": 1, "classes": 1}, {"size": 3, "classes": 1}]
    with pytest.raises(PortraitError, match="generalized column.* order_id are not among the quasi-identifiers"):
        enforce_k_anonymity(table, ["amount"], generalized={"order_id": amount_band})
