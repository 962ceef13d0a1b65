"""Ingest: raw Parquet or CSV files into the workspace, every row either accepted or rejected with a reason.

For each table of the data model, in parent-before-child order, the raw rows are read in batches,
coerced to the model's Arrow types and checked against every rule (``profiling.validation``).
Accepted rows go to ``WS/ingested/<table>/``; every other row goes to ``WS/rejects/<table>/`` with
its source file, row number, first failing column, reason and all problems found, and its values
except sensitive ones (ID numbers, precise locations: null there). For every table
``rows in = rows accepted + rows rejected``; a violation is a bug and raises ``InternalError``.

A missing file or column, or a column of the wrong type, raises ``SchemaError`` before anything in
the workspace changes: results are staged and published only when every table has been read.

Erased persons stay erased: when the workspace's ledger holds tombstones (``pipelines.dsr_overlay``),
ingest needs the master key (its tombstone secret), finds every raw account id, phone and device id
whose TOMBSTONE pseudonym is tombstoned, and drops before any check the rows they lead to: the
accounts, their orders, waybills of their account or orders or naming their phone with no other
owner, device events signed in to them, and unsigned events and rows of devices no living account
signed in on. On a waybill someone else sent, an erased person's name, phone and address become
``[erased]``. Dropped rows are counted as ``erased``, apart from ``rows in``; they reach neither
zone. Corrections made by ``portrait dsr correct`` are applied to the raw rows before the checks.

Expired rows stay expired: rows past their table's retention period at the latest as-of moment a
run applied retention at (``pipelines.retention``) are dropped the same way, counted as ``expired``.
"""

from __future__ import annotations

import csv
import datetime as dt
import difflib
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from pipelines.dsr_overlay import (
    PHONE_FIELDS,
    REDACTED,
    Tombstones,
    load_corrections,
    load_tombstones,
    phone_sides,
    remember_erasures,
)
from pipelines.retention import Expiry, retention_horizon
from pipelines.workspace import Workspace, holding_job_lock
from profiling.errors import InternalError, SchemaError, WorkspaceError
from profiling.keys import MasterKey
from profiling.pseudonyms import normalize
from profiling.schema import INGEST_ORDER, TABLES, PrivacyClass, Table
from profiling.validation import (
    CheckContext,
    Reason,
    check_batch,
    coerce_batch,
    coerce_column,
    reference_failures,
)

__all__ = ["TableReport", "ingest", "find_sources", "REJECT_COLUMNS"]

# Columns of a rejects table before the table's own columns (which are kept as text).
_REJECT_HEAD = pa.schema([("source_file", pa.string()), ("source_row", pa.int64()), ("column", pa.string()),
                          ("reason", pa.string()), ("detail", pa.string())])
REJECT_COLUMNS = tuple(_REJECT_HEAD.names)
_SUFFIXES = (".parquet", ".csv")


@dataclass
class TableReport:
    """Row accounting of one table: ``rows_in == accepted + rejected``; ``erased`` rows (of erased persons) and
    ``expired`` rows (past the table's retention period) were dropped before."""

    table: str
    sources: list[str]
    rows_in: int = 0
    accepted: int = 0
    rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    ignored_columns: list[str] = field(default_factory=list)
    erased: int = 0
    expired: int = 0


def find_sources(raw_dir: Path, table: str) -> list[Path]:
    """Files holding ``table`` in ``raw_dir``: ``<table>.parquet``, ``<table>.csv`` or ``<table>/*.{parquet,csv}``."""
    candidates = [raw_dir / f"{table}{suffix}" for suffix in _SUFFIXES]
    found = [p for p in candidates if p.is_file()]
    folder = raw_dir / table
    if folder.is_dir():
        found += sorted(p for p in folder.iterdir() if p.suffix in _SUFFIXES and p.is_file())
    if not found:
        raise SchemaError(
            f"{raw_dir}: no {table} table; expected {table}.parquet, {table}.csv or a {table}/ folder of "
            f"Parquet or CSV files"
        )
    return found


