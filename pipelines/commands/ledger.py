"""``portrait ledger verify``: recompute every hash chain of the workspace's ledger.

One line per chain (table, rows, head hash, ok or the first broken row and why); exits 2 with a
one-line error when any chain is broken. Publishing the heads (the privacy review prints them)
lets an auditor see whether a later chain still extends the one seen before.
"""

from __future__ import annotations

import argparse
import sqlite3
from pathlib import Path

from dp import BudgetLedger
from pipelines.commands._shared import add_workspace_argument, existing_ledger, existing_workspace
from profiling.consent import SqliteConsentStore
from profiling.consent.sqlite_store import CHAINED_TABLES
from profiling.ledger_chain import ChainBrokenError, ChainReport, verify_all

__all__ = ["register", "verify_ledger"]


def verify_ledger(path: Path) -> list[ChainReport]:
    """Every chain of the ledger file at ``path``, verified (a ledger made before chaining is migrated first).

    The consent tables are checked as a job checks them before any stage (``SqliteConsentStore.audit``:
    their chains, consent_events through its latest snapshot's position, the snapshot's bytes
    against their record); the other chains by ``verify_all``.
    """
    BudgetLedger(path)
    with SqliteConsentStore(path) as store:
        consent = store.audit()
    connection = sqlite3.connect(path, timeout=60.0)
    try:
        others = [report for report in verify_all(connection) if report.table not in CHAINED_TABLES]
    finally:
        connection.close()
    return sorted([*consent, *others], key=lambda report: report.table)


def _verify(args: argparse.Namespace) -> None:
    path = existing_ledger(existing_workspace(args.workspace))
    reports = verify_ledger(path)
    for report in reports:
        migrated = f"  ({report.migrated_rows} rows predate the chain)" if report.migrated_rows else ""
        print(report.line() + migrated)
    broken = [report for report in reports if not report.ok]
    if broken:
        raise ChainBrokenError(f"ledger {path}: {len(broken)} chain(s) broken, first {broken[0].table} "
                               f"({broken[0].problem}); restore the ledger from a copy whose heads match the last "
                               f"published review")


def register(commands: argparse._SubParsersAction) -> None:
    ledger = commands.add_parser("ledger", help="check the ledger's hash chains (consent, budgets, requests, "
                                   "cross-border transfers)")
    actions = ledger.add_subparsers(dest="ledger_command", required=True, metavar="ACTION")
    verify = actions.add_parser("verify", help="recompute every chain: one line per table, exit 2 if one is broken")
    add_workspace_argument(verify)
    verify.set_defaults(handler=_verify)
