"""Row-level rules of the raw data model, evaluated vectorized over one Arrow batch.

``coerce_batch`` turns a batch as read (typed Parquet columns or CSV text) into the table's Arrow
types, marking cells that do not parse; ``check_batch`` applies every rule of ``profiling.schema``
and says, per row, whether it is accepted and if not the first failing column and reason (rules
in a fixed order) plus every problem found. Whole-file problems (a missing column, a column of the
wrong type) raise ``SchemaError`` instead: they are the caller's to fix, not rows to reject.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import Enum

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from profiling import identifiers
from profiling.errors import SchemaError
from profiling.identifiers import PROVINCE_CODES
from profiling.schema import Field, Format, Table

__all__ = [
    "Reason",
    "CheckContext",
    "BatchVerdict",
    "coerce_batch",
    "coerce_column",
    "check_batch",
    "reference_failures",
    "CSV_LIST_SEPARATOR",
]

# A list cell in CSV holds its elements separated by this character: "I001;I002".
CSV_LIST_SEPARATOR = ";"

_NUMBER = r"^\s*[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?\s*$"
_TRUE = ("true", "t", "1", "yes", "y")
_FALSE = ("false", "f", "0", "no", "n")


class Reason(str, Enum):
    """Why a row was rejected, as stored in the rejects table's ``reason`` column."""

    BAD_TYPE = "bad_type"                    # the cell does not parse as the column's type
    MISSING_VALUE = "missing_value"          # a required cell is empty
    MALFORMED_PHONE = "malformed_phone"
    MALFORMED_ID_CARD = "malformed_id_card"
    MALFORMED_REGION = "malformed_region"
    MALFORMED_PROVINCE = "malformed_province"
    MALFORMED_IP = "malformed_ip"
    MALFORMED_EMAIL = "malformed_email"
    MALFORMED_VERSION = "malformed_version"
    UNKNOWN_VALUE = "unknown_value"          # not one of the column's allowed values
    NEGATIVE_VALUE = "negative_value"        # below zero where the lower bound is zero
    ABSURD_VALUE = "absurd_value"            # outside the column's plausible range
    FUTURE_TIMESTAMP = "future_timestamp"    # later than the ingest's clock (plus allowed skew)
    DUPLICATE_KEY = "duplicate_key"          # primary key seen on an earlier row
    UNKNOWN_REFERENCE = "unknown_reference"  # foreign key not among the parent's accepted keys
    MALFORMED_ROW = "malformed_row"          # a CSV record with the wrong number of fields


@dataclass(frozen=True)
class CheckContext:
    """What rules need beyond the batch: the clock, and accepted keys of parent tables."""

    now: dt.datetime
    parent_keys: dict[str, pa.Array]  # "table.column" -> accepted values
    clock_skew: dt.timedelta = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class BatchVerdict:
    """Per-row outcome of ``check_batch``: ``accepted`` mask and, for rejected rows, why."""

    accepted: np.ndarray      # bool, one per row
    column: pa.Array          # string: first failing column, null for accepted rows
    reason: pa.Array          # string: first failing reason, null for accepted rows
    detail: pa.Array          # string: every "column:reason" of the row, "; "-separated


