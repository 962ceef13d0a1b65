"""The consent ledger in SQLite (standard library): WAL, one transaction per change, secure deletion.

Tables (prefix ``consent_`` for the history, ``audit_`` for gate decisions) live in the workspace's
``ledger.sqlite`` next to other areas' tables. Times are stored as int64 microseconds since
1970-01-01 UTC. ``consent_events`` and ``audit_gate_decisions`` are hash-chained and append-only
(``profiling.ledger_chain``): erasure replaces an account's events by redacted placeholders that
keep the chain whole. ``secure_delete`` overwrites the replaced content on disk, and erasure
checkpoints the WAL, so an erased account's id does not linger in free pages. A ledger made
before chaining is migrated in place on first open (the chain is built over its rows as they
are; ``ledger_chains.migrated_rows`` records how many).

The whole history is read from an Arrow snapshot, not row by row: ``consent_snapshot_data`` holds
the unredacted events as Parquet bytes, and the chained ``consent_snapshots`` records, in the same
transaction, the ledger position they reflect (consent_events' chain rows and head hash and its
redactions) and their SHA-256. A snapshot is read only at that very position (else it is stale and
rebuilt from SQL) and only if its bytes match the recorded hash. A bulk load and an erasure write
the new snapshot in their own transaction, so an erased account leaves no copy in it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from profiling._memory import release_freed_memory
from profiling.consent.as_of import EVENT_COLUMNS, to_micros
from profiling.consent.events import ConsentError, ConsentEvent, canonical_account_id
from profiling.consent.store import AuditRecord, LoadReport
from profiling.ledger_chain import (
    REDACTED_ID,
    ChainBrokenError,
    ChainReport,
    append_arrow,
    append_rows,
    appending,
    redact,
    register_table,
    verify,
)
from profiling.errors import InternalError
from profiling.ledger_file import ensure_schema, immediate_transaction, ledger_connection, read_transaction
from profiling.pseudonyms import normalize
from profiling.schema import TIMESTAMP

__all__ = ["CHAINED_TABLES", "SqliteConsentStore", "StaleSnapshotError", "redact_consent_events"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS consent_events (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,  -- order of recording: breaks ties at one moment
    event_id       TEXT NOT NULL,                      -- unique: consent_events_by_event_id
    account_id     TEXT NOT NULL,                      -- raw account id (identifiable zone)
    event_at       INTEGER NOT NULL,                   -- µs since 1970-01-01 UTC
    event_type     TEXT NOT NULL,
    purpose        TEXT,
    policy_version TEXT NOT NULL,
    channel        TEXT NOT NULL,
    source         TEXT NOT NULL,                      -- ingest, api, cli
    recorded_at    INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS consent_events_by_account ON consent_events (account_id, event_at, seq);
-- A named index rather than a column constraint, so that a first load can build it after its rows
-- (ledgers made before keep their UNIQUE constraint: _ensure_unique_event_ids adds nothing then).
CREATE TABLE IF NOT EXISTS consent_loads (               -- data sets whose every event is recorded
    fingerprint TEXT PRIMARY KEY,                      -- SHA-256 of the files the events came from
    source      TEXT NOT NULL,
    events      INTEGER NOT NULL,
    loaded_at   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_gate_decisions (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    recorded_at      TEXT NOT NULL,
    job              TEXT NOT NULL,
    purpose          TEXT NOT NULL,
    as_of            TEXT NOT NULL,
    sensitive        INTEGER NOT NULL,
    eligible         INTEGER NOT NULL,
    excluded         INTEGER NOT NULL,
    excluded_reasons TEXT NOT NULL,                    -- JSON {reason: persons}
    dnd              INTEGER NOT NULL,
    non_personalized INTEGER NOT NULL,
    snapshot_hash    TEXT NOT NULL,
    events           INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS consent_snapshots (          -- Arrow snapshots of the history, one row per write
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    ledger_rows  INTEGER NOT NULL,                      -- the ledger position the snapshot reflects: chain rows,
    ledger_head  TEXT NOT NULL,                         -- head hash and redactions of consent_events
    redactions   INTEGER NOT NULL,
    events       INTEGER NOT NULL,                      -- events in the snapshot (redacted ones left out)
    sha256       TEXT NOT NULL,                         -- of the Parquet bytes
    written_at   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS consent_snapshot_data (      -- the latest snapshot's Parquet bytes only
    snapshot INTEGER PRIMARY KEY,
    parquet  BLOB NOT NULL
);
-- Whatever redacts consent events (erasure, retention), the snapshot holding them goes in the same
-- transaction (secure deletion overwrites it); a store that erases writes the new one itself.
CREATE TRIGGER IF NOT EXISTS consent_events_redaction_drops_snapshot AFTER UPDATE OF chain_redacted
ON consent_events WHEN NEW.chain_redacted = 1 AND OLD.chain_redacted = 0
BEGIN DELETE FROM consent_snapshot_data; END;
"""
_EVENT_COLUMNS = ["seq", "event_id", "account_id", "event_at", "event_type", "purpose", "policy_version", "channel",
                  "source", "recorded_at"]
