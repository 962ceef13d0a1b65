"""The consent gate: every stage asks it for its purpose and as-of moment and keeps only eligible rows.

Each decision writes an audit record (job, purpose, as-of, eligible and excluded counts with the
reasons, Do-Not-Disturb and non-personalized counts, SHA-256 of the consent history as it stood at
the as-of moment). The record holds counts only, never a person.

What a stage asks for:

* personalization (portraits, personalized scoring): ``decide("personalization", T)``;
* recommendations for everyone who may be served: ``decide("service_provision", T)``; persons with
  ``non_personalized`` set get the non-personalized (popularity) list;
* marketing audiences: ``decide("marketing_messages", T)``, which already leaves out persons with
  Do Not Disturb on (reason ``do_not_disturb``); other purposes keep them, flagged ``dnd``;
* sensitive data (ID-card numbers for customs, precise location): ``decide(P, T, sensitive=True)``
  or ``sensitive_consent_holds``.

Eligible persons come as raw account ids (the ledger is keyed by them); ``GateDecision.person_ids``
maps them to PERSON pseudonyms with the master key for the analytics zone.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from profiling.consent.as_of import ConsentSnapshot, Exclusion, to_micros
from profiling.consent.sqlite_store import SqliteConsentStore
from profiling.consent.store import AuditRecord, ConsentStore
from profiling.purposes import purpose

__all__ = ["ConsentGate", "GateDecision", "NO_CONSENT_RECORD", "sensitive_consent_holds"]

# Reason for persons of a given population who have no event in the ledger at all.
NO_CONSENT_RECORD = "no_consent_record"


@dataclass(frozen=True)
class GateDecision:
    """Eligible accounts for one purpose at one moment, with their flags, and the audit record's id.

    ``account_ids``, ``dnd`` and ``non_personalized`` are aligned, one entry per eligible person.
    """

    job: str
    purpose: str
    as_of: dt.datetime
    sensitive: bool
    account_ids: pa.Array
    dnd: np.ndarray
    non_personalized: np.ndarray
    excluded: dict[str, int]
    snapshot_hash: str
    audit_id: int

    @property
    def eligible(self) -> int:
        return len(self.account_ids)

    def frame(self) -> pd.DataFrame:
        """``(account_id, dnd, non_personalized)``, one row per eligible person."""
        return pd.DataFrame({"account_id": self.account_ids.to_pandas(), "dnd": self.dnd,
                             "non_personalized": self.non_personalized})

    def person_ids(self, key) -> pa.Array:
        """PERSON pseudonyms of the eligible accounts (``key`` is what ``load_key_file`` returns)."""
        from profiling.pseudonyms import PERSON, pseudonymize

        return pseudonymize(self.account_ids, key, PERSON, identifier="account_id")

    def person_frame(self, key) -> pd.DataFrame:
        """``(person_id, dnd, non_personalized)`` for the analytics zone, one row per eligible person."""
        return pd.DataFrame({"person_id": self.person_ids(key).to_pandas(), "dnd": self.dnd,
                             "non_personalized": self.non_personalized})

    def keep(self, rows: pa.Table, column: str = "account_id", *, key=None) -> pa.Table:
        """Only the rows whose ``column`` names an eligible person.

        For ``column="person_id"`` (analytics zone) pass the master key so accounts map to pseudonyms.
        """
        if column not in rows.column_names:
            raise ValueError(f"the rows have no column {column!r} to gate on; they have {', '.join(rows.column_names)}")
        if column == "person_id":
            if key is None:
                raise ValueError("gating on person_id needs the master key (key=load_key_file(path))")
            allowed = self.person_ids(key)
        else:
            allowed = self.account_ids
        return rows.filter(pc.is_in(rows.column(column), value_set=allowed))


class ConsentGate:
    """Answers "who may be processed for purpose P at moment T", and records every answer.

    ``store`` is a ``ConsentStore`` (e.g. ``SqliteConsentStore(workspace.ledger)``).
    """

    def __init__(self, store: ConsentStore) -> None:
        self.store = store

    def snapshot(self, account_ids: Sequence[str] | None = None) -> ConsentSnapshot:
        """The history of ``account_ids`` (default: everyone's, prepared a piece of the ledger at a time)."""
        if account_ids is None:
            return ConsentSnapshot.from_pieces(self.store.event_pieces())
        return ConsentSnapshot.from_arrow(self.store.events(account_ids))

    def decide(self, purpose_name: str, as_of: dt.datetime, *, job: str, sensitive: bool = False,
               population: pa.Array | Sequence[str] | None = None,
               snapshot: ConsentSnapshot | None = None) -> GateDecision:
        """Eligible persons for ``purpose_name`` at ``as_of``; writes the audit record first.

        ``population`` (optional) is every account the job would otherwise process; those without
        any consent event are counted as ``no_consent_record`` and, like everyone not in the
        ledger, are not eligible. ``snapshot`` reuses an already built history for several
        decisions of one run (it must come from this gate's store).
        """
        entry = purpose(purpose_name)
        if not job or not isinstance(job, str):
            raise ValueError("name the job asking the gate (job='portraits'); the audit record needs it")
        snapshot = snapshot if snapshot is not None else self.snapshot()
        state = snapshot.evaluate(as_of)
        reasons = state.exclusions(entry.name, sensitive=sensitive)
        eligible = reasons == Exclusion.ELIGIBLE
        excluded = {Exclusion(code).label: int(count)
                    for code, count in zip(*np.unique(reasons[~eligible], return_counts=True))}
        if population is not None:
            population = pa.array(population, pa.string()) if not isinstance(population, pa.Array) else population
            unknown = pc.sum(pc.invert(pc.is_in(population, value_set=state.account_ids))).as_py() or 0
            if unknown:
                excluded[NO_CONSENT_RECORD] = int(unknown)
        decision_ids = state.account_ids.filter(pa.array(eligible))
        dnd = state.dnd[eligible]
        non_personalized = state.non_personalized[eligible]
        digest = snapshot.digest(as_of)
        audit_id = self.store.record_audit(AuditRecord(
            job=job, purpose=entry.name, as_of=as_of, sensitive=sensitive, eligible=int(eligible.sum()),
            excluded=excluded, dnd=int(dnd.sum()), non_personalized=int(non_personalized.sum()),
            snapshot_hash=digest, events=int((snapshot.event_at <= to_micros(as_of)).sum())))
        return GateDecision(job=job, purpose=entry.name, as_of=as_of, sensitive=sensitive, account_ids=decision_ids,
                            dnd=dnd, non_personalized=non_personalized, excluded=excluded,
                            snapshot_hash=digest, audit_id=audit_id)


def sensitive_consent_holds(ledger: ConsentStore | str | os.PathLike, account_ids: Sequence[str],
                            as_of: dt.datetime, *, purpose_name: str = "service_provision",
                            job: str = "sensitive-data-access") -> list[bool]:
    """For each account, whether sensitive data may be read for ``purpose_name`` at ``as_of``.

    True only when the purpose itself is allowed (not cancelled, not revoked, policy accepted for
    a core purpose) and the separate ``sensitive_grant`` for that purpose is in force. The default
    purpose is customs clearance under service provision, which reads ID-card numbers. ``ledger``
    is a ``ConsentStore`` or the path of ``ledger.sqlite``. The check is audited like any gate
    decision (counts only).

    >>> import tempfile, pathlib, datetime as dt
    >>> from profiling.consent.events import ConsentEvent
    >>> utc = dt.timezone.utc
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "ledger.sqlite"
    >>> with SqliteConsentStore(path) as store:
    ...     store.append([ConsentEvent("A1", dt.datetime(2025, 1, 1, tzinfo=utc), "policy_accept"),
    ...                   ConsentEvent("A1", dt.datetime(2025, 1, 2, tzinfo=utc), "sensitive_grant",
    ...                                "service_provision")], source="api")
    2
    >>> sensitive_consent_holds(path, ["A1", "A2"], dt.datetime(2025, 6, 1, tzinfo=utc))
    [True, False]
    """
    ids = [str(a) for a in account_ids]
    if isinstance(ledger, (str, os.PathLike)):
        with SqliteConsentStore(ledger) as store:
            return sensitive_consent_holds(store, ids, as_of, purpose_name=purpose_name, job=job)
    gate = ConsentGate(ledger)
    decision = gate.decide(purpose_name, as_of, job=job, sensitive=True, population=ids,
                           snapshot=gate.snapshot(ids))
    allowed = set(decision.account_ids.to_pylist())
    return [a in allowed for a in ids]
