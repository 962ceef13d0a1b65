"""Data-subject requests: export everything held about one account, correct it, or erase it for good.

What belongs to a person is found through the field registry (``profiling.schema``), never through
column-name lists: their account id (every field whose ``identifier`` is ``"account_id"``), the
devices they signed in on, their orders, and the waybills of their account or orders or that name
their phone (as shipper or receiver: the customs ID number on them is theirs). Those raw ids
and their pseudonyms (every key version, every domain the door and the stages use) are matched
against every string column of every Parquet file under the workspace, so zones added later (the
ID-number vault, new outputs) are covered without changes here.

Erasure writes a tombstone first (``dsr_tombstones``: the TOMBSTONE pseudonym of the account id and
the moment, nothing else), then rewrites every affected folder in staging and publishes them
together, then removes the account's consent events and requests from the ledger. Ingest reads
the tombstones (with the master key) and drops the person's rows, so replaying the raw source does
not bring them back.

Ledger tables (``WS/ledger.sqlite``, identifiable zone): ``dsr_requests`` (one row per request:
account, kind, field, when), ``dsr_stale`` (persons whose derived data must be recomputed after a
correction, with their PERSON pseudonym for the analytics zone) and ``dsr_tombstones``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipelines.workspace import Workspace
from profiling.consent.sqlite_store import SqliteConsentStore, ledger_connection
from profiling.csv_cells import write_csv_rows
from profiling.errors import PortraitError
from profiling.keys import MasterKey
from profiling.pseudonyms import DEVICE, MARKETING, ORDER, PERSON, TOMBSTONE, WAYBILL, normalize, pseudonymize
from profiling.schema import TABLES
from profiling.validation import CheckContext, check_batch, coerce_column

__all__ = [
    "DsrError",
    "LinkedIdentifiers",
    "ErasureReport",
    "linked_identifiers",
    "export_account",
    "correct_account",
    "erase_account",
    "tombstone_ids",
    "erased_accounts",
    "stale_persons",
    "clear_stale",
]

# Kinds of identifier that link rows to a person, and the pseudonym domain of each in the analytics zone.
LINK_KINDS: dict[str, str] = {"account_id": PERSON, "device_id": DEVICE, "order_id": ORDER, "waybill_id": WAYBILL}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dsr_requests (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id   TEXT NOT NULL,   -- raw account id (identifiable zone); removed on erasure
    kind         TEXT NOT NULL,   -- export, correct
    field        TEXT,            -- corrected column (the value itself is not kept here)
    requested_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS dsr_stale (
    account_id TEXT NOT NULL,
    person_id  TEXT NOT NULL,     -- PERSON pseudonym (newest key version): what analytics stages read
    field      TEXT NOT NULL,
    since      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS dsr_tombstones (
    tombstone_id TEXT PRIMARY KEY, -- TOMBSTONE pseudonym of the erased account id (one per key version)
    erased_at    TEXT NOT NULL
);
"""


class DsrError(PortraitError):
    """A data-subject request that cannot be carried out as asked (unknown account, bad correction ...)."""


@dataclass(frozen=True)
class LinkedIdentifiers:
    """Raw ids that lead to one person's rows, by identifier kind (``LINK_KINDS``, plus ``phone`` and ``email``)."""

    account_id: str
    ids: dict[str, frozenset[str]]

    def raw_values(self) -> set[str]:
        return {value for values in self.ids.values() for value in values}

    def pseudonyms(self, key: MasterKey) -> set[str]:
        """Every pseudonym of these ids: each key version, each kind's domain (and MARKETING for the account)."""
        found: set[str] = set()
        for version in key.versions:
            for kind, domain in LINK_KINDS.items():
                values = sorted(self.ids.get(kind, ()))
                if values:
                    found.update(pseudonymize(values, key, domain, identifier=kind, version=version).to_pylist())
            found.update(pseudonymize([self.account_id], key, MARKETING, identifier="account_id",
                                      version=version).to_pylist())
        return found


@dataclass
class ErasureReport:
    """What an erasure removed: rows per rewritten file (relative to the workspace) and ledger rows."""

    account_id: str
    rows_removed: dict[str, int] = field(default_factory=dict)
    consent_events_removed: int = 0
    requests_removed: int = 0
    tombstones: int = 0
    # Files other than Parquet and SQLite (reports, exports) that still name the person: erase cannot
    # rewrite formats it does not know, so it lists them for a person to remove.
    other_files_naming_them: list[str] = field(default_factory=list)


# --- finding a person's rows -------------------------------------------------------------------------

