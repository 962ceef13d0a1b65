"""The workspace's ledger file (``ledger.sqlite``): how every part opens it and writes to it.

Consent, budgets, requests, tombstones, retention and the transfer log share the file; each opens
it with ``ledger_connection`` (WAL, full sync, secure deletion, a busy timeout; a truncated file is
refused), makes sure of its tables with ``ensure_schema`` (a read where they exist, so a reader never
waits for a writer) and writes inside ``immediate_transaction`` (SQLite lets one such transaction run
at a time, so concurrent writers take turns and a failed write leaves nothing).
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from profiling.errors import WorkspaceError

__all__ = ["ensure_schema", "immediate_transaction", "ledger_connection", "read_transaction"]


# Pages of a new ledger file (bytes; a file keeps the size it was made with): SQLite's largest. A bulk
# load of the consent history reads and writes a sixteenth as many pages as with SQLite's 4 KiB (1M
# accounts: the consent first load 59 -> 35 s; 5M: the job's consent stage 434 -> 219 s).
_PAGE_BYTES = 65536
# How long a statement waits for another connection (seconds): a checkpoint for readers, a deferred
# transaction's first write. ``immediate_transaction`` waits out another process's write however long it takes.
_BUSY_SECONDS = 60
# How long ``immediate_transaction`` waits before it says on stderr what it waits for (seconds).
_ANNOUNCE_SECONDS = 2
# How long a ledger that looks truncated is given before it is looked at again (seconds).
_SETTLE_SECONDS = 0.2


def ledger_connection(path: str | os.PathLike) -> sqlite3.Connection:
    """A connection to ``ledger.sqlite`` with WAL, full sync, secure deletion and a busy timeout.

    Autocommit mode: callers open transactions with ``immediate_transaction``. A new file is made
    with pages of ``_PAGE_BYTES``, whichever part of Portrait opens it first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _refuse_truncated(path)
    connection = sqlite3.connect(path, timeout=_BUSY_SECONDS, isolation_level=None)
    try:
        connection.execute(f"PRAGMA page_size={_PAGE_BYTES}")   # no effect on a file that holds pages already
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as error:
        connection.close()
        if type(error) is sqlite3.OperationalError:  # locked, read-only: not damage
            raise
        raise WorkspaceError(f"ledger {path} is not a readable SQLite database ({error}); move it aside and "
                             f"restore it from a backup") from None
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("PRAGMA secure_delete=ON")
    connection.execute(f"PRAGMA busy_timeout={_BUSY_SECONDS * 1000}")
    return connection


@contextmanager
def immediate_transaction(connection: sqlite3.Connection, schema: str = "") -> Iterator[sqlite3.Connection]:
    """One ``BEGIN IMMEDIATE`` transaction on ``connection`` (``schema``'s statements run first inside it):
    committed when the block ends, rolled back when it raises.

    Another process's write transaction is waited out however long it lasts (a job's first consent load holds
    one for minutes at millions of events), as the job lock is; one line on stderr says so once it has lasted
    ``_ANNOUNCE_SECONDS``. SQLite's lock ends with its process, however the process ends."""
    _begin_immediate(connection, schema)
    try:
        yield connection
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def _begin_immediate(connection: sqlite3.Connection, schema: str) -> None:
    connection.execute(f"PRAGMA busy_timeout={_ANNOUNCE_SECONDS * 1000}")
    try:
        announced = False
        while True:
            try:
                connection.executescript(f"BEGIN IMMEDIATE;{schema}")
                return
            except sqlite3.OperationalError as error:
                if connection.in_transaction or getattr(error, "sqlite_errorname", None) != "SQLITE_BUSY":
                    raise
            if not announced:
                path = connection.execute("PRAGMA main.database_list").fetchone()[2]
                print(f"portrait: waiting for another process's write to ledger {path} to end (a job's "
                      f"consent load holds it for minutes on millions of events)", file=sys.stderr, flush=True)
                announced = True
    finally:
        connection.execute(f"PRAGMA busy_timeout={_BUSY_SECONDS * 1000}")