def _source_columns(path: Path) -> list[str]:
    if path.suffix == ".parquet":
        try:
            return pq.read_schema(path).names
        except (pa.ArrowInvalid, OSError) as error:
            raise SchemaError(f"{path}: not a readable Parquet file ({error})") from None
    with open(path, newline="", encoding="utf-8-sig") as handle:
        header = next(csv.reader(handle), None)
    if not header:
        raise SchemaError(f"{path}: empty CSV file; the first line must name the columns")
    return [name.strip() for name in header]


def _check_columns(table: Table, path: Path) -> list[str]:
    """Raise if a model column is missing from ``path``; return the source's columns the model lacks."""
    present = _source_columns(path)
    for name in table.column_names:
        if name not in present:
            close = difflib.get_close_matches(name, present, n=1, cutoff=0.6) or [
                p for p in present if p.strip().lower() == name]
            hint = f" (the file has {close[0]!r}; rename it to {name!r})" if close else ""
            raise SchemaError(f"{path}: missing column {name!r} of table {table.name}{hint}")
    return [name for name in present if name not in table.column_names]


class _CsvReader:
    """Streams a CSV file as all-text batches; rows with the wrong number of fields are collected, not fatal."""

    def __init__(self, path: Path, table: Table, batch_bytes: int) -> None:
        self.path = path
        self.malformed: list[tuple[int, str]] = []  # (record number, text)
        columns = _source_columns(path)
        self._reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=batch_bytes, use_threads=False, column_names=columns,
                                           skip_rows=1, encoding="utf8"),
            parse_options=pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=self._invalid),
            convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in columns},
                                                 strings_can_be_null=True, null_values=[""],
                                                 include_columns=table.column_names),
        )

    def _invalid(self, row: pacsv.InvalidRow) -> str:
        # The reader numbers physical lines from 1, header included; records are numbered without it.
        self.malformed.append((row.number - 1 if row.number is not None else -1, row.text))
        return "skip"

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        return iter(self._reader)


def _read_batches(path: Path, table: Table, batch_rows: int) -> tuple[Iterator[pa.RecordBatch], _CsvReader | None]:
    if path.suffix == ".parquet":
        parquet = pq.ParquetFile(path)
        return parquet.iter_batches(batch_size=batch_rows, columns=table.column_names), None
    reader = _CsvReader(path, table, batch_bytes=64 << 20)
    return iter(reader), reader


def _parquet_rows(sources: list[Path]) -> int | None:
    """Rows in ``sources`` if all are Parquet (from their footers), else None: the progress bar's total."""
    if any(p.suffix != ".parquet" for p in sources):
        return None
    return sum(pq.ParquetFile(p).metadata.num_rows for p in sources)


def _record_numbers(valid_ordinals: np.ndarray, malformed: list[tuple[int, str]]) -> np.ndarray:
    """1-based record numbers of well-formed rows, given their 1-based ordinals among well-formed rows.

    Malformed records take their own numbers, so the k-th well-formed row is the k-th number not
    taken by a malformed record.
    """
    taken = np.sort(np.array([number for number, _ in malformed if number > 0], dtype=np.int64))
    before = taken - np.arange(len(taken))
    return valid_ordinals + np.searchsorted(before, valid_ordinals, side="right")


# Identifier kinds that link a row to a person, for dropping erased persons' rows.
_LINKS = ("account_id", "device_id", "order_id", "waybill_id")


def _trimmed_text(values: pa.Array) -> pa.Array:
    return pc.utf8_trim_whitespace(values.cast(pa.string()))


def _column_batches(table: Table, sources: list[Path], names: list[str],
                    erased: _Overlay | None = None) -> Iterator[tuple[Path, pa.RecordBatch]]:
    """``(path, batch)`` of the raw values of ``names`` over the well-formed rows of ``sources``,
    without the rows linked to ``erased`` persons when given."""
    for path in sources:
        if path.suffix == ".parquet":
            raw = pq.read_table(path, columns=names).to_batches()
        else:
            raw = list(_CsvReader(path, table, batch_bytes=64 << 20))
        for batch in _without_erased(table, raw, erased) if erased else raw:
            yield path, batch


def _raw_columns(table: Table, sources: list[Path], names: list[str]) -> dict[str, pa.Array]:
    """The raw (untyped, trimmed text) values of ``names`` over all well-formed rows of ``sources``."""
    chunks: dict[str, list[pa.Array]] = {name: [] for name in names}
    for _, batch in _column_batches(table, sources, names):
        for name in names:
            chunks[name].append(_trimmed_text(batch.column(name)))
    return {name: pa.chunked_array(arrays, type=pa.string()).combine_chunks() for name, arrays in chunks.items()}


