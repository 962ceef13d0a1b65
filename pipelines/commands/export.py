"""``portrait export --recipient NAME --out DIR``: hand a recipient exactly its declared fields.

A recipient in the mainland (``profiling.recipients``) gets its rows as of ``--as-of``; an
overseas receiver (``profiling.overseas``) gets cross-border waybills of persons whose separate
consent holds at the moment of the transfer, which is logged (it needs the master key, for the
persons' pseudonyms in the log and for ID numbers from the vault).

An export holds the workspace's job lock from the consent load to the files' rename: two exports,
or an export and a job or an erasure, take turns (the later one says it waits), so each transfer
is logged once, on one chain, and a folder's file always sits beside its own report.
"""

from __future__ import annotations

import argparse

from pipelines.commands._shared import add_workspace_argument, existing_workspace, outside_workspace
from pipelines.run import load_consent_events, parse_as_of
from profiling.errors import PortraitError
from profiling.keys import load_master_key
from profiling.overseas import OVERSEAS_RECEIVERS, checked_transfer, transfer_to_overseas
from profiling.recipients import EXPORT_FORMATS, RECIPIENTS, checked_request, export_for_recipient

__all__ = ["register"]


def _export(args: argparse.Namespace) -> None:
    fields = None if args.fields is None else [f.strip() for f in args.fields.split(",") if f.strip()]
    if args.recipient in OVERSEAS_RECEIVERS:
        _transfer(args, fields)
        return
    workspace = existing_workspace(args.workspace)
    out = outside_workspace(args.out, workspace)
    as_of = parse_as_of(args.as_of) if args.as_of else None
    checked_request(args.recipient, fields=fields, institution=args.institution, file_format=args.format)
    with workspace.job_lock("portrait export"):
        load_consent_events(workspace)  # the gate decides on every ingested event, as `portrait run` does
        result = export_for_recipient(workspace, args.recipient, out, fields=fields,
                                      institution=args.institution, file_format=args.format, as_of=as_of)
    print(result.summary())


def _transfer(args: argparse.Namespace, fields: list[str] | None) -> None:
    checked_transfer(args.recipient, fields=fields, file_format=args.format)
    if args.institution is not None:
        raise PortraitError(f"--institution scopes payment institutions only; {args.recipient!r} is an overseas "
                            "receiver and gets cross-border waybills; drop --institution")
    if args.as_of is not None:
        raise PortraitError(f"--as-of does not apply to {args.recipient!r}: a cross-border transfer is decided on "
                            "the consent that holds when it happens; drop --as-of")
    workspace = existing_workspace(args.workspace)
    out = outside_workspace(args.out, workspace)
    key = load_master_key(args.key_file)
    with workspace.job_lock("portrait export"):
        load_consent_events(workspace)
        result = transfer_to_overseas(workspace, args.recipient, out, key, fields=fields, file_format=args.format,
                                      operator=args.by)
    print(result.summary())


def register(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser("export", help="export a recipient's declared fields (e.g. order number and "
                                 "amount for payment institutions; cross-border waybills for overseas receivers), "
                                 "nothing more")
    export.add_argument("--recipient", required=True,
                        help=f"declared recipient: {', '.join(sorted(RECIPIENTS))}; overseas receiver: "
                        f"{', '.join(sorted(OVERSEAS_RECEIVERS))}")
    export.add_argument("--out", required=True, help="folder outside the workspace to write the export into")
    export.add_argument("--fields", help="comma-separated subset of the recipient's declared fields (default: all)")
    export.add_argument("--institution", help="the payment institution whose orders to export, e.g. alipay "
                        "(required for payment_institution: each receives only its own orders)")
    export.add_argument("--as-of", help="moment the consent gate decides at, ISO 8601 (default: now); rows of "
                        "cancelled accounts and of revoked payment_settlement are left out (not for overseas "
                        "receivers: their consent is the one holding at the transfer)")
    export.add_argument("--format", choices=EXPORT_FORMATS, default="csv", help="file format (default csv)")
    export.add_argument("--key-file", help="master key file, for overseas receivers (default: the "
                        "PORTRAIT_MASTER_KEY variable)")
    export.add_argument("--by", help="who runs a cross-border transfer, for the transfer log (default: the login name)")
    add_workspace_argument(export)
    export.set_defaults(handler=_export)
