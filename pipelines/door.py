"""The door between the identifiable zone and the analytics zone.

``WS/ingested/`` holds raw accepted rows and is read by nothing analytical. The door reads every
ingested table in record batches and writes ``WS/pseudonymized/<table>/`` (Parquet), where no
column names or contacts a person by itself. What happens to a column is decided by the field
registry (``profiling.schema``: its ``PrivacyClass`` and ``Field.identifier``), never by column
name lists:

====================  ===========================  ===========================================
privacy class         what the field is            in the analytics zone
====================  ===========================  ===========================================
DIRECT_IDENTIFIER     ``account_id``               ``person_id``: PERSON pseudonym
DIRECT_IDENTIFIER     ``device_id``                same name: DEVICE pseudonym
DIRECT_IDENTIFIER     ``order_id``                 same name: ORDER pseudonym
DIRECT_IDENTIFIER     ``waybill_id``               same name: WAYBILL pseudonym
DIRECT_IDENTIFIER     ``ip``                       ``<name>_prefix``: IPv4 /24 or IPv6 /48
DIRECT_IDENTIFIER     any other (phone, name,      dropped: analysis does not need them
                      email, address, event ids)
QUASI_IDENTIFIER      a date (birthday)            ``age_band`` at the as-of date ("25-34")
QUASI_IDENTIFIER      a GB/T 2260 region code      ``<prefix>province``: its 2-digit province
QUASI_IDENTIFIER      a closed set of values       as is (already coarse, e.g. gender)
QUASI_IDENTIFIER      anything else                dropped
SENSITIVE             any                          dropped, always
NON_PERSONAL          any                          as is
====================  ===========================  ===========================================

Nothing passes unchanged unless the registry calls it ``NON_PERSONAL``: an event id is a direct
identifier (it is the key of a raw row that names the account), so a copy of it would join the
zone back to the raw tables without the key. What stays is pseudonymous, not anonymous: the
quasi-identifiers kept (timestamps to the microsecond, amounts, weights, coarse places) can
still single a person out when combined with outside knowledge, so the zone is personal data.

Each pseudonym column records its domain and key version in its field metadata
(``portrait.domain``, ``portrait.key_version``); the schema metadata ``portrait.key_version`` is
the version of the whole table. The door always uses the newest key version, so rerunning it
after ``portrait keys rotate`` rewrites the whole zone from the identifiable zone with the new
version. The zone is replaced whole and atomically: a failure midway leaves the previous zone.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from pipelines.engines import Engine, Kernel
from pipelines.workspace import Workspace
from profiling._threads import two_at_a_time
from profiling.errors import InternalError
from profiling.generalize import age_band, ip_prefix, province
from profiling.keys import MasterKey, derive_key
from profiling.pseudonyms import DEVICE, ORDER, PERSON, WAYBILL, pseudonymize_with_key
from profiling.schema import TABLE_NAMES, Field, Format, PrivacyClass, Table, arrow_schema, table

__all__ = ["PSEUDONYM_DOMAINS", "ColumnRule", "door_plan", "analytics_schema", "pseudonymize_workspace"]

# ``Field.identifier`` -> (pseudonym domain, column name in the analytics zone or None to keep the name)
PSEUDONYM_DOMAINS: dict[str, tuple[str, str | None]] = {
    "account_id": (PERSON, "person_id"),
    "device_id": (DEVICE, None),
    "order_id": (ORDER, None),
    "waybill_id": (WAYBILL, None),
}

# Rows read, transformed and written at once per table. Memory follows it (two tables at once at 1M
# accounts: 2.90 GB peak at 524,288 rows, 1.71 GB at 131,072, in the same time).
_BATCH_ROWS = 131_072


@dataclass(frozen=True)
class ColumnRule:
    """What the door does with one raw column: ``action`` is pass, pseudonym, generalize or drop."""

    source: str
    action: str
    output: str | None = None
    domain: str | None = None
    description: str = ""
    identifier: str | None = None  # ``Field.identifier`` of a pseudonymized column: picks the normalization


def _rule(field: Field) -> ColumnRule:
    privacy = field.privacy
    if privacy is PrivacyClass.NON_PERSONAL:
        return ColumnRule(field.name, "pass", field.name, description=field.description)
    if privacy is PrivacyClass.SENSITIVE:
        return ColumnRule(field.name, "drop", description="sensitive: never leaves the identifiable zone")
    if privacy is PrivacyClass.DIRECT_IDENTIFIER:
        if field.identifier in PSEUDONYM_DOMAINS:
            domain, renamed = PSEUDONYM_DOMAINS[field.identifier]
            return ColumnRule(field.name, "pseudonym", renamed or field.name, domain,
                              f"{domain} pseudonym of {field.name}", field.identifier)
        if field.identifier == "ip":
            return ColumnRule(field.name, "generalize", f"{field.name}_prefix",
                              description=f"network of {field.name}: IPv4 /24 or IPv6 /48")
        return ColumnRule(field.name, "drop", description=f"direct identifier ({field.identifier}) not needed")
    if privacy is PrivacyClass.QUASI_IDENTIFIER:
        if pa.types.is_date(field.type):
            return ColumnRule(field.name, "generalize", "age_band", description=f"age band from {field.name}")
        if field.format is Format.REGION:
            output = field.name.removesuffix("region") + "province"
            return ColumnRule(field.name, "generalize", output,
                              description=f"2-digit GB/T 2260 province of {field.name}")
        if field.allowed is not None:
            return ColumnRule(field.name, "pass", field.name, description=field.description)
        return ColumnRule(field.name, "drop", description="quasi-identifier without a generalization")
    raise InternalError(f"the door has no rule for privacy class {privacy!r} of {field.name}; this is a bug")


def door_plan(table_name: str) -> list[ColumnRule]:
    """The rule for every column of ``table_name``, in the data model's order.

    >>> [(r.source, r.action, r.output) for r in door_plan("accounts")][:3]
    [('account_id', 'pseudonym', 'person_id'), ('phone', 'drop', None), ('nickname', 'drop', None)]
    """
    rules = [_rule(f) for f in table(table_name).fields]
    outputs = [r.output for r in rules if r.output]
    if len(outputs) != len(set(outputs)):
        raise InternalError(f"the door maps two columns of {table_name} to one name ({outputs}); this is a bug")
    return rules


def analytics_schema(table_name: str, key_version: int) -> pa.Schema:
    """Schema of ``table_name`` in the analytics zone with pseudonyms made at ``key_version``."""
    model: Table = table(table_name)
    fields = []
    for rule in door_plan(table_name):
        source = model[rule.source]
        if rule.action == "pass":
            fields.append(source.arrow_field())
        elif rule.action == "pseudonym":
            fields.append(pa.field(rule.output, pa.string(), nullable=not source.required, metadata={
                "privacy": "pseudonym", "description": rule.description, "portrait.domain": rule.domain,
                "portrait.key_version": str(key_version), "portrait.source_column": rule.source}))
        elif rule.action == "generalize":
            fields.append(pa.field(rule.output, pa.string(), metadata={
                "privacy": PrivacyClass.QUASI_IDENTIFIER.value, "description": rule.description,
                "portrait.source_column": rule.source}))
    return pa.schema(fields, metadata={"table": table_name, "portrait.zone": "pseudonymized",
                                       "portrait.key_version": str(key_version)})


def _domain_keys(rules: list[ColumnRule], key: MasterKey, version: int) -> dict[str, bytes]:
    """The derived key (HKDF, ``derive_key``) of each pseudonym domain of one table's ``rules``, and no other."""
    return {rule.domain: derive_key(key, rule.domain, version) for rule in rules if rule.action == "pseudonym"}


