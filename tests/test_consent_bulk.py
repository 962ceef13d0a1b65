"""The consent ledger's bulk paths against their row-by-row references.

The Arrow first load gives the very ledger (rows, order, chain hashes) that appending the same
events one Python row at a time gives; the Arrow snapshot of the history agrees with the SQL read
and is never read once the ledger moved; the chunked verifier finds what the row-by-row one finds.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
import time

import pyarrow as pa
import pytest

from profiling.consent import ConsentEvent, SqliteConsentStore
from profiling.consent import sqlite_store
from profiling.consent.sqlite_store import StaleSnapshotError
from profiling import ledger_chain
from profiling.ledger_chain import ChainBrokenError, append_rows, redact, verify
from profiling.schema import TIMESTAMP

UTC = dt.timezone.utc
T0 = dt.datetime(2025, 1, 1, tzinfo=UTC)
NOW = 1_750_000_000_000_000
_COLUMNS = ["event_id", "account_id", "event_at", "event_type", "purpose", "policy_version", "channel"]

# Duplicated ids (inside the load and against the ledger), events out of time order, an account id
# with spaces around it, text JSON escapes (quote, backslash, non-ASCII) and a null purpose.
_FIRST = [
    ("C3", "A2", 5, "grant", "personalization", "2019-06", "app"),
    ("C1", " A1 ", 3, "policy_accept", None, "2019-06", "web"),
    ("C2", "A1", 1, "grant", "personalization", "2019-06", "app"),
    ("C3", "A2", 9, "revoke", "personalization", "2019-06", "app"),
    ("C\"4\\é", "A1", 2, "dnd_on", None, "2018-01", "app"),
    ("C5", "A3", 2, "grant", "marketing_messages", "2019-06", "sms"),
    ("C2", "A9", 0, "cancel", None, "2019-06", "app"),
]
_SECOND = [("C6", "A2", 4, "revoke", "personalization", "2019-06", "app"),
           ("C1", "A1", 3, "policy_accept", None, "2019-06", "web"),
           ("C7", "A1", 0, "grant", "marketing_messages", "2019-06", "web")]


def _table(rows: list[tuple]) -> pa.Table:
    columns = list(zip(*rows))
    return pa.table({name: (pa.array([T0 + dt.timedelta(days=d) for d in values], TIMESTAMP)
                            if name == "event_at" else pa.array(list(values), pa.string()))
                     for name, values in zip(_COLUMNS, columns)})


def _row_by_row(store: SqliteConsentStore, rows: list[tuple]) -> None:
    """The reference: each event as a Python row, the first of each id not yet in the ledger."""
    seen = {row[0] for row in store._connection.execute("SELECT event_id FROM consent_events")}
    plain = []
    for event_id, account, days, *rest in rows:
        if event_id not in seen:
            seen.add(event_id)
            at = (T0 + dt.timedelta(days=days) - dt.datetime(1970, 1, 1, tzinfo=UTC)) // dt.timedelta(microseconds=1)
            plain.append((event_id, account.strip(), at, *rest, "ingest", NOW))
    db = store._connection
    db.execute("BEGIN IMMEDIATE")
    append_rows(db, "consent_events", plain)
    db.execute("COMMIT")


def _ledger_rows(path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT * FROM consent_events ORDER BY seq").fetchall()


@pytest.fixture
def fixed_clock(monkeypatch):
    monkeypatch.setattr(sqlite_store, "_now_micros", lambda: NOW)


def test_the_arrow_load_gives_the_row_by_row_ledger(tmp_path, fixed_clock):
    bulk, plain = tmp_path / "bulk.sqlite", tmp_path / "plain.sqlite"
    with SqliteConsentStore(bulk) as store:
        first = store.append_table(_table(_FIRST), source="ingest")
        second = store.append_table(_table(_SECOND), source="ingest")
        heads = [report.head for report in store.verify()]
    with SqliteConsentStore(plain) as store:
        _row_by_row(store, _FIRST)
        _row_by_row(store, _SECOND)
        assert [report.head for report in store.verify()][0] == heads[0]
    assert (first.offered, first.recorded, second.recorded) == (7, 5, 2)
    assert _ledger_rows(bulk) == _ledger_rows(plain)
    assert [row[1] for row in _ledger_rows(bulk)] == ["C3", "C1", "C2", "C\"4\\é", "C5", "C6", "C7"]


def _indexes(path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'consent_events' "
                          "ORDER BY name").fetchall()


def test_a_first_load_that_fails_midway_leaves_the_ledger_as_it_was(tmp_path, monkeypatch, fixed_clock):
    """The rows are read and hashed a batch ahead by a worker thread: a failure there, or in SQLite,
    rolls the whole load back (no row, every dropped index back), and the next load is whole."""
    path = tmp_path / "ledger.sqlite"
    rows = [(f"E{i}", f"A{i % 7}", i % 30, "grant", "personalization", "2019-06", "app") for i in range(40)]
    with SqliteConsentStore(path) as store:
        indexes = _indexes(path)
        assert len(indexes) == 3   # by account, by event id, and the chain's unsealed rows
        recorded = sqlite_store._as_recorded

        def failing_third_batch(events):
            failing_third_batch.calls += 1
            if failing_third_batch.calls == 3:
                raise OSError("disk gone while reading the ingested files")
            return recorded(events)

        failing_third_batch.calls = 0
        monkeypatch.setattr(sqlite_store, "_as_recorded", failing_third_batch)
        with pytest.raises(OSError, match="disk gone"):
            store.append_table(_table(rows), source="ingest", batch_rows=10)
        monkeypatch.setattr(sqlite_store, "_as_recorded", recorded)
        assert _ledger_rows(path) == [] and _indexes(path) == indexes
        assert [report.ok for report in store.verify()] == [True, True, True]
        monkeypatch.setattr(sqlite_store, "_record_snapshot", _raise(sqlite3.OperationalError("disk full")))
        with pytest.raises(sqlite3.OperationalError, match="disk full"):
            store.append_table(_table(rows), source="ingest", batch_rows=10)
        monkeypatch.undo()
        monkeypatch.setattr(sqlite_store, "_now_micros", lambda: NOW)
        assert _ledger_rows(path) == [] and _indexes(path) == indexes
        assert store.append_table(_table(rows), source="ingest", batch_rows=10).recorded == 40
        assert _indexes(path) == indexes and store.events().equals(store.events_sql())
    with SqliteConsentStore(tmp_path / "plain.sqlite") as plain:
        _row_by_row(plain, rows)
    assert _ledger_rows(path) == _ledger_rows(tmp_path / "plain.sqlite")


def test_a_first_load_neither_waits_for_a_reader_nor_keeps_it_from_reading(tmp_path):
    """A reader inside a read transaction while the history's first load runs: the load does not wait for it,
    and the reader keeps reading the ledger as it was (the WAL: no journal switch that would lock readers out
    for the length of the load), then sees the whole load."""
    path = tmp_path / "ledger.sqlite"
    rows = [(f"E{i}", f"A{i % 7}", i % 30, "grant", "personalization", "2019-06", "app") for i in range(300)]
    with SqliteConsentStore(path) as store:
        reader = sqlite3.connect(path, isolation_level=None)
        try:
            reader.execute("BEGIN")
            assert reader.execute("SELECT COUNT(*) FROM consent_events").fetchone() == (0,)
            started = time.monotonic()
            assert store.append_table(_table(rows), source="ingest", batch_rows=50).recorded == 300
            assert time.monotonic() - started < 20   # the busy timeout is 60 s
            assert reader.execute("SELECT COUNT(*) FROM consent_events").fetchone() == (0,)
            reader.execute("COMMIT")
            assert reader.execute("SELECT COUNT(*) FROM consent_events").fetchone() == (300,)
        finally:
            reader.close()
        assert [report.ok for report in store.verify()] == [True, True, True]


def _raise(error: Exception):
    def raising(*args, **kwargs):
        raise error
    return raising


def test_the_snapshot_agrees_with_sql_and_is_refused_once_the_ledger_moved(tmp_path):
    path = tmp_path / "ledger.sqlite"
    with SqliteConsentStore(path) as store:
        store.append_table(_table(_FIRST), source="ingest")
        assert store.read_snapshot().num_rows == 5   # written with the load, at its position
        assert store.events().equals(store.events_sql())
        store.append([ConsentEvent("A4", T0, "policy_accept")], source="api")
        with pytest.raises(StaleSnapshotError, match="reflects 5 events.*ledger is at 6"):
            store.read_snapshot()
        assert store.events().equals(store.events_sql())   # rebuilt from SQL at the new position
        assert store.read_snapshot().num_rows == 6
        store.append_table(_table(_SECOND), source="ingest")
        assert store.events().equals(store.events_sql())
        store.erase_account("A1")
        snapshot = store.read_snapshot()
        assert "A1" not in snapshot.column("account_id").to_pylist()
        assert store.events().equals(store.events_sql())
        assert all(report.ok for report in store.verify())


def test_any_redaction_drops_the_snapshot_and_the_rebuild_matches_sql(tmp_path):
    path = tmp_path / "ledger.sqlite"
    odd = [("D1", "A\x1fB", 1, "policy_accept", None, "2019-06", "app")]   # the column separator of the SQL read
    with SqliteConsentStore(path) as store:
        store.append_table(_table(_FIRST + odd), source="ingest")
        db = store._connection
        db.execute("BEGIN IMMEDIATE")
        redact(db, "consent_events", "account_id = ?", ("A2",), reason="erasure request")   # as pipelines.dsr does
        assert db.execute("SELECT COUNT(*) FROM consent_snapshot_data").fetchone()[0] == 0
        db.execute("COMMIT")
        with pytest.raises(StaleSnapshotError):
            store.read_snapshot()
        rebuilt = store.events()
        assert rebuilt.equals(store.events_sql())
        assert "A2" not in rebuilt.column("account_id").to_pylist()
        assert "A\x1fB" in rebuilt.column("account_id").to_pylist()
        assert all(report.ok for report in store.verify())


def test_an_erasure_rewrites_the_snapshot_a_row_group_at_a_time_into_the_bytes_a_whole_rewrite_gives(
        tmp_path, monkeypatch):
    monkeypatch.setattr(sqlite_store, "_SNAPSHOT_GROUP_ROWS", 100)   # 2,500 events: 25 row groups
    path = tmp_path / "ledger.sqlite"
    _large_ledger(path)   # A5 erased: the first rewrite
    with SqliteConsentStore(path) as store:
        before = store.read_snapshot()
        erased = ["A7", "A40", "A96"]
        for account in erased:
            store.erase_account(account)
        kept = before.filter(pa.compute.invert(pa.compute.is_in(before.column("account_id"),
                                                                 value_set=pa.array(erased))))
        data = store._connection.execute("SELECT parquet FROM consent_snapshot_data").fetchone()[0]
        assert bytes(data) == bytes(sqlite_store._snapshot_parquet(kept)[0])
        assert store.read_snapshot().equals(kept) and kept.num_rows == 2500 - 3 * 26 - 25
        assert store.events().equals(store.events_sql())
        assert all(report.ok for report in store.verify())


def test_an_erasure_that_fails_while_the_snapshot_is_rewritten_changes_nothing(tmp_path, monkeypatch):
    path = tmp_path / "ledger.sqlite"
    rows = 1300   # 650 accounts: two batches of redaction
    with SqliteConsentStore(path) as store:
        store.append_table(pa.table({
            "event_id": [f"C{i}" for i in range(rows)], "account_id": [f"A{i % 650}" for i in range(rows)],
            "event_at": pa.array([T0 + dt.timedelta(seconds=i) for i in range(rows)], TIMESTAMP),
            "event_type": ["grant"] * rows, "purpose": ["personalization"] * rows,
            "policy_version": ["2019-06"] * rows, "channel": ["app"] * rows}), source="ingest")
        before = {table: store._connection.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
                  for table in ("consent_events", "consent_snapshot_data", "consent_snapshots", "ledger_redactions")}
    rewriting = threading.Event()
    real_without, real_redact = sqlite_store._snapshot_without, sqlite_store.redact
    calls = []

    def watched_without(*args):
        rewriting.set()
        return real_without(*args)

    def failing_redact(db, *args, **kwargs):
        calls.append(real_redact(db, *args, **kwargs))   # the rows are redacted inside the transaction
        if len(calls) == 2:
            assert rewriting.wait(10), "the snapshot was not being rewritten meanwhile"
            raise sqlite3.OperationalError("disk I/O error")
        return calls[-1]

    monkeypatch.setattr(sqlite_store, "_snapshot_without", watched_without)
    monkeypatch.setattr(sqlite_store, "redact", failing_redact)
    with SqliteConsentStore(path) as store:
        with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
            store._connection.execute("BEGIN IMMEDIATE")
            try:
                sqlite_store.redact_consent_events(store._connection, [f"A{i}" for i in range(650)],
                                                   reason="erasure request")
            finally:
                store._connection.execute("ROLLBACK")
        assert calls == [1000, 300]
        after = {table: store._connection.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall() for table in before}
        assert after == before
        assert store.events().equals(store.events_sql())
        assert all(report.ok for report in store.verify())
    assert not [t for t in threading.enumerate() if t.name.startswith("consent-snapshot")]


def test_an_erasure_of_an_account_without_consent_events_leaves_the_snapshot_alone(tmp_path, monkeypatch):
    path = tmp_path / "ledger.sqlite"
    _large_ledger(path)
    rewrites = []
    monkeypatch.setattr(sqlite_store, "_snapshot_without", lambda *args: rewrites.append(args))
    with SqliteConsentStore(path) as store:
        data = store._connection.execute("SELECT parquet FROM consent_snapshot_data").fetchone()
        assert store.erase_account("A1000") == 0
        assert store._connection.execute("SELECT parquet FROM consent_snapshot_data").fetchone() == data
    assert rewrites == []   # not even made and thrown away: at 1M accounts that is seconds


def test_an_edited_snapshot_is_refused(tmp_path):
    path = tmp_path / "ledger.sqlite"
    with SqliteConsentStore(path) as store:
        store.append_table(_table(_FIRST), source="ingest")
        store._connection.execute("UPDATE consent_snapshot_data SET parquet = parquet || x'00'")
        with pytest.raises(ChainBrokenError, match="does not match its recorded SHA-256"):
            store.events()


def _large_ledger(path, rows: int = 2500):
    with SqliteConsentStore(path) as store:
        table = pa.table({"event_id": [f"C{i}" for i in range(rows)], "account_id": [f"A{i % 97}" for i in range(rows)],
                          "event_at": pa.array([T0 + dt.timedelta(seconds=i) for i in range(rows)], TIMESTAMP),
                          "event_type": ["grant"] * rows, "purpose": ["personalization"] * rows,
                          "policy_version": ["2019-06"] * rows, "channel": ["app"] * rows})
        store.append_table(table, source="ingest")
        store.erase_account("A5")   # redacted rows: checked row by row inside their chunk


@pytest.mark.parametrize(("statement", "broken_at", "problem"), [
    ("UPDATE consent_events SET event_type = 'revoke' WHERE seq = 1700", 1700, "changed after it was recorded"),
    ("UPDATE consent_events SET event_at = event_at + 1 WHERE seq = 2", 2, "changed after it was recorded"),
    ("UPDATE consent_events SET purpose = NULL WHERE seq = 2499", 2499, "changed after it was recorded"),
    ("UPDATE consent_events SET event_at = 1.5 WHERE seq = 1200", 1200, "changed after it was recorded"),
    ("UPDATE consent_events SET account_id = 'A1é' WHERE seq = 2", 2, "changed after it was recorded"),
    ("UPDATE consent_events SET recorded_at = recorded_at + 0.5 WHERE seq = 3", 3, "changed after it was recorded"),
    ("UPDATE consent_events SET event_id = x'4331' WHERE seq = 5", 5, "changed after it was recorded"),
    ("UPDATE consent_events SET account_id = 1.5 WHERE seq = 2100", 2100, "changed after it was recorded"),
    ("DELETE FROM consent_events WHERE seq = 1001", 1001, "does not link"),
    ("UPDATE consent_events SET chain_redacted = 1 WHERE seq = 7", 7, "marked redacted"),
])
def test_the_chunked_verifier_finds_each_edit_where_the_row_by_row_one_does(tmp_path, monkeypatch, statement,
                                                                            broken_at, problem):
    path = tmp_path / "ledger.sqlite"
    _large_ledger(path)
    db = sqlite3.connect(path, isolation_level=None)
    assert verify(db, "consent_events", chunk_rows=1000).ok
    db.execute("DROP TRIGGER consent_events_chain_no_update")
    db.execute("DROP TRIGGER consent_events_chain_no_delete")
    db.execute(statement)
    chunked = verify(db, "consent_events", chunk_rows=1000)
    monkeypatch.setattr(ledger_chain, "_fast_chunk", lambda *args: None)   # every row through the Python check
    exact = verify(db, "consent_events", chunk_rows=1000)
    assert (chunked.ok, chunked.broken_at) == (False, broken_at) and problem in chunked.problem
    assert (exact.broken_at, exact.problem) == (chunked.broken_at, chunked.problem)
