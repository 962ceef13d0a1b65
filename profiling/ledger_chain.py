"""Hash chains over the ledger's SQLite tables: append-only for the application, tampering visible.

Every chained table gets four columns: ``chain_content`` (SHA-256 of the row's canonical
content), ``chain_prev`` (the previous row's ``chain_hash``; the first row links to a genesis
value derived from the table's name), ``chain_hash`` (SHA-256 of ``chain_prev`` and
``chain_content``) and ``chain_redacted`` (1 once erasure has replaced the row's content).
Triggers refuse ``DELETE`` and every ``UPDATE`` except the two the application makes: sealing a
row it has just inserted (setting its hashes, content unchanged) and redacting a sealed row
(content replaced by the table's placeholders, hashes kept). ``ledger_chains`` records each
chain's columns, its row count and head hash; ``ledger_redactions`` (itself chained) holds one
entry per redacted row: which row, its content hash, why and when.

How to use it (all calls take a connection in autocommit mode, as ``ledger_connection`` opens):

1. Register a table once per connection, after its ``CREATE TABLE`` and inside the same
   transaction: ``register_table(db, "dsr_requests", key="id", columns=[...],
   placeholders={"account_id": REDACTED_ID, "kind": "redacted", ...})``. ``columns`` are the
   content columns hashed, in a fixed order (the key included); ``placeholders`` give each
   column's value after redaction (a constant, ``None``, or ``REDACTED_ID`` for a unique
   ``'redacted:<content hash>'`` where the column is UNIQUE or NOT NULL). A table that already
   holds rows is migrated once: the chain is built over its rows as they are, and
   ``ledger_chains.migrated_rows`` says how many rows predate the chain (their earlier history
   is not vouched for).
2. Append inside one ``BEGIN IMMEDIATE`` transaction: ``with appending(db, table): db.execute(
   "INSERT ...")``. Any SQL insert works (``executemany``, ``INSERT OR IGNORE``); the rows it
   added are sealed before the block ends. For many rows, ``append_rows(db, table, rows)``
   inserts them already sealed (no second write per row), and ``append_arrow(db, table, rows)``
   does the same for an Arrow table, hashing by compiled kernels (the same rows and hashes) in a
   worker thread a batch ahead of the inserts. A row that somebody inserted outside the
   application (unsealed when an append starts), or dropped triggers, make both raise
   ``ChainBrokenError``.
3. Erase with ``redact(db, table, "account_id = ?", (account,), reason="erasure request")``
   inside a transaction: the matching rows' content becomes the placeholders, their hashes stay,
   and one redaction entry per row is appended to ``ledger_redactions``. The reason must not hold
   the erased identifiers.
4. Verify with ``verify(db, table)`` or ``verify_all(db)``: one ``ChainReport`` per chain
   (rows, head hash, ok or the first broken row and why). ``portrait ledger verify`` prints them.
   Every verification checks every row from the genesis (nothing is taken on trust from an
   earlier check); SQLite's JSON of the rows is hashed chunk by chunk by compiled kernels, and a
   chunk that does not pass that way is checked row by row (see ``verify``).

What this protects against: an application user, a notebook or a SQL console that updates or
deletes ledger rows (refused while the triggers stand), and anybody who drops the triggers and
then edits, deletes or reorders rows without recomputing the chain (``verify`` names the first
broken row, or the missing rows at the end against the recorded head). What it does not: whoever
can write the file can drop the triggers, rewrite rows and rebuild every hash and the recorded
heads; only comparing the head hashes published in earlier privacy reviews catches that (a
rebuilt chain's head differs from the published one unless nothing before it was changed).

>>> import sqlite3
>>> db = sqlite3.connect(":memory:", isolation_level=None)
>>> _ = db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY AUTOINCREMENT, who TEXT NOT NULL, body TEXT)")
>>> register_table(db, "notes", key="id", columns=["id", "who", "body"],
...                placeholders={"who": REDACTED_ID, "body": None})
>>> with appending(db, "notes"):
...     _ = db.executemany("INSERT INTO notes (who, body) VALUES (?, ?)", [("ana", "hello"), ("bo", "hi")])
>>> verify(db, "notes").ok, verify(db, "notes").rows
(True, 2)
>>> redact(db, "notes", "who = ?", ("ana",), reason="erasure request")
1
>>> verify(db, "notes").ok
True
>>> db.execute("DELETE FROM notes")
Traceback (most recent call last):
...
sqlite3.IntegrityError: notes is append-only: rows are never deleted (erasure redacts them)
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from profiling._chain_hash import canonical_rows, content_digests, content_digests_between, hex_strings, link_digests
from profiling._string_hash import _offsets_and_data
from profiling._threads import made_ahead
from profiling.errors import InternalError, PortraitError

__all__ = [
    "REDACTED_ID",
    "REDACTIONS_TABLE",
    "ChainBrokenError",
    "ChainReport",
    "append_arrow",
    "append_rows",
    "appending",
    "head",
    "redact",
    "register_table",
    "require_row_intact",
    "verify",
    "verify_all",
]

REDACTED_ID = object()
"""Placeholder meaning ``'redacted:' || chain_content``: unique per row, holds nothing of the row."""

REDACTIONS_TABLE = "ledger_redactions"
_REDACTED_ID_SQL = "'redacted:' || {row}.chain_content"
_CHAIN_COLUMNS = ("chain_content", "chain_prev", "chain_hash", "chain_redacted")
_HEADS_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS ledger_chains (
    chain_table   TEXT PRIMARY KEY,
    key_column    TEXT NOT NULL,
    columns       TEXT NOT NULL,     -- JSON list of the content columns, in hashing order
    placeholders  TEXT NOT NULL,     -- JSON {column: value after redaction}
    rows          INTEGER NOT NULL,  -- rows sealed so far
    head          TEXT NOT NULL,     -- chain_hash of the last sealed row (the genesis value when empty)
    last_key      INTEGER,
    registered_at TEXT NOT NULL,
    migrated_rows INTEGER NOT NULL   -- rows that existed before the chain was built over them
)""",
    """CREATE TABLE IF NOT EXISTS ledger_redactions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    chain_table TEXT NOT NULL,
    row_key     INTEGER NOT NULL,
    content     TEXT NOT NULL,       -- the redacted row's chain_content (kept: the chain still links)
    reason      TEXT NOT NULL,
    redacted_at TEXT NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS ledger_redactions_by_table ON ledger_redactions (chain_table, row_key)",
)


class ChainBrokenError(PortraitError):
    """A chained ledger table was changed outside the application (rows edited, deleted or inserted)."""


@dataclass(frozen=True)
class ChainReport:
    """The state of one chain: its rows, its head hash, and the first broken row if any."""

    table: str
    rows: int                      # rows verified; when broken, rows the table holds
    head: str                      # head hash recomputed; when broken, the head recorded at the last append
    ok: bool
    broken_at: int | None = None   # 1-based position of the first bad row (rows + 1: rows missing at the end)
    problem: str = ""
    migrated_rows: int = 0

    def line(self) -> str:
        """``table  rows N  head H  ok`` or ``... BROKEN at row N: why`` (one line, for the CLI and the review)."""
        where = "" if self.broken_at is None else f" at row {self.broken_at}"
        state = "ok" if self.ok else f"BROKEN{where}: {self.problem}"
        return f"{self.table}  rows {self.rows}  head {self.head}  {state}"


def _execute(db: sqlite3.Connection, sql: str, params: Sequence[object] = ()) -> sqlite3.Cursor:
    """``db.execute`` returning plain tuples, whatever row factory the caller's connection uses."""
    cursor = db.cursor()
    cursor.row_factory = None
    return cursor.execute(sql, params)


