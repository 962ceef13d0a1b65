"""``portrait export --recipient NAME --out DIR``: hand a recipient exactly its declared fields."""

from __future__ import annotations

import argparse

from pipelines.commands._shared import add_workspace_argument, existing_workspace, outside_workspace
from pipelines.run import load_consent_events, parse_as_of
from profiling.recipients import EXPORT_FORMATS, RECIPIENTS, checked_request, export_for_recipient

__all__ = ["register"]


def _export(args: argparse.Namespace) -> None:
    fields = None if args.fields is None else [f.strip() for f in args.fields.split(",") if f.strip()]
    workspace = existing_workspace(args.workspace)
    out = outside_workspace(args.out, workspace)
    as_of = parse_as_of(args.as_of) if args.as_of else None
    checked_request(args.recipient, fields=fields, institution=args.institution, file_format=args.format)
    load_consent_events(workspace)  # the gate decides on every ingested event, as `portrait run` does
    result = export_for_recipient(workspace, args.recipient, out, fields=fields,
                                  institution=args.institution, file_format=args.format, as_of=as_of)
    print(result.summary())


def register(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser("export", help="export a recipient's declared fields (e.g. order number and "
                                 "amount for payment institutions), nothing more")
    export.add_argument("--recipient", required=True,
                        help=f"declared recipient: {', '.join(sorted(RECIPIENTS))}")
    export.add_argument("--out", required=True, help="folder outside the workspace to write the export into")
    export.add_argument("--fields", help="comma-separated subset of the recipient's declared fields (default: all)")
    export.add_argument("--institution", help="the payment institution whose orders to export, e.g. alipay "
                        "(required for payment_institution: each receives only its own orders)")
    export.add_argument("--as-of", help="moment the consent gate decides at, ISO 8601 (default: now); rows of "
                        "cancelled accounts and of revoked payment_settlement are left out")
    export.add_argument("--format", choices=EXPORT_FORMATS, default="csv", help="file format (default csv)")
    add_workspace_argument(export)
    export.set_defaults(handler=_export)
