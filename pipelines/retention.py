"""Retention: cancelled accounts erased after their grace period, rows deleted when their period ends.

The job's ``retention`` stage (``pipelines.run``, right after the consent ledger is loaded and before
anything derived is built) does two things at the run's as-of moment T:

1. **Cancellations.** An account whose ``cancel`` event in the consent ledger lies at t is erased by
   the first run with T >= t + ``cancellation_grace_days`` (``pipelines.config``), never before,
   through the one erasure path (``pipelines.dsr.erase_held``: tombstones, every Parquet file of the
   workspace, the ledger redacted), recorded as an ``erase`` request whose account id is redacted.
   Until then the consent gate already excludes the account from every purpose.
2. **Periods.** Each table's ``Retention`` in the field registry (``profiling.schema.RETENTION``)
   says from which time column its period runs; rows older than T - period are deleted from the
   identifiable zone and the rejects (``Expiry``). A row goes with any row it references that went
   (a waybill with its order), and a row of a ``while_referenced`` table stays while a row within
   its own period references it (a device with recent events). The analytics zone, identity,
   portraits and recommendations are rebuilt from what is left by the stages that follow, in the
   same run; the vault drops the ID numbers of waybills that went.

Each run appends what it did to ``dsr_retention`` in the ledger (hash-chained, append-only: as-of,
table, cutoff, rows deleted), and every later ingest drops at the door the rows already expired at
the latest as-of recorded there (``retention_horizon``), so replaying a raw source brings nothing
back; erased accounts are kept out by their tombstones.

What this does not cover: copies outside the workspace (exports, DSR bundles), the DP popularity
release (an aggregate, not a person's data), and files that are not Parquet (listed by erasure).
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.dsr import erase_held, ingest_report_without
from pipelines import dsr_scope
from pipelines.workspace import Workspace
from profiling._memory import release_freed_memory
from profiling._string_hash import StringIndex
from profiling.consent.sqlite_store import SqliteConsentStore
from profiling.ledger_file import ensure_schema, immediate_transaction, ledger_connection
from profiling.keys import MasterKey
from profiling.ledger_chain import appending, register_table
from profiling.schema import INGEST_ORDER, TABLES, TIMESTAMP, Table
from profiling.validation import coerce_column

__all__ = ["Expiry", "due_cancellations", "enforce_retention", "retention_horizon"]

_DAY_US = 86_400 * 1_000_000
_SCHEMA = """
CREATE TABLE IF NOT EXISTS dsr_retention (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    as_of        TEXT NOT NULL,     -- the run's as-of moment, ISO 8601 UTC with microseconds
    table_name   TEXT NOT NULL,     -- a raw table, or 'accounts' for cancelled accounts erased
    cutoff       TEXT,              -- rows before this moment were deleted (null for cancellations)
    rows_deleted INTEGER NOT NULL,  -- identifiable-zone rows (accounts erased, for cancellations)
    recorded_at  TEXT NOT NULL
);
"""
_COLUMNS = ["id", "as_of", "table_name", "cutoff", "rows_deleted", "recorded_at"]

# rows: one batch of a table's columns (raw or typed), as a reader yields them
Reader = Callable[[str, list[str]], Iterable[pa.RecordBatch]]


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).isoformat(timespec="microseconds")


def _register_table(db: sqlite3.Connection) -> None:
    register_table(db, "dsr_retention", key="id", columns=_COLUMNS)


def _ledger(workspace: Workspace) -> sqlite3.Connection:
    db = ledger_connection(workspace.ledger)
    try:
        ensure_schema(db, _SCHEMA, _register_table)
    except BaseException:
        db.close()
        raise
    return db


def retention_horizon(workspace: Workspace) -> dt.datetime | None:
    """The latest as-of moment at which a run applied retention (None if none did): what ingest expires at."""
    if not workspace.ledger.is_file():
        return None
    db = ledger_connection(workspace.ledger)
    try:
        if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'dsr_retention'").fetchone() is None:
            return None
        latest = db.execute("SELECT MAX(as_of) FROM dsr_retention").fetchone()[0]
    finally:
        db.close()
    return dt.datetime.fromisoformat(latest) if latest else None


def due_cancellations(workspace: Workspace, as_of: dt.datetime, grace_days: int) -> tuple[list[str], int]:
    """Accounts whose cancellation is at least ``grace_days`` days before ``as_of``, and how many wait still.

    Read from the consent ledger (unredacted ``cancel`` events; an erased account's are redacted).
    """
    limit = int((as_of - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)) // dt.timedelta(microseconds=1))
    limit -= grace_days * _DAY_US
    with SqliteConsentStore(workspace.ledger):  # creates the consent tables on a new ledger
        pass
    db = ledger_connection(workspace.ledger)
    try:
        cancelled = db.execute("SELECT account_id, MIN(event_at) FROM consent_events WHERE event_type = 'cancel' "
                               "AND chain_redacted = 0 GROUP BY account_id ORDER BY account_id").fetchall()
    finally:
        db.close()
    due = [account for account, at in cancelled if at <= limit]
    return due, len(cancelled) - len(due)


def _ids(table: Table, name: str, values: pa.Array) -> pa.Array:
    """Identifier values as ingest keys them: text, whitespace around them removed."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    return pc.utf8_trim_whitespace(coerce_column(table[name], values, f"{table.name}.{name}")[0].cast(pa.string()))


def _references(table: Table) -> list[tuple[str, str]]:
    """``(column, parent table)`` of the table's foreign keys to tables whose rows can expire."""
    return [(f.name, f.references.split(".")[0]) for f in table.fields
            if f.references and TABLES[f.references.split(".")[0]].retention.days is not None]


def _referrers(parent: str) -> list[tuple[str, str]]:
    """``(child table, column)`` of every foreign key pointing at ``parent``."""
    return [(t.name, f.name) for t in TABLES.values() for f in t.fields
            if f.references and f.references.split(".")[0] == parent]


@dataclass
class Expiry:
    """Which rows are past retention at ``as_of`` (see the module docstring for the rules).

    ``expired_ids``: primary keys of expired rows of tables others reference (orders, devices);
    ``live_references``: for ``while_referenced`` tables, the keys rows within their own period point at.
    """

    as_of: dt.datetime
    expired_ids: dict[str, pa.Array] = field(default_factory=dict)
    live_references: dict[str, pa.Array] = field(default_factory=dict)
    # lookups of those keys, built once and probed batch after batch
    _indexes: dict[tuple[str, str], StringIndex] = field(default_factory=dict, init=False, repr=False,
                                                         compare=False)

    def _members(self, kind: str, table: str, values: pa.Array) -> np.ndarray:
        """True on ``values`` that are keys of ``table`` in ``kind`` (``expired_ids`` or ``live_references``)."""
        if (kind, table) not in self._indexes:
            self._indexes[kind, table] = StringIndex(getattr(self, kind)[table].drop_null())
        return self._indexes[kind, table].positions(values) >= 0

    def cutoff(self, table: str) -> dt.datetime | None:
        """Rows of ``table`` whose time column is before this moment are expired (None: no period)."""
        days = TABLES[table].retention.days
        return None if days is None else self.as_of - dt.timedelta(days=days)

    def _past_period(self, table: Table, rows: pa.RecordBatch | pa.Table) -> np.ndarray:
        cutoff, column = self.cutoff(table.name), table.retention.column
        if cutoff is None:
            return np.zeros(rows.num_rows, dtype=bool)
        values = rows.column(column)
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        moments = coerce_column(table[column], values, f"{table.name}.{column}")[0]
        before = pc.less(moments, pa.scalar(cutoff, TIMESTAMP))  # a time that does not parse never expires
        return np.asarray(pc.fill_null(before, False).to_numpy(zero_copy_only=False), dtype=bool)

    def expired_rows(self, table: Table, rows: pa.RecordBatch | pa.Table) -> np.ndarray:
        """True on the rows of ``table`` (raw or typed columns) that are past retention."""
        expired = self._past_period(table, rows)
        if table.retention.while_referenced and table.name in self.live_references and expired.any():
            expired &= ~self._members("live_references", table.name,
                                      _ids(table, table.primary_key, rows.column(table.primary_key)))
        for column, parent in _references(table):
            if column in rows.column_names and len(self.expired_ids.get(parent, ())):
                expired |= self._members("expired_ids", parent, _ids(table, column, rows.column(column)))
        return expired

    def may_expire(self, table: Table, metadata: pq.FileMetaData) -> bool:
        """False when a file of ``table`` (its footer: ``metadata``) holds no row past retention, by its statistics:
        no referenced row expired, and every row group's earliest time is at or after the cutoff (or all null)."""
        if any(len(self.expired_ids.get(parent, ())) for _, parent in _references(table)):
            return True
        cutoff = self.cutoff(table.name)
        if cutoff is None:
            return False
        schema = metadata.schema.to_arrow_schema()
        if table.retention.column not in schema.names or schema.field(table.retention.column).type != TIMESTAMP:
            return True  # times as text (the rejects): read
        limit = (cutoff - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)) // dt.timedelta(microseconds=1)
        for group in range(metadata.num_row_groups):
            row_group = metadata.row_group(group)
            chunk = next(row_group.column(i) for i in range(row_group.num_columns)
                         if row_group.column(i).path_in_schema == table.retention.column)
            statistics = chunk.statistics
            if statistics is not None and statistics.null_count == row_group.num_rows:
                continue  # a time that is missing never expires
            if statistics is None or not statistics.has_min_max or statistics.min_raw < limit:
                return True
        return False

    def columns(self, table: Table) -> list[str]:
        """The columns ``expired_rows`` reads."""
        names = [table.retention.column] if table.retention.column else []
        names += [c for c, _ in _references(table)]
        if table.retention.while_referenced or _referrers(table.name):
            names.append(table.primary_key)
        return list(dict.fromkeys(names))

    @classmethod
    def build(cls, as_of: dt.datetime, read: Reader) -> Expiry:
        """Learn the expired keys from every table's rows, read through ``read(table, columns)``."""
        expiry = cls(as_of)
        for parent in [t for t in INGEST_ORDER if TABLES[t].retention.while_referenced]:
            # rows: (child's reference) of child rows within their own period
            live = []
            for child, column in _referrers(parent):
                for batch in read(child, list(dict.fromkeys([column, *expiry.columns(TABLES[child])]))):
                    alive = pa.array(~expiry._past_period(TABLES[child], batch))
                    live.append(_ids(TABLES[child], column, batch.column(column).filter(alive)))
            expiry.live_references[parent] = pc.unique(pa.concat_arrays(live)) if live else pa.array([], pa.string())
        for name in INGEST_ORDER:
            table = TABLES[name]
            if not (_referrers(name) and (table.retention.days is not None or _references(table))):
                continue
            # rows: (primary key, time, references) of a table other tables reference
            found = [_ids(table, table.primary_key,
                          batch.column(table.primary_key).filter(pa.array(expiry.expired_rows(table, batch))))
                     for batch in read(name, expiry.columns(table))]
            expiry.expired_ids[name] = pc.unique(pa.concat_arrays(found)) if found else pa.array([], pa.string())
        return expiry


