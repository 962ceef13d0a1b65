"""Vectorized as-of evaluation of a consent history: who may be processed, for which purpose, at a moment T.

Semantics (the catalogue in ``profiling.purposes`` holds the per-purpose facts):

* Deny by default: a purpose that needs consent and has no grant is refused.
* Per (person, purpose) the latest ``grant``/``revoke`` at or before T wins; events at the same
  microsecond are ordered as the ledger recorded them. A revocation stops processing from its
  moment on; what was processed before stays lawful (evaluating an earlier T still says yes).
* Core purposes need no grant: an accepted policy (any version, at or before T) is enough, unless
  the latest event for that purpose is an explicit ``revoke``.
* A grant given under a policy version older than one in force at T that demands re-consent for
  the purpose has lapsed (the grant's version is the event's ``policy_version``).
* ``cancel`` at or before T is final: nothing is eligible afterwards, whatever follows it.
* ``sensitive_grant``/``sensitive_revoke`` per (person, purpose), latest wins, deny by default;
  needed on top of the purpose to read sensitive data.
* ``dnd_on``/``dnd_off``: latest wins; suppresses purposes marked ``suppressed_by_dnd`` (marketing).

Time is int64 microseconds since 1970-01-01 UTC. The privacy unit is the account (the gate maps
accounts to person pseudonyms).

How it is fast: ``ConsentSnapshot`` groups the events once by (person, slot), with a slot per
purpose, per sensitive purpose and per account-wide kind (DND, policy, cancel), and stores for each
event the time of the next event of its group. At T an event is its group's latest at or before T
exactly when ``event_at <= T < next_at``: two comparisons over the events and one scatter into a
(person x slot) table give every purpose's state.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from profiling.purposes import CATALOGUE, CONSENT_EVENT_TYPES, POLICY_HISTORY, POLICY_VERSIONS, purpose

__all__ = ["ConsentSnapshot", "ConsentState", "Exclusion", "EVENT_COLUMNS", "to_micros"]

# Columns a consent history must have, in ledger order (ties at one moment keep this order).
EVENT_COLUMNS = ("account_id", "event_at", "event_type", "purpose", "policy_version")

_PURPOSE_NAMES = tuple(CATALOGUE)
_P = len(_PURPOSE_NAMES)
_DND_SLOT, _POLICY_SLOT, _CANCEL_SLOT = 2 * _P, 2 * _P + 1, 2 * _P + 2
_SLOTS = 2 * _P + 3
_TYPE = {name: code for code, name in enumerate(CONSENT_EVENT_TYPES)}
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)



class Exclusion(IntEnum):
    """Why a person is not eligible for a purpose (the first that applies, in this order)."""

    ELIGIBLE = 0
    CANCELLED = 1             # the account was cancelled at or before T
    REVOKED = 2               # the latest event for the purpose is a revocation
    RECONSENT_REQUIRED = 3    # granted under a policy version older than one that asks again
    NOT_GRANTED = 4           # never granted (deny by default)
    NO_POLICY_ACCEPTED = 5    # core purpose, but no policy accepted at or before T
    NO_SENSITIVE_CONSENT = 6  # sensitive data asked for, separate consent not in force
    DO_NOT_DISTURB = 7        # marketing while Do Not Disturb is on

    @property
    def label(self) -> str:
        return self.name.lower()


def to_micros(moment: dt.datetime) -> int:
    """Microseconds since 1970-01-01 UTC of a timezone-aware moment."""
    if not isinstance(moment, dt.datetime) or moment.tzinfo is None:
        raise ValueError(f"as-of moment {moment!r} must be a timezone-aware datetime, e.g. "
                         f"datetime(2026, 11, 1, tzinfo=timezone.utc)")
    return (moment - _EPOCH) // dt.timedelta(microseconds=1)


def _codes(values: pa.ChunkedArray | pa.Array, known: tuple[str, ...], column: str, *, nullable: bool) -> np.ndarray:
    """Index of each value in ``known`` (int8; -1 for null where allowed); a ValueError names a stray value."""
    if not nullable and values.null_count:
        raise ValueError(f"consent history: column {column!r} has missing values; every event needs one")
    codes = pc.index_in(values, value_set=pa.array(known, pa.string()))
    if codes.null_count > values.null_count:
        unknown = pc.and_(pc.is_null(codes), pc.is_valid(values))
        bad = values.filter(unknown)[0].as_py()
        raise ValueError(f"consent history: column {column!r} holds {bad!r}; known values: {', '.join(known)}")
    if codes.null_count:
        codes = pc.fill_null(codes, -1)
    return np.asarray(codes.to_numpy(zero_copy_only=False), dtype=np.int8)


def _micros_column(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    if pa.types.is_timestamp(values.type):
        if values.type.tz is None:
            raise ValueError("consent history: column 'event_at' has no time zone; store times in UTC")
        values = values.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
    elif not pa.types.is_integer(values.type):
        raise ValueError(f"consent history: column 'event_at' is {values.type}, expected a UTC timestamp")
    if values.null_count:
        raise ValueError("consent history: column 'event_at' has missing values; every event needs a time")
    return values.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


def _combined(values: pa.ChunkedArray | pa.Array) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


@dataclass(frozen=True)
class ConsentSnapshot:
    """A consent history prepared for fast as-of evaluation (build once, evaluate at many moments).

    Person ``i`` is ``account_ids[i]``. Per event: ``cell`` = slot * persons + person, ``event_at``
    (int64 µs), ``next_at`` (time of the next event of the same cell, in time then ledger order;
    int64 max for the last) and ``code`` (what the event says, see ``_code_of``).
    """

    account_ids: pa.Array
    cell: np.ndarray
    event_at: np.ndarray
    next_at: np.ndarray
    code: np.ndarray

    @classmethod
    def from_arrow(cls, events: pa.Table) -> ConsentSnapshot:
        """Prepare a consent history (columns ``EVENT_COLUMNS``; rows in ledger order).

        Fastest when rows are already ordered by account then time, as the ledger returns them;
        any order is accepted.
        """
        missing = [c for c in EVENT_COLUMNS if c not in events.column_names]
        if missing:
            raise ValueError(f"consent history lacks column(s) {', '.join(missing)}; it needs {', '.join(EVENT_COLUMNS)}")
        ids = _combined(events.column("account_id"))
        if ids.null_count:
            raise ValueError("consent history: column 'account_id' has missing values; every event names an account")
        at = _micros_column(events.column("event_at"))
        event_type = _codes(events.column("event_type"), CONSENT_EVENT_TYPES, "event_type", nullable=False)
        purpose_code = _codes(events.column("purpose"), _PURPOSE_NAMES, "purpose", nullable=True)
        version = _codes(events.column("policy_version"), POLICY_VERSIONS, "policy_version", nullable=False)
        slot = _slot_of(event_type, purpose_code)
        code = _code_of(event_type, version)
        n = len(ids)
        changes = _account_changes(ids, at)
        if changes is not None:  # rows by account, then time: runs of one account
            person = np.cumsum(changes, dtype=np.int64) - 1
            account_ids = ids.filter(pa.array(changes))
            group = person * _SLOTS + slot
            order = np.argsort(group, kind="stable")  # nearly sorted already: cheap
        else:
            encoded = pc.dictionary_encode(ids)
            account_ids = encoded.dictionary
            person = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
            group = person * _SLOTS + slot
            by_time = np.argsort(at, kind="stable")
            order = by_time[np.argsort(group[by_time], kind="stable")]
        # order: events by (person, slot), then time, then ledger order
        next_at = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
        if n > 1:
            group_sorted = group[order]
            followed = group_sorted[1:] == group_sorted[:-1]
            next_at[order[:-1][followed]] = at[order[1:][followed]]
        del group, order
        cell = slot * len(account_ids) + person  # slot-major, so a purpose's column is contiguous
        return cls(account_ids=account_ids, cell=cell, event_at=at, next_at=next_at, code=code)

    @classmethod
    def from_pieces(cls, pieces: Iterable[pa.Table]) -> ConsentSnapshot:
        """``from_arrow`` of the concatenation of ``pieces``, built a piece at a time (a ledger's snapshot read
        a row group at a time): the same arrays, holding about 25 bytes an event beside one piece.

        The pieces must together be ordered by account then time, as the ledger returns them (an
        account may run from one piece into the next); a ValueError says where they are not.
        """
        done, waiting, offset = [], None, 0
        for piece in pieces:
            if not piece.num_rows:
                continue
            joined = piece if waiting is None else pa.concat_tables([waiting, piece.cast(waiting.schema)])
            ids = _combined(joined.column("account_id"))
            if ids.null_count:
                cls.from_arrow(joined)   # names the missing account
            if _account_changes(ids, _micros_column(joined.column("event_at"))) is None:
                raise ValueError("consent history pieces are not ordered by account then time; prepare the "
                                 "whole history with ConsentSnapshot.from_arrow")
            # the last account may go on in the next piece: it waits for it
            cut = int(np.argmax(pc.equal(ids, ids[-1]).to_numpy(zero_copy_only=False)))
            if cut:
                done.append(_numbered_from(cls.from_arrow(joined.slice(0, cut)), offset))
                offset += len(done[-1][0])
            waiting = joined.slice(cut)
        if waiting is None:
            return cls.from_arrow(pa.table({name: pa.array([], pa.timestamp("us", tz="UTC") if name == "event_at"
                                                            else pa.string()) for name in EVENT_COLUMNS}))
        done.append(_numbered_from(cls.from_arrow(waiting), offset))
        offset += len(done[-1][0])
        parts = list(zip(*done))
        cell = np.concatenate(parts[1]).astype(np.int64) * offset   # slot-major over all accounts
        cell += np.concatenate(parts[2])
        return cls(account_ids=pa.concat_arrays(parts[0]), cell=cell, event_at=np.concatenate(parts[3]),
                   next_at=np.concatenate(parts[4]), code=np.concatenate(parts[5]))

    @property
    def persons(self) -> int:
        return len(self.account_ids)

    @property
    def events(self) -> int:
        return len(self.event_at)

    def digest(self, as_of: dt.datetime) -> str:
        """SHA-256 of the history as it stood at ``as_of`` (events at or before it): the audit's snapshot hash.

        Covers, in the order the history was given (the ledger's: account, time, recording), each
        such event's account, kind, time and what it says. Events for later moments, and accounts
        that only have such events, do not change it, so replaying a past decision gives its hash.
        """
        at = to_micros(as_of)
        hasher = hashlib.sha256(b"portrait consent snapshot v2\x00")
        valid = self.event_at <= at
        persons = max(self.persons, 1)
        cell = self.cell[valid]
        person, slot = cell % persons, cell // persons
        involved = np.zeros(persons, dtype=bool)
        involved[person] = True
        # rows: (event at or before T) -> (number of its account among accounts with such events, slot, time, code)
        number = np.cumsum(involved, dtype=np.int64) - 1
        names = self.account_ids.filter(pa.array(involved[:self.persons]))
        for buffer in names.buffers()[1:]:  # offsets and characters of the accounts, in order
            hasher.update(buffer if buffer is not None else b"")
        for array in (number[person], slot, self.event_at[valid], self.code[valid]):
            hasher.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
        return hasher.hexdigest()

    def evaluate(self, as_of: dt.datetime) -> ConsentState:
        """The consent state of every person at ``as_of`` (timezone-aware)."""
        at = to_micros(as_of)
        latest = (self.event_at <= at) & (self.next_at > at)
        # rows: (event) that is the latest of its (person, slot) at or before T
        cells = np.zeros(self.persons * _SLOTS, dtype=np.int8)
        cells[self.cell[latest]] = self.code[latest]
        return ConsentState(as_of=as_of, account_ids=self.account_ids, cells=cells.reshape(_SLOTS, self.persons),
                            reconsent_version=_reconsent_version(at))


def _numbered_from(part: ConsentSnapshot, offset: int) -> tuple:
    """(account ids, slot, person numbered from ``offset``, event_at, next_at, code) of a snapshot of some accounts."""
    persons = max(part.persons, 1)
    return (part.account_ids, (part.cell // persons).astype(np.int8), part.cell % persons + offset, part.event_at,
            part.next_at, part.code)


def _account_changes(ids: pa.Array, at: np.ndarray) -> np.ndarray | None:
    """Where a new account starts, when rows are sorted by account (as text) then time; else None."""
    n = len(ids)
    if n == 0:
        return np.zeros(0, dtype=bool)
    if pc.any(pc.less(ids[1:], ids[:-1])).as_py():
        return None
    same = pc.equal(ids[1:], ids[:-1]).to_numpy(zero_copy_only=False)
    if np.any(same & (at[1:] < at[:-1])):
        return None
    changes = np.empty(n, dtype=bool)
    changes[0] = True
    np.logical_not(same, out=changes[1:])
    return changes


def _slot_of(event_type: np.ndarray, purpose_code: np.ndarray) -> np.ndarray:
    base = np.zeros(len(CONSENT_EVENT_TYPES), dtype=np.int64)
    per_purpose = np.zeros(len(CONSENT_EVENT_TYPES), dtype=bool)
    for name, slot, names_purpose in (("grant", 0, True), ("revoke", 0, True), ("sensitive_grant", _P, True),
                                      ("sensitive_revoke", _P, True), ("dnd_on", _DND_SLOT, False),
                                      ("dnd_off", _DND_SLOT, False), ("policy_accept", _POLICY_SLOT, False),
                                      ("cancel", _CANCEL_SLOT, False)):
        base[_TYPE[name]], per_purpose[_TYPE[name]] = slot, names_purpose
    needs_purpose = per_purpose[event_type]
    missing = needs_purpose & (purpose_code < 0)
    if missing.any():
        row = int(np.argmax(missing))
        name = CONSENT_EVENT_TYPES[event_type[row]]
        raise ValueError(f"consent history: a {name!r} event (row {row}) names no purpose; "
                         f"grant, revoke, sensitive_grant and sensitive_revoke need one")
    slot = base[event_type]
    np.add(slot, purpose_code, out=slot, where=needs_purpose)
    return slot


# What an event says, as stored in its cell: a grant stores _GRANT_BASE + its policy version index
# (whether it lapsed depends on T); every other kind stores _YES or _NO.
_YES, _NO, _GRANT_BASE = 1, 2, 10


def _code_of(event_type: np.ndarray, version: np.ndarray) -> np.ndarray:
    yes = np.zeros(len(CONSENT_EVENT_TYPES), dtype=np.int8)
    for name in ("sensitive_grant", "dnd_on", "policy_accept", "cancel"):
        yes[_TYPE[name]] = _YES
    for name in ("revoke", "sensitive_revoke", "dnd_off"):
        yes[_TYPE[name]] = _NO
    return np.where(event_type == _TYPE["grant"], (_GRANT_BASE + version).astype(np.int8), yes[event_type])


def _reconsent_version(at: int) -> np.ndarray:
    """Per purpose, the index of the newest version in force at ``at`` that asks again for it (-1: none)."""
    required = np.full(_P, -1, dtype=np.int8)
    for index, version in enumerate(POLICY_HISTORY):
        if to_micros(version.in_force) <= at:
            for name in version.reconsent:
                required[_PURPOSE_NAMES.index(name)] = index
    return required


@dataclass(frozen=True)
class ConsentState:
    """Every person's consent at one moment; person ``i`` is ``account_ids[i]``.

    ``cells[slot, i]`` is what person i's latest event of that slot at or before T said (0: nothing).
    """

    as_of: dt.datetime
    account_ids: pa.Array
    cells: np.ndarray              # (slots, persons) int8
    reconsent_version: np.ndarray  # per purpose: grants under an older version index have lapsed

    @property
    def cancelled(self) -> np.ndarray:
        return self.cells[_CANCEL_SLOT] != 0

    @property
    def policy_accepted(self) -> np.ndarray:
        return self.cells[_POLICY_SLOT] != 0

    @property
    def dnd(self) -> np.ndarray:
        """Do Not Disturb on (never for cancelled accounts)."""
        return (self.cells[_DND_SLOT] == _YES) & ~self.cancelled

    def consents(self, purpose_name: str) -> np.ndarray:
        """True where the purpose itself may be processed (before sensitive data and DND are considered)."""
        return self.exclusions(purpose_name, sensitive=False, apply_dnd=False) == Exclusion.ELIGIBLE

    def eligible(self, purpose_name: str, *, sensitive: bool = False) -> np.ndarray:
        """True where the person may be processed for the purpose (reading sensitive data if ``sensitive``)."""
        return self.exclusions(purpose_name, sensitive=sensitive) == Exclusion.ELIGIBLE

    @property
    def non_personalized(self) -> np.ndarray:
        """Persons who may be served but not personalized: they get non-personalized recommendations."""
        return ~self.cancelled & ~self.consents("personalization")

    def exclusions(self, purpose_name: str, *, sensitive: bool = False, apply_dnd: bool = True) -> np.ndarray:
        """Per person, ``Exclusion`` code (0 = eligible) for the purpose."""
        entry = purpose(purpose_name)
        if sensitive and not entry.needs_sensitive_consent:
            raise ValueError(f"purpose {entry.name!r} may not read sensitive data at all; purposes that may: "
                             f"{', '.join(p.name for p in CATALOGUE.values() if p.needs_sensitive_consent)}")
        index = _PURPOSE_NAMES.index(entry.name)
        said = self.cells[index]
        granted = said >= _GRANT_BASE
        lapsed = granted & (said - _GRANT_BASE < self.reconsent_version[index])
        nothing = said == 0
        reason = np.zeros(len(said), dtype=np.int8)
        if entry.needs_consent:
            reason[nothing] = Exclusion.NOT_GRANTED
        else:
            reason[nothing & ~self.policy_accepted] = Exclusion.NO_POLICY_ACCEPTED
        reason[lapsed] = Exclusion.RECONSENT_REQUIRED
        reason[said == _NO] = Exclusion.REVOKED
        if sensitive:
            reason[(reason == 0) & (self.cells[_P + index] != _YES)] = Exclusion.NO_SENSITIVE_CONSENT
        if apply_dnd and entry.suppressed_by_dnd:
            reason[(reason == 0) & (self.cells[_DND_SLOT] == _YES)] = Exclusion.DO_NOT_DISTURB
        reason[self.cancelled] = Exclusion.CANCELLED
        return reason