def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _read_ingested(workspace: Workspace, table: str, columns: list[str]) -> pa.Table | None:
    folder = workspace.ingested(table)
    if not folder.is_dir():
        return None
    return ds.dataset(folder, format="parquet").to_table(columns=columns)


def _values_where(rows: pa.Table | None, column: str, conditions: dict[str, Iterable[str]]) -> set[str]:
    """Values of ``column`` on the rows where any ``conditions`` column holds one of its values.

    Phone columns are compared in their normalized form (``profiling.pseudonyms.normalize``).
    """
    if rows is None or rows.num_rows == 0:
        return set()
    mask = np.zeros(rows.num_rows, dtype=bool)
    for name, values in conditions.items():
        values = sorted(values)
        if values:
            column_values = rows.column(name).combine_chunks()
            if name in _PHONE_FIELDS:
                column_values = normalize(column_values, "phone")
            hit = pc.is_in(column_values, value_set=pa.array(values, pa.string()))
            mask |= np.asarray(pc.fill_null(hit, False).to_numpy(zero_copy_only=False), dtype=bool)
    return {v for v in rows.column(column).filter(pa.array(mask)).to_pylist() if v is not None}


_PHONE_FIELDS = frozenset(f.name for f in TABLES["waybills"].fields if f.identifier == "phone")


def linked_identifiers(workspace: Workspace, account_id: str) -> LinkedIdentifiers:
    """The account's raw ids and those of its devices, orders and waybills, from the ingested zone.

    Links follow the registry: fields whose ``identifier`` is ``account_id`` lead to orders,
    waybills and device events; a device is the person's if any of its events was signed in to
    the account; a waybill is the person's if it names the account or one of the person's orders,
    or has the account's phone as shipper's or receiver's phone. ``ids`` also holds the account's
    raw ``phone`` and ``email`` values, so rows naming them (rejects too) are found.
    """
    if not isinstance(account_id, str) or not account_id.strip():
        raise DsrError(f"account id {account_id!r} is empty; give the raw account id (e.g. A0000000001)")
    account_id = account_id.strip()
    account = {account_id}
    contacts = _read_ingested(workspace, "accounts", ["account_id", "phone", "email"])
    phones = _values_where(contacts, "phone", {"account_id": account})
    emails = _values_where(contacts, "email", {"account_id": account})
    normalized_phones = {v for v in normalize(pa.array(sorted(phones), pa.string()), "phone").to_pylist() if v}
    # rows: (order_id, account_id) -> the person's order ids
    orders = _values_where(_read_ingested(workspace, "orders", ["order_id", "account_id"]), "order_id",
                           {"account_id": account})
    waybills = _values_where(_read_ingested(workspace, "waybills", ["waybill_id", "order_id", "account_id",
                                                                *sorted(_PHONE_FIELDS)]),
                             "waybill_id", {"account_id": account, "order_id": orders,
                                            **{name: normalized_phones for name in _PHONE_FIELDS}})
    devices = _values_where(_read_ingested(workspace, "device_events", ["device_id", "account_id"]), "device_id",
                            {"account_id": account})
    return LinkedIdentifiers(account_id, {"account_id": frozenset(account), "device_id": frozenset(devices),
                                          "order_id": frozenset(orders), "waybill_id": frozenset(waybills),
                                          "phone": frozenset(phones), "email": frozenset(emails)})


def _parquet_files(workspace: Workspace) -> list[Path]:
    """Every Parquet file under the workspace except the machinery of staging and publishing."""
    if not workspace.root.is_dir():
        return []
    return sorted(p for p in workspace.root.rglob("*.parquet")
                  if not any(part.startswith(".") for part in p.relative_to(workspace.root).parts))


def _is_text(type_: pa.DataType) -> bool:
    return pa.types.is_string(type_) or pa.types.is_large_string(type_)


def _text_columns(schema: pa.Schema) -> list[str]:
    """Columns of strings or of lists of strings (a portrait's linked accounts and devices)."""
    return [f.name for f in schema
            if _is_text(f.type) or (pa.types.is_list(f.type) and _is_text(f.type.value_type))]


def _matching_rows(rows: pa.Table, targets: pa.Array) -> np.ndarray:
    """True on rows where any text column, trimmed, is one of ``targets`` (or any element of a list column is)."""
    mask = np.zeros(rows.num_rows, dtype=bool)
    for name in _text_columns(rows.schema):
        column = rows.column(name).combine_chunks()
        if pa.types.is_list(column.type):
            hit = pc.is_in(pc.utf8_trim_whitespace(pc.list_flatten(column)), value_set=targets)
            owners = pc.list_parent_indices(column).to_numpy(zero_copy_only=False)
            mask[owners[pc.fill_null(hit, False).to_numpy(zero_copy_only=False)]] = True
            continue
        hit = pc.is_in(pc.utf8_trim_whitespace(column), value_set=targets)
        mask |= np.asarray(pc.fill_null(hit, False).to_numpy(zero_copy_only=False), dtype=bool)
    return mask