# An erased account's events keep their place (and hash) in the chain; nothing of them stays readable.
_EVENT_PLACEHOLDERS = {"event_id": REDACTED_ID, "account_id": REDACTED_ID, "event_at": 0, "event_type": "redacted",
                       "purpose": None, "policy_version": "redacted", "channel": "redacted", "source": "redacted",
                       "recorded_at": 0}
_AUDIT_COLUMNS = ["id", "recorded_at", "job", "purpose", "as_of", "sensitive", "eligible", "excluded",
                  "excluded_reasons", "dnd", "non_personalized", "snapshot_hash", "events"]
_SNAPSHOT_COLUMNS = ["id", "ledger_rows", "ledger_head", "redactions", "events", "sha256", "written_at"]
CHAINED_TABLES = ("consent_events", "audit_gate_decisions", "consent_snapshots")
# The snapshot's rows: every unredacted event, by account, time, then recording order.
_SNAPSHOT_SCHEMA = pa.schema([("seq", pa.int64()), ("account_id", pa.string()), ("event_at", pa.int64()),
                              ("event_type", pa.string()), ("purpose", pa.string()),
                              ("policy_version", pa.string())])
_SNAPSHOT_ORDER = [("account_id", "ascending"), ("event_at", "ascending"), ("seq", "ascending")]
# The same columns, those with few distinct values dictionary-encoded (a load's snapshot before it is sorted).
_SNAPSHOT_COMPACT = pa.schema([pa.field(f.name, pa.dictionary(pa.int32(), f.type))
                               if f.name in ("event_type", "purpose", "policy_version") else f
                               for f in _SNAPSHOT_SCHEMA])
_SNAPSHOT_GROUP_ROWS = 262_144   # rows sorted into the snapshot's Parquet at a time (one row group each)


class StaleSnapshotError(ConsentError):
    """The ledger's Arrow snapshot is missing or reflects an earlier ledger position than the ledger's."""


