"""Data-subject requests: export everything held about one account, correct it, or erase it for good.

What belongs to a person, what names them among others and what is others' is decided by
``pipelines.dsr_scope``: an export holds their own rows (and, of a waybill someone else sent that
names them, only their party's columns), never another person's account id, pseudonym or events;
an erasure removes their own rows, blanks their party on others' waybills, and leaves rows about
several persons (listed in the report) for the next run to rebuild.

Erasure (of one account, or of several in one pass: ``erase_held``) rewrites every affected folder
in staging, writes tombstones (``pipelines.dsr_overlay``: the TOMBSTONE pseudonyms, keyed by the
key file's tombstone secret, of their account ids, phones and own devices; nothing else), publishes
the folders together, then redacts the accounts' consent events, requests and corrections in the
ledger (hash-chained, append-only tables: ``profiling.ledger_chain``; the raw id and values are
replaced, each row's place and hash kept).
Ingest drops every row the tombstones lead to, whatever key versions were rotated or destroyed
since, so replaying the raw source does not bring them back. Corrections are recorded as an
overlay every later ingest applies.

Ledger tables (``WS/ledger.sqlite``, identifiable zone): ``dsr_requests`` (one row per request:
account, kind, field, when), ``dsr_stale`` (persons whose derived data must be recomputed after a
correction, with their PERSON pseudonym for the analytics zone), and those of ``pipelines.dsr_overlay``
(``dsr_erased_ids``, ``dsr_corrections``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.dsr_overlay import (
    REDACTED,
    Tombstones,
    create_overlay_tables,
    forget_corrections,
    load_tombstones,
    record_correction,
    redact_accounts,
    record_tombstones,
)
from pipelines.dsr_scope import (
    LINK_KINDS,
    DsrError,
    LinkedIdentifiers,
    ParquetRewriter,
    ScannedFile,
    linked_identifiers,
    subject_rows,
)
from pipelines.workspace import Workspace, holding_job_lock
from profiling._memory import release_freed_memory
from profiling._threads import two_at_a_time
from profiling.consent.events import canonical_account_id
from profiling.consent.sqlite_store import SqliteConsentStore, redact_consent_events
from profiling.csv_cells import write_csv_rows
from profiling.keys import MasterKey
from profiling.ledger_chain import REDACTED_ID, appending, register_table
from profiling.ledger_file import ensure_schema, immediate_transaction, ledger_connection
from profiling.pseudonyms import MARKETING, PERSON, pseudonymize
from profiling.schema import TABLES
from profiling.transfer_log import transfers_about
from profiling.validation import CheckContext, check_batch, coerce_column

__all__ = [
    "DsrError",
    "LinkedIdentifiers",
    "ErasureReport",
    "linked_identifiers",
    "export_account",
    "correct_account",
    "erase_account",
    "erase_held",
    "ingest_report_without",
    "LINK_KINDS",
    "stale_persons",
    "clear_stale",
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dsr_requests (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id   TEXT NOT NULL,   -- raw account id (identifiable zone); redacted on erasure
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
"""


@dataclass
class ErasureReport:
    """What an erasure removed: rows per rewritten file (relative to the workspace) and ledger rows.

    One report covers every account of one erasure (``account_ids``); the counts are their sums.
    """

    account_ids: tuple[str, ...]
    rows_removed: dict[str, int] = field(default_factory=dict)
    consent_events_removed: int = 0
    requests_removed: int = 0
    tombstones: int = 0
    # Rows of others' waybills naming an erased person, whose party (name, phone, address) was blanked.
    rows_redacted: dict[str, int] = field(default_factory=dict)
    # Rows about an erased person and others together (a portrait over several persons): neither exported
    # nor deleted; the next run rebuilds them from inputs that no longer hold the person.
    rows_shared: dict[str, int] = field(default_factory=dict)
    # Files other than Parquet and SQLite (reports, exports) that still name an erased person: erase cannot
    # rewrite formats it does not know, so it lists them for a person to remove.
    other_files_naming_them: list[str] = field(default_factory=list)

    @property
    def account_id(self) -> str:
        """The account erased, when the erasure was of one (``dsr erase``)."""
        if len(self.account_ids) != 1:
            raise ValueError(f"this erasure was of {len(self.account_ids)} accounts, not one")
        return self.account_ids[0]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _scoped(workspace: Workspace, account_id: str, key: MasterKey) -> tuple[LinkedIdentifiers, Iterator[ScannedFile]]:
    if not isinstance(key, MasterKey):
        raise TypeError(f"data-subject requests need a MasterKey (from load_key_file), not {type(key).__name__}")
    linked = linked_identifiers(workspace, account_id)
    return linked, subject_rows(workspace, linked, key)


