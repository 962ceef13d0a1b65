"""The purpose catalogue: every processing purpose the privacy policy lists, and the policy versions.

For each purpose the catalogue says whether it needs the person's consent, which privacy classes of
data it may read (``profiling.schema.PrivacyClass`` values), whether reading the sensitive class
needs the separate sensitive-data consent, and whether "Do Not Disturb" suppresses it.

Decisions taken from the policy (the consent gate applies them):

* **Core purposes** (account registration, service provision, payment settlement, messaging,
  customer service, product improvement, transaction safety) are necessary for the service: the
  policy says that without the information the service cannot be provided, and that using the
  service after reading the policy is agreeing to it. They therefore need no explicit grant: an
  accepted policy (any version) is enough. An explicit ``revoke`` of a core purpose is still
  honoured, and ``cancel`` ends everything.
* **Every other purpose** is denied by default and needs an explicit ``grant``.
* **Sensitive data** (ID-card numbers, precise location) needs, on top of the purpose, the separate
  ``sensitive_grant`` for that purpose (privacy law asks for a separate yes).
* **Policy versions** that demand re-consent for a purpose make grants given under older versions
  lapse once the new version is in force. The June 2019 update demands it for personalization and
  marketing messages: it changed how the portrait is built and how promotions are sent.
* **Do Not Disturb** suppresses marketing messages only; the person stays in in-app
  personalization, flagged.
* **Outputs are walled by purpose.** Each purpose lists the workspace outputs (``WS/outputs/<name>``)
  it may read; ``check_output_read`` is the one check every reader goes through. Transaction safety
  needs no consent, so its risk features and scores (``risk``) are readable by ``transaction_safety``
  alone: never by personalization, marketing or a DP release.

>>> purpose("personalization").needs_consent
True
>>> purpose("service_provision").needs_sensitive_consent
True
>>> [v.name for v in POLICY_HISTORY]
['2018-01', '2019-06']
>>> readers_of("risk")
('transaction_safety',)
"""

from __future__ import annotations

import datetime as dt
import difflib
from dataclasses import dataclass
from enum import Enum

from profiling.errors import PortraitError

__all__ = [
    "PurposeGroup",
    "Purpose",
    "PolicyVersion",
    "CATALOGUE",
    "PURPOSES",
    "CONSENT_EVENT_TYPES",
    "PURPOSE_EVENT_TYPES",
    "SENSITIVE_EVENT_TYPES",
    "POLICY_VERSIONS",
    "POLICY_HISTORY",
    "OUTPUTS",
    "OutputAccessError",
    "check_output_read",
    "readers_of",
    "purpose",
    "policy_version",
    "policy_in_force",
]


class PurposeGroup(str, Enum):
    CORE = "core"                  # needed for the service itself
    ADDITIONAL = "additional"      # device permissions the user may switch on and off
    PERSONALIZATION = "personalization"
    MARKETING = "marketing"
    CROSS_DEVICE = "cross_device"
    THIRD_PARTY = "third_party"


# Privacy classes by their ``profiling.schema.PrivacyClass`` values (schema imports this module).
_DIRECT, _QUASI, _SENSITIVE, _NON_PERSONAL = "direct_identifier", "quasi_identifier", "sensitive", "non_personal"


@dataclass(frozen=True)
class Purpose:
    """One processing purpose of the policy.

    ``reads`` holds the privacy classes (``PrivacyClass`` values) the purpose may read. A purpose
    that reads the ``sensitive`` class needs the separate sensitive-data consent for that purpose
    before any sensitive value is read; without it the purpose may still run on the other classes.
    ``outputs`` holds the workspace outputs (``OUTPUTS``, folders under ``WS/outputs/``) it may read.
    """

    name: str
    group: PurposeGroup
    description: str
    reads: frozenset[str]
    suppressed_by_dnd: bool = False
    outputs: frozenset[str] = frozenset()

    @property
    def needs_consent(self) -> bool:
        """Whether an explicit grant is needed (core purposes rest on the accepted policy instead)."""
        return self.group is not PurposeGroup.CORE

    @property
    def needs_sensitive_consent(self) -> bool:
        return _SENSITIVE in self.reads