class SqliteConsentStore:
    """The consent ledger and the gate's audit log in one SQLite file (``Workspace.ledger``).

    >>> import tempfile, datetime as dt, pathlib
    >>> folder = tempfile.mkdtemp()
    >>> with SqliteConsentStore(pathlib.Path(folder) / "ledger.sqlite") as store:
    ...     store.append([ConsentEvent("A1", dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc), "grant",
    ...                                "personalization")], source="api")
    ...     [e["event_type"] for e in store.history("A1")]
    1
    ['grant']
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._connection = ledger_connection(self.path)
        try:
            ensure_schema(self._connection, _SCHEMA, _register_tables)
        except BaseException:
            self._connection.close()
            raise

    def __repr__(self) -> str:
        return f"SqliteConsentStore({str(self.path)!r})"

    def __enter__(self) -> SqliteConsentStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._connection.close()

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        return immediate_transaction(self._connection)

    def append(self, events: Iterable[ConsentEvent], *, source: str) -> int:
        checked = [event.checked() for event in events]
        now = _now_micros()
        with self._transaction() as db, appending(db, "consent_events"):
            # Events are checked in time order so a cancellation earlier in the same batch also counts.
            for event in sorted(checked, key=lambda e: e.event_at):
                cancelled = db.execute("SELECT MIN(event_at) FROM consent_events WHERE account_id = ? AND "
                                       "event_type = 'cancel'", (event.account_id,)).fetchone()[0]
                if cancelled is not None and cancelled <= to_micros(event.event_at):
                    raise ConsentError(f"account {event.account_id} was cancelled; cancellation is final, so no "
                                       f"{event.event_type} can follow it")
                try:
                    db.execute("INSERT INTO consent_events (event_id, account_id, event_at, event_type, purpose, "
                               "policy_version, channel, source, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                               (event.event_id, event.account_id, to_micros(event.event_at), event.event_type,
                                event.purpose, event.policy_version, event.channel, source, now))
                except sqlite3.IntegrityError:
                    raise ConsentError(f"event id {event.event_id!r} is already in the ledger; "
                                       f"events are recorded once") from None
        return len(checked)

    @contextmanager
    def _bulk_settings(self, cache_mebibytes: int = 32) -> Iterator[None]:
        """For a bulk load: a larger page cache (fewer pages spilled to the WAL and written again) and
        SQLite's sort threads for the index builds; both connection settings, restored after."""
        db = self._connection
        before = [db.execute(f"PRAGMA {name}").fetchone()[0] for name in ("cache_size", "threads")]
        db.execute(f"PRAGMA cache_size = {-1024 * cache_mebibytes}")
        db.execute(f"PRAGMA threads = {min(4, os.cpu_count() or 1)}")
        try:
            yield
        finally:
            db.execute(f"PRAGMA cache_size = {int(before[0])}")
            db.execute(f"PRAGMA threads = {int(before[1])}")

    def has_loaded(self, fingerprint: str) -> bool:
        return self._connection.execute("SELECT 1 FROM consent_loads WHERE fingerprint = ?",
                                        (fingerprint,)).fetchone() is not None

    def append_table(self, events: pa.Table | ds.FileSystemDataset, *, source: str, fingerprint: str | None = None,
                     batch_rows: int = 50_000) -> LoadReport:
        """Record the rows of ``events`` whose ``event_id`` is new (first occurrence kept), in their order.

        One ``BEGIN IMMEDIATE`` transaction holds the rows, their chain hashes, the new Arrow
        snapshot and the ``consent_loads`` record. On a ledger with no consent events yet (a first
        load) the indexes of ``consent_events`` are dropped inside that transaction and built again
        once the rows are in (one sort each instead of a B-tree insert per row). The ledger is in
        WAL mode with full sync, so a crash or error before the commit leaves nothing of the load
        (rows, index changes, snapshot, load record: the ledger is as it was), and after the
        commit all of it is on disk. Memory: a dataset is read ``batch_rows`` rows at a time (its
        ``event_id`` column whole, for the duplicates); rows reach SQLite a batch at a time. Worker
        threads read and hash the next batch while SQLite inserts one (``append_arrow``) and make the
        snapshot's Parquet while SQLite builds the indexes; every write is this connection's, in the
        one transaction.
        """
        columns = ["event_id", *EVENT_COLUMNS, "channel"]
        missing = [c for c in columns if c not in events.schema.names]
        if missing:
            raise ConsentError(f"consent events lack column(s) {', '.join(missing)}")
        ids = (events.column("event_id").combine_chunks() if isinstance(events, pa.Table) else pa.concat_arrays(
            [piece.column(0).combine_chunks() for _, piece in _pieces(events, ["event_id"], batch_rows)]
            or [pa.array([], pa.string())]))
        offered, now, source = len(ids), _now_micros(), _sql_text(source)
        with self._bulk_settings(), self._transaction() as db:
            before = _current_snapshot(db)
            keep = self._new_rows(db, ids)   # rows: indices into events, in input order
            rebuilt = _drop_indexes(db, "consent_events") if keep.size and _is_empty(db, "consent_events") else []

            def batches() -> Iterator[pa.Table]:
                # rows: (event_id, account_id, event_at, event_type, purpose, policy_version, channel, source,
                #        recorded_at), only the new events
                for start, piece in _pieces(events, columns, batch_rows):
                    if not piece.column("event_id").combine_chunks().equals(ids.slice(start, piece.num_rows)):
                        raise InternalError("consent events were read in another order than their ids (a bug)")
                    lo, hi = np.searchsorted(keep, [start, start + piece.num_rows])
                    if hi == lo:
                        continue
                    batch = _as_recorded(piece.take(pa.array(keep[lo:hi] - start)))
                    yield batch.append_column("source", pa.array([source] * batch.num_rows, pa.string())
                                              ).append_column("recorded_at", pa.array(
                                                  np.full(batch.num_rows, now, dtype=np.int64)))

            recorded = append_arrow(db, "consent_events", batches(), batch_rows=batch_rows)
            last = db.execute("SELECT last_key FROM ledger_chains WHERE chain_table = 'consent_events'").fetchone()[0]

            def snapshot() -> tuple[memoryview, int]:
                release_freed_memory()   # the insert's batches, before the snapshot's columns
                # Read again rather than held through the insert: the snapshot's columns of the recorded events,
                # the few-valued ones dictionary-encoded while they wait to be sorted.
                compact = _SNAPSHOT_COMPACT.remove(0)
                added = pa.concat_tables([compact.empty_table()] + [
                    _as_recorded(piece.take(pa.array(keep[lo:hi] - start))).cast(compact)
                    for start, piece in _pieces(events, _SNAPSHOT_SCHEMA.names[1:], batch_rows)
                    for lo, hi in [np.searchsorted(keep, [start, start + piece.num_rows])] if hi > lo])
                added = added.add_column(0, "seq", pa.array(np.arange(last - recorded + 1, last + 1, dtype=np.int64)))
                return _snapshot_parquet(pa.concat_tables([before.cast(_SNAPSHOT_COMPACT), added]))

            # Arrow reads, sorts and writes the new snapshot while SQLite builds the indexes (neither holds the GIL).
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="consent-snapshot") as worker:
                written = worker.submit(snapshot) if before is not None and recorded else None
                for statement in rebuilt:
                    db.execute(statement)
                if written is not None:
                    _record_snapshot(db, *written.result())
            if fingerprint is not None:
                db.execute("INSERT OR REPLACE INTO consent_loads (fingerprint, source, events, loaded_at) "
                           "VALUES (?, ?, ?, ?)", (fingerprint, source, offered, now))
        return LoadReport(offered=offered, recorded=recorded, already_present=offered - recorded)

    @staticmethod
    def _new_rows(db: sqlite3.Connection, ids: pa.Array) -> np.ndarray:
        """Indices (in input order) of the event ids in neither the ledger nor an earlier row."""
        if not pa.types.is_string(ids.type):
            ids = ids.cast(pa.string())
        if ids.null_count:
            raise ConsentError(f"consent events: column event_id has {ids.null_count} missing value(s); every event "
                               f"needs an id")
        order = pc.sort_indices(ids)   # stable: equal ids in input order
        ranked = ids.take(order)
        repeats = np.flatnonzero(pc.equal(ranked.slice(1), ranked.slice(0, len(ranked) - 1)).to_numpy(
            zero_copy_only=False)) + 1 if len(ranked) > 1 else np.empty(0, np.int64)
        del ranked
        keep = np.ones(len(ids), dtype=bool)
        keep[order.to_numpy()[repeats]] = False
        first = np.flatnonzero(keep)   # rows: the first occurrence of each id, in input order
        if _is_empty(db, "consent_events"):
            return first
        distinct = pc.unique(ids).to_pylist()
        found: list[str] = []
        for start in range(0, len(distinct), 900):
            chunk = distinct[start:start + 900]
            found += [row[0] for row in db.execute(
                f"SELECT event_id FROM consent_events WHERE event_id IN ({', '.join('?' * len(chunk))})", chunk)]
        if not found:
            return first
        known = pc.is_in(ids.take(pa.array(first)), value_set=pa.array(found, pa.string()))
        return first[~known.to_numpy(zero_copy_only=False)]

    def history(self, account_id: str) -> list[dict]:
        cursor = self._connection.execute(
            "SELECT seq, event_id, account_id, event_at, event_type, purpose, policy_version, channel, source, "
            "recorded_at FROM consent_events WHERE account_id = ? AND chain_redacted = 0 ORDER BY event_at, seq",
            (canonical_account_id(account_id),))
        names = [d[0] for d in cursor.description]
        rows = [dict(zip(names, row)) for row in cursor]
        for row in rows:
            row["event_at"] = _from_micros(row["event_at"])
            row["recorded_at"] = _from_micros(row["recorded_at"])
        return rows

    def events(self, account_ids: Sequence[str] | None = None) -> pa.Table:
        """The unredacted history (``EVENT_COLUMNS``) by account, time, then recording order.

        The whole history comes from the ledger's Arrow snapshot (``read_snapshot``), rebuilt from
        SQL when the ledger moved since it was written; the history of ``account_ids`` from SQL.
        """
        if account_ids is None:
            return pa.concat_tables([_history(piece) for piece in self._snapshot_pieces()])
        return self.events_sql(account_ids)

    def event_pieces(self) -> Iterator[pa.Table]:
        """The whole unredacted history (``EVENT_COLUMNS``) as ``events`` gives it, a row group of the snapshot at
        a time (``ConsentSnapshot.from_pieces`` prepares it without holding it whole)."""
        for piece in self._snapshot_pieces():
            yield _history(piece)

    def _snapshot_pieces(self) -> Iterator[pa.Table]:
        """The snapshot (``_SNAPSHOT_SCHEMA``) a row group at a time, rebuilt from SQL first when the ledger moved."""
        try:
            data = self._snapshot_data()
        except StaleSnapshotError:
            with read_transaction(self._connection) as db:
                position, snapshot = _position(db), _sql_snapshot(db)
            with self._transaction() as db:
                if _position(db) == position:   # else a later read rebuilds it
                    _write_snapshot(db, snapshot)
            yield snapshot
            return
        source = pq.ParquetFile(pa.BufferReader(data))
        for group in range(source.num_row_groups):
            yield source.read_row_group(group).cast(_SNAPSHOT_SCHEMA)
        if not source.num_row_groups:
            yield _SNAPSHOT_SCHEMA.empty_table()

    def events_sql(self, account_ids: Sequence[str] | None = None) -> pa.Table:
        """``events`` read row by row through SQL (the reference the snapshot is checked against)."""
        query = "SELECT account_id, event_at, event_type, purpose, policy_version FROM consent_events"
        if account_ids is None:
            rows = self._connection.execute(query + " WHERE chain_redacted = 0 "
                                            "ORDER BY account_id, event_at, seq").fetchall()
        else:
            rows = []
            with read_transaction(self._connection) as db:  # one consistent read over several chunks
                unique = sorted(set(normalize(pa.array(list(account_ids), pa.string()), "account_id").to_pylist()))
                for start in range(0, len(unique), 500):
                    chunk = unique[start:start + 500]
                    rows += db.execute(f"{query} WHERE account_id IN ({', '.join('?' * len(chunk))}) "
                                       "ORDER BY account_id, event_at, seq", chunk).fetchall()
        columns = list(zip(*rows)) if rows else [[]] * 5
        return pa.table({
            "account_id": pa.array(columns[0], pa.string()),
            "event_at": pa.array(columns[1], pa.int64()).cast(TIMESTAMP),
            "event_type": pa.array(columns[2], pa.string()),
            "purpose": pa.array(columns[3], pa.string()),
            "policy_version": pa.array(columns[4], pa.string()),
        })

    def read_snapshot(self) -> pa.Table:
        """The Arrow snapshot of the whole history (``_SNAPSHOT_SCHEMA``), event times in µs.

        ``StaleSnapshotError`` when there is none, or when the ledger's position (consent_events'
        chain rows and head, and its redactions) is not the one the snapshot was written at: a
        snapshot is only ever read at the position it reflects. ``ChainBrokenError`` when its bytes
        differ from the SHA-256 in its chained record (``consent_snapshots``).
        """
        return pq.read_table(pa.BufferReader(self._snapshot_data())).cast(_SNAPSHOT_SCHEMA)

    def _snapshot_data(self) -> bytes:
        """The snapshot's Parquet bytes, checked as ``read_snapshot`` says."""
        with read_transaction(self._connection) as db:   # position and bytes from one state of the file
            position = _position(db)
            row = db.execute("SELECT s.id, s.ledger_rows, s.ledger_head, s.redactions, s.sha256, "
                             "CAST(d.parquet AS BLOB) FROM consent_snapshots s "
                             "JOIN consent_snapshot_data d ON d.snapshot = s.id "
                             "WHERE s.id = (SELECT MAX(id) FROM consent_snapshots)").fetchone()
        if row is None:
            raise StaleSnapshotError(f"consent ledger {self.path} has no current Arrow snapshot")
        if tuple(row[1:4]) != position:
            raise StaleSnapshotError(f"the Arrow snapshot of {self.path} reflects {row[1]} events (head "
                                     f"{row[2][:12]}, {row[3]} redactions), the ledger is at {position[0]} (head "
                                     f"{position[1][:12]}, {position[2]} redactions)")
        if hashlib.sha256(row[5]).hexdigest() != row[4]:
            raise ChainBrokenError(f"the Arrow snapshot of consent ledger {self.path} does not match its recorded "
                                   f"SHA-256 (snapshot {row[0]}); no job runs on it: run `portrait ledger verify` "
                                   f"and restore the ledger from a copy")
        return row[5]

    def record_audit(self, record: AuditRecord) -> int:
        with self._transaction() as db, appending(db, "audit_gate_decisions"):
            cursor = db.execute(
                "INSERT INTO audit_gate_decisions (recorded_at, job, purpose, as_of, sensitive, eligible, excluded, "
                "excluded_reasons, dnd, non_personalized, snapshot_hash, events) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (record.recorded_at.isoformat(), record.job, record.purpose, record.as_of.isoformat(),
                 int(record.sensitive), record.eligible, sum(record.excluded.values()),
                 json.dumps(record.excluded, sort_keys=True), record.dnd, record.non_personalized,
                 record.snapshot_hash, record.events))
            return int(cursor.lastrowid)

    def audit_records(self) -> list[dict]:
        cursor = self._connection.execute(f"SELECT {', '.join(_AUDIT_COLUMNS)} FROM audit_gate_decisions ORDER BY id")
        names = [d[0] for d in cursor.description]
        rows = [dict(zip(names, row)) for row in cursor]
        for row in rows:
            row["excluded_reasons"] = json.loads(row["excluded_reasons"])
            row["sensitive"] = bool(row["sensitive"])
        return rows

    def erase_account(self, account_id: str) -> int:
        """Redact every event of ``account_id`` (content replaced, hashes kept); returns how many."""
        with self._transaction() as db:
            removed = redact_consent_events(db, [account_id], reason="erasure request")
            db.execute("DELETE FROM consent_loads")  # a reload must offer every event again
        self.checkpoint()
        return removed

    def verify(self) -> list[ChainReport]:
        """The chain reports of the consent tables (``profiling.ledger_chain.verify``), read from one state.

        consent_events must also pass through the head its latest snapshot record names at the row
        count it names (``waypoints``): a chain cut back behind that snapshot is broken.
        """
        with read_transaction(self._connection) as db:
            record = db.execute("SELECT ledger_rows, ledger_head FROM consent_snapshots ORDER BY id DESC "
                                "LIMIT 1").fetchone()
            return [verify(db, table, waypoints=dict([record]) if table == "consent_events" and record else None)
                    for table in CHAINED_TABLES]

    def audit(self) -> list[ChainReport]:
        """``verify``'s reports and the latest snapshot checked against its chained record, from one state.

        The snapshot the gate reads must match its record (``_snapshot_problem``: its bytes their
        SHA-256, the ledger not behind the position it names); a contradiction marks consent_snapshots
        broken. What every job (``require_intact``) and ``portrait ledger verify`` check.
        """
        with read_transaction(self._connection) as db:   # one state of the file
            reports = self.verify()
            problem = _snapshot_problem(db)
        if problem is None:
            return reports
        return [dataclasses.replace(report, ok=False, problem=problem)
                if report.table == "consent_snapshots" and report.ok else report for report in reports]

    def require_intact(self) -> None:
        """Raise ``ChainBrokenError`` (one line) unless the consent history a job reads is the recorded one.

        Every consent chain is verified from its first row (an edit of any row, however old, is found:
        an edit leaves no cheaper trace than the row itself, and stages read old rows through SQL,
        retention's cancellations among them), consent_events through the position its latest
        snapshot was written at (``verify``), and the Arrow snapshot the gate reads against its
        chained record: its bytes must match their SHA-256 (``audit``).
        """
        for report in self.audit():
            if not report.ok:
                where = "" if report.broken_at is None else f" at row {report.broken_at}"
                raise ChainBrokenError(f"consent ledger {self.path} is broken: {report.table}{where} "
                                       f"({report.problem}); no job runs on it: run `portrait ledger verify` and "
                                       f"restore the ledger from a copy whose heads match the last published review")

    def checkpoint(self) -> None:
        """Move the WAL into the database file and truncate it, so erased rows leave no copy behind."""
        self._connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _history(snapshot: pa.Table) -> pa.Table:
    """Snapshot rows as ``events`` gives them: ``EVENT_COLUMNS``, times as UTC timestamps."""
    return snapshot.select(list(EVENT_COLUMNS)).set_column(1, "event_at", snapshot.column("event_at").cast(TIMESTAMP))