# --- the ledger's request tables ------------------------------------------------------------------------

def _register_tables(db: sqlite3.Connection) -> None:
    register_table(db, "dsr_requests", key="id", columns=list(_REQUEST_COLUMNS),
                   placeholders={"account_id": REDACTED_ID})
    create_overlay_tables(db)


@contextmanager
def _ledger(workspace: Workspace) -> Iterator[sqlite3.Connection]:
    connection = ledger_connection(workspace.ledger)
    try:
        ensure_schema(connection, _SCHEMA, _register_tables)
        yield connection
    finally:
        connection.close()


# dsr_requests is hash-chained and append-only (``profiling.ledger_chain``): erasure redacts the account id.
_REQUEST_COLUMNS = ("id", "account_id", "kind", "field", "requested_at")


def _record_request(db: sqlite3.Connection, account_ids: Iterable[str], kind: str,
                    field_name: str | None = None) -> None:
    """One ``kind`` request per account, in the order given (inside the caller's transaction)."""
    with appending(db, "dsr_requests"):
        db.executemany("INSERT INTO dsr_requests (account_id, kind, field, requested_at) VALUES (?, ?, ?, ?)",
                       [(account_id, kind, field_name, _now().isoformat()) for account_id in account_ids])


def _rows_as_dicts(cursor: sqlite3.Cursor) -> list[dict]:
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor]


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
    with _ledger(workspace) as db, immediate_transaction(db):
        removed = sum(db.execute("DELETE FROM dsr_stale WHERE person_id = ?", (pid,)).rowcount for pid in ids)
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
    ``consent_history.csv``, ``requests.csv``, ``corrections.csv``. Sections: their own rows of
    every Parquet file under the workspace (ingested, rejects, analytics zone, outputs, vault ...;
    see ``pipelines.dsr_scope``), others' waybills naming them with only their party's columns, the
    consent history, the corrections and data-subject requests recorded for them (the gate's audit
    log holds counts only, never a person), and the cross-border transfers that held their rows
    (``transfers.csv``: when, receiver, country, legal mechanism, fields, rows; PIPL Art. 39).
    ``left_out`` counts, per file, rows about them and others together, which are not theirs to
    receive. The request is recorded too.
    """
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DsrError(f"export folder {out} is not empty; pass a new folder with --out")
    linked, scans = _scoped(workspace, account_id, key)
    tables: dict[str, list[dict]] = {}
    left_out: dict[str, int] = {}
    for scanned in scans:
        name = _relative_name(workspace, scanned.path)
        own: list[dict] = []
        named: list[dict] = []  # after the file's own rows, as one read of the whole file listed them
        for scope in scanned.scopes:
            own += scope.rows.filter(pa.array(scope.own)).to_pylist()
            named += scope.named_view()
            if scope.shared.any():
                left_out[name] = left_out.get(name, 0) + int(scope.shared.sum())
        if own or named:
            tables.setdefault(name, []).extend(own + named)
    history = []
    if workspace.ledger.is_file():
        with SqliteConsentStore(workspace.ledger) as store:
            history = store.history(linked.account_id)
    if not tables and not history:
        raise DsrError(f"account {linked.account_id!r} is not in workspace {workspace.root}: no rows and no "
                       f"consent history hold it; check the id")
    with _ledger(workspace) as db:
        with immediate_transaction(db):
            _record_request(db, [linked.account_id], "export")
        requests = _rows_as_dicts(db.execute(f"SELECT {', '.join(_REQUEST_COLUMNS)} FROM dsr_requests "
                                             f"WHERE account_id = ? ORDER BY id", (linked.account_id,)))
        corrections = _rows_as_dicts(db.execute("SELECT account_id, field, value, corrected_at FROM dsr_corrections "
                                                "WHERE account_id = ? ORDER BY id", (linked.account_id,)))
    transfers = transfers_about(workspace.ledger, linked.account_id, key)
    bundle = {"account_id": linked.account_id, "exported_at": _now().isoformat(),
              "linked_ids": {kind: sorted(values) for kind, values in linked.ids.items()},
              "tables": tables, "consent_history": history, "requests": requests, "corrections": corrections,
              "transfers": transfers, "left_out": left_out}
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "bundle.json", "w", encoding="utf-8") as handle:
        json.dump(bundle, handle, indent=2, sort_keys=True, default=str)
    sections = {name.replace("/", "__"): rows for name, rows in tables.items()}
    sections.update({"consent_history": history, "requests": requests, "corrections": corrections,
                     "transfers": transfers})
    for name, rows in sections.items():
        if rows:
            write_csv_rows(out / f"{name}.csv", rows)  # formula-looking text escaped; bundle.json keeps it exact
    return bundle


# --- correction -------------------------------------------------------------------------------------

@holding_job_lock("portrait dsr correct")
def correct_account(workspace: Workspace, account_id: str, field_name: str, value: str, key: MasterKey, *,
                    now: dt.datetime | None = None) -> dict:
    """Set ``field_name`` of the account's row in ``WS/ingested/accounts/`` to ``value`` (text, as in a CSV).

    The value is checked by the registry's rules for that column; a bad value raises ``DsrError``
    and nothing changes. The request is recorded in ``dsr_requests`` (without the value), the
    value in ``dsr_corrections`` (an overlay every later ingest applies, so re-ingesting the old
    source does not restore the old value), and the person is listed in ``dsr_stale`` so the next
    run recomputes their derived data. Returns the corrected row.
    """
    accounts = TABLES["accounts"]
    correctable = [f.name for f in accounts.fields if f.name != accounts.primary_key]
    if field_name not in correctable:
        raise DsrError(f"field {field_name!r} of accounts cannot be corrected; correctable fields: "
                       f"{', '.join(correctable)}")
    if not isinstance(key, MasterKey):
        raise TypeError(f"correct_account needs a MasterKey (from load_key_file), not {type(key).__name__}")
    account_id = canonical_account_id(account_id)
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
            with immediate_transaction(db):
                _record_request(db, [account_id], "correct", field_name)
                record_correction(db, account_id, field_name, value, _now())
                db.execute("INSERT INTO dsr_stale (account_id, person_id, field, since) VALUES (?, ?, ?, ?)",
                           (account_id, person_id, field_name, _now().isoformat()))
                workspace.publish({folder: staged})
    return row.to_pylist()[0]


# --- erasure ----------------------------------------------------------------------------------------

def ingest_report_without(workspace: Workspace, rows_removed: dict[str, int],
                          counter: str = "erased_after_ingest") -> dict[Path, dict]:
    """The ingest report with the rows an erasure (or the retention stage) removed from the ingested
    zone taken off its accepted counts, as ``Workspace.publish``'s ``reports`` (empty: nothing to change).

    ``portrait run`` checks every ingested table against ``accepted``; the removed rows are counted
    as ``counter`` (``erased_after_ingest``, ``expired_after_ingest``) so ``rows_in == accepted +
    rejected + erased_after_ingest + expired_after_ingest`` still holds. Published in the same step
    as the rewritten folders, so a kill never leaves the report describing other data.
    """
    if not workspace.ingest_report.is_file():
        return {}
    document = json.loads(workspace.ingest_report.read_text(encoding="utf-8"))
    changed = False
    for name, removed in rows_removed.items():
        parts = Path(name).parts
        if len(parts) >= 2 and parts[0] == "ingested" and parts[1] in document.get("tables", {}):
            counts = document["tables"][parts[1]]
            counts["accepted"] -= removed
            counts[counter] = counts.get(counter, 0) + removed
            changed = True
    return {workspace.ingest_report: document} if changed else {}


@holding_job_lock("portrait dsr erase")
def erase_account(workspace: Workspace, account_id: str, key: MasterKey) -> ErasureReport:
    """Remove the subject's own rows from the whole workspace, blank them on others' rows, and tombstone them.

    What is theirs is decided by ``pipelines.dsr_scope``: rows about them and others together are
    left (``ErasureReport.rows_shared``) and nothing of anyone else is removed. Order: every
    affected folder rewritten in staging -> tombstones of their account id, phones and own devices
    (durable; keyed by the tombstone secret, so no key rotation or destruction undoes them) -> the
    staged folders published together -> the account's consent events, requests and corrections
    redacted in the ledger (secure delete, WAL checkpointed). A failure before publishing leaves
    every folder as it was; the tombstones alone keep ingest from re-admitting the person, and
    rerunning the erasure finishes the job. The one erasure path: ``erase_held`` for one account.
    """
    return erase_held(workspace, [account_id], key)


def _ledger_accounts(workspace: Workspace, account_ids: Sequence[str]) -> set[str]:
    """The accounts among ``account_ids`` whose consent history the ledger still holds (unredacted)."""
    with SqliteConsentStore(workspace.ledger) as store:  # creates the consent tables on a new ledger
        return set(store.events(account_ids).column("account_id").to_pylist())


def _stage_without_them(workspace: Workspace, stage: Path, scans: Iterable[ScannedFile], report: ErasureReport
                        ) -> tuple[dict[Path, Path], set[str]]:
    """Write every affected file, without the subjects' rows and with their party blanked, into ``stage``.

    Files are rewritten two at a time (``two_at_a_time``), the largest first, each read once and written batch by
    batch through a ``ParquetRewriter`` as it is read (its schema and row-group length kept); a file
    that holds nothing of theirs is dropped from staging, and in an affected folder the files left
    as they are staged as hard links. Returns the staged folder of each affected folder and the
    subjects' ids and pseudonyms found anywhere.
    """
    replacements: dict[Path, Path] = {}
    found: set[str] = set()
    scanned = [(stage / f"file-{index:06d}.parquet", file) for index, file in enumerate(scans)]
    # the largest files first, so that the last file started is a small one and both threads finish together
    largest_first = sorted(scanned, key=lambda job: job[1].path.stat().st_size, reverse=True)
    with closing(two_at_a_time(lambda job: _rewritten(*job), largest_first, name="erasure")) as rewrites:
        results = {written: result for (written, _), result in zip(largest_first, rewrites)}
    for written, file in scanned:   # in the files' order
        removed, redacted, shared, seen = results[written]
        found |= seen
        name = str(file.path.relative_to(workspace.root))
        if shared:
            report.rows_shared[name] = shared
        if not (removed or redacted):
            written.unlink()
            continue
        folder = file.path.parent
        if folder == workspace.root:
            raise DsrError(f"Parquet files directly in {folder} cannot be rewritten atomically; keep tables in "
                           f"folders (WS/<zone>/<table>/)")
        if folder not in replacements:
            replacements[folder] = stage / f"{len(replacements):04d}-{folder.name}"
            shutil.copytree(folder, replacements[folder], copy_function=_link_parquet)
        os.replace(written, replacements[folder] / file.path.name)
        if removed:
            report.rows_removed[name] = removed
        if redacted:
            report.rows_redacted[name] = redacted
    return replacements, found


def _rewritten(written: Path, file: ScannedFile) -> tuple[int, int, int, set[str]]:
    """Write ``file`` to ``written`` without the subjects' rows, their party blanked where named. Returns the rows
    removed, blanked and shared (kept: someone else's too), and the subjects' ids and pseudonyms the file holds."""
    removed = redacted = shared = 0
    found: set[str] = set()
    with ParquetRewriter(written, file.path, file.schema) as out:
        for scope in file.scopes:
            found |= scope.found
            removed += int(scope.own.sum())
            redacted += int(scope.named_rows().sum())
            shared += int(scope.shared.sum())
            out.write(scope.redacted(REDACTED))
    return removed, redacted, shared, found


def _link_parquet(source: str, target: str) -> None:
    """Stage a Parquet file as a hard link (it is replaced, never written in place), anything else as a copy."""
    if source.endswith(".parquet"):
        os.link(source, target)
    else:
        shutil.copy2(source, target)


def _unknown(workspace: Workspace, linked: LinkedIdentifiers, key: MasterKey, found: set[str],
             tombstones: Tombstones) -> list[str]:
    """Subjects the workspace does not hold: no row holding their account id or its PERSON or MARKETING
    pseudonym (``found``: what the scan met), no consent history, no tombstone."""
    candidates = [a for a in linked.account_ids if a not in found]
    for version in key.versions:
        for domain in (PERSON, MARKETING):
            if candidates:
                names = pseudonymize(candidates, key, domain, identifier="account_id", version=version).to_pylist()
                candidates = [a for a, name in zip(candidates, names) if name not in found]
    if candidates:
        candidates = sorted(set(candidates) - _ledger_accounts(workspace, candidates))
    if candidates and tombstones:
        candidates = [a for a, erased in zip(candidates, tombstones.erased(candidates, key, "account_id"))
                      if not erased]
    return candidates


def erase_held(workspace: Workspace, account_ids: Sequence[str], key: MasterKey, *,
               cause: str | None = None) -> ErasureReport:
    """Erase ``account_ids`` together, as ``erase_account`` erases one, for a caller holding the job lock.

    One pass whatever their number: their linked ids resolved together (a device or phone that only
    they used, jointly, is theirs), every Parquet file read once and the affected folders published
    together, their tombstones in one ledger transaction, their consent events, requests and
    corrections redacted in another, the ingest report updated once. A row about an erased person
    and someone not erased is kept (their party blanked on a waybill); a row whose persons are all
    erased goes. Erasing accounts together leaves the workspace as erasing them one after another
    does (``tests/test_erasure_batch.py``). An id the workspace does not hold is a ``DsrError``
    naming it, and nothing is changed.

    ``cause`` (a plain phrase such as ``"cancellation"``, never an identifier) is recorded as one
    ``erase`` request per account whose account id is redacted at once: the ledger shows that and
    when the job erased accounts, not whose.
    """
    if isinstance(account_ids, str):
        raise TypeError(f"erase_held takes a list of account ids, not the string {account_ids!r}; pass "
                        f"[{account_ids!r}] for one")
    if not isinstance(key, MasterKey):
        raise TypeError(f"data-subject requests need a MasterKey (from load_key_file), not {type(key).__name__}")
    if not key.has_tombstone_secret:
        raise DsrError("erasure needs a key with a tombstone secret (tombstones no key rotation can undo); pass "
                       "--key-file (an older file gains one), or add 'tombstone:<64 hex digits>' to "
                       "PORTRAIT_MASTER_KEY")
    account_ids = list(account_ids)
    if not account_ids:
        return ErasureReport(())
    linked = linked_identifiers(workspace, account_ids)
    tombstones = load_tombstones(workspace)
    tombstones.check_key(key)
    report = ErasureReport(linked.account_ids)
    with workspace.staging() as stage:
        replacements, found = _stage_without_them(workspace, stage, subject_rows(workspace, linked, key), report)
        unknown = _unknown(workspace, linked, key, found, tombstones)
        if unknown:
            raise DsrError(f"account{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown[:5]))}"
                           f"{' ...' if len(unknown) > 5 else ''} {'are' if len(unknown) > 1 else 'is'} not in "
                           f"workspace {workspace.root}: no rows and no consent history hold "
                           f"{'them' if len(unknown) > 1 else 'it'}; check the id; nothing was erased")
        with _ledger(workspace) as db, immediate_transaction(db):
            report.tombstones = record_tombstones(db, key, {"account_id": list(linked.account_ids),
                                                            "phone": linked.phones,
                                                            "device_id": linked.ids["device_id"]}, _now())
        if replacements:
            workspace.publish(replacements, reports=ingest_report_without(workspace, report.rows_removed))
    release_freed_memory()  # what the scan freed, handed back before the ledger's work
    _redact_ledger(workspace, linked.account_ids, report, cause)
    report.other_files_naming_them = _other_files_naming(workspace, linked.raw_values() | linked.pseudonyms(key))
    return report


def _redact_ledger(workspace: Workspace, account_ids: Sequence[str], report: ErasureReport,
                   cause: str | None) -> None:
    """Redact the accounts' consent events, requests and corrections in one ledger transaction; checkpoint."""
    with SqliteConsentStore(workspace.ledger):  # creates the consent tables on a new ledger
        pass
    with _ledger(workspace) as db:
        with immediate_transaction(db):
            report.consent_events_removed = redact_consent_events(db, account_ids, reason="erasure request")
            db.execute("DELETE FROM consent_loads")  # a reload must offer every event again
            report.requests_removed = redact_accounts(db, "dsr_requests", account_ids, reason="erasure request")
            if cause is not None:
                _record_request(db, account_ids, "erase", cause)
                redact_accounts(db, "dsr_requests", account_ids, reason=f"{cause} erasure")
            for start in range(0, len(account_ids), 500):
                chunk = account_ids[start:start + 500]
                db.execute(f"DELETE FROM dsr_stale WHERE account_id IN ({', '.join('?' * len(chunk))})", chunk)
            forget_corrections(db, account_ids)
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _other_files_naming(workspace: Workspace, values: set[str]) -> list[str]:
    """Files under the workspace, other than Parquet and the ledger, holding any of ``values`` (each read once)."""
    needles = {value.encode() for value in values}
    by_length: dict[int, set[bytes]] = {}
    for needle in needles:
        by_length.setdefault(len(needle), set()).add(needle)
    named = []
    for path in sorted(workspace.root.rglob("*")):
        relative = path.relative_to(workspace.root)
        if (path.is_file() and path.suffix != ".parquet" and not path.name.startswith(workspace.ledger.name)
                and not any(part.startswith(".") for part in relative.parts)):
            if _holds_any(path.read_bytes(), needles, by_length):
                named.append(str(relative))
    return named


def _holds_any(content: bytes, needles: set[bytes], by_length: dict[int, set[bytes]]) -> bool:
    """Whether ``content`` holds one of ``needles`` (``by_length``: the same, by length): a small file (a
    manifest, a report) is cut into its pieces of each needle length, looked up in the set, rather than searched
    once per needle (hundreds of thousands when many accounts are erased together)."""
    if len(content) * len(by_length) < len(needles):
        return any(content[start:start + length] in group for length, group in by_length.items()
                   for start in range(len(content) - length + 1))
    return any(needle in content for needle in needles)
