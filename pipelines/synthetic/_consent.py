"""Consent histories: a plan of grants drawn first (device events honour the location permission), then
the event history.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipelines.synthetic._accounts import _Holders
from pipelines.synthetic._arrays import _draw, _ids, _pick, _strings, _taken
from pipelines.synthetic._run import _Run
from pipelines.synthetic._times import (
    _NEVER,
    _POLICY_CHANGE,
    _SECOND,
    _exponential_delay,
    _timestamps,
    _uniform_between,
)
from profiling.purposes import PURPOSES, PurposeGroup
from profiling.schema import table as schema_table

# Optional purposes: (purpose, share of accounts granting, share granting at registration,
# mean days to a later grant otherwise).
_OPTIONAL_PURPOSES = (
    ("personalization", 0.80, 0.70, 60), ("marketing_messages", 0.60, 0.70, 60),
    ("cross_device_sync", 0.70, 0.50, 90), ("location", 0.36, 0.50, 20), ("camera", 0.25, 0.0, 60),
    ("speech_input", 0.12, 0.0, 90), ("address_book", 0.10, 0.0, 90), ("third_party_binding", 0.08, 0.2, 120),
)
_CORE_PURPOSES = tuple(name for name, group in PURPOSES.items() if group is PurposeGroup.CORE)
_CORE_AT_REGISTRATION = 0.30   # share of accounts whose registration also logged the core grants
_REVOKE_SHARE = 0.10           # of grants, revoked later
_REGRANT_SHARE = 0.35          # of revocations, granted again later
_DND_SHARE = 0.20
_NEW_POLICY_ACCEPTED = 0.75    # of accounts created before the 2019-06 policy
_SENSITIVE_PURPOSE = "service_provision"  # ID numbers are processed to clear customs for the delivery
_CHANNELS = schema_table("consent_events")["channel"].allowed
_CANCEL_SHARE = 0.01
# Separate consent to cross-border transfer (PIPL Art. 39), asked at a holder's first cross-border parcel:
# (share granting, share of those also granting it for ID numbers, share revoking after the last parcel).
# Drawn from a stream of its own, so the other events' draws are those of a generator without it.
_CROSS_BORDER_CONSENT = (0.80, 0.85, 0.10)
_CROSS_BORDER_STREAM = 39


@dataclass(frozen=True)
class _Grants:
    """Per holder: when an optional purpose was granted, revoked and granted again (_NEVER: not)."""

    granted: np.ndarray
    revoked: np.ndarray
    regranted: np.ndarray

    def in_force(self, holder: np.ndarray, at: np.ndarray) -> np.ndarray:
        return (at >= self.granted[holder]) & ((at < self.revoked[holder]) | (at >= self.regranted[holder]))


def _after(rng: np.random.Generator, start: np.ndarray, share: float, mean_days: float, until: int) -> np.ndarray:
    """For a ``share`` of the non-_NEVER ``start`` times, a later time within ``until``; _NEVER otherwise."""
    later = start + _exponential_delay(rng, len(start), mean_days)
    happens = (start != _NEVER) & (rng.random(len(start)) < share) & (later <= until)
    return np.where(happens, later, _NEVER)


def _consent_plan(rng: np.random.Generator, holders: _Holders, until: int) -> dict[str, _Grants]:
    n = len(holders.created)
    plan = {}
    for purpose, share, at_registration, mean_days in _OPTIONAL_PURPOSES:
        delay = np.where(rng.random(n) < at_registration, 0, _exponential_delay(rng, n, mean_days))
        granted = holders.created + delay
        granted = np.where((rng.random(n) < share) & (granted <= until), granted, _NEVER)
        revoked = _after(rng, granted, _REVOKE_SHARE, 200, until)
        plan[purpose] = _Grants(granted, revoked, _after(rng, revoked, _REGRANT_SHARE, 120, until))
    return plan


def _consent_events(rng: np.random.Generator, run: _Run, holders: _Holders, plan: dict[str, _Grants],
                    cross_holder: np.ndarray, cross_time: np.ndarray, activity: list[tuple[np.ndarray, np.ndarray]],
                    batch_index: int) -> dict[str, pa.Array]:
    """The consent history of every holder, ordered per account by time; nothing follows a cancellation.

    ``activity`` lists ``(holder, time)`` pairs of everything the holders did (orders, waybills,
    signed-in device events): a cancellation comes after all of it.
    """
    events = schema_table("consent_events")
    types, purposes = events["event_type"].allowed, events["purpose"].allowed
    n = len(holders.created)
    everyone = np.arange(n)
    rows: list[tuple[np.ndarray, np.ndarray, int, np.ndarray, int]] = []  # (holder, time, type, purpose, tie rank)

    def add(holder: np.ndarray, at: np.ndarray, event_type: str, purpose: np.ndarray | int = -1, rank: int = 2) -> None:
        keep = at <= run.until
        purpose = np.broadcast_to(np.asarray(purpose), holder.shape)
        rows.append((holder[keep], at[keep], types.index(event_type), purpose[keep], rank))

    # Registration: the policy in force, and for some accounts the core purposes.
    add(everyone, holders.created, "policy_accept", rank=0)
    core = np.flatnonzero(rng.random(n) < _CORE_AT_REGISTRATION)
    for purpose in _CORE_PURPOSES:
        add(core, holders.created[core], "grant", purposes.index(purpose), rank=1)
    for purpose, grants in plan.items():
        for times, event_type in ((grants.granted, "grant"), (grants.revoked, "revoke"), (grants.regranted, "grant")):
            holder = np.flatnonzero(times != _NEVER)
            add(holder, times[holder], event_type, purposes.index(purpose))
    # Do-not-disturb toggles.
    dnd_on = np.where(rng.random(n) < _DND_SHARE, _uniform_between(rng, holders.created, run.until), _NEVER)
    dnd_off = _after(rng, dnd_on, 0.5, 30, run.until)
    dnd_again = _after(rng, dnd_off, 0.2, 60, run.until)
    for times, event_type in ((dnd_on, "dnd_on"), (dnd_off, "dnd_off"), (dnd_again, "dnd_on")):
        holder = np.flatnonzero(times != _NEVER)
        add(holder, times[holder], event_type)
    # The 2019-06 policy: most accounts created under the old one accept it.
    older = np.flatnonzero((holders.created < _POLICY_CHANGE) & (rng.random(n) < _NEW_POLICY_ACCEPTED))
    add(older, np.maximum(_POLICY_CHANGE + _exponential_delay(rng, len(older), 20), holders.created[older]),
        "policy_accept", rank=0)
    # Sensitive data (ID numbers) for cross-border parcels: granted at the first, sometimes revoked after the last.
    if len(cross_holder):
        order = np.lexsort((cross_time, cross_holder))
        holder, at = cross_holder[order], cross_time[order]
        first = np.concatenate([[True], holder[1:] != holder[:-1]])
        last = np.concatenate([holder[1:] != holder[:-1], [True]])
        granted_at = np.maximum(at[first] - rng.integers(_SECOND, 600 * _SECOND, int(first.sum())),
                                holders.created[holder[first]])
        add(holder[first], granted_at, "sensitive_grant", purposes.index(_SENSITIVE_PURPOSE), rank=1)
        revoked_at = _after(rng, at[last], 0.1, 90, run.until)
        revoked = revoked_at != _NEVER
        add(holder[last][revoked], revoked_at[revoked], "sensitive_revoke", purposes.index(_SENSITIVE_PURPOSE), rank=3)
        own = np.random.default_rng([run.seed, batch_index, _CROSS_BORDER_STREAM])
        grant_share, sensitive_share, revoke_share = _CROSS_BORDER_CONSENT
        transfer = purposes.index("cross_border_transfer")
        granting = own.random(len(granted_at)) < grant_share
        add(holder[first][granting], granted_at[granting], "grant", transfer, rank=1)
        with_id = granting & (own.random(len(granted_at)) < sensitive_share)
        add(holder[first][with_id], granted_at[with_id], "sensitive_grant", transfer, rank=1)
        withdrawn = _after(own, np.where(granting, at[last], _NEVER), revoke_share, 90, run.until)
        withdrawn_holder = np.flatnonzero(withdrawn != _NEVER)
        add(holder[last][withdrawn_holder], withdrawn[withdrawn_holder], "revoke", transfer, rank=3)
    # Cancellation after everything else the account did.
    cancelled = rng.random(n) < _CANCEL_SHARE
    last_seen = holders.created.copy()
    for holder, at in activity + [(r[0], r[1]) for r in rows]:
        mine = cancelled[holder]
        np.maximum.at(last_seen, holder[mine], at[mine])
    cancel_holder = np.flatnonzero(cancelled)
    cancel_at = np.minimum(last_seen[cancel_holder] + _exponential_delay(rng, len(cancel_holder), 30), run.until)
    add(cancel_holder, cancel_at, "cancel", rank=9)

    holder = np.concatenate([r[0] for r in rows])
    at = np.concatenate([r[1] for r in rows])
    event_type = np.concatenate([np.full(len(r[0]), r[2]) for r in rows])
    purpose = np.concatenate([r[3] for r in rows])
    rank = np.concatenate([np.full(len(r[0]), r[4]) for r in rows])
    order = np.lexsort((rank, at, holder))
    holder, at, event_type, purpose = holder[order], at[order], event_type[order], purpose[order]
    # rows: (consent event) sorted by account, time
    m = len(holder)
    channel = _draw(rng, m, [70, 12, 10, 3, 5])
    # What is said at registration is said where the account was opened (app, web or WeChat).
    registered_on = _draw(rng, n, [75, 15, 10])
    channel = np.where(at == holders.created[holder], registered_on[holder], channel)
    dnd = np.isin(event_type, [types.index("dnd_on"), types.index("dnd_off")])
    channel = np.where(dnd & (rng.random(m) < 0.4), _CHANNELS.index("sms"), channel)
    cancel = event_type == types.index("cancel")
    channel = np.where(cancel, np.where(rng.random(m) < 0.4, _CHANNELS.index("customer_service"), 0), channel)
    return {
        "event_id": _ids("C", batch_index, np.arange(m), 10),
        "account_id": _pick(holders.account_id, holder),
        "event_at": _timestamps(at),
        "event_type": _pick(_strings(types), event_type),
        "purpose": _taken(_strings(purposes), np.maximum(purpose, 0), purpose >= 0),
        "policy_version": _pick(_strings(events["policy_version"].allowed), (at >= _POLICY_CHANGE).astype(np.int64)),
        "channel": _pick(_strings(_CHANNELS), channel),
    }