def redact_consent_events(db: sqlite3.Connection, account_ids: Sequence[str], *, reason: str) -> int:
    """Redact every consent event of ``account_ids`` inside the caller's transaction; returns how many.

    The Arrow snapshot, when current, is rewritten without them in the same transaction (else the
    redaction drops it and the next read rebuilds it from SQL); no copy of the accounts is left. Once
    a batch of 500 accounts has removed events, a worker thread makes the new snapshot while SQLite
    redacts the other batches (neither holds the GIL); it is recorded only if every batch succeeded.
    """
    accounts = sorted({canonical_account_id(a) for a in account_ids})
    before = _current_snapshot_data(db)
    removed = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="consent-snapshot") as worker:
        without = None
        for start in range(0, len(accounts), 500):
            chunk = accounts[start:start + 500]
            removed += redact(db, "consent_events", f"account_id IN ({', '.join('?' * len(chunk))})", chunk,
                              reason=reason)
            if removed and before is not None and without is None:
                without = worker.submit(_snapshot_without, before, pa.array(accounts, pa.string()))
        if without is not None:
            _record_snapshot(db, *without.result())
    return removed


def _snapshot_without(data: memoryview, accounts: pa.Array) -> tuple[memoryview, int]:
    """Snapshot bytes ``data`` without the events of ``accounts``, and how many events they keep.

    Read and written a row group at a time: the events stay in the snapshot's order, so nothing is
    sorted again, and the row groups are cut as ``_snapshot_parquet`` cuts them (the same bytes as
    writing the remaining events anew).
    """
    source = pq.ParquetFile(pa.BufferReader(data))
    sink = pa.BufferOutputStream()
    held, kept = [], 0
    with pq.ParquetWriter(sink, _SNAPSHOT_SCHEMA, compression="zstd") as writer:
        for group in range(source.num_row_groups):
            rows = source.read_row_group(group).cast(_SNAPSHOT_SCHEMA)
            held.append(rows.filter(pc.invert(pc.is_in(rows.column("account_id"), value_set=accounts))))
            waiting = pa.concat_tables(held)
            whole = waiting.num_rows - waiting.num_rows % _SNAPSHOT_GROUP_ROWS
            for start in range(0, whole, _SNAPSHOT_GROUP_ROWS):
                writer.write_table(waiting.slice(start, _SNAPSHOT_GROUP_ROWS).combine_chunks())
            held, kept = [waiting.slice(whole)], kept + whole
        rest = pa.concat_tables(held)
        if rest.num_rows:
            writer.write_table(rest.combine_chunks())
    return memoryview(sink.getvalue()), kept + rest.num_rows


