"""The identity and portrait stages: who is one person across devices, and what their portrait is.

Both answer only for persons whose ``personalization`` consent holds at the run's as-of moment:

* identity: each person is one identity, with the devices on which no other account ever signed
  in and their first and last sign-in are 24 hours or more apart (only for persons who also allow
  ``cross_device_sync``); two accounts are never linked.
  Writes ``WS/outputs/identity/`` (``persons/``: person_id -> identity_id, ``devices/``: device_id
  -> identity_id) and ``WS/identity-report.json`` (devices per identity, shared devices).
* portraits: one row per identity (``profiling.portrait``'s data dictionary) to
  ``WS/outputs/portraits/``, with the dictionary beside it in ``_data_dictionary.json``. A person
  whose consent was revoked has no row after the next run: the folder is rebuilt whole.

The identity is one job on every engine: the allowed account-device edges go through
``Engine.connected_components`` (scipy locally, large-star/small-star on Spark).
The portraits are one job on every engine: the orders, waybills, events, persons and devices of
an identity are brought to one partition (``Engine.co_partition``: each row tagged with its
source and its identity, hash-partitioned by identity) and the portrait kernel runs there.
"""

from __future__ import annotations

import contextlib
import functools
import math

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from pipelines.engines import Broadcast, Engine, Kernel, LocalEngine, input_rows
from pipelines.workspace import Workspace
from profiling._string_hash import LazyStringIndex
from profiling.identity import _kernels as identity_kernels
from profiling.identity import identity_report
from profiling.portrait import (
    DEVICES_COLUMNS,
    PERSONS_COLUMNS,
    portrait_schema,
    portraits,
    write_data_dictionary,
)
from profiling.schema import TABLES, TIMESTAMP

__all__ = ["IDENTITY", "PORTRAITS", "ROWS_PER_PARTITION", "read_identity", "write_identity", "write_portraits"]

IDENTITY = "identity"
PORTRAITS = "portraits"
# At most this many rows (orders, waybills and device events) per partition of the portrait computation.
ROWS_PER_PARTITION = 20_000_000


def write_identity(workspace: Workspace, eligible: pa.Table, linking_persons: pa.Array, *,
                   engine: Engine | None = None) -> dict:
    """Build the identity graph of the ``eligible`` persons (``person_id`` column) on ``engine`` and write it;
    returns the report (counts only, also written to ``WS/identity-report.json``).

    Links are all the analytics zone's device events with a person signed in, whatever their time,
    with their ``event_at``: a device joins an identity only when one account ever signed in on it,
    its first and last sign-in there at least ``TRUSTED_AFTER`` (24 hours) apart, and that account is eligible and in
    ``linking_persons`` (``build_identity_graph`` states the rules and is the in-memory reference).
    On the engine: the events partitioned by device give each device's accounts and whether it is trusted,
    the allowed account-device edges go through ``Engine.connected_components``, and the persons
    meet their component by ``co_partition``; only the eligible persons allowed to link are broadcast,
    and only per-partition counts come back to the driver. Default engine: a local one spilling inside
    the workspace.
    """
    may_link = pc.unique(pc.filter(eligible.column("person_id"),
                                   pc.is_in(eligible.column("person_id"), value_set=linking_persons)))
    # rows: (person_id, cross_device_sync) of the eligible persons
    persons = pa.table({"person_id": eligible.column("person_id").cast(pa.string()),
                        "cross_device_sync": pc.is_in(eligible.column("person_id"), value_set=linking_persons)})
    with contextlib.ExitStack() as owned, workspace.staging() as stage:
        engine = engine or owned.enter_context(LocalEngine(workspace=workspace))
        allowed = engine.broadcast(may_link)
        events = engine.read(workspace.verified(workspace.pseudonymized("device_events")),
                             columns=["device_id", "person_id", "event_at"], key="device_id")
        # rows: (device_id, its only account or null, accounts, whether it is trusted), one per device
        devices = engine.map(events, Kernel(identity_kernels.device_accounts, identity_kernels.DEVICE_ACCOUNTS_SCHEMA,
                                            name="device_accounts"))
        edges = engine.map(devices, Kernel(lambda table: identity_kernels.identity_edges(table, allowed.value),
                                           identity_kernels.EDGE_SCHEMA, name="identity_edges", by_person=False))
        # rows: (vertex, component): accounts and devices, each component named by its least account
        components = engine.connected_components(edges)
        accounts = engine.map(components, Kernel(identity_kernels.account_identities,
                                                 identity_kernels.ACCOUNT_IDENTITY_SCHEMA, by_person=False))
        linked = engine.map(components, Kernel(identity_kernels.device_identities,
                                               identity_kernels.DEVICE_IDENTITY_ROWS, by_person=False))
        joined = engine.co_partition({"persons": engine.from_table(persons, key=None), "accounts": accounts},
                                     key="person_id")
        folder = stage / IDENTITY
        folder.mkdir()
        engine.save(engine.map(joined, Kernel(identity_kernels.person_identities,
                                              identity_kernels.PERSONS_OUTPUT_SCHEMA)), folder / "persons")
        engine.save(linked, folder / "devices")
        # rows: (devices, persons, identities) per partition; (shared_devices) per partition
        written = {name: engine.read(folder / name, columns=["identity_id"], key=None)
                   for name in ("persons", "devices")}
        sizes = engine.map(engine.co_partition(written, key="identity_id"),
                           Kernel(identity_kernels.identity_sizes, identity_kernels.IDENTITY_SIZES_SCHEMA))
        shared = engine.map(devices, Kernel(identity_kernels.shared_devices, identity_kernels.SHARED_SCHEMA,
                                            by_person=False))
        report = identity_report(engine.collect(sizes), pc.sum(engine.collect(shared).column(0)).as_py() or 0)
        workspace.publish({workspace.outputs(IDENTITY): folder},
                          reports={workspace.root / "identity-report.json": report})  # published together
    return report