def _mask(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A boolean Arrow result as numpy, null meaning False."""
    return np.asarray(pc.fill_null(values, False).to_numpy(zero_copy_only=False), dtype=bool)


def _parse_text(field: Field, text: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Parse CSV text into ``field.type``; returns the values and a mask of cells that did not parse."""
    present = _mask(pc.is_valid(text))
    target = field.type
    if pa.types.is_string(target):
        return text, np.zeros(len(text), dtype=bool)
    if pa.types.is_floating(target):
        ok = _mask(pc.match_substring_regex(text, _NUMBER))
        cleaned = pc.if_else(pa.array(ok), pc.utf8_trim_whitespace(text), pa.scalar(None, pa.string()))
        return cleaned.cast(target), present & ~ok
    if pa.types.is_boolean(target):
        lowered = pc.utf8_lower(pc.utf8_trim_whitespace(text))
        is_true = _mask(pc.is_in(lowered, value_set=pa.array(_TRUE)))
        is_false = _mask(pc.is_in(lowered, value_set=pa.array(_FALSE)))
        values = pa.array(np.where(is_true, True, False), mask=~(is_true | is_false))
        return values, present & ~(is_true | is_false)
    if pa.types.is_timestamp(target) or pa.types.is_date(target):
        series = pd.Series(text.to_numpy(zero_copy_only=False), dtype=object)
        if pa.types.is_date(target):
            parsed = pd.to_datetime(series, format="%Y-%m-%d", errors="coerce")
            values = pa.array(parsed.dt.date.where(parsed.notna(), None), type=pa.date32())
        else:
            parsed = pd.to_datetime(series, format="ISO8601", utc=True, errors="coerce")
            values = pa.Array.from_pandas(parsed.dt.as_unit("us")).cast(target)
        return values, present & parsed.isna().to_numpy()
    if pa.types.is_list(target):
        elements = pc.split_pattern(pc.utf8_trim_whitespace(text), CSV_LIST_SEPARATOR)
        elements = pa.ListArray.from_arrays(elements.offsets, pc.utf8_trim_whitespace(elements.flatten()),
                                            mask=pc.is_null(text))
        return elements.cast(target), np.zeros(len(text), dtype=bool)
    raise SchemaError(f"column {field.name!r}: text cannot be parsed as {target}")


def coerce_batch(table: Table, batch: pa.RecordBatch, source: str) -> tuple[pa.RecordBatch, dict[str, np.ndarray]]:
    """Cast ``batch`` to ``table``'s schema.

    String columns where the model wants another type are parsed cell by cell (CSV input); cells
    that do not parse become null and are reported in the returned ``{column: mask}``. A typed
    column that cannot be cast at all raises ``SchemaError`` naming ``source`` and the column.
    """
    columns, bad_cells = [], {}
    for field in table.fields:
        values, bad = coerce_column(field, batch.column(field.name), source)
        columns.append(values)
        if bad.any():
            bad_cells[field.name] = bad
    return pa.RecordBatch.from_arrays(columns, schema=table.schema), bad_cells


def _readable_as(source: pa.DataType, target: pa.DataType) -> bool:
    """Whether typed values may be cast without guessing: no numbers as times, no numbers as booleans."""
    t = pa.types
    if t.is_null(source):
        return True
    if t.is_string(target):
        return t.is_string(source) or t.is_large_string(source) or t.is_integer(source)
    if t.is_floating(target):
        return t.is_integer(source) or t.is_floating(source) or t.is_decimal(source)
    if t.is_timestamp(target) or t.is_date(target):
        return t.is_timestamp(source) or t.is_date(source)
    if t.is_list(target):
        return (t.is_list(source) or t.is_large_list(source)) and _readable_as(source.value_type, target.value_type)
    return source == target


def coerce_column(field: Field, values: pa.Array, source: str) -> tuple[pa.Array, np.ndarray]:
    """One column of ``coerce_batch``: the values in ``field.type`` and the mask of cells that did not parse."""
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        # A blank cell is a missing one, whether it came from CSV or from Parquet.
        blank = pc.or_(pc.equal(pc.binary_length(values), 0), pc.utf8_is_space(values))
        if pc.any(blank).as_py():
            values = pc.if_else(blank, pa.scalar(None, values.type), values)
        if values.type != field.type:
            return _parse_text(field, values.cast(pa.string()))
    if values.type == field.type:
        return values, np.zeros(len(values), dtype=bool)
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    cause = ""
    if _readable_as(values.type, field.type):
        try:
            # Timestamps may lose sub-microsecond digits; every other cast must be exact.
            safe = not (pa.types.is_timestamp(values.type) and pa.types.is_timestamp(field.type))
            return values.cast(field.type, safe=safe), np.zeros(len(values), dtype=bool)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
            cause = f" ({error})"
    raise SchemaError(
        f"{source}: column {field.name!r} has type {values.type}, which cannot be read as {field.type}{cause}; "
        f"fix the column's type in the source"
    )


def _format_invalid(fmt: Format, values: pa.Array) -> pa.Array:
    if fmt is Format.PHONE:
        return identifiers.phone_invalid(values)
    if fmt is Format.ID_CARD:
        return identifiers.id_card_invalid(values)
    if fmt is Format.REGION:
        return identifiers.region_invalid(values)
    if fmt is Format.IP:
        return identifiers.ip_invalid(values)
    if fmt is Format.PROVINCE:
        return pc.invert(pc.is_in(values, value_set=pa.array(sorted(PROVINCE_CODES))))
    if fmt is Format.EMAIL:
        return pc.invert(pc.match_substring_regex(values, r"^[^@\s]+@[^@\s]+\.[^@\s]+$"))
    if fmt is Format.VERSION:
        return pc.invert(pc.match_substring_regex(values, r"^[0-9]+\.[0-9]+\.[0-9]+$"))
    raise SchemaError(f"unknown format {fmt!r}")


def _per_row(values: pa.Array, check) -> np.ndarray:
    """Apply an element check to a scalar column, or to every element of a list column (any fails)."""
    if not pa.types.is_list(values.type):
        return _mask(check(values)) & _mask(pc.is_valid(values))
    elements = values.flatten()
    failing = _mask(check(elements)) | _mask(pc.is_null(elements))
    rows = np.zeros(len(values), dtype=bool)
    parents = pc.list_parent_indices(values).to_numpy()
    rows[parents[failing]] = True
    return rows


def _field_checks(field: Field, values: pa.Array, batch: pa.RecordBatch, context: CheckContext,
                  unknown_references: dict[str, np.ndarray]) -> list[tuple[Reason, np.ndarray]]:
    checks: list[tuple[Reason, np.ndarray]] = []
    missing = _mask(pc.is_null(values))
    if field.required:
        checks.append((Reason.MISSING_VALUE, missing))
    elif field.required_if is not None:
        other, triggers = field.required_if
        triggered = _mask(pc.is_in(batch.column(other), value_set=pa.array(triggers, batch.column(other).type)))
        checks.append((Reason.MISSING_VALUE, missing & triggered))
    if field.format is not None:
        checks.append((Reason(f"malformed_{field.format.value}"), _per_row(values, lambda v: _format_invalid(field.format, v))))
    if field.allowed is not None:
        allowed = pa.array(field.allowed)
        checks.append((Reason.UNKNOWN_VALUE, _per_row(values, lambda v: pc.invert(pc.is_in(v, value_set=allowed)))))
    if field.minimum is not None or field.maximum is not None:
        below = _mask(pc.less(values, field.minimum)) if field.minimum is not None else np.zeros(len(values), bool)
        above = _mask(pc.greater(values, field.maximum)) if field.maximum is not None else np.zeros(len(values), bool)
        if field.minimum == 0:
            checks.append((Reason.NEGATIVE_VALUE, below))
            below = np.zeros(len(values), bool)
        if pa.types.is_floating(field.type):
            above |= _mask(pc.invert(pc.is_finite(values)))
        checks.append((Reason.ABSURD_VALUE, below | above))
    if field.not_future:
        latest = context.now + context.clock_skew
        if pa.types.is_date(field.type):
            limit = pa.scalar(latest.date(), pa.date32())
        else:
            limit = pa.scalar(latest, field.type)
        checks.append((Reason.FUTURE_TIMESTAMP, _mask(pc.greater(values, limit))))
    if field.earliest is not None:
        checks.append((Reason.ABSURD_VALUE, _mask(pc.less(values, pa.scalar(field.earliest, field.type)))))
    if field.references is not None:
        if field.name in unknown_references:
            checks.append((Reason.UNKNOWN_REFERENCE, unknown_references[field.name]))
        else:
            checks.append((Reason.UNKNOWN_REFERENCE, reference_failures(field, values, context.parent_keys)))
    return checks


def reference_failures(field: Field, values: pa.Array | pa.ChunkedArray, parent_keys: dict[str, pa.Array]) -> np.ndarray:
    """Per row, True where a present foreign key (any element of a list) is not among the parent's keys."""
    keys = parent_keys.get(field.references)
    if keys is None:
        raise SchemaError(f"column {field.name!r} references {field.references}, which was not ingested first")
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    return _per_row(values, lambda v: pc.invert(pc.is_in(v, value_set=keys)))


def check_batch(table: Table, batch: pa.RecordBatch, context: CheckContext, *,
                bad_cells: dict[str, np.ndarray] | None = None,
                duplicate_keys: np.ndarray | None = None,
                unknown_references: dict[str, np.ndarray] | None = None) -> BatchVerdict:
    """Apply every rule of ``table`` to a batch already coerced by ``coerce_batch``.

    Rules run in a fixed order (per column: type, missing, format, allowed values, range, clock,
    references; then primary-key duplicates); a row is rejected under its first failing rule, and
    ``detail`` lists them all. Null cells fail only ``missing_value`` rules. Table-wide results a
    caller computed once for many batches (duplicate keys; ``reference_failures`` per column) are
    passed in as masks over the batch's rows.
    """
    bad_cells = bad_cells or {}
    unknown_references = unknown_references or {}
    n = batch.num_rows
    names: list[str] = []
    reasons: list[Reason] = []
    masks: list[np.ndarray] = []
    for field in table.fields:
        if field.name in bad_cells:
            names.append(field.name), reasons.append(Reason.BAD_TYPE), masks.append(bad_cells[field.name])
        for reason, mask in _field_checks(field, batch.column(field.name), batch, context, unknown_references):
            if field.name in bad_cells and reason is Reason.MISSING_VALUE:
                mask = mask & ~bad_cells[field.name]  # the cell was present but unreadable
            names.append(field.name), reasons.append(reason), masks.append(mask)
    if duplicate_keys is not None:
        names.append(table.primary_key), reasons.append(Reason.DUPLICATE_KEY), masks.append(duplicate_keys)
    failing = np.column_stack(masks) if masks else np.zeros((n, 0), dtype=bool)
    rejected = failing.any(axis=1)
    first = failing.argmax(axis=1)
    labels = np.array([f"{name}:{reason.value}" for name, reason in zip(names, reasons)], dtype=object)
    column = np.array(names, dtype=object)[first]
    reason = np.array([r.value for r in reasons], dtype=object)[first]
    detail = np.full(n, None, dtype=object)
    if rejected.any():
        # Rows failing the same set of rules share one detail string: build each distinct set once.
        patterns, inverse = np.unique(failing[rejected], axis=0, return_inverse=True)
        texts = np.array(["; ".join(labels[pattern]) for pattern in patterns], dtype=object)
        detail[rejected] = texts[inverse.ravel()]
    return BatchVerdict(
        accepted=~rejected,
        column=pa.array(np.where(rejected, column, None), type=pa.string()),
        reason=pa.array(np.where(rejected, reason, None), type=pa.string()),
        detail=pa.array(detail, type=pa.string()),
    )