def _targets(workspace: Workspace, account_id: str, key: MasterKey) -> tuple[LinkedIdentifiers, pa.Array]:
    if not isinstance(key, MasterKey):
        raise TypeError(f"data-subject requests need a MasterKey (from load_key_file), not {type(key).__name__}")
    linked = linked_identifiers(workspace, account_id)
    return linked, pa.array(sorted(linked.raw_values() | linked.pseudonyms(key)), pa.string())


def _person_rows(workspace: Workspace, targets: pa.Array) -> Iterator[tuple[Path, pa.Table, np.ndarray]]:
    """``(file, its rows, mask of the person's rows)`` for every Parquet file holding any of them."""
    for path in _parquet_files(workspace):
        rows = pq.read_table(path)
        mask = _matching_rows(rows, targets)
        if mask.any():
            yield path, rows, mask


# --- the ledger's request tables ------------------------------------------------------------------------

@contextmanager
def _ledger(workspace: Workspace) -> Iterator[sqlite3.Connection]:
    connection = ledger_connection(workspace.ledger)
    try:
        connection.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")
        yield connection
    finally:
        connection.close()


def _record_request(db: sqlite3.Connection, account_id: str, kind: str, field_name: str | None = None) -> None:
    db.execute("INSERT INTO dsr_requests (account_id, kind, field, requested_at) VALUES (?, ?, ?, ?)",
               (account_id, kind, field_name, _now().isoformat()))


def _rows_as_dicts(cursor: sqlite3.Cursor) -> list[dict]:
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor]


def tombstone_ids(workspace: Workspace) -> set[str]:
    """TOMBSTONE pseudonyms of every erased account (empty when nothing was erased or no ledger exists)."""
    if not workspace.ledger.is_file():
        return set()
    with _ledger(workspace) as db:
        return {row[0] for row in db.execute("SELECT tombstone_id FROM dsr_tombstones")}


def erased_accounts(account_ids: pa.Array | pa.ChunkedArray, key: MasterKey, tombstones: set[str]) -> np.ndarray:
    """True for each raw account id (trimmed) whose TOMBSTONE pseudonym, at any key version, is tombstoned."""
    if isinstance(account_ids, pa.ChunkedArray):
        account_ids = account_ids.combine_chunks()
    erased = np.zeros(len(account_ids), dtype=bool)
    if not tombstones or len(account_ids) == 0:
        return erased
    values = pc.utf8_trim_whitespace(account_ids.cast(pa.string()))
    stones = pa.array(sorted(tombstones), pa.string())
    for version in key.versions:
        pseudonyms = pseudonymize(values, key, TOMBSTONE, identifier="account_id", version=version)
        erased |= np.asarray(pc.fill_null(pc.is_in(pseudonyms, value_set=stones), False)
                             .to_numpy(zero_copy_only=False), dtype=bool)
    return erased


def stale_persons(workspace: Workspace) -> list[dict]:
    """Persons whose derived data is stale after a correction: ``{person_id, field, since}`` rows."""
    if not workspace.ledger.is_file():
        return []
    with _ledger(workspace) as db:
        return _rows_as_dicts(db.execute("SELECT person_id, field, since FROM dsr_stale ORDER BY since"))


def clear_stale(workspace: Workspace, person_ids: Iterable[str]) -> int:
    """Forget the stale marks of persons whose derived data a run has recomputed; returns marks removed."""
    ids = sorted(set(person_ids))
    if not ids or not workspace.ledger.is_file():
        return 0
    with _ledger(workspace) as db:
        db.execute("BEGIN IMMEDIATE")
        removed = sum(db.execute("DELETE FROM dsr_stale WHERE person_id = ?", (pid,)).rowcount for pid in ids)
        db.execute("COMMIT")
    return removed


# --- export -----------------------------------------------------------------------------------------

def _relative_name(workspace: Workspace, path: Path) -> str:
    """``zone/table`` for ``WS/zone/table/part.parquet``; one file per folder is the layout every stage keeps."""
    relative = path.relative_to(workspace.root)
    parts = relative.parent.parts if len(relative.parts) > 1 else (relative.stem,)
    return "/".join(parts)


