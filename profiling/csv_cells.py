"""CSV files written for people: text a spreadsheet would run as a formula is escaped.

A cell beginning with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is a formula to Excel,
LibreOffice and Google Sheets (OWASP, "CSV Injection"): a nickname ``=HYPERLINK(...)`` in a
data-subject export would become a live link. Such text gets a leading apostrophe, which the
spreadsheet shows as text and hides. Numbers, dates and other non-text values are left alone.
Every CSV Portrait writes goes through ``write_csv_rows`` or ``escape_formulas``; the JSON beside a
CSV, where there is one, keeps the exact values.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Mapping

import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["FORMULA_STARTS", "escape_cell", "escape_formulas", "write_csv_rows"]

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_FORMULA_PATTERN = "^[=+\\-@\t\r]"


def escape_cell(value: object) -> object:
    """``value`` with an apostrophe in front when it is text a spreadsheet would run as a formula.

    >>> escape_cell('=HYPERLINK("http://x","y")')
    '\\'=HYPERLINK("http://x","y")'
    >>> escape_cell("+86 138 1234 5678"), escape_cell("Li Lei"), escape_cell(-3.5)
    ("'+86 138 1234 5678", 'Li Lei', -3.5)
    """
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def escape_formulas(table: pa.Table) -> pa.Table:
    """``table`` with ``escape_cell`` applied to every text column (for ``pyarrow.csv.write_csv``)."""
    columns = []
    for column in table.columns:
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            formula = pc.fill_null(pc.match_substring_regex(column, _FORMULA_PATTERN), False)
            column = pc.if_else(formula, pc.binary_join_element_wise("'", column, ""), column)
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=table.schema)


def write_csv_rows(path: str | os.PathLike, rows: Iterable[Mapping[str, object]]) -> None:
    """Write dict rows to ``path`` as CSV (header: keys in first-seen order), every cell through ``escape_cell``."""
    rows = list(rows)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows({k: escape_cell(v) for k, v in row.items()} for row in rows)