@contextmanager
def read_transaction(connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """Reads from one state of the file (a deferred transaction, or the caller's if one is open): it takes no
    write lock, so it neither waits for a writer nor keeps one waiting (WAL); ended when the block ends."""
    began = not connection.in_transaction
    if began:
        connection.execute("BEGIN")
    try:
        yield connection
    finally:
        if began:
            connection.execute("COMMIT")


def ensure_schema(connection: sqlite3.Connection, schema: str,
                  complete: Callable[[sqlite3.Connection], None] | None = None) -> None:
    """Make sure ``schema``'s objects, and what ``complete`` adds, exist: a write only where something is missing.

    ``schema``'s statements must write nothing when their object exists (``CREATE … IF NOT EXISTS``), and
    ``complete`` (run inside the same transaction) must write only what is missing, as ``register_table`` does.
    On a ledger that has them all (every open but the first) this is a deferred transaction that only reads,
    so a command that opens the ledger to read does not wait for another process's write transaction (a job's
    consent load holds one for minutes at millions of events). Where something is missing and another process
    writes, or wrote between this one's read and its write, it is done again in ``immediate_transaction``.
    (SQLite also asks for the write lock where the connection's cached schema is older than the file's; the
    connection is opened right before, so that is a schema changed in between, and it is waited for likewise.)
    """
    connection.execute("PRAGMA busy_timeout=0")
    try:
        connection.executescript(f"BEGIN DEFERRED;{schema}")   # one script: executescript commits what is open
        if complete is not None:
            complete(connection)
        connection.execute("COMMIT")
        return
    except BaseException as error:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        if not str(getattr(error, "sqlite_errorname", "")).startswith("SQLITE_BUSY"):
            raise
    finally:
        connection.execute(f"PRAGMA busy_timeout={_BUSY_SECONDS * 1000}")
    with immediate_transaction(connection, schema):
        if complete is not None:
            complete(connection)


def _refuse_truncated(path: Path) -> None:
    """``WorkspaceError`` when the file is shorter than the page count its header vouches for (100 bytes read).

    Only a file at rest is judged: while its WAL or rollback journal holds pages, another connection may be
    copying them in (a checkpoint writes the header's new page count before the pages after it), and SQLite
    reads those pages from there. A file that looks short is read again after ``_SETTLE_SECONDS``, so a
    small write that began and ended between two looks is not taken for damage.
    """
    short = _looks_truncated(path)
    if short is not None:
        time.sleep(_SETTLE_SECONDS)
        short = _looks_truncated(path)
    if short is not None:
        size, pages, page_size = short
        raise WorkspaceError(f"ledger {path} is truncated: {size} bytes where its header counts {pages} pages of "
                             f"{page_size}; move it aside and restore it from a backup")


def _looks_truncated(path: Path) -> tuple[int, int, int] | None:
    """(file bytes, header's pages, page bytes) when the file at rest is shorter than its header says; else None."""
    if _pages_elsewhere(path):
        return None
    try:
        with path.open("rb") as handle:
            header = handle.read(100)
            size = os.fstat(handle.fileno()).st_size
    except FileNotFoundError:
        return None
    if len(header) < 100 or not header.startswith(b"SQLite format 3\x00"):
        return None  # empty (new) or not SQLite at all: opening it says so
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages, counter, valid_for = (int.from_bytes(header[at:at + 4], "big") for at in (28, 24, 92))
    # looked at again: a checkpoint that began while the header was read may have written it
    if counter != valid_for or size >= pages * page_size or _pages_elsewhere(path):
        return None
    return size, pages, page_size


def _pages_elsewhere(path: Path) -> bool:
    """Whether the ledger's WAL or rollback journal holds anything: pages a checkpoint or rollback is still to write."""
    for suffix in ("-wal", "-journal"):
        try:
            if path.with_name(path.name + suffix).stat().st_size:
                return True
        except FileNotFoundError:
            pass
    return False