def _members(values: pa.Array, value_set: pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(pc.is_in(values, value_set=value_set), False).to_numpy(zero_copy_only=False),
                      dtype=bool)


def _distinct(*arrays: pa.Array) -> pa.Array:
    return pc.unique(pa.concat_arrays([a.cast(pa.string()) for a in arrays]).drop_null()) if arrays else \
        pa.array([], pa.string())


@dataclass
class _Overlay:
    """What data-subject requests change in this ingest (``pipelines.dsr_overlay``).

    ``erased``: raw ids by identifier kind whose rows are dropped before any check. ``phones``:
    erased persons' phones (normalized); on rows that stay (someone else's waybill) that party's
    columns become ``REDACTED`` after the checks. ``corrections``: accounts column -> (raw account
    ids, corrected values as text), applied to the raw rows before the checks. ``expiry``: rows past
    retention, dropped before any check too.
    """

    erased: dict[str, pa.Array] = field(default_factory=dict)
    phones: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))
    corrections: dict[str, tuple[pa.Array, pa.Array]] = field(default_factory=dict)
    expiry: Expiry | None = None

    def __bool__(self) -> bool:
        return any(len(ids) for ids in self.erased.values()) or len(self.phones) > 0 or bool(self.corrections) \
            or self.expiry is not None

    def kept_rows(self, table: Table, batch: pa.RecordBatch) -> np.ndarray | None:
        """False on rows linked to an erased person; None when no row of the batch is."""
        dropped = np.zeros(batch.num_rows, dtype=bool)
        for f in table.fields:
            if f.identifier in _LINKS and len(self.erased.get(f.identifier, ())) and f.name in batch.schema.names:
                dropped |= _members(_trimmed_text(batch.column(f.name)), self.erased[f.identifier])
        return ~dropped if dropped.any() else None

    def corrected(self, table: Table, batch: pa.RecordBatch) -> pa.RecordBatch:
        """``batch`` with the latest correction of each (account, column) in place of the raw value."""
        if not self.corrections or table.name != "accounts" or table.primary_key not in batch.schema.names:
            return batch
        accounts = _trimmed_text(batch.column(table.primary_key))
        for name, (ids, values) in self.corrections.items():
            if name not in batch.schema.names:
                continue
            position = pc.index_in(accounts, value_set=ids)
            if position.null_count == len(position):
                continue
            column = batch.column(name)
            if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
                values = coerce_column(table[name], values, f"correction of accounts.{name}")[0]
            index = batch.schema.get_field_index(name)
            batch = batch.set_column(index, batch.schema.field(index),
                                     pc.if_else(pc.is_valid(position), values.cast(column.type).take(position),
                                                column))
        return batch

    def redacted(self, table: Table, *batches: pa.RecordBatch) -> list[pa.RecordBatch]:
        """``batches`` (the same rows: typed, raw) with an erased person's party blanked on others' rows."""
        if not len(self.phones):
            return list(batches)
        sides = phone_sides(table)
        named = {phone: _members(normalize(_trimmed_text(batches[-1].column(phone)), "phone"), self.phones)
                 for phone in sides}
        out = []
        for batch in batches:
            for phone, mask in named.items():
                if not mask.any():
                    continue
                for name in sides[phone]:
                    index = batch.schema.get_field_index(name)
                    column = batch.column(index).cast(pa.string())
                    blanked = pc.if_else(pa.array(mask), pa.scalar(REDACTED, pa.string()), column)
                    batch = batch.set_column(index, pa.field(name, pa.string(), batch.schema.field(index).nullable,
                                                             batch.schema.field(index).metadata), blanked)
            out.append(batch)
        return out