def _p(name: str, group: PurposeGroup, description: str, *reads: str, suppressed_by_dnd: bool = False,
       outputs: tuple[str, ...] = ()) -> Purpose:
    return Purpose(name, group, description, frozenset(reads), suppressed_by_dnd, frozenset(outputs))


# Workspace outputs (folders under WS/outputs/). Who reads which: the DP popularity release is meant to
# leave and ranks everyone's non-personalized lists; identity and portraits serve personalization; the
# marketing audience serves marketing; risk features and scores serve transaction safety alone.
OUTPUTS: tuple[str, ...] = ("identity", "portraits", "popularity", "recommendations", "marketing_audience", "risk")


_C, _A = PurposeGroup.CORE, PurposeGroup.ADDITIONAL
CATALOGUE: dict[str, Purpose] = {p.name: p for p in (
    _p("account_registration", _C, "Create the account and verify the phone number.", _DIRECT, _QUASI, _NON_PERSONAL),
    _p("service_provision", _C, "Take orders, generate waybills, ship, clear customs and deliver; customs "
       "clearance reads the ID-card number.", _DIRECT, _QUASI, _NON_PERSONAL, _SENSITIVE,
       outputs=("popularity", "recommendations")),
    _p("payment_settlement", _C, "Give order number and amount to the payment institution.", _DIRECT, _NON_PERSONAL),
    _p("messaging", _C, "Shipment routing and payment status messages.", _DIRECT, _NON_PERSONAL),
    _p("customer_service", _C, "Verify identity and help with orders and shipments.", _DIRECT, _QUASI, _NON_PERSONAL),
    _p("product_improvement", _C, "Improve products and services from pseudonymized usage.", _QUASI, _NON_PERSONAL,
       outputs=("popularity",)),
    _p("transaction_safety", _C, "Detect fraud and keep accounts safe.", _DIRECT, _QUASI, _NON_PERSONAL,
       outputs=("risk",)),
    _p("speech_input", _A, "Voice search (microphone permission).", _NON_PERSONAL),
    _p("location", _A, "Nearby services and map; precise location is sensitive.", _QUASI, _NON_PERSONAL, _SENSITIVE),
    _p("camera", _A, "Scan codes and photos (camera permission).", _NON_PERSONAL),
    _p("address_book", _A, "Fill in receivers from the address book.", _DIRECT, _NON_PERSONAL),
    _p("personalization", PurposeGroup.PERSONALIZATION, "The user portrait and personalized recommendations, "
       "from pseudonymized data only.", _QUASI, _NON_PERSONAL,
       outputs=("identity", "portraits", "popularity", "recommendations")),
    _p("marketing_messages", PurposeGroup.MARKETING, "Coupons and sales promotions; Do Not Disturb stops them.",
       _DIRECT, _QUASI, _NON_PERSONAL, suppressed_by_dnd=True, outputs=("marketing_audience", "popularity")),
    _p("cross_device_sync", PurposeGroup.CROSS_DEVICE, "Link the person's devices into one portrait.",
       _DIRECT, _NON_PERSONAL, outputs=("identity",)),
    _p("third_party_binding", PurposeGroup.THIRD_PARTY, "Sign in with and bind third-party accounts.",
       _DIRECT, _NON_PERSONAL),
    # PIPL Art. 39: a separate consent to send waybill data abroad; ID numbers need its sensitive grant.
    _p("cross_border_transfer", PurposeGroup.THIRD_PARTY, "Send cross-border waybill data to declared overseas "
       "receivers (profiling.overseas); ID numbers only under its sensitive grant.",
       _DIRECT, _QUASI, _NON_PERSONAL, _SENSITIVE),
)}

# Name -> group, the shape the data model and the synthetic generator read.
PURPOSES: dict[str, PurposeGroup] = {name: p.group for name, p in CATALOGUE.items()}

