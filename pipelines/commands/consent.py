"""``portrait consent grant|revoke|sensitive-grant|sensitive-revoke|dnd|cancel|show|load``: the consent ledger.

Every change appends an event through the store (``SqliteConsentStore``); nothing is ever edited.
Accounts are raw account ids (the ledger is in the identifiable zone, for customer service), taken
in the form ingest keys them (``pipelines.subjects.known_account``: spaces around them removed); a
change for an account the workspace's ingested accounts do not hold is refused, nothing recorded.
Changes take the workspace's job lock, so one asked for while a job runs waits for the job.
"""

from __future__ import annotations

import argparse
import datetime as dt

from pipelines.commands._shared import add_workspace_argument, existing_ledger, existing_workspace, format_table
from pipelines.run import load_consent_events, parse_as_of
from pipelines.subjects import known_account
from pipelines.workspace import Workspace
from profiling.consent import (
    ConsentEvent,
    ConsentSnapshot,
    Exclusion,
    SqliteConsentStore,
)
from profiling.consent.events import CHANNELS, canonical_account_id
from profiling.purposes import CATALOGUE, purpose

__all__ = ["register", "consent_rows"]


def _store(args: argparse.Namespace) -> SqliteConsentStore:
    return SqliteConsentStore(Workspace(args.workspace).ledger)


def _moment(text: str | None) -> dt.datetime:
    return parse_as_of(text) if text else dt.datetime.now(dt.timezone.utc)


def _append(args: argparse.Namespace, event_type: str, purpose_name: str | None = None) -> None:
    if purpose_name is not None:
        purpose(purpose_name)  # unknown purpose: the error lists the known ones
    said_at = _moment(args.at)  # when the person said it, not when a running job let it through
    workspace = existing_workspace(args.workspace)
    with workspace.job_lock(f"portrait consent {args.consent_command}"):
        account = known_account(workspace, args.account)
        event = ConsentEvent(account, said_at, event_type, purpose_name, channel=args.channel)
        with SqliteConsentStore(workspace.ledger) as store:
            store.append([event], source="cli")
    about = f" {purpose_name}" if purpose_name else ""
    print(f"recorded {event_type}{about} for account {account} at {event.event_at.isoformat()}")


def consent_rows(store: SqliteConsentStore, account_id: str, as_of: dt.datetime) -> list[dict]:
    """One row per purpose: whether the account may be processed for it at ``as_of``, and why not.

    Read-only: unlike ``ConsentGate.decide`` it writes no audit record (it decides nothing for a job).
    """
    snapshot = ConsentSnapshot.from_arrow(store.events([account_id]))
    state = snapshot.evaluate(as_of)
    known = state.account_ids.to_pylist()
    rows = []
    for name, entry in CATALOGUE.items():
        if account_id not in known:
            verdict, sensitive = "no_consent_record", "-"
        else:
            at = known.index(account_id)
            code = Exclusion(int(state.exclusions(name)[at]))
            verdict = "allowed" if code is Exclusion.ELIGIBLE else code.label
            sensitive = "-"
            if entry.needs_sensitive_consent:
                sensitive_code = Exclusion(int(state.exclusions(name, sensitive=True, apply_dnd=False)[at]))
                sensitive = "allowed" if sensitive_code is Exclusion.ELIGIBLE else sensitive_code.label
        rows.append({"purpose": name, "group": entry.group.value, "state": verdict, "sensitive data": sensitive})
    return rows


def _show(args: argparse.Namespace) -> None:
    as_of = _moment(args.as_of)
    account = canonical_account_id(args.account)
    existing_ledger(existing_workspace(args.workspace))  # showing creates nothing
    with _store(args) as store:
        rows = consent_rows(store, account, as_of)
        history = store.history(account)
    if not history:
        print(f"account {account} has no consent events in the ledger: every purpose is refused")
    else:
        with _store(args) as store:
            state = ConsentSnapshot.from_arrow(store.events([account])).evaluate(as_of)
        print(f"account {account} as of {as_of.isoformat()}: {len(history)} event(s); do not disturb "
              f"{'on' if bool(state.dnd[0]) else 'off'}; cancelled {'yes' if bool(state.cancelled[0]) else 'no'}")
    print(format_table(rows))


def _load(args: argparse.Namespace) -> None:
    workspace = existing_workspace(args.workspace)
    with workspace.job_lock("portrait consent load"):
        report = load_consent_events(workspace)
    print(f"consent events: {report.offered} offered, {report.recorded} recorded, "
          f"{report.already_present} already in the ledger")


def register(commands: argparse._SubParsersAction) -> None:
    consent = commands.add_parser("consent", help="the consent ledger: record grants, revocations, DND; show state")
    actions = consent.add_subparsers(dest="consent_command", required=True, metavar="ACTION")

    def change(name: str, help_text: str, event_type: str, *, with_purpose: bool):
        parser = actions.add_parser(name, help=help_text)
        add_workspace_argument(parser)
        parser.add_argument("--account", required=True, help="raw account id, e.g. A0000000001")
        if with_purpose:
            parser.add_argument("--purpose", required=True, help=f"one of: {', '.join(CATALOGUE)}")
        parser.add_argument("--at", help="when the person said it, ISO 8601 (default now; no offset means UTC)")
        parser.add_argument("--channel", default="customer_service", choices=CHANNELS,
                            help="where the person said it (default customer_service)")
        parser.set_defaults(handler=lambda args: _append(args, event_type, args.purpose if with_purpose else None))
        return parser

    change("grant", "record that the person granted a purpose", "grant", with_purpose=True)
    change("revoke", "record that the person revoked a purpose", "revoke", with_purpose=True)
    change("sensitive-grant", "record the separate consent to sensitive data for a purpose", "sensitive_grant",
           with_purpose=True)
    change("sensitive-revoke", "withdraw the separate sensitive-data consent for a purpose", "sensitive_revoke",
           with_purpose=True)
    change("accept-policy", "record that the person accepted the policy in force", "policy_accept",
           with_purpose=False)
    change("cancel", "record the account's cancellation (final)", "cancel", with_purpose=False)

    dnd = actions.add_parser("dnd", help="switch Do Not Disturb on or off (stops marketing messages)")
    dnd.add_argument("state", choices=("on", "off"))
    add_workspace_argument(dnd)
    dnd.add_argument("--account", required=True, help="raw account id")
    dnd.add_argument("--at", help="when, ISO 8601 (default now)")
    dnd.add_argument("--channel", default="customer_service", choices=CHANNELS)
    dnd.set_defaults(handler=lambda args: _append(args, f"dnd_{args.state}"))

    show = actions.add_parser("show", help="the person's state per purpose at a moment")
    add_workspace_argument(show)
    show.add_argument("--account", required=True, help="raw account id")
    show.add_argument("--as-of", help="moment, ISO 8601 (default now)")
    show.set_defaults(handler=_show)

    load = actions.add_parser("load", help="record the ingested consent_events table in the ledger (idempotent)")
    add_workspace_argument(load)
    load.set_defaults(handler=_load)