def _erasures(sources: dict[str, list[Path]], key: MasterKey, tombstones: Tombstones
              ) -> tuple[_Overlay, dict[str, pa.Array], set[str]]:
    """The rows the tombstones lead to, read from the raw source.

    Returns the overlay (ids by kind, phones), the ids to tombstone (erased accounts, their phones
    and the devices only they signed in on, as found in this source) and the pre-secret tombstones
    they match. A phone another living account registered, and a device a living account signed in
    on, are that person's too: never dropped, never tombstoned.
    """
    def raw(table_name: str, names: list[str]) -> dict[str, pa.Array]:
        return _raw_columns(TABLES[table_name], sources[table_name], names)

    account_ids = [raw(t.name, [f.name])[f.name] for t in TABLES.values() for f in t.fields
                   if f.identifier == "account_id"]
    accounts = _distinct(*account_ids)
    erased_mask = tombstones.erased(accounts, key, "account_id")
    legacy = tombstones.legacy_erased(accounts, key)[1]
    erased = accounts.filter(pa.array(erased_mask))
    # rows: (order_id, account_id) -> orders of erased accounts
    orders = raw("orders", ["order_id", "account_id"])
    erased_orders = _distinct(orders["order_id"].filter(pa.array(_members(orders["account_id"], erased))))
    # rows: (account_id, phone) -> phones: tombstoned or of an erased account, less those of living accounts
    holders = raw("accounts", ["account_id", "phone"])
    holder_phone = normalize(holders["phone"], "phone")
    of_erased = _members(holders["account_id"], erased)
    waybills = raw("waybills", ["waybill_id", "order_id", "account_id", *PHONE_FIELDS["waybills"]])
    named_phones = [normalize(waybills[name], "phone") for name in PHONE_FIELDS["waybills"]]
    every_phone = _distinct(holder_phone, *named_phones)
    phones = _distinct(every_phone.filter(pa.array(tombstones.erased(every_phone, key, "phone"))),
                       holder_phone.filter(pa.array(of_erased)))
    phones = phones.filter(pa.array(~_members(phones, _distinct(holder_phone.filter(pa.array(~of_erased))))))
    # rows: (waybill) -> of an erased account or order, or naming an erased phone with no living owner
    valid = [np.asarray(pc.is_valid(waybills[c]).to_numpy(zero_copy_only=False), dtype=bool)
             for c in ("account_id", "order_id")]
    of_erased_owner = _members(waybills["account_id"], erased) | _members(waybills["order_id"], erased_orders)
    living_owner = (valid[0] | valid[1]) & ~of_erased_owner
    names_erased = np.zeros(len(of_erased_owner), dtype=bool)
    for values in named_phones:
        names_erased |= _members(values, phones)
    theirs = of_erased_owner | (names_erased & ~living_owner)
    erased_waybills = _distinct(waybills["waybill_id"].filter(pa.array(theirs)))
    # rows: (device_id, account_id) -> devices tombstoned or signed in by erased accounts, none by living ones
    events = raw("device_events", ["device_id", "account_id"])
    signed = np.asarray(pc.is_valid(events["account_id"]).to_numpy(zero_copy_only=False), dtype=bool)
    by_erased = _members(events["account_id"], erased)
    devices = _distinct(raw("devices", ["device_id"])["device_id"], events["device_id"])
    erased_devices = _distinct(devices.filter(pa.array(tombstones.erased(devices, key, "device_id"))),
                               events["device_id"].filter(pa.array(by_erased)))
    erased_devices = erased_devices.filter(pa.array(~_members(
        erased_devices, _distinct(events["device_id"].filter(pa.array(signed & ~by_erased))))))
    overlay = _Overlay({"account_id": erased, "order_id": erased_orders, "waybill_id": erased_waybills,
                        "device_id": erased_devices}, phones)
    stones = {"account_id": erased, "phone": phones, "device_id": erased_devices}
    return overlay, stones, legacy


def _corrections(workspace: Workspace) -> dict[str, tuple[pa.Array, pa.Array]]:
    """The correction overlay by column: (raw account ids, corrected values as text)."""
    return {name: (pa.array(list(by_account), pa.string()), pa.array(list(by_account.values()), pa.string()))
            for name, by_account in load_corrections(workspace).items() if name in TABLES["accounts"].column_names}


