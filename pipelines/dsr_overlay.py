"""What data-subject requests make every later ingest do: tombstones of erased persons, corrections.

Tombstones (``dsr_erased_ids``) hold, for each erased person, the TOMBSTONE pseudonym of their
account ids, their phone numbers (normalized as ingest normalizes them) and the devices only they
used: ``HMAC(derive_key(key, TOMBSTONE_DOMAIN), normalize(value))``, keyed by the key file's
tombstone secret, which no rotation or destruction of a key version removes. Each row records the
fingerprint of that secret, so ingest refuses a key that cannot recognise them instead of letting
the persons back in. Nothing else is kept: no raw id, no link between the rows beyond the moment.

Tombstones made before the tombstone secret existed (``dsr_tombstones``: account ids only, one
pseudonym per key version then held) are still honoured with every version the key holds; ingest
re-makes those it recognises in the raw feed with the tombstone secret and forgets the old rows.
While a workspace holds any, destroying a key version could let those persons back in:
``legacy_tombstone_count`` tells ``portrait keys destroy --workspace`` to refuse.

Corrections (``dsr_corrections``: raw account id, column, the corrected value as text, when) are
in the identifiable zone like the ingested rows they correct, and are removed on erasure. Ingest
applies the latest correction of each (account, column) to the raw rows before it checks them, so
re-ingesting the old source never restores the old value.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from profiling.ledger_file import immediate_transaction, ledger_connection
from profiling.errors import KeyFileError
from profiling.keys import MasterKey
from profiling.ledger_chain import REDACTED_ID, appending, redact, register_table
from profiling.pseudonyms import TOMBSTONE, pseudonymize
from profiling.schema import TABLES, PrivacyClass, Table

__all__ = [
    "TOMBSTONE_KINDS",
    "REDACTED",
    "Tombstones",
    "load_tombstones",
    "record_tombstones",
    "forget_legacy_tombstones",
    "remember_erasures",
    "legacy_tombstone_count",
    "load_corrections",
    "record_correction",
    "forget_corrections",
    "redact_accounts",
    "PHONE_FIELDS",
    "phone_sides",
    "create_overlay_tables",
]

# Columns of each raw table holding a phone number (``Field.identifier`` "phone"): what names a person by phone.
PHONE_FIELDS: dict[str, list[str]] = {t.name: [f.name for f in t.fields if f.identifier == "phone"]
                                      for t in TABLES.values()}

# Identifier kinds a tombstone covers (``profiling.schema.Field.identifier``).
TOMBSTONE_KINDS: tuple[str, ...] = ("account_id", "phone", "device_id")
# What an erased person's name, phone and address become on a waybill that belongs to someone else.
REDACTED = "[erased]"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dsr_erased_ids (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    tombstone_id    TEXT NOT NULL UNIQUE, -- TOMBSTONE pseudonym (tombstone secret) of a normalized identifier
    kind            TEXT NOT NULL,        -- account_id, phone or device_id
    key_fingerprint TEXT NOT NULL,        -- fingerprint of the tombstone secret that made it
    erased_at       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS dsr_corrections (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id   TEXT NOT NULL,   -- raw account id (identifiable zone), removed on erasure
    field        TEXT NOT NULL,   -- corrected column of accounts
    value        TEXT,            -- the corrected value as given (text, as in a CSV)
    corrected_at TEXT NOT NULL
);
"""
_LEGACY_TABLE = "dsr_tombstones"
# Both tables are hash-chained and append-only (``profiling.ledger_chain``): tombstones are never
# removed; an erasure redacts a correction's account id and value, keeping its place in the chain.
_CHAINS: dict[str, dict] = {
    "dsr_erased_ids": {"key": "id", "columns": ["id", "tombstone_id", "kind", "key_fingerprint", "erased_at"]},
    "dsr_corrections": {"key": "id", "columns": ["id", "account_id", "field", "value", "corrected_at"],
                        "placeholders": {"account_id": REDACTED_ID, "value": None}},
}

def create_overlay_tables(db: sqlite3.Connection) -> None:
    """Create the tombstone and correction tables and chain them (inside the caller's transaction)."""
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)
    for table, chain in _CHAINS.items():
        register_table(db, table, **chain)


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


def _members(values: pa.Array, value_set: pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(pc.is_in(values, value_set=value_set), False).to_numpy(zero_copy_only=False),
                      dtype=bool)


def _as_array(values) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not isinstance(values, pa.Array):
        values = pa.array(list(values), pa.string())
    return values.cast(pa.string())