def _pieces(events: pa.Table | ds.FileSystemDataset, columns: list[str],
            rows: int) -> Iterator[tuple[int, pa.Table]]:
    """(first row, table) of consecutive pieces of ``events``' ``columns``, at most ``rows`` rows each.

    A dataset is read file by file in its order, through a 1 MiB buffer without read-ahead, so only
    the piece at hand is decoded (not a whole row group).
    """
    start = 0
    if isinstance(events, pa.Table):
        chunks: Iterator[pa.RecordBatch] = iter(events.select(columns).to_batches(max_chunksize=rows))
    else:
        schema = events.schema
        chunks = (batch.cast(pa.schema([schema.field(c) for c in columns]))
                  for path in events.files
                  for batch in pq.ParquetFile(events.filesystem.open_input_file(path), buffer_size=1 << 20,
                                              pre_buffer=False).iter_batches(batch_size=rows, columns=columns))
    for chunk in chunks:
        yield start, pa.Table.from_batches([chunk]).combine_chunks()
        start += chunk.num_rows


def _as_recorded(events: pa.Table) -> pa.Table:
    """``events`` with times as int64 µs and account ids normalized as ingest keys them."""
    at = events.column("event_at")
    if pa.types.is_timestamp(at.type):
        at = at.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
    accounts = normalize(events.column("account_id").cast(pa.string()), "account_id")
    return events.set_column(events.schema.get_field_index("event_at"), "event_at", at).set_column(
        events.schema.get_field_index("account_id"), "account_id", accounts)