def read_identity(workspace: Workspace) -> tuple[pa.Table, pa.Table]:
    """``(persons, devices)`` of the last identity stage: ``person_id, identity_id, cross_device_sync``
    and ``device_id, identity_id``."""
    folder = workspace.verified(workspace.outputs(IDENTITY))
    return (ds.dataset(folder / "persons", format="parquet").to_table(),
            ds.dataset(folder / "devices", format="parquet").to_table())


def _eligible_persons(eligible: pa.Table, identity: pa.Table) -> pa.Table:
    # rows: (person_id, identity_id, dnd, non_personalized, cross_device_sync)
    return eligible.join(identity.select(["person_id", "identity_id", "cross_device_sync"]), "person_id",
                         join_type="inner")


def write_portraits(workspace: Workspace, eligible: pa.Table, *, as_of, progress: bool = False,
                    rows_per_partition: int = ROWS_PER_PARTITION, engine: Engine | None = None) -> dict:
    """Compute the portraits of the ``eligible`` persons and replace ``WS/outputs/portraits/``.

    ``eligible``: ``person_id, dnd, non_personalized`` (PERSON pseudonyms), the persons whose
    personalization consent holds at ``as_of``; the identity stage must have run at the same
    moment. Runs on ``engine`` (default: a local engine spilling inside the workspace): the
    orders, waybills and events of eligible persons up to ``as_of``, their persons and devices
    rows are brought to one partition per identity (``Engine.co_partition``), at most
    ``rows_per_partition`` rows each and at least as many partitions as the engine picks, and the
    portrait kernel runs there. The portraits and their ``_data_dictionary.json`` are published
    together.
    """
    if as_of.tzinfo is None:
        raise ValueError(f"as_of {as_of} has no time zone; pass an aware datetime in UTC")
    identity_persons, identity_devices = read_identity(workspace)
    missing = pc.sum(pc.invert(pc.is_in(eligible.column("person_id"), identity_persons.column("person_id")))).as_py()
    if missing:
        raise ValueError(f"{missing} eligible persons are not in {workspace.outputs(IDENTITY)}; "
                         "run the identity stage at the same as-of moment first")
    persons = _eligible_persons(eligible, identity_persons)
    device_types = ds.dataset(workspace.verified(workspace.pseudonymized("devices")), format="parquet").to_table(
        columns=["device_id", "device_type"])
    devices = identity_devices.join(device_types, "device_id", join_type="inner")
    sources = {name: workspace.verified(workspace.pseudonymized(name)) for name in _ACTIVITY_SOURCES}
    rows = sum(ds.dataset(folder, format="parquet").count_rows() for folder in sources.values())
    with contextlib.ExitStack() as owned, workspace.staging() as stage:
        engine = engine or owned.enter_context(LocalEngine(workspace=workspace, progress=progress))
        partitions = max(engine.default_partitions(rows), math.ceil(rows / rows_per_partition))
        identities = engine.broadcast((persons.column("person_id").combine_chunks(),
                                       persons.column("identity_id").combine_chunks()))
        inputs = {name: engine.map(engine.read(folder, columns=_activity_columns(name), key=None),
                                   _activity_kernel(name, folder, identities, as_of))
                  for name, folder in sources.items()}
        # rows: (identity_id, at, the source's columns) of eligible persons up to as_of, as stored
        inputs["persons"] = engine.from_table(persons.select(list(PERSONS_COLUMNS)), key=None)
        inputs["devices"] = engine.from_table(devices.select(list(DEVICES_COLUMNS)), key=None)
        activity = engine.co_partition(inputs, key="identity_id", partitions=partitions)
        # rows: (source, identity_id, at, every source's columns), one identity's rows in one partition
        # (person_id only on the persons' rows)
        folder = stage / PORTRAITS
        engine.save(engine.map(activity, Kernel(functools.partial(portrait_kernel, as_of=as_of), portrait_schema(),
                                                name="portraits")), folder)
        written = ds.dataset(folder, format="parquet").count_rows()
        write_data_dictionary(folder)
        workspace.publish({workspace.outputs(PORTRAITS): folder})
    return {"stage": "portraits", "table": PORTRAITS, "rows": written, "persons": persons.num_rows,
            "partitions": partitions, "engine": engine.name}