def _without_erased(table: Table, batches, erased: _Overlay, counter: list[int] | None = None):
    """``batches`` without erased persons' and expired rows; ``counter`` counts them: [erased, expired]."""
    for batch in batches:
        kept = erased.kept_rows(table, batch) if erased else None
        if kept is not None:
            if counter is not None:
                counter[0] += int((~kept).sum())
            batch = batch.filter(pa.array(kept))
        if erased and erased.expiry is not None:
            expired = erased.expiry.expired_rows(table, batch)
            if expired.any():
                if counter is not None:
                    counter[1] += int(expired.sum())
                batch = batch.filter(pa.array(~expired))
        yield erased.corrected(table, batch) if erased else batch


def _key_columns(table: Table, sources: list[Path],
                 erased: dict[str, pa.Array] | None = None) -> dict[str, pa.ChunkedArray]:
    """The primary-key and foreign-key columns of every well-formed row (source order), in one read.

    Rules about the whole table (duplicate keys, references) run once on these, not once per batch.
    """
    names = [table.primary_key] + [f.name for f in table.fields if f.references]
    names += [f.name for f in table.fields if f.identifier in _LINKS and f.name not in names]
    if erased and erased.expiry is not None:  # the rules of retention read these
        names += [name for name in erased.expiry.columns(table) if name not in names]
    chunks: dict[str, list[pa.Array]] = {name: [] for name in names}
    for path, batch in _column_batches(table, sources, names, erased or {}):
        for name in names:
            chunks[name].append(coerce_column(table[name], batch.column(name), str(path))[0])
    return {name: pa.chunked_array(arrays, type=table[name].type) for name, arrays in chunks.items()}


def _duplicate_keys(keys: pa.ChunkedArray) -> np.ndarray:
    """True where a key appeared on an earlier row (nulls are never duplicates)."""
    if pc.count_distinct(keys).as_py() == len(keys) - keys.null_count:
        return np.zeros(len(keys), dtype=bool)  # the usual case: no key repeats
    keys = keys.combine_chunks()
    codes = pc.dictionary_encode(keys).indices.to_numpy(zero_copy_only=False)
    present = np.asarray(pc.is_valid(keys).to_numpy(zero_copy_only=False), dtype=bool)
    duplicated = pd.Series(np.where(present, codes, -1)).duplicated(keep="first").to_numpy()
    return duplicated & present


class _UnparsedColumns:
    """Counts, per text column of one file, present cells and cells that did not parse.

    A column none of whose (at least two) present cells parse is a column of the wrong type, a
    whole-file error, rather than a column of bad cells.
    """

    def __init__(self, table: Table) -> None:
        self.table = table
        self.present: Counter[str] = Counter()
        self.bad: Counter[str] = Counter()
        self.example: dict[str, str] = {}

    def count(self, raw: pa.RecordBatch, bad_cells: dict[str, np.ndarray]) -> None:
        for column in self.table.fields:
            values = raw.column(column.name)
            if pa.types.is_string(column.type) or not pa.types.is_string(values.type):
                continue
            self.present[column.name] += len(values) - values.null_count
            if column.name in bad_cells:
                self.bad[column.name] += int(bad_cells[column.name].sum())
                self.example.setdefault(column.name, values[int(np.argmax(bad_cells[column.name]))].as_py())

    def raise_if_whole_column(self, path: Path) -> None:
        for name, present in self.present.items():
            if present >= 2 and self.bad[name] == present:
                raise SchemaError(
                    f"{path}: column {name!r} of table {self.table.name} is not {self.table[name].type}: none of "
                    f"its {present} values parse (first: {self.example[name]!r}); fix the column's type"
                )
        self.present.clear(), self.bad.clear(), self.example.clear()


def _as_text(values: pa.Array) -> pa.Array:
    if pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
        return pc.binary_join(values.cast(pa.list_(pa.string())), ";")
    return values.cast(pa.string())


def _rejects_schema(table: Table) -> pa.Schema:
    return pa.schema(list(_REJECT_HEAD) + [pa.field(name, pa.string()) for name in table.column_names])


def _withheld(table: Table) -> set[str]:
    """Columns whose values never reach a rejects file (null there): sensitive data, ID numbers, precise places.

    The rest of a rejected row stays, so rows in = accepted + rejected still holds and the row can be fixed.
    """
    return {f.name for f in table.fields
            if f.privacy is PrivacyClass.SENSITIVE or f.identifier in {"id_card", "precise_location"}}


