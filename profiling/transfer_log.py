"""The transfer log: every cross-border transfer, and every refusal, on record in ``WS/ledger.sqlite``.

Two append-only, hash-chained tables (``profiling.ledger_chain``; ``portrait ledger verify``
recomputes them, the privacy review prints their heads):

``transfer_log``      one row per transfer asked for: when, who ran it, the receiver, its country,
                      legal mechanism and purpose, the fields, ``sent`` or ``refused`` and why, the
                      rows and persons sent, the persons left out by consent reason (counts), the
                      consent gate's audit record, and the file's name and SHA-256;
``transfer_persons``  per sent transfer, each person in it as a PERSON pseudonym (HMAC of the
                      account id, key version recorded) with their rows: never a raw id, so the
                      log itself names nobody without the master key.

A data-subject export finds a person's transfers by their pseudonyms under every key version the
key file holds (``transfers_about``); a destroyed key version unlinks the person from the
transfers recorded under it. Erasure does not redact the log: it is the record of what left,
holding pseudonyms only.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from profiling.ledger_file import ensure_schema, immediate_transaction, ledger_connection
from profiling.keys import MasterKey
from profiling.ledger_chain import append_rows, appending, register_table
from profiling.pseudonyms import PERSON, pseudonymize

__all__ = ["TRANSFER_TABLES", "TransferEntry", "record_transfer", "transfer_summary", "transfers_about"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS transfer_log (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    transferred_at   TEXT NOT NULL,     -- ISO 8601, UTC: the moment consent was decided
    operator         TEXT NOT NULL,     -- who ran the export
    receiver         TEXT NOT NULL,
    country          TEXT NOT NULL,     -- ISO 3166-1 alpha-2 of the receiver
    mechanism        TEXT NOT NULL,     -- PIPL Art. 38 mechanism
    purpose          TEXT NOT NULL,
    fields           TEXT NOT NULL,     -- JSON list of the fields sent (or asked for, when refused)
    outcome          TEXT NOT NULL,     -- sent, refused
    reason           TEXT,              -- why it was refused
    rows             INTEGER NOT NULL,
    persons          INTEGER NOT NULL,
    left_out         TEXT NOT NULL,     -- JSON {consent reason: persons}
    consent_audit_id INTEGER,           -- audit_gate_decisions.id of the decision
    file             TEXT,
    file_sha256      TEXT
);
CREATE TABLE IF NOT EXISTS transfer_persons (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    transfer_id INTEGER NOT NULL,       -- transfer_log.id
    person_id   TEXT NOT NULL,          -- PERSON pseudonym of the account
    key_version INTEGER NOT NULL,
    rows        INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS transfer_persons_by_person ON transfer_persons (person_id);
"""
_LOG_COLUMNS = ("id", "transferred_at", "operator", "receiver", "country", "mechanism", "purpose", "fields",
                "outcome", "reason", "rows", "persons", "left_out", "consent_audit_id", "file", "file_sha256")
_PERSON_COLUMNS = ("id", "transfer_id", "person_id", "key_version", "rows")
TRANSFER_TABLES = ("transfer_log", "transfer_persons")


@dataclass(frozen=True)
class TransferEntry:
    """One line of the transfer log (``outcome`` is ``"sent"`` or ``"refused"``)."""

    transferred_at: dt.datetime
    operator: str
    receiver: str
    country: str
    mechanism: str
    purpose: str
    fields: tuple[str, ...]
    outcome: str
    reason: str | None
    rows: int
    persons: int
    left_out: Mapping[str, int]
    consent_audit_id: int | None
    file: str | None = None
    file_sha256: str | None = None


def _register_tables(db: sqlite3.Connection) -> None:
    register_table(db, "transfer_log", key="id", columns=list(_LOG_COLUMNS))
    register_table(db, "transfer_persons", key="id", columns=list(_PERSON_COLUMNS))


@contextmanager
def _log(path: str | os.PathLike) -> Iterator[sqlite3.Connection]:
    connection = ledger_connection(path)
    try:
        ensure_schema(connection, _SCHEMA, _register_tables)
        yield connection
    finally:
        connection.close()