# What a consent event can say. grant/revoke and sensitive_grant/sensitive_revoke name a purpose;
# the others apply to the whole account.
CONSENT_EVENT_TYPES: tuple[str, ...] = (
    "grant", "revoke", "sensitive_grant", "sensitive_revoke",
    "dnd_on", "dnd_off", "policy_accept", "cancel",
)
PURPOSE_EVENT_TYPES: tuple[str, ...] = ("grant", "revoke")
SENSITIVE_EVENT_TYPES: tuple[str, ...] = ("sensitive_grant", "sensitive_revoke")


@dataclass(frozen=True)
class PolicyVersion:
    """A version of the privacy policy: when it came into force (UTC) and which purposes it asks again.

    Grants of a purpose in ``reconsent`` given under an older version lapse from ``in_force`` on.
    """

    name: str
    in_force: dt.datetime
    reconsent: frozenset[str]


POLICY_HISTORY: tuple[PolicyVersion, ...] = (
    PolicyVersion("2018-01", dt.datetime(2018, 1, 1, tzinfo=dt.timezone.utc), frozenset()),
    PolicyVersion("2019-06", dt.datetime(2019, 6, 10, tzinfo=dt.timezone.utc),
                  frozenset({"personalization", "marketing_messages"})),
)
# Policy versions the ledger knows, oldest first. The second is the June 2019 update.
POLICY_VERSIONS: tuple[str, ...] = tuple(v.name for v in POLICY_HISTORY)


def _unknown(kind: str, name: object, known: tuple[str, ...]) -> ValueError:
    close = difflib.get_close_matches(str(name), known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ValueError(f"unknown {kind} {name!r}{hint} Known: {', '.join(known)}")


def purpose(name: str) -> Purpose:
    """The catalogue entry of ``name``; a ValueError names the near match and the known purposes."""
    try:
        return CATALOGUE[name]
    except (KeyError, TypeError):
        raise _unknown("purpose", name, tuple(CATALOGUE)) from None


class OutputAccessError(PortraitError):
    """A purpose asked to read a workspace output the purpose catalogue does not give it."""


def readers_of(output: str) -> tuple[str, ...]:
    """The purposes that may read workspace output ``output``, in catalogue order."""
    if output not in OUTPUTS:
        raise _unknown("workspace output", output, OUTPUTS)
    return tuple(name for name, entry in CATALOGUE.items() if output in entry.outputs)


def check_output_read(purpose_name: str, output: str) -> None:
    """Raise ``OutputAccessError`` unless purpose ``purpose_name`` may read ``WS/outputs/<output>``.

    >>> check_output_read("transaction_safety", "risk")
    >>> check_output_read("marketing_messages", "risk")
    Traceback (most recent call last):
    ...
    profiling.purposes.OutputAccessError: purpose 'marketing_messages' may not read the workspace output 'risk' (WS/outputs/risk): only transaction_safety may read it (profiling.purposes)
    """
    entry = purpose(purpose_name)
    readers = readers_of(output)
    if output not in entry.outputs:
        raise OutputAccessError(f"purpose {entry.name!r} may not read the workspace output {output!r} "
                                f"(WS/outputs/{output}): only {', '.join(readers) or 'no purpose'} may read it "
                                "(profiling.purposes)")


def policy_version(name: str) -> PolicyVersion:
    """The policy version called ``name`` (e.g. ``"2019-06"``)."""
    for version in POLICY_HISTORY:
        if version.name == name:
            return version
    raise _unknown("policy version", name, POLICY_VERSIONS)


def policy_in_force(at: dt.datetime) -> PolicyVersion:
    """The newest policy version in force at ``at`` (timezone-aware); the first one before it existed.

    >>> policy_in_force(dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)).name
    '2019-06'
    """
    if at.tzinfo is None:
        raise ValueError("the moment must be timezone-aware (UTC), e.g. datetime(2020, 1, 1, tzinfo=timezone.utc)")
    current = POLICY_HISTORY[0]
    for version in POLICY_HISTORY:
        if version.in_force <= at:
            current = version
    return current