def _genesis(table: str) -> str:
    return hashlib.sha256(b"portrait.ledger.genesis.v1\x00" + table.encode()).hexdigest()


_CANONICAL = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), allow_nan=True).encode


def _row_prefix(table: str) -> bytes:
    return b"portrait.ledger.row.v1\x00" + table.encode() + b"\x00"


def _row_hasher(table: str) -> Callable[[Sequence[object]], str]:
    """``content_hash`` of ``table``, with the table's prefix computed once (for loops over many rows)."""
    prefix, sha256, canonical = _row_prefix(table), hashlib.sha256, _CANONICAL

    def hash_row(values: Sequence[object]) -> str:
        return sha256(prefix + canonical(list(values)).encode()).hexdigest()

    return hash_row


def content_hash(table: str, values: Sequence[object]) -> str:
    """SHA-256 (hex) of one row's canonical content: the table name and the JSON list of its values.

    JSON keeps the types SQLite returns apart (``1``, ``1.0``, ``"1"``, ``null``); floats are written
    in their shortest round-trip form.
    """
    return _row_hasher(table)(values)


_PLAIN = {"integer": {int, type(None)}, "real": {float, type(None)}, "text": {str, type(None)},
          "numeric": {int, float, type(None)}, "blob": {int, float, str, type(None)}}


def _affinity(declared: str) -> str:
    """SQLite's column affinity of a declared type (https://sqlite.org/datatype3.html, 3.1)."""
    declared = declared.upper()
    if "INT" in declared:
        return "integer"
    if any(word in declared for word in ("CHAR", "CLOB", "TEXT")):
        return "text"
    if any(word in declared for word in ("REAL", "FLOA", "DOUB")):
        return "real"
    return "blob" if not declared or "BLOB" in declared else "numeric"


def _stored(value: object, affinity: str, where: str) -> object:
    """``value`` as SQLite will hand it back from a column of ``affinity``, so its hash matches on reading."""
    if value is None:
        return None
    if isinstance(value, bool):
        value = int(value)
    if affinity == "real" and isinstance(value, int):
        return float(value)
    if affinity == "integer" and isinstance(value, float) and value.is_integer() and abs(value) < 2 ** 63:
        return int(value)
    kinds = {"integer": (int, float), "real": (float,), "text": (str,), "numeric": (int, float)}.get(affinity)
    if kinds is not None and not isinstance(value, kinds) or isinstance(value, bytes):
        raise TypeError(f"{where}: a {type(value).__name__} value cannot be appended to a {affinity} column "
                        f"(SQLite would convert it); convert it first")
    return value


def link_hash(previous: str, content: str) -> str:
    """SHA-256 (hex) linking a row's content hash to the previous row's chain hash."""
    return hashlib.sha256(b"%b:%b" % (previous.encode(), content.encode())).hexdigest()