def record_transfer(ledger: str | os.PathLike, entry: TransferEntry,
                    persons: Sequence[tuple[str, int, int]] = ()) -> int:
    """Append ``entry`` and its ``(person pseudonym, key version, rows)`` in one transaction; return its id."""
    if entry.outcome not in ("sent", "refused"):
        raise ValueError(f"transfer outcome must be 'sent' or 'refused', not {entry.outcome!r}")
    with _log(ledger) as db, immediate_transaction(db):
        with appending(db, "transfer_log"):
            cursor = db.execute(
                f"INSERT INTO transfer_log ({', '.join(_LOG_COLUMNS[1:])}) VALUES ({', '.join('?' * 15)})",
                (entry.transferred_at.isoformat(timespec="microseconds"), entry.operator, entry.receiver,
                 entry.country, entry.mechanism, entry.purpose, json.dumps(list(entry.fields)), entry.outcome,
                 entry.reason, entry.rows, entry.persons, json.dumps(dict(entry.left_out), sort_keys=True),
                 entry.consent_audit_id, entry.file, entry.file_sha256))
        transfer_id = int(cursor.lastrowid)
        append_rows(db, "transfer_persons", [(transfer_id, person, version, rows)
                                             for person, version, rows in persons])
    return transfer_id


def _reader(ledger: str | os.PathLike) -> sqlite3.Connection | None:
    """A connection to a ledger that holds the transfer log, or None (no ledger, or no transfer yet)."""
    if not os.path.isfile(ledger):
        return None
    connection = sqlite3.connect(ledger, timeout=60.0)
    tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not set(TRANSFER_TABLES) <= tables:
        connection.close()
        return None
    return connection


def transfers_about(ledger: str | os.PathLike, account_id: str, key: MasterKey) -> list[dict]:
    """The sent transfers that held the account's rows, oldest first: when, receiver, country, mechanism,
    purpose, fields (a JSON list as text) and the person's rows; found by its PERSON pseudonym under
    every key version ``key`` holds."""
    connection = _reader(ledger)
    if connection is None:
        return []
    pseudonyms = [(pseudonymize([account_id], key, PERSON, identifier="account_id", version=v)[0].as_py(), v)
                  for v in key.versions]
    try:
        rows = []
        for person, version in pseudonyms:
            rows += connection.execute(
                "SELECT l.id, l.transferred_at, l.receiver, l.country, l.mechanism, l.purpose, l.fields, p.rows "
                "FROM transfer_persons p JOIN transfer_log l ON l.id = p.transfer_id "
                "WHERE p.person_id = ? AND p.key_version = ? AND l.outcome = 'sent'", (person, version)).fetchall()
    finally:
        connection.close()
    names = ("transfer_id", "transferred_at", "receiver", "country", "mechanism", "purpose", "fields", "rows")
    return [dict(zip(names, row)) for row in sorted(rows)]


def transfer_summary(ledger: str | os.PathLike) -> list[dict]:
    """Per receiver (country, mechanism): transfers sent, rows, distinct persons, refusals, the last one's time."""
    connection = _reader(ledger)
    if connection is None:
        return []
    try:
        rows = connection.execute(
            "SELECT receiver, country, mechanism, SUM(outcome = 'sent'), SUM(CASE WHEN outcome = 'sent' THEN rows "
            "ELSE 0 END), SUM(outcome = 'refused'), MAX(transferred_at) FROM transfer_log "
            "GROUP BY receiver, country, mechanism ORDER BY receiver, country, mechanism").fetchall()
        persons = dict(connection.execute(
            "SELECT l.receiver || '/' || l.country || '/' || l.mechanism, COUNT(DISTINCT p.person_id) "
            "FROM transfer_persons p JOIN transfer_log l ON l.id = p.transfer_id "
            "GROUP BY l.receiver, l.country, l.mechanism").fetchall())
    finally:
        connection.close()
    return [{"receiver": receiver, "country": country, "mechanism": mechanism, "transfers": sent, "rows": sent_rows,
             "persons": persons.get(f"{receiver}/{country}/{mechanism}", 0), "refusals": refused, "last": last}
            for receiver, country, mechanism, sent, sent_rows, refused, last in rows]