def _expired_in_files(expiry: Expiry, table: Table, files: list[Path]) -> dict[Path, int]:
    """Expired rows per file (files without any left out), reading only the columns the rules need, in batches;
    a file whose statistics show nothing expired is not read."""
    counts = {}
    for path in files:
        with dsr_scope.open_parquet(path) as source:
            if not expiry.may_expire(table, source.metadata):
                continue
            columns = expiry.columns(table)
            batches = source.iter_batches(batch_size=dsr_scope.batch_rows(len(columns)), columns=columns)
            expired = sum(int(expiry.expired_rows(table, batch).sum()) for batch in batches)
        if expired:
            counts[path] = expired
    return counts


def _rewrite_without_expired(expiry: Expiry, table: Table, path: Path, target: Path) -> None:
    """``path`` without its expired rows, to ``target``, streamed in record batches (schema and row-group length
    kept)."""
    with dsr_scope.open_parquet(path) as source, \
            dsr_scope.ParquetRewriter(target, path, source.schema_arrow) as out:
        for batch in source.iter_batches(batch_size=dsr_scope.batch_rows(len(source.schema_arrow))):
            out.write(batch.filter(pa.array(~expiry.expired_rows(table, batch))))


def _delete_expired(workspace: Workspace, expiry: Expiry) -> tuple[dict[str, int], dict[str, int]]:
    """Remove expired rows from the ingested zone and the rejects, published together.

    Returns rows deleted per table from ``ingested`` and from ``rejects``.
    """
    ingested: dict[str, int] = {}
    rejects: dict[str, int] = {}
    replacements: dict[Path, Path] = {}
    with workspace.staging() as stage:
        for name in INGEST_ORDER:
            table = TABLES[name]
            if table.retention.days is None and not _references(table):
                continue
            for zone, folder, counts in (("ingested", workspace.ingested(name), ingested),
                                         ("rejects", workspace.rejects(name), rejects)):
                if not folder.is_dir():
                    continue
                files = sorted(workspace.verified(folder).glob("*.parquet"))
                expired = _expired_in_files(expiry, table, files)
                if not expired:
                    continue
                staged = stage / zone / name
                staged.parent.mkdir(parents=True, exist_ok=True)
                staged.mkdir()
                for path in files:
                    if path in expired:
                        _rewrite_without_expired(expiry, table, path, staged / path.name)
                    else:
                        (staged / path.name).hardlink_to(path)
                counts[name] = sum(expired.values())
                replacements[folder] = staged
        if replacements:
            removed = {f"ingested/{name}": n for name, n in ingested.items()}
            workspace.publish(replacements,
                              reports=ingest_report_without(workspace, removed, "expired_after_ingest"))
    return ingested, rejects