# source -> (time column: the time of its events, as retention counts it; the other columns portraits read)
_ACTIVITY_SOURCES = {name: (TABLES[name].retention.column, other) for name, other in (
    ("orders", ("amount", "currency", "payment_institution", "category")),
    ("waybills", ("service_type", "origin_province", "destination_province", "weight_kg", "cross_border")),
    ("device_events", ()))}


def _activity_columns(source: str) -> list[str]:
    times, other = _ACTIVITY_SOURCES[source]
    return ["person_id", times, *other]


def _activity_kernel(source: str, folder, identities: Broadcast[tuple[pa.Array, pa.Array]], as_of) -> Kernel:
    """Kernel (not per person): stored rows of ``source`` -> those of eligible persons up to ``as_of``, with
    their identity and the time column named ``at``."""
    times, other = _ACTIVITY_SOURCES[source]
    stored = ds.dataset(folder, format="parquet").schema
    schema = pa.schema([pa.field("identity_id", pa.string()), pa.field("at", TIMESTAMP),
                        *(pa.field(c, stored.field(c).type) for c in other)])
    until = pa.scalar(as_of, TIMESTAMP)
    persons = LazyStringIndex(lambda: identities.value[0])

    def activity(table: pa.Table) -> pa.Table:
        identity_ids = identities.value[1]
        position = persons.positions(table.column("person_id"))
        kept = (position >= 0) & pc.less_equal(table.column(times), until).fill_null(False).to_numpy(
            zero_copy_only=False)
        # rows: (time, other) of eligible persons up to as_of, each with its identity (the person is not needed)
        table = table.select([times, *other]).filter(pa.array(kept))
        identity = identity_ids.take(pa.array(position[kept]))
        return pa.table([identity, *(table.column(c) for c in [times, *other])], schema=schema)

    return Kernel(activity, schema, name=f"{source}_by_identity", by_person=False)


def portrait_kernel(activity: pa.Table, *, as_of) -> pa.Table:
    """Portraits of the identities in one partition of ``Engine.co_partition``'s rows (an engine kernel):
    ``source`` says which of orders, waybills, device_events, persons, devices each row is."""
    def rows(source: str, columns: list[str], times: str | None = None) -> pa.Table:
        part = input_rows(activity, source, columns=columns)
        return part.rename_columns([times if c == "at" and times else c for c in columns])

    tables = {name: rows(name, ["identity_id", "at", *other], times)
              for name, (times, other) in _ACTIVITY_SOURCES.items()}
    return portraits(rows("persons", list(PERSONS_COLUMNS)), rows("devices", list(DEVICES_COLUMNS)),
                     tables["orders"], tables["waybills"], tables["device_events"], as_of=as_of)
