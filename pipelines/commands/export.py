"""``portrait export --recipient NAME --out DIR``: hand a recipient exactly its declared fields."""

from __future__ import annotations

import argparse

from pipelines.commands._shared import add_workspace_argument
from pipelines.workspace import Workspace
from profiling.recipients import EXPORT_FORMATS, RECIPIENTS, export_for_recipient

__all__ = ["register"]


def _export(args: argparse.Namespace) -> None:
    fields = None if args.fields is None else [f.strip() for f in args.fields.split(",") if f.strip()]
    result = export_for_recipient(Workspace(args.workspace), args.recipient, args.out, fields=fields,
                                  institution=args.institution, file_format=args.format)
    print(f"wrote {result.rows} rows ({', '.join(result.fields)}) for {result.recipient} to {result.path}")


def register(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser("export", help="export a recipient's declared fields (e.g. order number and "
                                 "amount for payment institutions), nothing more")
    export.add_argument("--recipient", required=True,
                        help=f"declared recipient: {', '.join(sorted(RECIPIENTS))}")
    export.add_argument("--out", required=True, help="folder to write the export into")
    export.add_argument("--fields", help="comma-separated subset of the recipient's declared fields (default: all)")
    export.add_argument("--institution", help="only the orders settled by this payment institution, e.g. alipay")
    export.add_argument("--format", choices=EXPORT_FORMATS, default="csv", help="file format (default csv)")
    add_workspace_argument(export)
    export.set_defaults(handler=_export)