def enforce_retention(workspace: Workspace, key: MasterKey, as_of: dt.datetime, *, grace_days: int) -> list[dict]:
    """The job's retention stage: erase cancelled accounts past their grace period, delete expired rows.

    The caller holds the workspace's job lock (``portrait run``). Returns the run summary's rows:
    accounts erased and still in their grace period, and rows deleted per table with the cutoff.
    """
    release_freed_memory()  # what earlier stages freed, back to the system
    due, waiting = due_cancellations(workspace, as_of, grace_days)
    erase_held(workspace, due, key, cause="cancellation")  # one pass for all of them
    expiry = Expiry.build(as_of, lambda name, columns: workspace.dataset(name).to_batches(
        columns=columns, batch_size=dsr_scope.batch_rows(len(columns)), batch_readahead=0, fragment_readahead=1))
    ingested, rejects = _delete_expired(workspace, expiry)
    now = _iso(dt.datetime.now(dt.timezone.utc))
    records = [(_iso(as_of), "accounts", None, len(due), now)]
    rows = [{"stage": "retention", "table": "accounts", "rows": len(due), "cancelled_in_grace": waiting,
             "grace_days": grace_days}]
    for name in INGEST_ORDER:
        cutoff = expiry.cutoff(name)
        if cutoff is None and name not in ingested:
            continue
        records.append((_iso(as_of), name, _iso(cutoff) if cutoff else None, ingested.get(name, 0), now))
        rows.append({"stage": "retention", "table": name, "rows": ingested.get(name, 0),
                     "rejects": rejects.get(name, 0), "cutoff": cutoff.date().isoformat() if cutoff else "-"})
    db = _ledger(workspace)
    try:
        with immediate_transaction(db), appending(db, "dsr_retention"):
            db.executemany("INSERT INTO dsr_retention (as_of, table_name, cutoff, rows_deleted, recorded_at) "
                           "VALUES (?, ?, ?, ?, ?)", records)
    finally:
        db.close()
    return rows