def export_account(workspace: Workspace, account_id: str, key: MasterKey, out_dir: str | os.PathLike) -> dict:
    """Write everything held about the account to ``out_dir`` (a new folder); returns the bundle.

    ``out_dir/bundle.json`` holds every section; ``out_dir/<zone>__<table>.csv`` one table each, and
    ``consent_history.csv``, ``requests.csv``. Sections: rows of every Parquet file under the
    workspace holding the person's raw ids or pseudonyms (ingested, rejects, analytics zone,
    outputs, vault ...), the consent history, and the data-subject requests recorded for them
    (the gate's audit log holds counts only, never a person). The request is recorded too.
    """
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DsrError(f"export folder {out} is not empty; pass a new folder with --out")
    linked, targets = _targets(workspace, account_id, key)
    tables: dict[str, list[dict]] = {}
    for path, rows, mask in _person_rows(workspace, targets):
        tables.setdefault(_relative_name(workspace, path), []).extend(rows.filter(pa.array(mask)).to_pylist())
    history = []
    if workspace.ledger.is_file():
        with SqliteConsentStore(workspace.ledger) as store:
            history = store.history(linked.account_id)
    if not tables and not history:
        raise DsrError(f"account {linked.account_id!r} is not in workspace {workspace.root}: no rows and no "
                       f"consent history hold it; check the id")
    with _ledger(workspace) as db:
        db.execute("BEGIN IMMEDIATE")
        _record_request(db, linked.account_id, "export")
        db.execute("COMMIT")
        requests = _rows_as_dicts(db.execute("SELECT * FROM dsr_requests WHERE account_id = ? ORDER BY id",
                                             (linked.account_id,)))
    bundle = {"account_id": linked.account_id, "exported_at": _now().isoformat(),
              "linked_ids": {kind: sorted(values) for kind, values in linked.ids.items()},
              "tables": tables, "consent_history": history, "requests": requests}
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "bundle.json", "w", encoding="utf-8") as handle:
        json.dump(bundle, handle, indent=2, sort_keys=True, default=str)
    sections = {name.replace("/", "__"): rows for name, rows in tables.items()}
    sections.update({"consent_history": history, "requests": requests})
    for name, rows in sections.items():
        if rows:
            write_csv_rows(out / f"{name}.csv", rows)  # formula-looking text escaped; bundle.json keeps it exact
    return bundle


# --- correction -------------------------------------------------------------------------------------

def correct_account(workspace: Workspace, account_id: str, field_name: str, value: str, key: MasterKey, *,
                    now: dt.datetime | None = None) -> dict:
    """Set ``field_name`` of the account's row in ``WS/ingested/accounts/`` to ``value`` (text, as in a CSV).

    The value is checked by the registry's rules for that column; a bad value raises ``DsrError``
    and nothing changes. The request is recorded in ``dsr_requests`` (without the value) and the
    person is listed in ``dsr_stale`` so the next run recomputes their derived data. Returns the
    corrected row.
    """
    accounts = TABLES["accounts"]
    correctable = [f.name for f in accounts.fields if f.name != accounts.primary_key]
    if field_name not in correctable:
        raise DsrError(f"field {field_name!r} of accounts cannot be corrected; correctable fields: "
                       f"{', '.join(correctable)}")
    if not isinstance(key, MasterKey):
        raise TypeError(f"correct_account needs a MasterKey (from load_key_file), not {type(key).__name__}")
    account_id = account_id.strip()
    folder = workspace.ingested("accounts")
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    located = [(path, pq.read_table(path)) for path in files]
    located = [(path, rows, np.asarray(pc.fill_null(pc.equal(rows.column("account_id"), account_id), False)
                                       .to_numpy(zero_copy_only=False), dtype=bool)) for path, rows in located]
    located = [(path, rows, mask) for path, rows, mask in located if mask.any()]
    if not located:
        raise DsrError(f"account {account_id!r} has no row in {folder}; check the id (corrections apply to "
                       f"ingested accounts)")
    spec = accounts[field_name]
    typed, bad = coerce_column(spec, pa.array([value], pa.string()), f"correction of {field_name}")
    path, rows, mask = located[0]
    row = rows.filter(pa.array(mask)).slice(0, 1)
    row = row.set_column(row.schema.get_field_index(field_name), row.schema.field(field_name),
                         typed.cast(row.schema.field(field_name).type))
    verdict = check_batch(accounts, row.to_batches()[0],
                          CheckContext(now=now or _now(), parent_keys={}),
                          bad_cells={field_name: bad} if bad.any() else {})
    if not verdict.accepted[0]:
        raise DsrError(f"value {value!r} for accounts.{field_name} is rejected by the data model "
                       f"({verdict.detail[0].as_py()}); nothing was changed")
    # rows: the accounts file with the person's row replaced
    index = int(np.flatnonzero(mask)[0])
    column = rows.column(field_name).combine_chunks().to_pylist()
    column[index] = row.column(field_name)[0].as_py()
    corrected = rows.set_column(rows.schema.get_field_index(field_name), rows.schema.field(field_name),
                                pa.array(column, rows.schema.field(field_name).type))
    with workspace.staging() as stage:
        staged = stage / "accounts"
        shutil.copytree(folder, staged)
        pq.write_table(corrected, staged / path.name)
        with _ledger(workspace) as db:
            person_id = pseudonymize([account_id], key, PERSON, identifier="account_id")[0].as_py()
            db.execute("BEGIN IMMEDIATE")
            try:
                _record_request(db, account_id, "correct", field_name)
                db.execute("INSERT INTO dsr_stale (account_id, person_id, field, since) VALUES (?, ?, ?, ?)",
                           (account_id, person_id, field_name, _now().isoformat()))
                workspace.publish({folder: staged})
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
    return row.to_pylist()[0]


