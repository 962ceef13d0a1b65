"""Who may be processed, for which purpose, as of when: the consent ledger, its as-of evaluation and the gate.

The ledger (``SqliteConsentStore`` in ``WS/ledger.sqlite``) is keyed by raw account ids: it sits in
the identifiable zone, and customer-service agents use raw ids. Stages ask the ``ConsentGate`` and
map the eligible accounts to PERSON pseudonyms. Semantics: see ``profiling.consent.as_of`` and
``profiling.purposes``.
"""

from profiling.consent.as_of import EVENT_COLUMNS, ConsentSnapshot, ConsentState, Exclusion, to_micros
from profiling.consent.events import CHANNELS, ConsentError, ConsentEvent
from profiling.consent.gate import NO_CONSENT_RECORD, ConsentGate, GateDecision, sensitive_consent_holds
from profiling.consent.sqlite_store import SqliteConsentStore
from profiling.ledger_file import ledger_connection
from profiling.consent.store import AuditRecord, ConsentStore, LoadReport

__all__ = [
    "CHANNELS",
    "EVENT_COLUMNS",
    "NO_CONSENT_RECORD",
    "AuditRecord",
    "ConsentError",
    "ConsentEvent",
    "ConsentGate",
    "ConsentSnapshot",
    "ConsentState",
    "ConsentStore",
    "Exclusion",
    "GateDecision",
    "LoadReport",
    "SqliteConsentStore",
    "ledger_connection",
    "sensitive_consent_holds",
    "to_micros",
]
