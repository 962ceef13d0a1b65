"""The consent ledger's store interface: what the gate and the data-subject requests need from storage.

``SqliteConsentStore`` implements it in the workspace's ``ledger.sqlite``; a PostgreSQL store can
implement the same methods when several machines share one ledger. The ledger is append-only for
everything except erasure, which removes an account's events as the law demands.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import pyarrow as pa

from profiling.consent.events import ConsentEvent

__all__ = ["AuditRecord", "ConsentStore", "LoadReport"]


@dataclass(frozen=True)
class AuditRecord:
    """One gate decision: which job asked, for what, as of when, and what it got — counts only, no person."""

    job: str
    purpose: str
    as_of: dt.datetime
    sensitive: bool
    eligible: int
    excluded: dict[str, int]
    dnd: int
    non_personalized: int
    snapshot_hash: str
    events: int
    recorded_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))


@dataclass(frozen=True)
class LoadReport:
    """Rows offered to the ledger, newly recorded, and already there (same event id: skipped)."""

    offered: int
    recorded: int
    already_present: int


@runtime_checkable
class ConsentStore(Protocol):
    def append(self, events: Iterable[ConsentEvent], *, source: str) -> int:
        """Record checked events in one transaction; refuse an event after the account's cancellation."""

    def append_table(self, events: pa.Table, *, source: str, fingerprint: str | None = None) -> LoadReport:
        """Record rows of a ``consent_events`` table, skipping event ids already recorded (idempotent).

        ``fingerprint`` (of the data the rows came from) is recorded in the same transaction.
        """

    def has_loaded(self, fingerprint: str) -> bool:
        """Whether ``append_table`` already recorded every row of the data with this fingerprint."""

    def history(self, account_id: str) -> list[dict]:
        """Every event of one account, in ledger order (time, then order of recording)."""

    def events(self, account_ids: Sequence[str] | None = None) -> pa.Table:
        """The history (``as_of.EVENT_COLUMNS``), ordered by account then time then recording."""

    def event_pieces(self) -> Iterator[pa.Table]:
        """The whole history as ``events()`` gives it, in consecutive pieces (an account may span two)."""

    def record_audit(self, record: AuditRecord) -> int:
        """Persist a gate decision; returns its id."""

    def audit_records(self) -> list[dict]:
        """Every gate decision, oldest first."""

    def erase_account(self, account_id: str) -> int:
        """Remove every event of the account (erasure); returns how many were removed."""
