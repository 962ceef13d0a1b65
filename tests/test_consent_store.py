"""The SQLite consent ledger: WAL, append-only, idempotent loads, all-or-nothing appends, durable."""

from __future__ import annotations

import datetime as dt
import sqlite3

import pyarrow as pa
import pytest

from profiling.consent import ConsentError, ConsentEvent, ConsentStore, SqliteConsentStore
from profiling.ledger_chain import ChainBrokenError
from profiling.schema import TIMESTAMP

UTC = dt.timezone.utc
T0 = dt.datetime(2025, 1, 1, tzinfo=UTC)


def event(account="A1", days=0, kind="grant", purpose="personalization", **extra) -> ConsentEvent:
    return ConsentEvent(account, T0 + dt.timedelta(days=days), kind, purpose, **extra)


def table(rows: list[tuple]) -> pa.Table:
    names = ["event_id", "account_id", "event_at", "event_type", "purpose", "policy_version", "channel"]
    columns = list(zip(*rows))
    return pa.table({name: pa.array(list(values), TIMESTAMP if name == "event_at" else pa.string())
                     for name, values in zip(names, columns)})


@pytest.fixture
def path(tmp_path):
    return tmp_path / "ledger.sqlite"


def test_wal_mode_and_the_protocol(path):
    with SqliteConsentStore(path) as store:
        assert isinstance(store, ConsentStore)
        assert store._connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persistent in the file


def test_append_table_is_idempotent_by_event_id(path):
    rows = [("C1", "A1", T0, "policy_accept", None, "2019-06", "app"),
            ("C2", "A1", T0, "grant", "personalization", "2019-06", "app")]
    with SqliteConsentStore(path) as store:
        first = store.append_table(table(rows), source="ingest")
        assert (first.offered, first.recorded, first.already_present) == (2, 2, 0)
        again = store.append_table(table(rows + [("C3", "A2", T0, "dnd_on", None, "2019-06", "web")]),
                                   source="ingest")
        assert (again.offered, again.recorded, again.already_present) == (3, 1, 2)
        assert store.events().num_rows == 3
        with pytest.raises(ConsentError, match="lack column.*channel"):
            store.append_table(table(rows).drop_columns(["channel"]), source="ingest")
        with pytest.raises(ConsentError, match="plain word"):
            store.append_table(table(rows), source="x'; DROP TABLE consent_events; --")


def test_same_event_id_twice_through_the_api_is_refused(path):
    with SqliteConsentStore(path) as store:
        store.append([event(event_id="e1")], source="api")
        with pytest.raises(ConsentError, match="event id 'e1' is already in the ledger"):
            store.append([event(days=1, event_id="e1")], source="api")
        assert len(store.history("A1")) == 1


@pytest.mark.parametrize(("bad", "match"), [
    (event(purpose="personalisation"), "unknown purpose 'personalisation'"),
    (event(kind="like"), "event type 'like' is not one of"),
    (event(kind="dnd_on"), "applies to the whole account; give no purpose"),
    (event(purpose=None), "needs a purpose"),
    (event(account=" "), "account id ' ' is empty"),
    (ConsentEvent("A1", dt.datetime(2025, 1, 1), "policy_accept"), "timezone-aware"),
    (event(channel="fax"), "channel 'fax' is not one of"),
    (event(policy_version="2030-01"), "policy version '2030-01' is not one of"),
])
def test_a_bad_event_is_rejected_and_nothing_is_appended(path, bad, match):
    with SqliteConsentStore(path) as store:
        with pytest.raises(ConsentError, match=match):
            store.append([event(account="A1", days=0), event(account="A2"), bad], source="api")
        assert store.events().num_rows == 0


def test_a_refusal_inside_the_transaction_rolls_back_the_whole_batch(path):
    with SqliteConsentStore(path) as store:
        store.append([event(kind="cancel", purpose=None, days=5)], source="api")
        with pytest.raises(ConsentError, match="cancellation is final"):
            store.append([event(account="A2"), event(account="A1", days=6)], source="api")
        assert store.history("A2") == [] and len(store.history("A1")) == 1


def test_events_are_append_only(path):
    with SqliteConsentStore(path) as store:
        store.append([event()], source="api")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            store._connection.execute("UPDATE consent_events SET event_type = 'revoke'")
        assert store.history("A1")[0]["event_type"] == "grant"


def test_reopen_persists_events_and_audit(path):
    with SqliteConsentStore(path) as store:
        store.append([event(days=2, kind="revoke"), event(days=1)], source="cli")
    with SqliteConsentStore(path) as store:
        history = store.history("A1")
        assert [h["event_type"] for h in history] == ["grant", "revoke"]  # ledger order is by time
        assert history[0]["event_at"] == T0 + dt.timedelta(days=1) and history[0]["source"] == "cli"
        events = store.events(["A1", "A9"])
        assert events.column_names == ["account_id", "event_at", "event_type", "purpose", "policy_version"]
        assert events.num_rows == 2 and events.schema.field("event_at").type == TIMESTAMP