@dataclass(frozen=True)
class Tombstones:
    """A workspace's tombstones: pseudonyms by identifier kind, the secrets that made them, the older ones."""

    by_kind: Mapping[str, frozenset[str]]
    fingerprints: frozenset[str]
    legacy: frozenset[str]

    def __bool__(self) -> bool:
        return bool(self.legacy) or any(self.by_kind.values())

    def check_key(self, key: MasterKey) -> None:
        """Raise ``KeyFileError`` unless ``key`` holds the tombstone secret that made every tombstone."""
        if not self.fingerprints:
            return
        if key.tombstone_fingerprint not in self.fingerprints or len(self.fingerprints) > 1:
            made_with = ", ".join(sorted(self.fingerprints))
            raise KeyFileError(f"the workspace's tombstones were made with tombstone secret {made_with}, the key "
                               f"given holds {key.tombstone_fingerprint or 'none'}; pass the key file used for the "
                               f"erasures (`portrait keys show-versions` prints its tombstone fingerprint)")

    def erased(self, values, key: MasterKey, kind: str) -> np.ndarray:
        """True for each raw value of identifier ``kind`` (normalized) that is tombstoned."""
        values = _as_array(values)
        hit = np.zeros(len(values), dtype=bool)
        stones = self.by_kind.get(kind, frozenset())
        if len(values) == 0:
            return hit
        if stones:
            pseudonyms = pseudonymize(values, key, TOMBSTONE, identifier=kind)
            hit |= _members(pseudonyms, pa.array(sorted(stones), pa.string()))
        if kind == "account_id" and self.legacy:
            hit |= self.legacy_erased(values, key)[0]
        return hit

    def legacy_erased(self, values, key: MasterKey) -> tuple[np.ndarray, set[str]]:
        """Account ids tombstoned the old way (any held key version), and the old tombstones they match."""
        values = _as_array(values)
        hit = np.zeros(len(values), dtype=bool)
        matched: set[str] = set()
        if not self.legacy or len(values) == 0:
            return hit, matched
        stones = pa.array(sorted(self.legacy), pa.string())
        for version in key.versions:
            pseudonyms = pseudonymize(values, key, TOMBSTONE, identifier="account_id", version=version)
            found = _members(pseudonyms, stones)
            matched.update(pseudonyms.filter(pa.array(found)).to_pylist())
            hit |= found
        return hit, matched


def load_tombstones(workspace) -> Tombstones:
    """The tombstones of ``workspace`` (empty when nothing was erased or no ledger exists)."""
    by_kind: dict[str, set[str]] = {kind: set() for kind in TOMBSTONE_KINDS}
    fingerprints: set[str] = set()
    legacy: set[str] = set()
    if workspace.ledger.is_file():
        db = ledger_connection(workspace.ledger)
        try:
            if _has_table(db, "dsr_erased_ids"):
                for stone, kind, fingerprint in db.execute(
                        "SELECT tombstone_id, kind, key_fingerprint FROM dsr_erased_ids"):
                    by_kind.setdefault(kind, set()).add(stone)
                    fingerprints.add(fingerprint)
            if _has_table(db, _LEGACY_TABLE):
                legacy = {row[0] for row in db.execute(f"SELECT tombstone_id FROM {_LEGACY_TABLE}")}
        finally:
            db.close()
    return Tombstones({k: frozenset(v) for k, v in by_kind.items()}, frozenset(fingerprints), frozenset(legacy))


def record_tombstones(db: sqlite3.Connection, key: MasterKey, ids: Mapping[str, Iterable[str]],
                      erased_at: dt.datetime) -> int:
    """Tombstone raw ``ids`` by identifier kind (inside the caller's transaction); returns rows added."""
    rows = []
    for kind, values in ids.items():
        if kind not in TOMBSTONE_KINDS:
            raise ValueError(f"tombstones cover {', '.join(TOMBSTONE_KINDS)}, not {kind!r}")
        values = values.to_pylist() if isinstance(values, (pa.Array, pa.ChunkedArray)) else values
        values = sorted({v for v in values if v is not None and str(v).strip()})
        if values:
            stones = pseudonymize(values, key, TOMBSTONE, identifier=kind).to_pylist()
            rows += [(stone, kind, key.tombstone_fingerprint, erased_at.isoformat()) for stone in stones if stone]
    before = db.total_changes
    with appending(db, "dsr_erased_ids"):
        db.executemany("INSERT OR IGNORE INTO dsr_erased_ids (tombstone_id, kind, key_fingerprint, erased_at) "
                       "VALUES (?, ?, ?, ?)", rows)
    return db.total_changes - before


