"""Recipient minimization: what each outside recipient may receive, declared once, and the export that keeps to it.

The privacy policy promises that payment institutions receive the order number and the
transaction amount, to confirm a payment instruction, and nothing else. ``RECIPIENTS`` states
that promise as data; ``export_for_recipient`` writes exactly the declared fields and refuses
anything more before writing a byte. These exports come from the identifiable zone
(``WS/ingested/``): the recipient needs the real order number, not a pseudonym.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from profiling.errors import PortraitError
from profiling.schema import PAYMENT_INSTITUTIONS, TABLES

__all__ = ["EXPORT_FORMATS", "RECIPIENTS", "ExportResult", "Recipient", "export_for_recipient", "recipient"]

EXPORT_FORMATS = ("csv", "parquet")


@dataclass(frozen=True)
class Recipient:
    """One outside recipient: the table its rows come from and the only fields it may receive.

    ``filter_column`` (with its ``filter_values``) lets an export be restricted to one party,
    e.g. one payment institution; the column selects rows and is never exported.
    """

    name: str
    table: str
    fields: tuple[str, ...]
    purpose: str
    filter_column: str | None = None
    filter_values: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        columns = TABLES[self.table].column_names
        unknown = [c for c in (*self.fields, *filter(None, [self.filter_column])) if c not in columns]
        if unknown or not self.fields:
            raise ValueError(f"recipient {self.name!r}: fields must be columns of {self.table} "
                             f"(unknown: {', '.join(unknown) or 'none given'})")


RECIPIENTS: Mapping[str, Recipient] = {
    "payment_institution": Recipient(
        name="payment_institution",
        table="orders",
        fields=("order_id", "amount"),
        purpose="confirm the payment instruction and complete payment (order number and transaction amount)",
        filter_column="payment_institution",
        filter_values=PAYMENT_INSTITUTIONS,
    ),
}


@dataclass(frozen=True)
class ExportResult:
    """Where an export went and what it holds."""

    path: Path
    recipient: str
    fields: tuple[str, ...]
    rows: int


def recipient(name: str) -> Recipient:
    """The declared recipient ``name``; a clear error names the known ones otherwise.

    >>> recipient("payment_institution").fields
    ('order_id', 'amount')
    """
    try:
        return RECIPIENTS[name]
    except (KeyError, TypeError):
        raise PortraitError(f"unknown recipient {name!r}; the declared recipients are "
                            f"{', '.join(sorted(RECIPIENTS))}") from None


def _checked_fields(declared: Recipient, fields: Sequence[str] | None) -> tuple[str, ...]:
    if fields is None:
        return declared.fields
    if isinstance(fields, str):
        raise TypeError("fields is a list of column names, not one string")
    wanted = tuple(dict.fromkeys(fields))
    extra = [f for f in wanted if f not in declared.fields]
    if extra or not wanted:
        raise PortraitError(f"recipient {declared.name!r} may receive only {', '.join(declared.fields)}; "
                            f"refused: {', '.join(extra) or 'an empty field list'}; nothing written")
    return wanted


def export_for_recipient(workspace, name: str, out_dir: str | os.PathLike, *, fields: Sequence[str] | None = None,
                         institution: str | None = None, file_format: str = "csv") -> ExportResult:
    """Write ``<name>[-<institution>].<format>`` into ``out_dir`` with only the recipient's declared fields.

    ``fields`` may narrow the declared list, never widen it. ``institution`` keeps only rows whose
    ``filter_column`` holds it. Every check runs before anything is written; the file appears
    whole (written beside it, then renamed) or not at all.
    """
    declared = recipient(name)
    chosen = _checked_fields(declared, fields)
    if file_format not in EXPORT_FORMATS:
        raise PortraitError(f"unknown export format {file_format!r}; use one of {', '.join(EXPORT_FORMATS)}")
    if institution is not None:
        if declared.filter_column is None:
            raise PortraitError(f"recipient {name!r} cannot be restricted to an institution")
        if institution not in declared.filter_values:
            raise PortraitError(f"unknown {declared.filter_column} {institution!r}; "
                                f"known: {', '.join(declared.filter_values)}")
    columns = [*chosen, *([declared.filter_column] if institution is not None else [])]
    rows = workspace.read(declared.table, columns=columns)
    # rows: (chosen fields..., [filter column])
    if institution is not None:
        rows = rows.filter(pc.equal(rows[declared.filter_column], institution)).select(list(chosen))
    rows = rows.replace_schema_metadata({"recipient": name, "purpose": declared.purpose})
    stem = name if institution is None else f"{name}-{institution}"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stem}.{file_format}"
    _write_atomic(rows, path, file_format)
    return ExportResult(path=path, recipient=name, fields=chosen, rows=rows.num_rows)


def _write_atomic(rows: pa.Table, path: Path, file_format: str) -> None:
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        if file_format == "csv":
            pacsv.write_csv(rows, temporary)
        else:
            pq.write_table(rows, temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
