"""Names of the processing purposes the privacy policy lists, grouped as the policy groups them."""

from __future__ import annotations

from enum import Enum

__all__ = ["PurposeGroup", "PURPOSES", "CONSENT_EVENT_TYPES", "POLICY_VERSIONS"]


class PurposeGroup(str, Enum):
    CORE = "core"                  # needed for the service itself
    ADDITIONAL = "additional"      # device permissions the user may switch on and off
    PERSONALIZATION = "personalization"
    MARKETING = "marketing"
    CROSS_DEVICE = "cross_device"
    THIRD_PARTY = "third_party"


PURPOSES: dict[str, PurposeGroup] = {
    "account_registration": PurposeGroup.CORE,
    "service_provision": PurposeGroup.CORE,
    "payment_settlement": PurposeGroup.CORE,
    "messaging": PurposeGroup.CORE,
    "customer_service": PurposeGroup.CORE,
    "product_improvement": PurposeGroup.CORE,
    "transaction_safety": PurposeGroup.CORE,
    "speech_input": PurposeGroup.ADDITIONAL,
    "location": PurposeGroup.ADDITIONAL,
    "camera": PurposeGroup.ADDITIONAL,
    "address_book": PurposeGroup.ADDITIONAL,
    "personalization": PurposeGroup.PERSONALIZATION,
    "marketing_messages": PurposeGroup.MARKETING,
    "cross_device_sync": PurposeGroup.CROSS_DEVICE,
    "third_party_binding": PurposeGroup.THIRD_PARTY,
}

# What a consent event can say. grant/revoke and sensitive_grant/sensitive_revoke name a purpose;
# the others apply to the whole account.
CONSENT_EVENT_TYPES: tuple[str, ...] = (
    "grant", "revoke", "sensitive_grant", "sensitive_revoke",
    "dnd_on", "dnd_off", "policy_accept", "cancel",
)

# Policy versions the ledger knows, oldest first. The second is the June 2019 update.
POLICY_VERSIONS: tuple[str, ...] = ("2018-01", "2019-06")