def _malformed_rejects(table: Table, source: str, malformed: list[tuple[int, str]]) -> pa.RecordBatch:
    n = len(malformed)
    withheld = _withheld(table)
    # A line that did not split into fields cannot have its sensitive values picked out: none of it is kept.
    not_kept = f"(line not kept: {table.name} holds {', '.join(sorted(withheld))})"
    columns = [pa.array([source] * n), pa.array([number for number, _ in malformed], pa.int64()),
               pa.nulls(n, pa.string()), pa.array([Reason.MALFORMED_ROW.value] * n),
               pa.array([f"wrong number of fields: {not_kept if withheld else text}" for _, text in malformed],
                        pa.string())]
    columns += [pa.nulls(n, pa.string()) for _ in table.column_names]
    return pa.RecordBatch.from_arrays(columns, schema=_rejects_schema(table))


def _ingest_table(table: Table, sources: list[Path], stage: Path, context: CheckContext, batch_rows: int,
                  report: TableReport, progress: bool, erased: _Overlay) -> dict[str, pa.Array]:
    """Validate one table into ``stage``; return its accepted values of columns other tables reference."""
    keys = _key_columns(table, sources, erased)
    duplicates = _duplicate_keys(keys[table.primary_key])
    unknown_references = {f.name: reference_failures(f, keys[f.name], context.parent_keys)
                          for f in table.fields if f.references}
    del keys
    referenced = {f.references.split(".")[1] for t in TABLES.values() for f in t.fields
                  if f.references and f.references.split(".")[0] == table.name}
    kept: dict[str, list[pa.Array]] = {name: [] for name in referenced}
    accepted_dir, rejects_dir = stage / "ingested" / table.name, stage / "rejects" / table.name
    accepted_dir.mkdir(parents=True), rejects_dir.mkdir(parents=True)
    reasons: Counter[str] = Counter()
    unparsed = _UnparsedColumns(table)
    offset = 0  # position of the batch among the table's well-formed rows
    with pq.ParquetWriter(accepted_dir / "part-00000.parquet", table.schema) as accepted_out, \
            pq.ParquetWriter(rejects_dir / "part-00000.parquet", _rejects_schema(table)) as rejects_out, \
            tqdm(desc=f"ingest {table.name}", unit=" rows", total=_parquet_rows(sources), disable=not progress,
                 leave=False) as bar:
        for path in sources:
            batches, csv_reader = _read_batches(path, table, batch_rows)
            erased_rows = [0, 0]
            batches = _without_erased(table, batches, erased, erased_rows)
            ordinal = 0  # well-formed rows read from this file so far
            for raw in batches:
                n = raw.num_rows
                typed, bad_cells = coerce_batch(table, raw, source=str(path))
                unparsed.count(raw, bad_cells)
                verdict = check_batch(table, typed, context, bad_cells=bad_cells,
                                      duplicate_keys=duplicates[offset:offset + n],
                                      unknown_references={c: m[offset:offset + n] for c, m in unknown_references.items()})
                typed, raw = erased.redacted(table, typed, raw)  # an erased person named on someone else's row
                accepted = typed.filter(pa.array(verdict.accepted))
                accepted_out.write_batch(accepted)
                for name in referenced:
                    kept[name].append(accepted.column(name))
                rejected_rows = np.flatnonzero(~verdict.accepted)
                if len(rejected_rows):
                    take = pa.array(rejected_rows)
                    numbers = ordinal + rejected_rows + 1
                    if csv_reader is not None:
                        numbers = _record_numbers(numbers, csv_reader.malformed)
                    columns = [pa.array([str(path)] * len(rejected_rows), pa.string()), pa.array(numbers, pa.int64()),
                               verdict.column.take(take), verdict.reason.take(take), verdict.detail.take(take)]
                    columns += [pa.nulls(len(rejected_rows), pa.string()) if name in _withheld(table)
                                else _as_text(raw.column(name)).take(take) for name in table.column_names]
                    rejects_out.write_batch(pa.RecordBatch.from_arrays(columns, schema=_rejects_schema(table)))
                    reasons.update(verdict.reason.take(take).to_pylist())
                report.rows_in += n
                report.accepted += accepted.num_rows
                report.rejected += len(rejected_rows)
                ordinal += n
                offset += n
                bar.update(n)
            report.erased += erased_rows[0]
            report.expired += erased_rows[1]
            bar.update(sum(erased_rows))
            unparsed.raise_if_whole_column(path)
            if csv_reader is not None and csv_reader.malformed:
                rejects_out.write_batch(_malformed_rejects(table, str(path), csv_reader.malformed))
                reasons[Reason.MALFORMED_ROW.value] += len(csv_reader.malformed)
                report.rows_in += len(csv_reader.malformed)
                report.rejected += len(csv_reader.malformed)
    report.reasons = dict(sorted(reasons.items()))
    if offset != len(duplicates) or report.rows_in != report.accepted + report.rejected:
        raise InternalError(f"ingest of {table.name} lost rows: {report}")
    return {f"{table.name}.{name}": pa.chunked_array(chunks, type=table[name].type).combine_chunks()
            for name, chunks in kept.items()}


