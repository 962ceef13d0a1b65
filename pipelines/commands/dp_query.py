"""``portrait dp``: a differentially private aggregate of an analytics-zone table, from the command line.

Only persons whose consent holds for ``--purpose`` at ``--as-of`` contribute; the release is
charged to the budget of the table's registered dataset before it is computed (``portrait budget
show`` shows the spend).
"""

from __future__ import annotations

import argparse

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from dp import BudgetLedger, PrivateSession
from dp.units import IDENTITY, attach_identity
from pipelines.commands._shared import add_workspace_argument, existing_workspace, format_table
from pipelines.run import parse_as_of
from profiling.consent import ConsentGate, SqliteConsentStore
from profiling.keys import load_master_key
from profiling.purposes import OUTPUTS, check_output_read
from profiling.schema import TABLE_NAMES, TABLES

__all__ = ["register"]


def _numeric_spec(text: str, parts: int, option: str) -> list:
    pieces = text.split(":")
    if len(pieces) != parts:
        raise ValueError(f"{option} {text!r}: expected {parts} parts separated by ':'")
    try:
        return [pieces[0], *map(float, pieces[1:])]
    except ValueError:
        raise ValueError(f"{option} {text!r}: the bounds must be numbers") from None


def _public_keys(table: str, column: str) -> list | None:
    """The schema's allowed values of ``column``: public group keys, so no partition selection is needed."""
    source = TABLES.get(table)
    try:
        allowed = source[column].allowed if source is not None else None
    except KeyError:
        allowed = None
    return list(allowed) if allowed else None


def _boolean(text: str) -> bool:
    if text.strip().lower() not in ("true", "false"):
        raise ValueError(text)
    return text.strip().lower() == "true"


def _typed_keys(texts: list[str], table: pa.Table, column: str) -> list:
    """``--keys`` read as the numbers or booleans a numeric or boolean column holds (text never matches them)."""
    if column not in table.column_names:
        return texts
    kind = table.schema.field(column).type
    parse, what = ((int, "whole numbers") if pa.types.is_integer(kind) else (float, "numbers")
                   if pa.types.is_floating(kind) else (_boolean, "true or false") if pa.types.is_boolean(kind)
                   else (None, ""))
    if parse is None:
        return texts
    try:
        return [parse(text) for text in texts]
    except ValueError:
        raise ValueError(f"--keys {','.join(texts)!r}: column {column!r} holds {what}; list {what}") from None


def _identity_rows(workspace, folder, args: argparse.Namespace, consenting) -> pd.DataFrame:
    """The table's rows attributed to identities (``dp.units.attach_identity``), of consenting persons only.

    A person-keyed row is its person's identity; an anonymous row of a device linked to an identity
    (the identity output's devices, read through the purpose check) is that identity's; other
    anonymous rows (shared devices, devices of nobody) are dropped."""
    dataset = ds.dataset(workspace.verified(folder), format="parquet")
    keyed_by_device = "device_id" in dataset.schema.names
    devices = None
    if keyed_by_device:
        identity = workspace.output("identity", purpose=args.purpose)
        devices = ds.dataset(identity / "devices", format="parquet").to_table()
    person = pc.field("person_id")
    if "person_id" in dataset.schema.names:
        kept = person.isin(consenting) | person.is_null() if keyed_by_device else person.isin(consenting)
        rows = dataset.to_table(filter=kept)
    else:
        rows = dataset.to_table()
    attached = attach_identity(rows, devices=devices)
    # rows: (the table's columns, identity_id); an identity is its person's, so its consent is the person's
    return attached[attached[IDENTITY].isin(consenting.to_pylist())].reset_index(drop=True)


