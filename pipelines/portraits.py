"""The identity and portrait stages: who is one person across devices, and what their portrait is.

Both answer only for persons whose ``personalization`` consent holds at the run's as-of moment:

* identity: each person is one identity, with the devices on which no other account ever signed
  in (only for persons who also allow ``cross_device_sync``); two accounts are never linked.
  Writes ``WS/outputs/identity/`` (``persons/``: person_id -> identity_id, ``devices/``: device_id
  -> identity_id) and ``WS/identity-report.json`` (devices per identity, shared devices).
* portraits: one row per identity (``profiling.portrait``'s data dictionary) to
  ``WS/outputs/portraits/``, with the dictionary beside it in ``_data_dictionary.json``. A person
  whose consent was revoked has no row after the next run: the folder is rebuilt whole.

The portrait kernel is the same on every engine. Locally the analytics zone streams into one
``PortraitBuilder`` (which partitions by identity itself); on Spark the orders, waybills, events,
persons and devices of an identity are brought to one partition (a union of the five, each row
tagged with its source and its identity, repartitioned by identity) and the kernel runs there.
"""

from __future__ import annotations

import functools
import json
import math

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from pipelines.engines import Engine, Kernel
from pipelines.engines._optional import import_optional
from pipelines.workspace import Workspace, write_json_atomic
from profiling.identity import IdentityGraph, build_identity_graph
from profiling.portrait import (
    DEVICES_COLUMNS,
    PERSONS_COLUMNS,
    SOURCE_COLUMNS,
    PortraitBuilder,
    data_dictionary,
    portrait_schema,
    portraits,
    spill_folder,
)
from profiling.schema import TIMESTAMP

__all__ = ["IDENTITY", "PORTRAITS", "ROWS_PER_PARTITION", "read_identity", "write_identity", "write_portraits"]

IDENTITY = "identity"
PORTRAITS = "portraits"
# Orders per partition of the portrait computation (about 22 bytes each while it runs).
ROWS_PER_PARTITION = 20_000_000
_BATCH_ROWS = 1 << 18