def _register_tables(db: sqlite3.Connection) -> None:
    """The consent tables' unique event ids and chains (``ensure_schema``: writes only what is missing)."""
    _ensure_unique_event_ids(db)
    register_table(db, "consent_events", key="seq", columns=_EVENT_COLUMNS, placeholders=_EVENT_PLACEHOLDERS,
                   replaces_triggers=["consent_events_append_only"])
    register_table(db, "audit_gate_decisions", key="id", columns=_AUDIT_COLUMNS)
    register_table(db, "consent_snapshots", key="id", columns=_SNAPSHOT_COLUMNS)


def _ensure_unique_event_ids(db: sqlite3.Connection) -> None:
    """Create the unique index on ``consent_events.event_id`` unless a unique index on it exists already."""
    for _, name, unique, *_ in db.execute("PRAGMA index_list(consent_events)").fetchall():
        if unique and [row[2] for row in db.execute(f"PRAGMA index_info({_quoted(name)})")] == ["event_id"]:
            return
    db.execute("CREATE UNIQUE INDEX consent_events_by_event_id ON consent_events (event_id)")


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _is_empty(db: sqlite3.Connection, table: str) -> bool:
    return db.execute(f"SELECT 1 FROM {_quoted(table)} LIMIT 1").fetchone() is None