@holding_job_lock("portrait ingest", create=True)
def ingest(raw_dir: str | os.PathLike, workspace: Workspace, *, now: dt.datetime | None = None,
           batch_rows: int = 500_000, progress: bool = True, key: MasterKey | None = None) -> dict[str, TableReport]:
    """Ingest every table of ``raw_dir`` into ``workspace``, replacing what an earlier ingest wrote.

    ``now`` is the clock for the future-timestamp rule (default: the current UTC time). Returns the
    row accounting per table, also written to ``WS/ingest-report.json``. Raises ``SchemaError`` (and
    changes nothing) for a missing raw folder, table file or column, or a column of the wrong type.
    ``key`` (the master key) is required once the workspace holds tombstones of erased persons:
    their rows are dropped (``TableReport.erased``); without it ingest refuses with ``WorkspaceError``.
    """
    raw = Path(raw_dir)
    if not raw.is_dir():
        raise SchemaError(f"raw data folder {raw} does not exist")
    now = now or dt.datetime.now(dt.timezone.utc)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (for example datetime.now(timezone.utc))")
    tombstones = load_tombstones(workspace)
    if tombstones and not isinstance(key, MasterKey):
        raise WorkspaceError(f"workspace {workspace.root} holds tombstones of erased persons; "
                             f"ingest needs the master key to keep them erased (--key-file PATH, or key=)")
    if tombstones:
        tombstones.check_key(key)
    sources = {name: find_sources(raw, name) for name in INGEST_ORDER}
    reports = {name: TableReport(name, [str(p) for p in paths]) for name, paths in sources.items()}
    for name, paths in sources.items():
        for path in paths:
            reports[name].ignored_columns += [c for c in _check_columns(TABLES[name], path)
                                              if c not in reports[name].ignored_columns]
    erased = _Overlay()
    if tombstones:
        erased, stones, legacy = _erasures(sources, key, tombstones)
        if key.has_tombstone_secret:  # what this source adds to the erased persons' tombstones, made durable first
            remember_erasures(workspace, key, stones, legacy)
    erased.corrections = _corrections(workspace)
    horizon = retention_horizon(workspace)
    if horizon is not None:  # what a run already deleted stays out
        erased.expiry = Expiry.build(horizon, lambda name, names: (
            batch.select(names) for _, batch in _column_batches(TABLES[name], sources[name], names)))
    # A first ingest that fails leaves no workspace: the job lock removes the folder it created.
    with workspace.staging() as stage:
        parent_keys: dict[str, pa.Array] = {}
        for name in tqdm(INGEST_ORDER, desc="ingest", unit=" table", disable=not progress):
            context = CheckContext(now=now, parent_keys=parent_keys)
            parent_keys.update(_ingest_table(TABLES[name], sources[name], stage, context, batch_rows,
                                             reports[name], progress, erased))
        # Ingest replaces every table, so both zones are swapped whole: two renames, not fourteen; the report
        # is published in the same step (the next run checks the tables against it).
        workspace.publish({workspace.ingested(INGEST_ORDER[0]).parent: stage / "ingested",
                           workspace.rejects(INGEST_ORDER[0]).parent: stage / "rejects"},
                          reports={workspace.ingest_report: {
                              "raw_dir": str(raw), "ingested_at": dt.datetime.now(dt.timezone.utc).isoformat(),
                              "clock": now.isoformat(),
                              "tables": {name: asdict(report) for name, report in reports.items()}}})
    return reports
