"""The persons a workspace knows, named the one way ingest names them.

Every request about one person (a consent change, a data-subject request) names its account the
way a person types it. ``known_account`` turns that into the form ingest and the door key it by
(``profiling.consent.events.canonical_account_id``: surrounding whitespace removed, case kept, since
ingest treats ``A1`` and ``a1`` as two accounts) and refuses an account the workspace's
ingested accounts do not hold, before anything is recorded.
"""

from __future__ import annotations

import pyarrow.compute as pc

from pipelines.workspace import Workspace
from profiling.consent import SqliteConsentStore
from profiling.consent.events import canonical_account_id
from profiling.errors import PortraitError
from profiling.pseudonyms import normalize

__all__ = ["UnknownAccountError", "known_account"]


class UnknownAccountError(PortraitError):
    """A request names an account the workspace does not hold (a typo, or a person never ingested)."""


def known_account(workspace: Workspace, account_id: str, *, or_in_ledger: bool = False) -> str:
    """``account_id`` in ingest's form, once the workspace's ingested accounts hold it.

    With ``or_in_ledger`` an account the consent ledger still names is known too (an access or
    erasure request for a person whose rows a later ingest no longer brought). Otherwise
    ``UnknownAccountError`` says which workspace was asked and how to check the id.
    """
    form = canonical_account_id(account_id)
    if not form:
        raise UnknownAccountError(f"account id {account_id!r} is empty; give the account id, e.g. A0000000001")
    workspace.require_ingested()
    stored = workspace.read("accounts", ["account_id"]).column("account_id")
    if pc.any(pc.equal(normalize(stored, "account_id"), form)).as_py():
        return form
    if or_in_ledger and workspace.ledger.is_file():
        with SqliteConsentStore(workspace.ledger) as store:
            if store.history(form):
                return form
    raise UnknownAccountError(f"account {form!r} is not among the {len(stored)} ingested accounts of workspace "
                              f"{workspace.root}; check the id (account ids are case-sensitive); nothing was recorded")
