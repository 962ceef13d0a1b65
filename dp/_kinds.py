"""The kind of a column (numeric, boolean, text, date/time or other), from its declared type where there is one."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import pandas as pd
import pyarrow as pa

from dp._expressions import BOOL, NUMERIC, OTHER, TEMPORAL, TEXT

__all__ = ["ColumnKinds", "arrow_kind", "series_kind"]


def arrow_kind(arrow_type: pa.DataType) -> str:
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    if pa.types.is_boolean(arrow_type):
        return BOOL
    if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type):
        return NUMERIC
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or pa.types.is_string_view(arrow_type):
        return TEXT
    if pa.types.is_temporal(arrow_type):
        return TEMPORAL
    return OTHER


def series_kind(series: pd.Series) -> str:
    dtype = series.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        dtype = dtype.categories.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return BOOL
    if pd.api.types.is_numeric_dtype(dtype):
        return NUMERIC
    if pd.api.types.is_datetime64_any_dtype(dtype) or pd.api.types.is_timedelta64_dtype(dtype):
        return TEMPORAL
    if pd.api.types.is_string_dtype(dtype):
        # an object column: what its values are (whoever holds the frame sees them anyway)
        inferred = pd.api.types.infer_dtype(series, skipna=True)
        return {"string": TEXT, "integer": NUMERIC, "floating": NUMERIC, "mixed-integer-float": NUMERIC,
                "decimal": NUMERIC, "boolean": BOOL, "datetime": TEMPORAL, "date": TEMPORAL}.get(inferred, OTHER)
    return OTHER


class ColumnKinds(Mapping[str, str]):
    """Column name -> kind of a frame, each kind worked out on first use (an object column is scanned)."""

    def __init__(self, frame: pd.DataFrame, schema: pa.Schema | None = None) -> None:
        self._frame, self._schema = frame, schema
        self._known: dict[str, str] = {}

    def __getitem__(self, column: str) -> str:
        if column not in self._known:
            if column not in self._frame.columns:
                raise KeyError(column)
            if self._schema is not None and column in self._schema.names:
                self._known[column] = arrow_kind(self._schema.field(column).type)
            else:
                self._known[column] = series_kind(self._frame[column])
        return self._known[column]

    def __iter__(self) -> Iterator[str]:
        return iter(map(str, self._frame.columns))

    def __len__(self) -> int:
        return len(self._frame.columns)

    def __contains__(self, column: object) -> bool:
        return column in self._frame.columns