def record_correction(db: sqlite3.Connection, account_id: str, column: str, value: str | None,
                      corrected_at: dt.datetime) -> None:
    """Append one correction to the overlay (inside the caller's transaction)."""
    with appending(db, "dsr_corrections"):
        db.execute("INSERT INTO dsr_corrections (account_id, field, value, corrected_at) VALUES (?, ?, ?, ?)",
                   (account_id, column, value, corrected_at.isoformat()))


def redact_accounts(db: sqlite3.Connection, table: str, account_ids: Iterable[str], *, reason: str) -> int:
    """Redact the rows of chained ``table`` whose ``account_id`` is one of ``account_ids`` (inside the caller's
    transaction; ``profiling.ledger_chain.redact``, a few hundred ids per statement); returns rows redacted."""
    ids = sorted(set(account_ids))
    return sum(redact(db, table, f"account_id IN ({', '.join('?' * len(ids[start:start + 500]))})",
                      ids[start:start + 500], reason=reason) for start in range(0, len(ids), 500))


def forget_corrections(db: sqlite3.Connection, account_ids: Iterable[str]) -> int:
    """Redact the accounts' corrections (account id and value; the chain keeps their place); returns how many."""
    return redact_accounts(db, "dsr_corrections", account_ids, reason="erasure request")


def forget_legacy_tombstones(db: sqlite3.Connection, stones: Iterable[str]) -> int:
    """Drop old per-version tombstones once re-made with the tombstone secret; returns rows removed."""
    stones = sorted(set(stones))
    if not stones or not _has_table(db, _LEGACY_TABLE):
        return 0
    return sum(db.execute(f"DELETE FROM {_LEGACY_TABLE} WHERE tombstone_id = ?", (s,)).rowcount for s in stones)


def remember_erasures(workspace, key: MasterKey, ids: Mapping[str, Iterable[str]], legacy: Iterable[str]) -> int:
    """Tombstone ``ids`` with the tombstone secret and forget the pre-secret tombstones they replace.

    Ingest calls it with what a raw source links to erased persons, so tombstones follow the feed
    (a phone first seen after the erasure, a device) and stop depending on key versions.
    """
    db = ledger_connection(workspace.ledger)
    try:
        with immediate_transaction(db):
            create_overlay_tables(db)
            added = record_tombstones(db, key, ids, dt.datetime.now(dt.timezone.utc))
            forget_legacy_tombstones(db, legacy)
    finally:
        db.close()
    return added


def legacy_tombstone_count(workspace) -> int:
    """Tombstones of ``workspace`` that still depend on key versions (made before the tombstone secret)."""
    if not workspace.ledger.is_file():
        return 0
    db = ledger_connection(workspace.ledger)
    try:
        if not _has_table(db, _LEGACY_TABLE):
            return 0
        return db.execute(f"SELECT COUNT(*) FROM {_LEGACY_TABLE}").fetchone()[0]
    finally:
        db.close()


def load_corrections(workspace) -> dict[str, dict[str, str | None]]:
    """The latest correction per (account, column): ``{column: {raw account id: value as text}}``."""
    latest: dict[str, dict[str, str | None]] = {}
    if not workspace.ledger.is_file():
        return latest
    db = ledger_connection(workspace.ledger)
    try:
        if _has_table(db, "dsr_corrections"):
            for account, column, value in db.execute(
                    "SELECT account_id, field, value FROM dsr_corrections "
                    "WHERE account_id NOT LIKE 'redacted:%' ORDER BY id"):
                latest.setdefault(column, {})[account] = value
    finally:
        db.close()
    return latest


def phone_sides(table: Table) -> dict[str, list[str]]:
    """Phone columns naming one party of a row, and that party's columns: ``{'receiver_phone': [receiver_...]}``.

    A party is the fields sharing the phone column's prefix (``shipper_``, ``receiver_``); a bare
    ``phone`` column (the account's own) names no separate party.

    >>> phone_sides(TABLES["waybills"])["receiver_phone"]
    ['receiver_name', 'receiver_phone', 'receiver_address']
    >>> phone_sides(TABLES["accounts"])
    {}
    """
    sides = {}
    for f in table.fields:
        if f.identifier == "phone" and f.name.endswith("_phone"):
            prefix = f.name[: -len("phone")]
            sides[f.name] = [g.name for g in table.fields
                             if g.name.startswith(prefix) and g.privacy is PrivacyClass.DIRECT_IDENTIFIER]
    return sides