def _drop_indexes(db: sqlite3.Connection, table: str) -> list[str]:
    """Inside the caller's transaction: drop ``table``'s named indexes; returns the statements that rebuild them.

    (A column constraint's index, such as a ``UNIQUE`` declared in ``CREATE TABLE``, cannot be dropped and stays;
    a partial index stays too: the chain's index of unsealed rows gets no entry from sealed appends, and
    rebuilding it would cost a scan of the table.)
    """
    partial = {row[1] for row in db.execute(f"PRAGMA index_list({_quoted(table)})") if row[4]}
    indexes = [(name, sql) for name, sql in db.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL ORDER BY name",
        (table,)) if name not in partial]
    for name, _ in indexes:
        db.execute(f"DROP INDEX {_quoted(name)}")
    return [sql for _, sql in indexes]


def _position(db: sqlite3.Connection) -> tuple[int, str, int]:
    """The consent history's ledger position: chain rows, head hash, and redactions of consent_events."""
    rows, head = db.execute("SELECT rows, head FROM ledger_chains WHERE chain_table = 'consent_events'").fetchone()
    redactions = db.execute("SELECT COUNT(*) FROM ledger_redactions WHERE chain_table = 'consent_events'").fetchone()[0]
    return rows, head, redactions


def _current_snapshot(db: sqlite3.Connection) -> pa.Table | None:
    """Inside a transaction: the snapshot at the ledger's position (empty for an empty ledger), else None."""
    if _position(db)[0] == 0:
        return _SNAPSHOT_SCHEMA.empty_table()
    data = _current_snapshot_data(db)
    return None if data is None else pq.read_table(pa.BufferReader(data)).cast(_SNAPSHOT_SCHEMA)


def _current_snapshot_data(db: sqlite3.Connection) -> memoryview | None:
    """Inside a transaction: the Parquet bytes of the snapshot at the ledger's position, else None (also for an
    empty ledger); ``ChainBrokenError`` when they do not match their record."""
    position = _position(db)
    if position[0] == 0:
        return None
    row = db.execute("SELECT s.ledger_rows, s.ledger_head, s.redactions, CAST(d.parquet AS BLOB) "
                     "FROM consent_snapshots s JOIN consent_snapshot_data d ON d.snapshot = s.id "
                     "WHERE s.id = (SELECT MAX(id) FROM consent_snapshots)").fetchone()
    if row is None or tuple(row[:3]) != position:
        return None
    problem = _snapshot_problem(db)   # a snapshot edited in place is never carried into the next one
    if problem:
        raise ChainBrokenError(f"consent ledger: {problem}; run `portrait ledger verify` and restore the ledger "
                               f"from a copy")
    return memoryview(row[3])


def _snapshot_problem(db: sqlite3.Connection) -> str | None:
    """Inside a transaction: why the latest snapshot record contradicts the ledger, or None.

    The record (``consent_snapshots``, chained) names the position it was written at: consent_events'
    rows, head hash and redactions. The ledger may only have moved forward from it (no fewer rows or
    redactions; ``SqliteConsentStore.verify`` checks that the chain passes through that head). When
    the record's bytes are still held, they must match its SHA-256.
    """
    record = db.execute("SELECT s.id, s.ledger_rows, s.ledger_head, s.redactions, s.sha256, "
                        "CAST(d.parquet AS BLOB) FROM consent_snapshots s "
                        "LEFT JOIN consent_snapshot_data d ON d.snapshot = s.id "
                        "WHERE s.id = (SELECT MAX(id) FROM consent_snapshots)").fetchone()
    if record is None:
        return None
    snapshot, rows, _, redactions, sha256, data = record
    now = _position(db)
    if now[0] < rows or now[2] < redactions:
        return (f"consent_events holds {now[0]} rows and {now[2]} redactions, fewer than the {rows} and "
                f"{redactions} its snapshot {snapshot} recorded (rows were removed and the chain rewound)")
    if data is not None and hashlib.sha256(data).hexdigest() != sha256:
        return f"the Arrow snapshot does not match its recorded SHA-256 (snapshot {snapshot})"
    return None


