"""One consent event as the API and the command line record it, checked before it reaches the ledger.

The ledger keys persons by account id in the one form ingest and the door use
(``canonical_account_id``), so an event typed with stray spaces lands on the same person.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, replace

import pyarrow as pa

from profiling.errors import PortraitError
from profiling.pseudonyms import normalize
from profiling.purposes import (
    CONSENT_EVENT_TYPES,
    POLICY_VERSIONS,
    PURPOSE_EVENT_TYPES,
    SENSITIVE_EVENT_TYPES,
    policy_in_force,
    purpose,
)
from profiling.schema import table as schema_table

__all__ = ["ConsentError", "ConsentEvent", "CHANNELS", "canonical_account_id"]

CHANNELS: tuple[str, ...] = schema_table("consent_events")["channel"].allowed


class ConsentError(PortraitError):
    """A consent event or question the ledger cannot accept (unknown purpose, event after cancellation ...)."""


def canonical_account_id(account_id: str) -> str:
    """``account_id`` as ingest and the door key it (``normalize(..., "account_id")``: whitespace around
    it removed, case kept).

    >>> canonical_account_id(" A0000000270\u3000")
    'A0000000270'
    """
    if not isinstance(account_id, str):
        raise TypeError(f"an account id is text, not {type(account_id).__name__}")
    return normalize(pa.array([account_id], pa.string()), "account_id")[0].as_py()


@dataclass(frozen=True)
class ConsentEvent:
    """What a person said, when (timezone-aware), through which channel.

    ``purpose`` is required for grant/revoke and sensitive_grant/sensitive_revoke and must be absent
    otherwise. ``policy_version`` defaults to the version in force at ``event_at``; ``event_id``
    defaults to a fresh ``api-<uuid>``.
    """

    account_id: str
    event_at: dt.datetime
    event_type: str
    purpose: str | None = None
    policy_version: str | None = None
    channel: str = "app"
    event_id: str | None = None

    def checked(self) -> ConsentEvent:
        """This event with defaults filled in; ``ConsentError`` says what is wrong otherwise."""
        if not isinstance(self.account_id, str) or not canonical_account_id(self.account_id):
            raise ConsentError(f"account id {self.account_id!r} is empty; give the raw account id (e.g. A0000000001)")
        if not isinstance(self.event_at, dt.datetime) or self.event_at.tzinfo is None:
            raise ConsentError(f"event time {self.event_at!r} must be a timezone-aware datetime (UTC)")
        if self.event_type not in CONSENT_EVENT_TYPES:
            raise ConsentError(f"event type {self.event_type!r} is not one of {', '.join(CONSENT_EVENT_TYPES)}")
        names_purpose = self.event_type in PURPOSE_EVENT_TYPES + SENSITIVE_EVENT_TYPES
        if names_purpose and self.purpose is None:
            raise ConsentError(f"a {self.event_type} event needs a purpose (--purpose NAME)")
        if not names_purpose and self.purpose is not None:
            raise ConsentError(f"a {self.event_type} event applies to the whole account; give no purpose")
        if self.purpose is not None:
            try:
                entry = purpose(self.purpose)
            except ValueError as error:
                raise ConsentError(str(error)) from None
            if self.event_type in SENSITIVE_EVENT_TYPES and not entry.needs_sensitive_consent:
                raise ConsentError(f"purpose {entry.name!r} never reads sensitive data, so it has no separate "
                                   f"sensitive consent")
        version = self.policy_version or policy_in_force(self.event_at).name
        if version not in POLICY_VERSIONS:
            raise ConsentError(f"policy version {version!r} is not one of {', '.join(POLICY_VERSIONS)}")
        if self.channel not in CHANNELS:
            raise ConsentError(f"channel {self.channel!r} is not one of {', '.join(CHANNELS)}")
        return replace(self, account_id=canonical_account_id(self.account_id),
                       event_at=self.event_at.astimezone(dt.timezone.utc), policy_version=version,
                       event_id=self.event_id or f"api-{uuid.uuid4().hex}")