def test_erase_account_removes_only_that_account(path):
    with SqliteConsentStore(path) as store:
        store.append([event("A1"), event("A2"), event("A1", days=1, kind="revoke")], source="api")
        assert store.erase_account("A1") == 2
        assert store.history("A1") == [] and len(store.history("A2")) == 1
        assert path.with_name("ledger.sqlite-wal").stat().st_size == 0  # checkpointed: no copy in the WAL
    with sqlite3.connect(path) as db:
        assert "A1" not in "\n".join(db.iterdump())


def test_cancellation_earlier_in_the_same_batch_is_final_too(path):
    with SqliteConsentStore(path) as store:
        with pytest.raises(ConsentError, match="cancellation is final"):
            store.append([event(days=3), event(kind="cancel", purpose=None, days=1)], source="api")
        assert store.events().num_rows == 0
        store.append([event(days=1), event(kind="cancel", purpose=None, days=2)], source="api")
        assert [h["event_type"] for h in store.history("A1")] == ["grant", "cancel"]


def test_events_cannot_be_deleted_and_erasure_keeps_the_chain_whole(path):
    with SqliteConsentStore(path) as store:
        store.append([event("A1"), event("A2"), event("A1", days=1, kind="revoke"), event("A3")], source="api")
        with pytest.raises(sqlite3.IntegrityError, match="never deleted"):
            store._connection.execute("DELETE FROM consent_events WHERE event_type = 'revoke'")
        head = store.verify()[0].head
        assert store.erase_account("A1") == 2
        report = store.verify()[0]
        assert report.ok and report.rows == 4 and report.head == head   # the erased rows keep their hashes
        assert store.events().column("account_id").to_pylist() == ["A2", "A3"]
        kept = store._connection.execute("SELECT event_type, account_id FROM consent_events ORDER BY seq").fetchall()
        assert [kind for kind, _ in kept] == ["redacted", "grant", "grant", "redacted"]
        assert all(account.startswith("redacted:") for kind, account in kept if kind == "redacted")
        store.require_intact()


def test_a_ledger_made_before_chaining_is_migrated_once(path):
    with sqlite3.connect(path) as db:   # the consent table as earlier versions made it, with two events
        db.executescript("""
            CREATE TABLE consent_events (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE,
                account_id TEXT NOT NULL, event_at INTEGER NOT NULL, event_type TEXT NOT NULL, purpose TEXT,
                policy_version TEXT NOT NULL, channel TEXT NOT NULL, source TEXT NOT NULL,
                recorded_at INTEGER NOT NULL);
            CREATE TRIGGER consent_events_append_only BEFORE UPDATE ON consent_events
            BEGIN SELECT RAISE(ABORT, 'consent events are append-only: record a new event instead'); END;
            INSERT INTO consent_events (event_id, account_id, event_at, event_type, purpose, policy_version, channel,
                source, recorded_at) VALUES ('e1', 'A1', 1, 'grant', 'personalization', 'v1', 'web', 'api', 5),
                ('e2', 'A1', 2, 'revoke', 'personalization', 'v1', 'web', 'api', 6);
        """)
    with SqliteConsentStore(path) as store:
        store.append([event("A2")], source="api")
        report = store.verify()[0]
        assert report.ok and report.rows == 3 and report.migrated_rows == 2
        assert store.erase_account("A1") == 2 and store.verify()[0].ok   # the old trigger no longer blocks it


def test_an_event_inserted_outside_the_application_breaks_the_chain(path):
    with SqliteConsentStore(path) as store:
        store.append([event("A1", kind="revoke")], source="api")
        store._connection.execute("INSERT INTO consent_events (event_id, account_id, event_at, event_type, purpose, "
                                  "policy_version, channel, source, recorded_at) VALUES ('x', 'A1', 9, 'grant', "
                                  "'personalization', 'v1', 'web', 'api', 9)")
        with pytest.raises(ChainBrokenError, match="not sealed"):
            store.require_intact()


def test_a_new_ledger_file_has_64_kib_pages_and_an_older_file_keeps_its_own(tmp_path):
    with SqliteConsentStore(tmp_path / "new.sqlite") as store:
        assert store._connection.execute("PRAGMA page_size").fetchone()[0] == 65536
    older = tmp_path / "older.sqlite"
    with sqlite3.connect(older) as db:   # a ledger file made with SQLite's 4 KiB pages
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE other_area (x INTEGER)")
    with SqliteConsentStore(older) as store:
        store.append([event()], source="api")
        assert store._connection.execute("PRAGMA page_size").fetchone()[0] == 4096
        assert store.verify()[0].ok and len(store.history("A1")) == 1
