"""``portrait dsr export|correct|erase``: data-subject requests for one account (see ``pipelines.dsr``).

The account is taken in the form ingest keys it and must be one the workspace holds
(``pipelines.subjects.known_account``); correct and erase wait for a running job (the job lock).
"""

from __future__ import annotations

import argparse

from pipelines.commands._shared import add_workspace_argument, existing_workspace, format_table, outside_workspace
from pipelines.dsr import correct_account, erase_account, export_account
from pipelines.subjects import known_account
from profiling.keys import add_tombstone_secret, load_master_key

__all__ = ["register"]


def _export(args: argparse.Namespace) -> None:
    workspace = existing_workspace(args.workspace)
    out = outside_workspace(args.out, workspace)
    bundle = export_account(workspace, known_account(workspace, args.account, or_in_ledger=True),
                            load_master_key(args.key_file), out)
    rows = [{"section": name, "rows": len(rows)} for name, rows in sorted(bundle["tables"].items())]
    rows += [{"section": "consent_history", "rows": len(bundle["consent_history"])},
             {"section": "requests", "rows": len(bundle["requests"])},
             {"section": "corrections", "rows": len(bundle["corrections"])},
             {"section": "transfers", "rows": len(bundle["transfers"])}]
    print(format_table(rows))
    print(f"wrote {args.out}/bundle.json and one CSV per section")
    if bundle["left_out"]:
        print(f"left out {sum(bundle['left_out'].values())} rows about this person and others together "
              f"({', '.join(sorted(bundle['left_out']))}): they are not theirs alone; bundle.json counts them")


def _correct(args: argparse.Namespace) -> None:
    workspace, key = existing_workspace(args.workspace), load_master_key(args.key_file)
    with workspace.job_lock("portrait dsr correct"):
        account = known_account(workspace, args.account)
        correct_account(workspace, account, args.field, args.value, key)
    print(f"corrected accounts.{args.field} of account {account}; every later ingest applies the "
          f"correction, and its derived data is marked stale until the next run")


def _erase(args: argparse.Namespace) -> None:
    if args.key_file and add_tombstone_secret(args.key_file):
        print(f"added a tombstone secret to {args.key_file} (an older key file): tombstones are keyed by it, and "
              f"no key version destroyed later can undo them")
    workspace, key = existing_workspace(args.workspace), load_master_key(args.key_file)
    with workspace.job_lock("portrait dsr erase"):
        report = erase_account(workspace, known_account(workspace, args.account, or_in_ledger=True), key)
    files = sorted(set(report.rows_removed) | set(report.rows_redacted) | set(report.rows_shared))
    print(format_table([{"file": path, "rows removed": report.rows_removed.get(path, 0),
                         "rows blanked": report.rows_redacted.get(path, 0),
                         "rows kept (others too)": report.rows_shared.get(path, 0)} for path in files]))
    print(f"erased account {report.account_id}: {sum(report.rows_removed.values())} rows, "
          f"{report.consent_events_removed} consent events, {report.requests_removed} requests; its name, phone and "
          f"address blanked on {sum(report.rows_redacted.values())} waybills of others; {report.tombstones} "
          f"tombstones (ingest needs --key-file from now on)")
    if report.rows_shared:
        print(f"kept {sum(report.rows_shared.values())} rows about this person and others together; the next "
              f"`portrait run` rebuilds them without this person")
    for path in report.other_files_naming_them:
        print(f"warning: {path} still names the person and is not a table erase can rewrite; remove it by hand")


def register(commands: argparse._SubParsersAction) -> None:
    dsr = commands.add_parser("dsr", help="data-subject requests: export, correct or erase one account")
    actions = dsr.add_subparsers(dest="dsr_command", required=True, metavar="ACTION")

    def request(name: str, help_text: str, handler) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, help=help_text)
        add_workspace_argument(parser)
        parser.add_argument("--account", required=True, help="raw account id, e.g. A0000000001")
        parser.add_argument("--key-file", help="master key file (default: the PORTRAIT_MASTER_KEY variable)")
        parser.set_defaults(handler=handler)
        return parser

    export = request("export", "write everything held about the account (JSON bundle + CSV per table)", _export)
    export.add_argument("--out", required=True, help="new folder, outside the workspace, for the bundle")
    correct = request("correct", "correct one field of the account's ingested row", _correct)
    correct.add_argument("--field", required=True, help="column of accounts, e.g. email")
    correct.add_argument("--value", required=True, help="new value, written as in a CSV file")
    request("erase", "remove the account and every linked row from the workspace, and tombstone it", _erase)