def write_identity(workspace: Workspace, eligible: pa.Table, linking_persons: pa.Array) -> IdentityGraph:
    """Build the identity graph of the ``eligible`` persons (``person_id`` column) and write it.

    Links are all the analytics zone's device events with a person signed in, whatever their time:
    a device joins an identity only when one account ever signed in on it (``build_identity_graph``).
    """
    links = ds.dataset(workspace.verified(workspace.pseudonymized("device_events")), format="parquet").to_table(
        columns=["device_id", "person_id"], filter=pc.field("person_id").is_valid())
    graph = build_identity_graph(links, eligible.column("person_id"), linking_persons)
    # rows: (person_id, identity_id, cross_device_sync)
    persons = graph.persons.append_column("cross_device_sync",
                                          pc.is_in(graph.persons.column("person_id"), value_set=linking_persons))
    with workspace.staging() as stage:
        for name, table in (("persons", persons), ("devices", graph.devices)):
            (stage / IDENTITY / name).mkdir(parents=True)
            pq.write_table(table, stage / IDENTITY / name / "part-00000.parquet")
        workspace.publish({workspace.outputs(IDENTITY): stage / IDENTITY})
    write_json_atomic(workspace.root / "identity-report.json", graph.report)
    return graph


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
    moment. Reads the analytics zone in batches; partitions the work (spilling encoded rows
    inside the workspace) when there are more than ``rows_per_partition`` orders. With a Spark
    ``engine`` the same kernel runs per identity partition on Spark.
    """
    identity_persons, identity_devices = read_identity(workspace)
    missing = pc.sum(pc.invert(pc.is_in(eligible.column("person_id"), identity_persons.column("person_id")))).as_py()
    if missing:
        raise ValueError(f"{missing} eligible persons are not in {workspace.outputs(IDENTITY)}; "
                         "run the identity stage at the same as-of moment first")
    persons = _eligible_persons(eligible, identity_persons)
    device_types = ds.dataset(workspace.verified(workspace.pseudonymized("devices")), format="parquet").to_table(
        columns=["device_id", "device_type"])
    devices = identity_devices.join(device_types, "device_id", join_type="inner")
    sources = {name: ds.dataset(workspace.verified(workspace.pseudonymized(name)), format="parquet")
               for name in ("orders", "waybills", "device_events")}
    partitions = max(1, math.ceil(sources["orders"].count_rows() / rows_per_partition))
    if engine is not None and engine.name == "spark":
        written = _portraits_on_spark(engine, workspace, persons, devices, as_of=as_of)
        return {"stage": "portraits", "table": PORTRAITS, "rows": written, "persons": persons.num_rows,
                "partitions": engine.partitions or "spark default", "engine": "spark"}
    written = 0
    with workspace.staging() as stage, spill_folder(stage) as spill:
        builder = PortraitBuilder(persons, devices, as_of=as_of, partitions=partitions,
                                  spill_dir=spill if partitions > 1 else None)
        adders = {"orders": builder.add_orders, "waybills": builder.add_waybills,
                  "device_events": builder.add_device_events}
        total = sum(dataset.count_rows() for dataset in sources.values())
        with tqdm(total=total, desc="portraits", unit=" rows", unit_scale=True, disable=not progress) as bar:
            for name, dataset in sources.items():
                # file by file: a dataset scan decodes ahead of a slower consumer and grows with the input
                for path in dataset.files:
                    for batch in pq.ParquetFile(path).iter_batches(batch_size=_BATCH_ROWS,
                                                                  columns=list(SOURCE_COLUMNS[name])):
                        adders[name](batch)
                        bar.update(batch.num_rows)
        folder = stage / PORTRAITS
        folder.mkdir()
        with pq.ParquetWriter(folder / "part-00000.parquet", portrait_schema()) as writer:
            for table in builder.tables():
                writer.write_table(table)
                written += table.num_rows
        (folder / "_data_dictionary.json").write_text(json.dumps(data_dictionary(), indent=2) + "\n",
                                                      encoding="utf-8")
        workspace.publish({workspace.outputs(PORTRAITS): folder})
    return {"stage": "portraits", "table": PORTRAITS, "rows": written, "persons": persons.num_rows,
            "partitions": partitions}


# rows: (identity_id, source, then the columns of every source; a source's rows leave the others' null)
_ACTIVITY_SCHEMA = pa.schema([
    ("identity_id", pa.string()), ("source", pa.string()), ("person_id", pa.string()), ("at", TIMESTAMP),
    ("amount", pa.float64()), ("currency", pa.string()), ("payment_institution", pa.string()),
    ("category", pa.string()), ("service_type", pa.string()), ("origin_province", pa.string()),
    ("destination_province", pa.string()), ("weight_kg", pa.float64()), ("cross_border", pa.bool_()),
    ("dnd", pa.bool_()), ("non_personalized", pa.bool_()), ("cross_device_sync", pa.bool_()),
    ("device_id", pa.string()), ("device_type", pa.string()),
])
_ACTIVITY_SOURCES = {  # source -> (time column, other columns)
    "orders": ("placed_at", ("amount", "currency", "payment_institution", "category")),
    "waybills": ("created_at", ("service_type", "origin_province", "destination_province", "weight_kg",
                                "cross_border")),
    "device_events": ("event_at", ()),
}


def portrait_kernel(activity: pa.Table, *, as_of) -> pa.Table:
    """Portraits of the identities in one partition of ``_ACTIVITY_SCHEMA`` rows (an engine kernel)."""
    def rows(source: str, columns: list[str], times: str | None = None) -> pa.Table:
        part = activity.filter(pc.equal(activity.column("source"), source)).select(columns)
        return part.rename_columns([times if c == "at" and times else c for c in columns])

    tables = {name: rows(name, ["person_id", "at", *other], times)
              for name, (times, other) in _ACTIVITY_SOURCES.items()}
    return portraits(rows("persons", list(PERSONS_COLUMNS)), rows("devices", list(DEVICES_COLUMNS)),
                     tables["orders"], tables["waybills"], tables["device_events"], as_of=as_of)


def _portraits_on_spark(engine: Engine, workspace: Workspace, persons: pa.Table, devices: pa.Table, *,
                        as_of) -> int:
    spark = engine.spark
    functions = import_optional("pyspark.sql.functions", extra="spark", purpose="portraits on Spark")
    identity = spark.createDataFrame(persons.select(["person_id", "identity_id"]))
    parts = []
    for name, (times, other) in _ACTIVITY_SOURCES.items():
        # rows: (person_id, at, other) of eligible persons only: the inner join drops everyone else
        frame = spark.read.parquet(str(workspace.pseudonymized(name))).select(
            "person_id", functions.col(times).alias("at"), *other)
        parts.append(frame.join(functions.broadcast(identity), "person_id").withColumn("source", functions.lit(name)))
    parts.append(spark.createDataFrame(persons).withColumn("source", functions.lit("persons")))
    parts.append(spark.createDataFrame(devices.select(list(DEVICES_COLUMNS))).withColumn(
        "source", functions.lit("devices")))
    activity = parts[0]
    for part in parts[1:]:
        activity = activity.unionByName(part, allowMissingColumns=True)
    activity = activity.select(*[functions.col(f.name) for f in _ACTIVITY_SCHEMA])
    frame = engine.from_dataframe(activity, key="identity_id", schema=_ACTIVITY_SCHEMA)
    kernel = Kernel(functools.partial(portrait_kernel, as_of=as_of), portrait_schema(), name="portraits")
    spark.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
    destination = engine.write(engine.map(frame, kernel), workspace, PORTRAITS)
    (destination / "_data_dictionary.json").write_text(json.dumps(data_dictionary(), indent=2) + "\n",
                                                       encoding="utf-8")
    return ds.dataset(destination, format="parquet").count_rows()