def _transform(batch: pa.RecordBatch | pa.Table, rules: list[ColumnRule], schema: pa.Schema,
               domain_keys: Mapping[str, bytes], as_of: dt.date) -> pa.RecordBatch | pa.Table:
    columns = []
    for rule in rules:
        if rule.action == "drop":
            continue
        values = batch.column(rule.source)
        if rule.action == "pseudonym":
            values = pseudonymize_with_key(values, domain_keys[rule.domain], identifier=rule.identifier)
        elif rule.action == "generalize":
            values = _generalize(rule.output, values, as_of)
        columns.append(values)
    if isinstance(batch, pa.Table):
        return pa.table(columns, schema=schema)
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _door_kernel(name: str, rules: list[ColumnRule], schema: pa.Schema, domain_keys: Mapping[str, bytes],
                 as_of: dt.date) -> Kernel:
    """Kernel (not per person): stored raw rows of ``name`` -> its analytics-zone rows.

    Its closure holds the derived keys of this table's domains only (``_domain_keys``), never the
    master key: on Spark it is pickled into the task sent to the executors, not a broadcast variable.
    """
    domain_keys = dict(domain_keys)

    def door(table: pa.Table) -> pa.Table:
        return _transform(table.combine_chunks(), rules, schema, domain_keys, as_of)

    return Kernel(door, schema, name=f"door_{name}", by_person=False)


def _generalize(output: str, values: pa.Array, as_of: dt.date) -> pa.Array:
    """The coarse values of the generalized column ``output`` (named by ``_rule``)."""
    if output == "age_band":
        return age_band(values, as_of)
    if output.endswith("province"):
        return province(values)
    if output.endswith("_prefix"):
        return ip_prefix(values)
    raise InternalError(f"no generalization writes {output}; this is a bug")