def _query(args: argparse.Namespace) -> None:
    named = [part for part in args.table.split("/") if part not in ("", ".", "outputs")]
    if named and named[0] in OUTPUTS:   # a workspace output (risk scores ...): its purpose wall speaks first
        check_output_read(args.purpose, named[0])
    if args.table not in TABLE_NAMES:
        raise ValueError(f"--table {args.table!r} is not a table of the analytics zone; use one of "
                         f"{', '.join(TABLE_NAMES)}")
    workspace = existing_workspace(args.workspace)
    ledger = BudgetLedger(workspace.ledger)
    dataset = ledger.dataset_of_table(args.table).name   # the table's dataset pays, whatever the caller names
    if args.dataset is not None and args.dataset != dataset:
        raise ValueError(f"--dataset {args.dataset!r}: releases on table {args.table!r} are charged to dataset "
                         f"{dataset!r}; drop --dataset or name {dataset!r}")
    folder = workspace.pseudonymized(args.table)
    if not folder.is_dir():
        raise ValueError(f"{folder} does not exist; run `portrait run --workspace {workspace.root} ...` first")
    key = load_master_key(args.key_file)
    with SqliteConsentStore(workspace.ledger) as store:
        decision = ConsentGate(store).decide(args.purpose, parse_as_of(args.as_of), job="portrait dp")
    consenting = decision.person_ids(key)
    if args.privacy_unit == "identity":
        # rows: (identity_id, the table's columns) of the identities of persons whose consent holds
        table, unit = _identity_rows(workspace, folder, args, consenting), IDENTITY
    else:
        # rows: (person_id, the aggregated columns) of persons whose consent holds
        table, unit = ds.dataset(workspace.verified(folder), format="parquet").to_table(
            filter=pc.field("person_id").isin(consenting)), "person_id"
    session = PrivateSession(table, dataset=dataset, ledger=ledger, privacy_unit=unit,
                             accounts_per_human=args.accounts_per_human, analyst=args.analyst, purpose=args.purpose)
    query = session.query(epsilon=args.epsilon, delta=args.delta, confidence=args.confidence)
    for expression in args.where or []:
        query = query.where(expression)
    if args.by:
        by = [column.strip() for column in args.by.split(",")]
        if args.keys and len(by) > 1:
            raise ValueError(f"--keys lists the keys of one --by column, not of {len(by)}; drop --keys (the schema's "
                             f"allowed values are crossed, or the groups are selected privately with --delta)")
        if args.keys:
            keys = _typed_keys(args.keys.split(","), table, by[0])
        else:
            allowed = {column: _public_keys(args.table, column) for column in by}
            keys = None if None in allowed.values() else allowed
        query = query.group_by(by, keys=keys)
    query = query.bound(max_partitions=args.max_partitions, max_rows_per_partition=args.max_rows)
    if args.count:
        query = query.count()
    for spec in args.sum or []:
        column, low, high = _numeric_spec(spec, 3, "--sum")
        query = query.sum(column, bounds=(low, high))
    for spec in args.mean or []:
        column, low, high = _numeric_spec(spec, 3, "--mean")
        query = query.mean(column, bounds=(low, high))
    for spec in args.quantile or []:
        column, q, low, high = _numeric_spec(spec, 4, "--quantile")
        query = query.quantile(column, q, bounds=(low, high))
    if args.explain:
        print(format_table(query.explain().to_dict("records")))
        print("nothing was charged or released (--explain)")
        return
    release = query.release()
    print(format_table(release.to_dict("records")))
    # no count of contributing persons: an exact count beside a release would undo its noise
    print(f"charged epsilon {args.epsilon:g}, delta {args.delta:g} to {dataset!r}; left: {session.remaining()}")


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "dp", help="release a differentially private count/sum/mean/quantile of an analytics-zone table",
        description="Release DP aggregates of WS/pseudonymized/<table>. Every person contributes to at most "
                    "--max-partitions groups and --max-rows rows in each; the release is epsilon-DP per person (per "
                    "identity with --privacy-unit identity) "
                    "and charged first to the budget of the table's dataset. Examples: "
                    "`portrait dp --table orders --by category --count --sum amount:0:2000 --epsilon 0.2 "
                    "--key-file K --as-of 2026-11-01`.")
    add_workspace_argument(parser)
    parser.add_argument("--table", required=True, help=f"analytics-zone table: {', '.join(TABLE_NAMES)}")
    parser.add_argument("--dataset", help="optional check: the dataset the table's releases are charged to "
                        "(the table's registered dataset; anything else is refused)")
    parser.add_argument("--key-file", help="master key file (default: the PORTRAIT_MASTER_KEY variable)")
    parser.add_argument("--as-of", required=True, help="moment the consent gate answers for, ISO 8601")
    parser.add_argument("--purpose", default="product_improvement",
                        help="purpose of the release; only persons whose consent holds contribute")
    parser.add_argument("--analyst", default=None, help="who asks (recorded in the ledger; default: the OS user)")
    parser.add_argument("--epsilon", type=float, required=True, help="privacy parameter of the whole release")
    parser.add_argument("--delta", type=float, default=0.0, help="delta (needed for groups without --keys "
                        "on a column without public values)")
    parser.add_argument("--by", help="group-by column(s), comma-separated")
    parser.add_argument("--where", action="append", metavar="EXPRESSION",
                        help="keep only the rows where EXPRESSION holds, before bounding, e.g. \"amount >= 10\"")
    parser.add_argument("--confidence", type=float, default=0.95,
                        help="level of the released half-widths (default 0.95: columns *_ci95)")
    parser.add_argument("--keys", help="comma-separated public group keys (default: the schema's allowed values)")
    parser.add_argument("--privacy-unit", choices=("person", "identity"), default="person",
                        help="what the bounds and epsilon are per: the account (person), or its identity (the "
                        "account with the devices only it used: their anonymous events count too; device tables "
                        "read WS/outputs/identity, so the purpose must be one that may read it)")
    parser.add_argument("--accounts-per-human", type=int, default=1,
                        help="group bound: calibrate so that any this many units together (one human's unlinked "
                        "accounts) get epsilon (default 1)")
    parser.add_argument("--max-partitions", type=int, default=1, help="groups a person may contribute to")
    parser.add_argument("--max-rows", type=int, default=1, help="rows a person may contribute to each group")
    parser.add_argument("--count", action="store_true", help="release the row count")
    parser.add_argument("--sum", action="append", metavar="COLUMN:LOW:HIGH", help="release a clamped sum")
    parser.add_argument("--mean", action="append", metavar="COLUMN:LOW:HIGH", help="release a clamped mean")
    parser.add_argument("--quantile", action="append", metavar="COLUMN:Q:LOW:HIGH", help="release a quantile")
    parser.add_argument("--explain", action="store_true", help="show the noise plan; charge and release nothing")
    parser.set_defaults(handler=_query)