# --- erasure ----------------------------------------------------------------------------------------

def erase_account(workspace: Workspace, account_id: str, key: MasterKey) -> ErasureReport:
    """Remove the account and every row linked to it from the whole workspace, and tombstone it.

    Order: tombstone (durable) -> every affected folder rewritten in staging and published
    together -> the account's consent events and requests deleted from the ledger (secure delete,
    WAL checkpointed). A failure before publishing leaves every folder as it was; the tombstone
    alone keeps ingest from re-admitting the person, and rerunning the erasure finishes the job.
    """
    linked, targets = _targets(workspace, account_id, key)
    found = list(_person_rows(workspace, targets))
    history = 0
    if workspace.ledger.is_file():
        with SqliteConsentStore(workspace.ledger) as store:
            history = len(store.history(linked.account_id))
    stones = {pseudonymize([linked.account_id], key, TOMBSTONE, identifier="account_id", version=v)[0].as_py()
              for v in key.versions}
    if not found and not history and not tombstone_ids(workspace) & stones:
        raise DsrError(f"account {linked.account_id!r} is not in workspace {workspace.root}: no rows and no "
                       f"consent history hold it; check the id")
    report = ErasureReport(linked.account_id)
    erased_at = _now().isoformat()
    with _ledger(workspace) as db:
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT OR IGNORE INTO dsr_tombstones (tombstone_id, erased_at) VALUES (?, ?)",
                       [(stone, erased_at) for stone in sorted(stones)])
        db.execute("COMMIT")
    report.tombstones = len(stones)
    by_folder: dict[Path, list[tuple[Path, pa.Table, np.ndarray]]] = {}
    for path, rows, mask in found:
        by_folder.setdefault(path.parent, []).append((path, rows, mask))
    with workspace.staging() as stage:
        replacements: dict[Path, Path] = {}
        for number, (folder, files) in enumerate(sorted(by_folder.items())):
            if folder == workspace.root:
                raise DsrError(f"Parquet files directly in {folder} cannot be rewritten atomically; keep tables in "
                               f"folders (WS/<zone>/<table>/)")
            staged = stage / f"{number:04d}-{folder.name}"
            shutil.copytree(folder, staged)
            for path, rows, mask in files:
                kept = rows.filter(pa.array(~mask))
                pq.write_table(kept, staged / path.name)
                report.rows_removed[str(path.relative_to(workspace.root))] = int(mask.sum())
            replacements[folder] = staged
        if replacements:
            workspace.publish(replacements)
    with SqliteConsentStore(workspace.ledger) as store:
        report.consent_events_removed = store.erase_account(linked.account_id)
    with _ledger(workspace) as db:
        db.execute("BEGIN IMMEDIATE")
        report.requests_removed = db.execute("DELETE FROM dsr_requests WHERE account_id = ?",
                                             (linked.account_id,)).rowcount
        db.execute("DELETE FROM dsr_stale WHERE account_id = ?", (linked.account_id,))
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    needles = [value.encode() for value in targets.to_pylist()]
    for path in sorted(workspace.root.rglob("*")):
        relative = path.relative_to(workspace.root)
        if (path.is_file() and path.suffix != ".parquet" and not path.name.startswith(workspace.ledger.name)
                and not any(part.startswith(".") for part in relative.parts)):
            content = path.read_bytes()
            if any(needle in content for needle in needles):
                report.other_files_naming_them.append(str(relative))
    return report