def _quote(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise PortraitError(f"ledger table or column name {name!r} must be a plain identifier")
    return f'"{name}"'


@dataclass(frozen=True)
class _Chain:
    table: str
    key: str
    columns: tuple[str, ...]
    placeholders: Mapping[str, object]


def _chain(db: sqlite3.Connection, table: str) -> _Chain:
    row = _execute(db, "SELECT key_column, columns, placeholders FROM ledger_chains WHERE chain_table = ?",
                     (table,)).fetchone()
    if row is None:
        raise PortraitError(f"{table} is not a chained ledger table; call register_table first")
    placeholders = {c: (REDACTED_ID if v == {"redacted_id": True} else v) for c, v in json.loads(row[2]).items()}
    return _Chain(table, row[0], tuple(json.loads(row[1])), placeholders)


def _placeholder_sql(value: object, row: str) -> str:
    if value is REDACTED_ID:
        return _REDACTED_ID_SQL.format(row=row)
    if value is None:
        return "NULL"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise PortraitError(f"a redaction placeholder must be None, a number, a string or REDACTED_ID, got {value!r}")
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return repr(value)


def _triggers(chain: _Chain) -> list[str]:
    t = _quote(chain.table)
    same_content = " AND ".join(f"NEW.{_quote(c)} IS OLD.{_quote(c)}" for c in chain.columns)
    same_hashes = " AND ".join(f"NEW.{c} IS OLD.{c}" for c in ("chain_content", "chain_prev", "chain_hash"))
    redacted_content = " AND ".join(
        f"NEW.{_quote(c)} IS {_placeholder_sql(chain.placeholders[c], 'OLD')}" if c in chain.placeholders
        else f"NEW.{_quote(c)} IS OLD.{_quote(c)}" for c in chain.columns)
    sealing = f"(OLD.chain_hash IS NULL AND OLD.chain_redacted = 0 AND NEW.chain_redacted = 0 AND {same_content})"
    redacting = (f"(OLD.chain_hash IS NOT NULL AND OLD.chain_redacted = 0 AND NEW.chain_redacted = 1 AND "
                 f"{same_hashes} AND {redacted_content})")
    no_delete, no_update = _trigger_names(chain.table)
    return [
        f"CREATE TRIGGER IF NOT EXISTS {no_delete} BEFORE DELETE ON {t} BEGIN SELECT RAISE(ABORT, "
        f"'{chain.table} is append-only: rows are never deleted (erasure redacts them)'); END",
        f"CREATE TRIGGER IF NOT EXISTS {no_update} BEFORE UPDATE ON {t} WHEN NOT ({sealing} OR {redacting}) "
        f"BEGIN SELECT RAISE(ABORT, '{chain.table} is append-only: record a new row instead of changing one'); END",
        f"CREATE INDEX IF NOT EXISTS {chain.table}_chain_unsealed ON {t} ({_quote(chain.key)}) "
        f"WHERE chain_hash IS NULL",
    ]


def _trigger_names(table: str) -> tuple[str, str]:
    return f"{table}_chain_no_delete", f"{table}_chain_no_update"


def _missing_triggers(db: sqlite3.Connection, table: str) -> list[str]:
    names = {row[0] for row in _execute(db, "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?",
                                          (table,))}
    return [name for name in _trigger_names(table) if name not in names]


def _require_triggers(db: sqlite3.Connection, table: str) -> None:
    absent = _missing_triggers(db, table)
    if absent:
        raise ChainBrokenError(f"{table}: append-only trigger(s) {', '.join(absent)} were dropped; run "
                               f"`portrait ledger verify` and restore the ledger from a copy")


def register_table(db: sqlite3.Connection, table: str, *, key: str, columns: Sequence[str],
                   placeholders: Mapping[str, object] | None = None,
                   replaces_triggers: Sequence[str] = ()) -> None:
    """Make ``table`` a chained, append-only ledger table (idempotent; call it where the table is created).

    ``key`` is the integer primary key giving the chain's order; ``columns`` the content columns
    hashed (key included), ``placeholders`` each redactable column's value after erasure (columns
    not named keep their value). ``replaces_triggers`` names older triggers the chain supersedes
    (dropped). A table holding unsealed rows when first registered is migrated: its rows are
    sealed as they are, and ``ledger_chains.migrated_rows`` records how many.
    """
    placeholders = dict(placeholders or {})
    unknown = sorted(set(placeholders) - set(columns))
    if key not in columns or unknown:
        raise PortraitError(f"register_table({table!r}): the key {key!r} must be a content column and placeholders "
                            f"may only name content columns (unknown: {unknown})")
    stored = {c: ({"redacted_id": True} if v is REDACTED_ID else v) for c, v in placeholders.items()}
    for value in placeholders.values():
        _placeholder_sql(value, "OLD")
    for statement in _HEADS_SCHEMA:
        _execute(db, statement)
    existing = {row[1] for row in _execute(db, f"PRAGMA table_info({_quote(table)})")}
    if not existing:
        raise PortraitError(f"register_table: table {table!r} does not exist; create it first")
    missing = [c for c in columns if c not in existing]
    if missing:
        raise PortraitError(f"register_table({table!r}): no column(s) {', '.join(missing)}")
    for column, ddl in zip(_CHAIN_COLUMNS, ("TEXT", "TEXT", "TEXT", "INTEGER NOT NULL DEFAULT 0")):
        if column not in existing:
            _execute(db, f"ALTER TABLE {_quote(table)} ADD COLUMN {column} {ddl}")
    row = _execute(db, "SELECT columns, placeholders, key_column FROM ledger_chains WHERE chain_table = ?",
                     (table,)).fetchone()
    chain = _Chain(table, key, tuple(columns), placeholders)
    if row is None:
        unsealed = _execute(db, f"SELECT COUNT(*) FROM {_quote(table)} WHERE chain_hash IS NULL").fetchone()[0]
        _execute(db, "INSERT INTO ledger_chains (chain_table, key_column, columns, placeholders, rows, head, last_key, "
                   "registered_at, migrated_rows) VALUES (?, ?, ?, ?, 0, ?, NULL, ?, ?)",
                   (table, key, json.dumps(list(columns)), json.dumps(stored, sort_keys=True), _genesis(table),
                    _now(), unsealed))
        for name in replaces_triggers:
            _execute(db, f"DROP TRIGGER IF EXISTS {_quote(name)}")
        for statement in _triggers(chain):
            _execute(db, statement)
        _seal(db, chain)
    elif (json.loads(row[0]), json.loads(row[1]), row[2]) != (list(columns), stored, key):
        raise ChainBrokenError(f"ledger table {table} was chained over columns {json.loads(row[0])} (key {row[2]}) "
                               f"but is now registered over {list(columns)} (key {key}); the ledger file comes "
                               f"from another version of Portrait or its chain registry was edited")
    if table != REDACTIONS_TABLE:
        register_table(db, REDACTIONS_TABLE, key="id",
                       columns=["id", "chain_table", "row_key", "content", "reason", "redacted_at"])


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _seal(db: sqlite3.Connection, chain: _Chain) -> int:
    """Hash every unsealed row in key order and record the new head; returns how many were sealed."""
    rows_before, previous, last_key = _execute(
        db, "SELECT rows, head, last_key FROM ledger_chains WHERE chain_table = ?", (chain.table,)).fetchone()
    select = ", ".join(_quote(c) for c in chain.columns)
    key_index = chain.columns.index(chain.key)
    rows = _execute(db, f"SELECT {select} FROM {_quote(chain.table)} WHERE chain_hash IS NULL "
                      f"ORDER BY {_quote(chain.key)}").fetchall()
    if not rows:
        return 0
    if last_key is not None and rows[0][key_index] < last_key:
        raise ChainBrokenError(f"{chain.table}: an unsealed row (key {rows[0][key_index]}) sits before sealed rows; "
                               f"the table was edited outside the application")
    chained, hash_row = [], _row_hasher(chain.table)   # rows: (content hash, previous chain hash, chain hash, key)
    for values in rows:
        content = hash_row(values)
        hashed = link_hash(previous, content)
        chained.append((content, previous, hashed, values[key_index]))
        previous = hashed
    db.executemany(f"UPDATE {_quote(chain.table)} SET chain_content = ?, chain_prev = ?, chain_hash = ? "
                   f"WHERE {_quote(chain.key)} = ?", chained)
    _execute(db, "UPDATE ledger_chains SET rows = ?, head = ?, last_key = ? WHERE chain_table = ?",
               (rows_before + len(chained), previous, chained[-1][3], chain.table))
    return len(chained)


def _require_appendable(db: sqlite3.Connection, chain: _Chain) -> None:
    """Refuse to extend a chain whose triggers were dropped or that holds a row inserted outside the application."""
    _require_triggers(db, chain.table)
    foreign = _execute(db, f"SELECT {_quote(chain.key)} FROM {_quote(chain.table)} WHERE chain_hash IS NULL "
                         f"ORDER BY {_quote(chain.key)} LIMIT 1").fetchone()
    if foreign is not None:
        raise ChainBrokenError(f"{chain.table}: row with {chain.key} {foreign[0]} was inserted outside the "
                               f"application (it is not sealed); run `portrait ledger verify` and restore the "
                               f"ledger from a copy")
    recorded = _execute(db, "SELECT rows, head FROM ledger_chains WHERE chain_table = ?", (chain.table,)).fetchone()
    last = _execute(db, f"SELECT chain_hash FROM {_quote(chain.table)} ORDER BY {_quote(chain.key)} DESC "
                        f"LIMIT 1").fetchone()
    if (last[0] if last else _genesis(chain.table)) != recorded[1]:
        raise ChainBrokenError(f"{chain.table}: its last row is not the recorded head of {recorded[0]} rows (rows "
                               f"were deleted or replaced); run `portrait ledger verify` and restore the ledger "
                               f"from a copy")


def require_row_intact(db: sqlite3.Connection, table: str, key: int) -> None:
    """Raise ``ChainBrokenError`` unless row ``key`` of ``table`` still matches its hashes (one row, not the chain).

    For a row the application is about to rely on, such as the running totals a charge reads.
    """
    chain = _chain(db, table)
    select = ", ".join([_quote(c) for c in chain.columns] + list(_CHAIN_COLUMNS))
    row = _execute(db, f"SELECT {select} FROM {_quote(table)} WHERE {_quote(chain.key)} = ?", (key,)).fetchone()
    width = len(chain.columns)
    content, prev, hashed, redacted = row[width:] if row else (None, None, None, 0)
    if row is None or redacted or hashed is None or content_hash(table, row[:width]) != content or link_hash(
            prev, content) != hashed:
        raise ChainBrokenError(f"{table}: row with {chain.key} {key} no longer matches its hash (edited outside the "
                               f"application); run `portrait ledger verify` and restore the ledger from a copy")


@contextmanager
def appending(db: sqlite3.Connection, table: str) -> Iterator[None]:
    """Insert rows into ``table`` inside the block (any SQL insert); they are sealed into the chain when it ends.

    Call it inside the caller's transaction (``BEGIN IMMEDIATE``), so rows and hashes commit together.
    Sealing updates each new row once; for many rows ``append_rows`` is faster.
    """
    chain = _chain(db, table)
    _require_appendable(db, chain)
    yield
    _seal(db, chain)


def _append_start(db: sqlite3.Connection, chain: _Chain) -> tuple[int, str, int, list[str]]:
    """Before appending: (rows recorded, head hash, next key, each content column's affinity)."""
    _require_appendable(db, chain)
    table = chain.table
    rows_before, previous, last_key = _execute(
        db, "SELECT rows, head, last_key FROM ledger_chains WHERE chain_table = ?", (table,)).fetchone()
    largest = _execute(db, f"SELECT MAX({_quote(chain.key)}) FROM {_quote(table)}").fetchone()[0]
    used = _execute(db, "SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone() if _execute(
        db, "SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'").fetchone() else None
    next_key = max(last_key or 0, largest or 0, used[0] if used else 0) + 1
    declared = {row[1]: row[2] for row in _execute(db, f"PRAGMA table_info({_quote(table)})")}
    return rows_before, previous, next_key, [_affinity(declared[c]) for c in chain.columns]


def _insert_sql(chain: _Chain, rows: int) -> str:
    names = ", ".join([_quote(c) for c in chain.columns] + ["chain_content", "chain_prev", "chain_hash"])
    row = f"({', '.join('?' * (len(chain.columns) + 3))})"
    return f"INSERT INTO {_quote(chain.table)} ({names}) VALUES {', '.join([row] * rows)}"


# Rows per INSERT statement of a sealed append. A statement per row would also read and write
# SQLite's AUTOINCREMENT counter (sqlite_sequence) once per row; here once per statement.
_ROWS_PER_INSERT = 500


def _insert_sealed(db: sqlite3.Connection, chain: _Chain, values: list[object], rows: int) -> None:
    """Insert ``rows`` sealed rows whose values lie one row after the other in ``values`` (the content
    columns in registration order, then content hash, previous chain hash, chain hash), many rows a statement."""
    width = len(chain.columns) + 3
    per_statement = max(1, min(_ROWS_PER_INSERT, db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width))
    whole, step = rows - rows % per_statement, per_statement * width
    if whole:
        insert = _insert_sql(chain, per_statement)
        for start in range(0, whole * width, step):
            db.execute(insert, values[start:start + step])
    if whole < rows:
        db.execute(_insert_sql(chain, rows - whole), values[whole * width:])


def _append_end(db: sqlite3.Connection, chain: _Chain, rows: int, head_hash: str, last_key: int) -> None:
    _execute(db, "UPDATE ledger_chains SET rows = ?, head = ?, last_key = ? WHERE chain_table = ?",
             (rows, head_hash, last_key, chain.table))


def append_rows(db: sqlite3.Connection, table: str, rows: Iterable[Sequence[object]], *,
                batch_rows: int = 100_000) -> int:
    """Insert ``rows`` sealed (hashes computed before the insert); returns how many were appended.

    Each row gives the registered content columns other than the key, in registration order;
    keys are assigned after the last one in the table. Call it inside the caller's transaction.
    For many rows held in Arrow, ``append_arrow`` gives the same rows and hashes faster.
    """
    chain = _chain(db, table)
    rows_before, previous, next_key, affinities = _append_start(db, chain)
    key_index = chain.columns.index(chain.key)
    appended, hash_row, plain_kinds = 0, _row_hasher(table), set()
    iterator = iter(rows)
    while batch := list(itertools.islice(iterator, batch_rows)):
        sealed = []   # rows: (content columns..., content hash, previous chain hash, chain hash)
        for values in batch:
            full = (*values[:key_index], next_key + appended + len(sealed), *values[key_index:])
            if len(full) != len(chain.columns):
                raise PortraitError(f"append_rows({table!r}): a row has {len(values)} values, expected "
                                    f"{len(chain.columns) - 1} (the content columns without {chain.key})")
            kinds = tuple(map(type, full))
            if kinds not in plain_kinds:   # rows of one table share a few type patterns: each is checked once
                if all(kind in _PLAIN[a] for kind, a in zip(kinds, affinities)):
                    plain_kinds.add(kinds)
                else:
                    full = tuple(_stored(v, a, f"{table}.{c}") for v, a, c in zip(full, affinities, chain.columns))
            content = hash_row(full)
            hashed = link_hash(previous, content)
            sealed.append((*full, content, previous, hashed))
            previous = hashed
        _insert_sealed(db, chain, list(itertools.chain.from_iterable(sealed)), len(sealed))
        appended += len(sealed)
    if appended:
        _append_end(db, chain, rows_before + appended, previous, next_key + appended - 1)
    return appended


def _arrow_fits(column: pa.ChunkedArray | pa.Array, affinity: str) -> bool:
    """Whether every value of ``column`` is stored and hashed by SQLite as Python hands it (no conversion)."""
    kind = column.type
    if pa.types.is_integer(kind) and not pa.types.is_uint64(kind):
        return affinity in ("integer", "numeric", "blob")
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return affinity in ("text", "blob")
    return pa.types.is_null(kind)


def _canonical_texts(columns: Sequence[pa.Array]) -> tuple[np.ndarray, np.ndarray]:
    """The canonical JSON list (``_CANONICAL``) of each row of ``columns`` (integers, strings or nulls), as
    (offsets, UTF-8 bytes): written by a compiled kernel, rows holding text JSON escapes by ``_CANONICAL``."""
    offsets, data, escaped = canonical_rows(list(columns))
    if not escaped.any():
        return offsets, data
    texts = pa.Array.from_buffers(pa.large_string(), len(escaped), [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    where = np.flatnonzero(escaped)
    rows = zip(*(column.take(pa.array(where)).to_pylist() for column in columns))
    texts = pc.replace_with_mask(texts, pa.array(escaped),
                                 pa.array([_CANONICAL(list(row)) for row in rows], pa.large_string()))
    return _offsets_and_data(texts)


def _python_values(column: pa.Array) -> list[object]:
    """``column.to_pylist()``, faster: integers through numpy, and text of few distinct values (judged on
    the first 1,024) as one Python string per distinct value, shared by its rows."""
    if pa.types.is_integer(column.type) and not column.null_count:
        return column.to_numpy().tolist()
    if (len(column) > 4 * 1024 and (pa.types.is_string(column.type) or pa.types.is_large_string(column.type))
            and pc.count_distinct(column.slice(0, 1024), mode="all").as_py() <= 64):
        encoded = pc.dictionary_encode(column, null_encoding="encode")
        return np.array(encoded.dictionary.to_pylist(), dtype=object)[encoded.indices.to_numpy()].tolist()
    return column.to_pylist()


def _hashed_batches(chain: _Chain, pieces: Iterable[pa.Table], first_key: int, previous: str,
                    batch_rows: int) -> Iterator[tuple[list[pa.Array], np.ndarray, np.ndarray]]:
    """(content columns with the keys from ``first_key``, content hashes, chain hashes) of each batch of at most
    ``batch_rows`` rows of ``pieces``, the chain going on from ``previous``; hashes as (rows, 64) hex digits."""
    names = [c for c in chain.columns if c != chain.key]
    key_index, prefix = chain.columns.index(chain.key), _row_prefix(chain.table)
    for piece in pieces:
        piece = piece.select(names)
        for start in range(0, piece.num_rows, batch_rows):
            batch = piece.slice(start, batch_rows)
            columns = [c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c for c in batch.columns]
            columns.insert(key_index, pa.array(np.arange(first_key, first_key + batch.num_rows, dtype=np.int64)))
            # rows: (content columns...) -> canonical JSON -> content hash -> chain hash
            contents = content_digests(prefix, *_canonical_texts(columns))
            hashes = link_digests(contents, first_previous=previous)
            yield columns, contents, hashes
            first_key, previous = first_key + batch.num_rows, hashes[-1].tobytes().decode()


def append_arrow(db: sqlite3.Connection, table: str, rows: pa.Table | Iterable[pa.Table], *,
                 batch_rows: int = 100_000) -> int:
    """``append_rows`` for rows held in Arrow: the same rows, keys and hashes, hashed by compiled kernels.

    ``rows`` is one table or an iterable of tables with the same schema (taken one at a time, so
    only one batch of at most ``batch_rows`` rows is held as Python values), each with the
    registered content columns other than the key (by name; row order is the append order).
    Columns that are not integers or strings, or whose type does not match the column's
    affinity, go through ``append_rows``. Call it inside the caller's transaction.
    """
    chain = _chain(db, table)
    names = [c for c in chain.columns if c != chain.key]
    pieces = iter([rows] if isinstance(rows, pa.Table) else rows)
    first = next(pieces, None)
    if first is None:
        _require_appendable(db, chain)
        return 0
    missing = [c for c in names if c not in first.column_names]
    if missing:
        raise PortraitError(f"append_arrow({table!r}): the rows lack column(s) {', '.join(missing)}")
    pieces = itertools.chain([first], pieces)
    declared = {row[1]: row[2] for row in _execute(db, f"PRAGMA table_info({_quote(table)})")}
    if not all(_arrow_fits(first.column(c), _affinity(declared[c])) for c in names):
        return append_rows(db, table, (row for piece in pieces for row in zip(
            *(piece.column(c).to_pylist() for c in names))), batch_rows=batch_rows)
    rows_before, previous, next_key, _ = _append_start(db, chain)
    width, appended = len(chain.columns) + 3, 0
    # While SQLite inserts a batch (the GIL released), a worker reads and hashes the next one.
    hashed = _hashed_batches(chain, pieces, next_key, previous, batch_rows)
    for columns, contents, hashes in made_ahead(hashed, name="ledger-append"):
        chain_hashes = hex_strings(hashes)
        values: list[object] = [None] * (len(chain_hashes) * width)   # rows one after the other
        for at, column in enumerate([*map(_python_values, columns), hex_strings(contents),
                                     [previous, *chain_hashes[:-1]], chain_hashes]):
            values[at::width] = column
        _insert_sealed(db, chain, values, len(chain_hashes))
        previous = chain_hashes[-1]
        appended += len(chain_hashes)
    if appended:
        _append_end(db, chain, rows_before + appended, previous, next_key + appended - 1)
    return appended


def redact(db: sqlite3.Connection, table: str, where: str, params: Sequence[object] = (), *, reason: str) -> int:
    """Replace the content of ``table``'s rows matching ``where`` by the placeholders, keeping their hashes.

    Appends one ``ledger_redactions`` entry per row (its key, content hash, ``reason``, when).
    Returns the number of rows redacted. Call it inside the caller's transaction.
    """
    chain = _chain(db, table)
    if not reason.strip():
        raise PortraitError("a redaction needs a reason, such as 'erasure request'")
    targets = _execute(db, f"SELECT {_quote(chain.key)}, chain_content FROM {_quote(table)} WHERE chain_redacted = 0 "
                         f"AND chain_hash IS NOT NULL AND ({where})", tuple(params)).fetchall()
    if not targets:
        return 0
    stamp = _now()
    with appending(db, REDACTIONS_TABLE):
        db.executemany(f"INSERT INTO {REDACTIONS_TABLE} (chain_table, row_key, content, reason, redacted_at) "
                       "VALUES (?, ?, ?, ?, ?)", [(table, key, content, reason, stamp) for key, content in targets])
    assignments = ", ".join([f"{_quote(c)} = {_placeholder_sql(v, _quote(table))}"
                             for c, v in chain.placeholders.items()] + ["chain_redacted = 1"])
    db.executemany(f"UPDATE {_quote(table)} SET {assignments} WHERE {_quote(chain.key)} = ?",
                   [(key,) for key, _ in targets])
    return len(targets)


def head(db: sqlite3.Connection, table: str) -> str:
    """The recorded head hash of ``table``'s chain (what a review publishes)."""
    _chain(db, table)
    return _execute(db, "SELECT head FROM ledger_chains WHERE chain_table = ?", (table,)).fetchone()[0]


def verify(db: sqlite3.Connection, table: str, *, chunk_rows: int = 100_000,
           waypoints: Mapping[int, str] | None = None) -> ChainReport:
    """Recompute ``table``'s chain from its first row; the report names the first row that does not fit.

    Checks, row by row in key order: the row is sealed; ``chain_prev`` is the previous row's hash;
    ``chain_content`` is the hash of the row's content (for a redacted row: the content is exactly
    the placeholders and a redaction entry holds its content hash); ``chain_hash`` links the two.
    Then that the rows and head match what was recorded at the last append, and that the
    append-only triggers are in place. ``waypoints`` maps row counts to the chain hash recorded
    elsewhere as the head at that count (such as beside a snapshot of the table): the chain must
    pass through each, so a chain cut back or rebuilt behind one, consistent in itself, is broken.
    Reads one consistent state of the file.

    How it is fast (every row is still checked): a table keyed by its INTEGER PRIMARY KEY is read
    ``chunk_rows`` rows at a time as SQLite's own JSON text of each row (``json_array``), which is
    byte for byte the canonical JSON the hashes were made from for integers, NULL and printable
    ASCII text, and hashed by compiled kernels. A chunk that does not check out that way (a real
    or blob value, text JSON escapes differently, an unsealed row, any hash mismatch) is checked
    again row by row as above, which decides and names the first bad row. A chunk passes the fast
    check only if SQLite's JSON of every row not redacted hashes to its recorded content hash; since
    JSON text decodes to one list of values, a changed integer, text or NULL cannot pass it. Its
    redacted rows (an erasure leaves them all through a history) have their links checked with the
    rest, and are then read alone for the placeholder and redaction-entry check.
    """
    chain = _chain(db, table)
    began = not db.in_transaction
    if began:
        _execute(db, "BEGIN")   # one read snapshot for every chunk
    try:
        return _verify(db, chain, chunk_rows, dict(waypoints or {}))
    finally:
        if began:
            _execute(db, "COMMIT")


@dataclass
class _Walk:
    """Where a verification stands: rows checked so far and the last chain hash."""

    previous: str
    position: int = 0


def _verify(db: sqlite3.Connection, chain: _Chain, chunk_rows: int, waypoints: dict[int, str]) -> ChainReport:
    table = chain.table
    recorded_rows, recorded_head, migrated = _execute(
        db, "SELECT rows, head, migrated_rows FROM ledger_chains WHERE chain_table = ?", (table,)).fetchone()
    redactions: dict[int, str] = {}
    if table != REDACTIONS_TABLE:
        redactions = dict(_execute(db, f"SELECT row_key, content FROM {REDACTIONS_TABLE} WHERE chain_table = ?",
                                     (table,)).fetchall())
    key_index = chain.columns.index(chain.key)
    select = ", ".join([_quote(c) for c in chain.columns] + list(_CHAIN_COLUMNS))
    walk = _Walk(_genesis(table))

    def report(problem: str, at: int) -> ChainReport:
        """A broken chain: the rows the table holds, the head recorded at the last append, the first bad row."""
        rows = _execute(db, f"SELECT COUNT(*) FROM {_quote(table)}").fetchone()[0]
        return ChainReport(table, rows, recorded_head, False, at, problem, migrated)

    width, hash_row = len(chain.columns), _row_hasher(table)

    def redaction_matches(values: Sequence[object], content: str) -> bool:
        """A redacted row holds its placeholders alone, and the redaction entry of its key keeps its content."""
        expected = [(_redacted_value(chain.placeholders[c], content) if c in chain.placeholders else values[i])
                    for i, c in enumerate(chain.columns)]
        return list(values) == expected and redactions.get(values[key_index]) == content

    def unmatched_redaction(values: Sequence[object], at: int) -> ChainReport:
        return report(f"{chain.key} {values[key_index]} is marked redacted without a matching redaction entry or "
                      f"placeholder content", at)

    def check_rows(rows: Iterable[Sequence[object]]) -> ChainReport | None:
        """The exact check, row by row, from where ``walk`` stands; a report at the first bad row."""
        for row in rows:
            values, (content, prev, hashed, redacted) = row[:width], row[width:]
            walk.position += 1
            if hashed is None:
                return report(f"{chain.key} {values[key_index]} is not sealed (inserted outside the application)",
                              walk.position)
            if prev != walk.previous:
                return report(f"{chain.key} {values[key_index]} does not link to the row before it (a row was "
                              f"deleted, inserted or reordered)", walk.position)
            if redacted:
                if not redaction_matches(values, content):
                    return unmatched_redaction(values, walk.position)
            elif _hash_or_none(hash_row, values) != content:
                return report(f"{chain.key} {values[key_index]} was changed after it was recorded (its content no "
                              f"longer matches its hash)", walk.position)
            if link_hash(prev, content) != hashed:
                return report(f"{chain.key} {values[key_index]} has a chain hash that does not match its content "
                              f"and link", walk.position)
            walk.previous = hashed
            if waypoints.get(walk.position, hashed) != hashed:
                return report(_off_waypoint(walk.position, waypoints[walk.position]), walk.position)
        return None

    key = _quote(chain.key)
    if _keyed_by_rowid(db, chain):
        def after(last: object) -> tuple[str, tuple]:
            return ("", ()) if last is None else (f"WHERE {key} > ?", (last,))

        # While one chunk is hashed (compiled kernels, without the GIL), SQLite reads the next one.
        # Chunks are checked in order, each from the hash the one before it was found to end on.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-verify") as hasher:
            last, fetched = None, _fetch_chunk(db, chain, *after(None), chunk_rows)
            while True:
                checking = hasher.submit(_fast_chunk, chain, fetched, walk.previous)
                upcoming = (None if fetched is None or fetched[0] == 0
                            else _fetch_chunk(db, chain, *after(fetched[1]), chunk_rows))
                checked = checking.result()
                if checked is None:   # the exact check decides
                    where, params = after(last)
                    rows = _execute(db, f"SELECT {select} FROM {_quote(table)} {where} ORDER BY {key} LIMIT ?",
                                    (*params, chunk_rows)).fetchall()
                    if not rows:
                        break
                    broken = check_rows(rows)
                    if broken is not None:
                        return broken
                    last = rows[-1][key_index]
                    if fetched is None or fetched[1] != last:   # the chunk read ahead began elsewhere
                        upcoming = _fetch_chunk(db, chain, *after(last), chunk_rows)
                else:
                    count, last_key, last_hash, hashes, redacted_at = checked
                    if count == 0:
                        break
                    if len(redacted_at):
                        # rows: (columns..., chain_content, ...) of the chunk's redacted rows, in key order
                        where, params = after(last)
                        marked = _execute(db, f"SELECT {select} FROM {_quote(table)} "
                                              f"{where + ' AND' if where else 'WHERE'} {key} <= ? AND chain_redacted "
                                              f"!= 0 ORDER BY {key}", (*params, last_key)).fetchall()
                        if len(marked) != len(redacted_at):
                            raise InternalError(f"{table}: a chunk's redacted rows read differently twice in one "
                                                f"read transaction (a bug)")
                        for at, row in zip(redacted_at, marked):
                            if not redaction_matches(row[:width], row[width]):
                                return unmatched_redaction(row[:width], walk.position + int(at) + 1)
                    for at in sorted(at for at in waypoints if walk.position < at <= walk.position + count):
                        if hashes[at - walk.position - 1].tobytes() != waypoints[at].encode():
                            return report(_off_waypoint(at, waypoints[at]), at)
                    walk.position += count
                    walk.previous, last = last_hash, last_key
                fetched = upcoming
    else:
        broken = check_rows(_execute(db, f"SELECT {select} FROM {_quote(table)} ORDER BY {key}"))
        if broken is not None:
            return broken
    position, previous = walk.position, walk.previous
    beyond = [at for at in waypoints if at > position]
    if beyond:
        return report(_off_waypoint(min(beyond), waypoints[min(beyond)]), position + 1)
    if position < recorded_rows:
        return report(f"{recorded_rows - position} row(s) missing at the end (recorded head {recorded_head[:16]}...)",
                      position + 1)
    if position > recorded_rows or previous != recorded_head:
        return report("the rows do not end at the recorded head (the chain was rebuilt or rows were added)",
                      recorded_rows)
    absent = _missing_triggers(db, table)
    if absent:
        return ChainReport(table, position, previous, False, None,
                           f"append-only trigger(s) {', '.join(absent)} were dropped", migrated)
    return ChainReport(table, position, previous, True, None, "", migrated)


def _hash_or_none(hash_row: Callable[[Sequence[object]], str], values: Sequence[object]) -> str | None:
    """The row's content hash; None for a value the application never writes (a blob), which matches nothing."""
    try:
        return hash_row(values)
    except TypeError:
        return None


def _keyed_by_rowid(db: sqlite3.Connection, chain: _Chain) -> bool:
    """Whether the chain's key is the table's INTEGER PRIMARY KEY (unique, so chunks can follow it)."""
    info = list(_execute(db, f"PRAGMA table_info({_quote(chain.table)})"))
    keys = [row for row in info if row[5]]
    return len(keys) == 1 and keys[0][1] == chain.key and keys[0][2].upper() == "INTEGER"


def _fetch_chunk(db: sqlite3.Connection, chain: _Chain, where: str, params: tuple, limit: int) -> tuple | None:
    """The next chunk as SQLite's JSON of each row: (rows, last key, JSON bytes one row a line, the rows'
    three hashes concatenated, each row's ``chain_redacted`` as one digit, reals); None when a value cannot
    be JSON (a blob)."""
    columns = [_quote(c) for c in chain.columns]
    # A real's JSON text is rounded to 15 digits, so reals go to the exact check. TEXT affinity
    # stores numbers as text and the INTEGER PRIMARY KEY holds integers: only other columns can
    # hold one. (A blob makes json_array fail: the exact check again.)
    declared = {row[1]: row[2] for row in _execute(db, f"PRAGMA table_info({_quote(chain.table)})")}
    odd = " + ".join(f"(typeof({_quote(c)}) = 'real')" for c in chain.columns
                     if c != chain.key and _affinity(declared[c]) != "text") or "0"
    # Bytes (CAST AS BLOB), not text: the hashes are over UTF-8 bytes, so nothing is decoded and encoded again.
    sql = (f"SELECT count(*), max(k), CAST(group_concat(j, char(10)) AS BLOB), CAST(group_concat(h, '') AS BLOB), "
           f"CAST(group_concat(r, '') AS BLOB), total(odd) FROM ("
           f"SELECT {_quote(chain.key)} AS k, json_array({', '.join(columns)}) AS j, "
           f"ifnull(chain_content, '') || ifnull(chain_prev, '') || ifnull(chain_hash, '') AS h, "
           f"chain_redacted AS r, {odd} AS odd FROM {_quote(chain.table)} {where} ORDER BY {_quote(chain.key)} "
           f"LIMIT ?)")
    try:
        return _execute(db, sql, (*params, limit)).fetchone()
    except sqlite3.DataError:   # json_array of a blob: the exact check says what it is
        return None
    except sqlite3.OperationalError as error:
        if "JSON cannot hold BLOB" in str(error):
            return None
        raise


def _fast_chunk(chain: _Chain, fetched: tuple | None, previous: str
                ) -> tuple[int, object, str, np.ndarray, np.ndarray] | None:
    """(rows, last key, last chain hash, each row's chain hash as (rows, 64) hex digits, the positions in the
    chunk of its redacted rows) of a fetched chunk (``_fetch_chunk``) when it checks out by SQLite's JSON,
    linking to ``previous``; else None (the exact check decides). A redacted row's content hash is of
    what it held before, so only its links are checked here: the caller checks its placeholders and
    its redaction entry."""
    if fetched is None:
        return None
    count, last_key, texts, hashes, flags, odd_values = fetched
    if count == 0:
        return 0, None, previous, np.empty((0, 64), np.uint8), np.empty(0, np.int64)
    if odd_values or len(hashes) != 192 * count or not hashes.isascii() or len(flags) != count:
        return None
    redacted = np.frombuffer(flags, dtype=np.uint8) != ord("0")
    data = np.frombuffer(texts, dtype=np.uint8)
    breaks = np.flatnonzero(data == 10)
    if len(breaks) != count - 1:
        return None
    offsets = np.concatenate(([0], breaks + 1, [len(data) + 1])).astype(np.int64)
    ends = offsets[1:] - 1   # rows: (start, end) of each row's JSON, the newline between rows left out
    stored = np.frombuffer(hashes, dtype=np.uint8).reshape(count, 3, 64)
    contents = content_digests_between(_row_prefix(chain.table), offsets[:-1], ends, data)
    prevs = stored[:, 1]
    linked = link_digests(stored[:, 0], previous_hashes=prevs)
    if not (np.array_equal(contents[~redacted], stored[~redacted, 0]) and np.array_equal(linked, stored[:, 2])
            and prevs[0].tobytes() == previous.encode() and np.array_equal(prevs[1:], stored[:-1, 2])):
        return None
    return count, last_key, stored[-1, 2].tobytes().decode(), stored[:, 2], np.flatnonzero(redacted)


def _off_waypoint(at: int, head: str) -> str:
    return (f"the chain does not pass through head {head[:16]}... at row {at}, where it was recorded (rows were "
            f"removed or rewritten and the chain rewound)")


def _redacted_value(placeholder: object, content: str) -> object:
    return f"redacted:{content}" if placeholder is REDACTED_ID else placeholder


def verify_all(db: sqlite3.Connection) -> list[ChainReport]:
    """``verify`` of every chain recorded in the file, in name order (empty when none is)."""
    present = _execute(db, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'ledger_chains'").fetchone()
    if present is None:
        return []
    tables = [row[0] for row in _execute(db, "SELECT chain_table FROM ledger_chains ORDER BY chain_table")]
    return [verify(db, table) for table in tables]