def pseudonymize_workspace(workspace: Workspace, key: MasterKey, *, as_of: dt.date | None = None,
                           batch_rows: int = _BATCH_ROWS, progress: bool = False,
                           engine: Engine | None = None) -> dict:
    """Write the analytics zone ``WS/pseudonymized/`` from the identifiable zone ``WS/ingested/``.

    Uses the newest key version of ``key``; ages are counted at ``as_of`` (default: today, UTC).
    Reads ``batch_rows`` rows at a time. ``engine``: None or a local engine stream each table
    through this process into one Parquet file, two tables at a time; Spark maps a kernel over the
    stored splits of each table (``_door_kernel``: the executors get the derived keys of that
    table's domains, never the master key) and writes one file per split. Returns
    ``{"key_version", "as_of", "tables": {name: {"rows", "columns", "dropped"}}}``. The zone is
    replaced whole, or not at all when anything fails.
    """
    if not isinstance(key, MasterKey):
        raise TypeError(f"pseudonymize_workspace needs a MasterKey (from load_key_file), not {type(key).__name__}")
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be at least 1, got {batch_rows}")
    as_of = as_of or dt.datetime.now(dt.timezone.utc).date()
    workspace.require_ingested()
    version = key.newest_version
    summary: dict = {"key_version": version, "as_of": as_of.isoformat(), "tables": {}}
    with workspace.staging() as stage:
        folders = {name: stage / "pseudonymized" / name for name in TABLE_NAMES}
        if engine is not None and engine.name != "local":
            written = (_on_the_engine(workspace, engine, name, key, version, as_of, folders[name])
                       for name in TABLE_NAMES)
        else:  # two tables at a time: the door's reads, hashing and writes release the GIL
            written = two_at_a_time(lambda name: _through_the_door(workspace, name, key, version, as_of, batch_rows,
                                                                   folders[name]), TABLE_NAMES, name="door")
        with contextlib.closing(written):
            for name in tqdm(TABLE_NAMES, desc="door", unit=" table", disable=not progress):
                summary["tables"][name] = {"rows": next(written), "columns": analytics_schema(name, version).names,
                                           "dropped": [r.source for r in door_plan(name) if r.action == "drop"]}
        workspace.publish({workspace.pseudonymized(TABLE_NAMES[0]).parent: stage / "pseudonymized"})
    return summary


def _on_the_engine(workspace: Workspace, engine: Engine, name: str, key: MasterKey, version: int, as_of: dt.date,
                   folder: Path) -> int:
    """The ingested table ``name`` through the door as a kernel mapped over its stored splits, saved to ``folder``
    (a file per split); rows written. The kernel holds the derived keys of the table's domains only."""
    rules = door_plan(name)
    schema = analytics_schema(name, version)
    rows = workspace.dataset(name).count_rows()
    stored = engine.read(workspace.verified(workspace.ingested(name)),
                         columns=[r.source for r in rules if r.action != "drop"], key=None)
    engine.save(engine.map(stored, _door_kernel(name, rules, schema, _domain_keys(rules, key, version), as_of)),
                folder)
    _check_written(name, rows, ds.dataset(folder, format="parquet").count_rows())
    return rows


def _through_the_door(workspace: Workspace, name: str, key: MasterKey, version: int, as_of: dt.date,
                      batch_rows: int, folder: Path) -> int:
    """Stream the ingested table ``name`` through the door into ``folder/part-00000.parquet``; rows written.

    Holds a batch being transformed and the next one being read, whatever the table's size.
    """
    rules = door_plan(name)
    schema = analytics_schema(name, version)
    domain_keys = _domain_keys(rules, key, version)
    folder.mkdir(parents=True)
    rows = 0
    # rows: the raw table's kept columns -> the analytics schema's columns, batch by batch.
    # Dropped columns are not even read; pseudonyms (distinct 32-digit strings) skip the
    # Parquet dictionary, which they would overflow anyway.
    coarse = [r.output for r in rules if r.action in ("pass", "generalize")]
    kept = [r.source for r in rules if r.action != "drop"]
    with pq.ParquetWriter(folder / "part-00000.parquet", schema, use_dictionary=coarse) as writer:
        for batch in _stored_rows(workspace, name, rules).to_batches(batch_size=batch_rows, columns=kept,
                                                                     batch_readahead=1, fragment_readahead=1):
            writer.write_batch(_transform(batch, rules, schema, domain_keys, as_of))
            rows += batch.num_rows
    _check_written(name, rows, pq.read_metadata(folder / "part-00000.parquet").num_rows)
    return rows


def _stored_rows(workspace: Workspace, name: str, rules: list[ColumnRule]) -> ds.Dataset:
    """The ingested rows of ``name``, checked first, with the identifiers that repeat (pseudonymized
    columns other than the table's primary key: a person's orders, a device's events) read
    dictionary-encoded as Parquet stores them, so each batch's distinct values are hashed without
    an encoding pass over its rows."""
    workspace.require_ingested()
    repeated = [r.source for r in rules if r.action == "pseudonym" and r.source != table(name).primary_key]
    schema = arrow_schema(name)
    for column in repeated:
        index = schema.get_field_index(column)
        schema = schema.set(index, schema.field(index).with_type(pa.dictionary(pa.int32(), schema.field(index).type)))
    stored = ds.ParquetFileFormat(read_options=ds.ParquetReadOptions(dictionary_columns=repeated))
    return ds.dataset(workspace.verified(workspace.ingested(name)), format=stored, schema=schema)


def _check_written(name: str, read: int, written: int) -> None:
    if written != read:
        raise InternalError(f"the door read {read} rows of {name} but wrote {written}; this is a bug")