def _sql_snapshot(db: sqlite3.Connection, *, chunk_rows: int = 200_000) -> pa.Table:
    """The snapshot's rows read through SQL, ``_SNAPSHOT_SCHEMA`` in ``_SNAPSHOT_ORDER``.

    Read in recording order, ``chunk_rows`` at a time, each column as one text SQLite joins
    (``group_concat``) and Arrow splits, so no Python object is made per row; a chunk whose text
    does not split into its row count (a separator inside a value) is read row by row.
    """
    names = _SNAPSHOT_SCHEMA.names
    not_null = {row[1] for row in db.execute("PRAGMA table_info(consent_events)") if row[3] or row[5]}
    nullable = [name for name in names if name not in not_null]
    joined = ", ".join(f"group_concat({name}, char(31))" if name in not_null else
                       f"group_concat(ifnull({name}, char(30)), char(31))" for name in names)
    marked = " + ".join(f"total({name} = char(30))" for name in nullable) or "0"   # a value the NULL mark hides
    parts, after = [], 0
    while True:
        count, last, clash, *texts = db.execute(
            f"SELECT count(*), max(seq), {marked}, {joined} FROM (SELECT {', '.join(names)} FROM consent_events "
            "WHERE seq > ? AND chain_redacted = 0 ORDER BY seq LIMIT ?)", (after, chunk_rows)).fetchone()
        if count == 0:
            break
        columns = [pc.list_flatten(pc.split_pattern(pa.array([text], pa.string()), chr(31))) for text in texts]
        if clash or any(len(column) != count for column in columns):
            rows = db.execute(f"SELECT {', '.join(names)} FROM consent_events WHERE seq > ? AND seq <= ? AND "
                              "chain_redacted = 0 ORDER BY seq", (after, last)).fetchall()
            columns = [pa.array(list(values), field.type) for values, field in zip(zip(*rows), _SNAPSHOT_SCHEMA)]
        else:
            columns = [(pc.if_else(pc.equal(column, chr(30)), pa.scalar(None, pa.string()), column)
                        if field.name in nullable else column).cast(field.type)
                       for column, field in zip(columns, _SNAPSHOT_SCHEMA)]
        parts.append(pa.table(columns, schema=_SNAPSHOT_SCHEMA))
        after = last
    events = pa.concat_tables([_SNAPSHOT_SCHEMA.empty_table(), *parts])
    return events.take(pc.sort_indices(events, sort_keys=_SNAPSHOT_ORDER))


def _write_snapshot(db: sqlite3.Connection, events: pa.Table) -> None:
    """Record ``events`` (sorted here) as the snapshot at the ledger's position, inside the caller's transaction.

    The Parquet bytes replace the previous snapshot's (secure deletion overwrites them); their
    SHA-256 and the position go to the chained ``consent_snapshots`` in the same transaction.
    """
    _record_snapshot(db, *_snapshot_parquet(events))


def _snapshot_parquet(events: pa.Table) -> tuple[memoryview, int]:
    """``events`` sorted into the snapshot's Parquet bytes (``_SNAPSHOT_ORDER``), and how many they hold."""
    order = pc.sort_indices(events, sort_keys=_SNAPSHOT_ORDER)
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(sink, _SNAPSHOT_SCHEMA, compression="zstd") as writer:   # sorted a row group at a time
        for start in range(0, len(order), _SNAPSHOT_GROUP_ROWS):
            writer.write_table(events.take(order.slice(start, _SNAPSHOT_GROUP_ROWS)).cast(_SNAPSHOT_SCHEMA))
    return memoryview(sink.getvalue()), len(order)


def _record_snapshot(db: sqlite3.Connection, data: memoryview, events: int) -> None:
    """Store snapshot bytes ``data`` of ``events`` events at the ledger's position (``_write_snapshot``)."""
    rows, head, redactions = _position(db)
    append_rows(db, "consent_snapshots", [(rows, head, redactions, events, hashlib.sha256(data).hexdigest(),
                                           _now_micros())])
    written = db.execute("SELECT MAX(id) FROM consent_snapshots").fetchone()[0]
    db.execute("DELETE FROM consent_snapshot_data")
    db.execute("INSERT INTO consent_snapshot_data (snapshot, parquet) VALUES (?, ?)", (written, data))


def _sql_text(text: str) -> str:
    if not text.replace("_", "").replace("-", "").isalnum():
        raise ConsentError(f"source {text!r} must be a plain word such as 'ingest' or 'cli'")
    return text


def _now_micros() -> int:
    """The recording time of appended events (µs since 1970-01-01 UTC)."""
    return to_micros(dt.datetime.now(dt.timezone.utc))


def _from_micros(micros: int) -> dt.datetime:
    return dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=micros)
