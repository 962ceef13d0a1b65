"""One consent event as the API and the command line record it, checked before it reaches the ledger."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, replace

from profiling.errors import PortraitError
from profiling.purposes import (
    CONSENT_EVENT_TYPES,
    POLICY_VERSIONS,
    PURPOSE_EVENT_TYPES,
    SENSITIVE_EVENT_TYPES,
    policy_in_force,
    purpose,
)
from profiling.schema import table as schema_table

__all__ = ["ConsentError", "ConsentEvent", "CHANNELS"]

CHANNELS: tuple[str, ...] = schema_table("consent_events")["channel"].allowed


class ConsentError(PortraitError):
    """A consent event or question the ledger cannot accept (unknown purpose, event after cancellation ...)."""


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
        if not isinstance(self.account_id, str) or not self.account_id.strip():
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
        return replace(self, event_at=self.event_at.astimezone(dt.timezone.utc), policy_version=version,
                       event_id=self.event_id or f"api-{uuid.uuid4().hex}")
