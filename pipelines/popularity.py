"""The item popularity release: how many persons bought each catalogue item, differentially private.

Non-personalized recommendation lists rank items by this release when there is one, so nothing of
any one person's history shapes what others are shown beyond what epsilon allows; without one
they are ranked by the catalogue's listing date, which uses no personal data. Reads only the analytics zone
and only the orders of persons the consent gate lets through for ``product_improvement``, placed
before the as-of moment; writes ``WS/outputs/popularity/`` (item_id, buyers, buyers_ci95). The
release runs on an engine (``pipelines.engine_jobs.release_item_buyers``), locally or on Spark.

Privacy: epsilon-DP per person (the bounding of ``dp.PrivateSession``: each person counts at most once
per item and for at most ``ITEMS_PER_PERSON`` items, taken in purchase order; the catalogue's item ids are public keys, so no key is
selected from the data). The release is charged to the ``orders`` budget of the workspace's
ledger before it is computed; without a budget, or with too little left, nothing is released
and the previous release (if any) stays in place.

With a continual schedule named ``popularity`` (``portrait budget schedule``, see
``dp.continual``), the job instead releases each day's cumulative buyers per item since the
schedule's start through the schedule's tree counter: the whole horizon was charged once, a
day's release charges nothing, and each person counts for at most ``ITEMS_PER_PERSON`` items
over the whole horizon (their first ones in purchase order since the start; later purchases
count zero). The release records its schedule, day and day's release id in its Parquet schema
metadata (``portrait.popularity_schedule``, ``portrait.popularity_day``,
``portrait.popularity_release``). A day already released, a day past the horizon or a changed
catalogue releases nothing and keeps the previous release.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from dp import BudgetLedger
from dp._bounding import GroupCodes, bound_contributions, encode_persons
from dp.continual import ContinualCounter, ScheduleError
from pipelines.engines._protocol import Broadcast, Engine, Frame, Kernel
from pipelines.workspace import Workspace
from profiling.errors import WorkspaceError

__all__ = ["DAILY_COUNTS_SCHEMA", "DATASET", "EPSILON", "ITEMS_PER_PERSON", "POPULARITY_SCHEMA", "PURPOSE",
           "SCHEDULE", "daily_bounded_counts_kernel", "popularity_release_id", "popularity_schedule",
           "read_popularity", "release_scheduled_popularity", "write_popularity"]

DATASET = "orders"
PURPOSE = "product_improvement"
EPSILON = 0.1          # charged per run
ITEMS_PER_PERSON = 5   # distinct items a person's purchases count for (over a schedule's whole horizon)
SCHEDULE = "popularity"  # the name of the continual schedule the job releases through, when there is one
PURCHASE_ORDER = ("placed_at", "order_id", "position")

POPULARITY_SCHEMA = pa.schema([pa.field("item_id", pa.string(), nullable=False), pa.field("buyers", pa.float64()),
                     pa.field("buyers_ci95", pa.float64())])


def read_popularity(workspace: Workspace) -> pd.Series | None:
    """The latest popularity release as noisy buyers by item_id, or None when there is none."""
    folder = workspace.outputs("popularity")
    if not folder.is_dir():
        return None
    table = ds.dataset(workspace.verified(folder), format="parquet").to_table()
    return pd.Series(table.column("buyers").to_numpy(), index=table.column("item_id").to_pylist(), name="buyers")


def _metadata(workspace: Workspace) -> dict[str, str]:
    schema = ds.dataset(workspace.verified(workspace.outputs("popularity")), format="parquet").schema
    return {k.decode(): v.decode() for k, v in (schema.metadata or {}).items() if k.startswith(b"portrait.")}


def popularity_release_id(workspace: Workspace) -> str | None:
    """The budget ledger's release id of the popularity release in place, or None when there is none.

    It is the latest released charge of the ``orders`` dataset for ``product_improvement`` grouped by
    item: a release is published right after its charge is marked released, and a refused one
    charges nothing and leaves the previous release in place. Raises ``WorkspaceError`` when a
    release is in place but the ledger holds no such charge.
    """
    if not workspace.outputs("popularity").is_dir():
        return None
    schedule = _metadata(workspace).get("portrait.popularity_schedule")
    if schedule is not None:
        return schedule          # the schedule's id is the release id of its one charge
    charges = [c for c in BudgetLedger(workspace.ledger).charges(DATASET)
               if c["purpose"] == PURPOSE and c["released_at"] and "item_id" in (c["query"] or "")]
    if not charges:
        raise WorkspaceError(f"{workspace.outputs('popularity')} holds a popularity release but the budget ledger "
                             f"has no released {PURPOSE} charge of dataset {DATASET!r} for it; remove the folder "
                             f"and run the popularity stage again with a budget")
    return charges[-1]["release_id"]


def popularity_schedule(workspace: Workspace) -> ContinualCounter | None:
    """The latest continual schedule ``popularity`` of the ``orders`` budget, or None when there is none."""
    return ContinualCounter.latest(BudgetLedger(workspace.ledger), SCHEDULE, DATASET)


def write_popularity(workspace: Workspace, frame: pd.DataFrame, metadata: dict[str, str] | None = None) -> None:
    """Publish ``(item_id, count, count_ci95)`` as ``WS/outputs/popularity/`` (atomically), with ``metadata``."""
    released = pa.table({"item_id": pa.array(frame["item_id"].astype(str), pa.string()),
                         "buyers": pa.array(frame["count"], pa.float64()),
                         "buyers_ci95": pa.array(frame["count_ci95"], pa.float64())}, schema=POPULARITY_SCHEMA)
    if metadata:
        released = released.replace_schema_metadata({f"portrait.{k}": str(v) for k, v in metadata.items()})
    with workspace.staging() as stage:
        folder = stage / "popularity"
        folder.mkdir()
        pq.write_table(released, folder / "part-0.parquet")
        workspace.publish({workspace.outputs("popularity"): folder})


DAILY_COUNTS_SCHEMA = pa.schema([pa.field("key_index", pa.int32(), nullable=False),
                                 pa.field("day", pa.int32(), nullable=False),
                                 pa.field("count", pa.int64(), nullable=False)])


def daily_bounded_counts_kernel(*, person: str, group: str, keys: Broadcast[pa.Array], start: dt.datetime,
                                days: int, order_by: Sequence[str], max_partitions: int) -> Kernel:
    """Kernel: a partition's rows (person, group, placed_at, *order_by) -> bounded counts per (key, day)
    (``DAILY_COUNTS_SCHEMA``; day 1 is ``[start, start + 1 day)``), for days 1..``days``.

    The bound holds over the whole horizon: rows before ``start`` or from ``days`` on are dropped
    first, then each person keeps their first ``max_partitions`` distinct keys in (person,
    *order_by) order, once each (``dp._bounding``), and each kept row counts on its own day. So
    a person counts at most ``max_partitions`` times over all days together, and which rows are
    kept on day d depends only on that person's rows up to day d (while past rows stay as they
    are, a later run counts the same rows for the same days; ``dp.continual`` says why late rows
    cannot count a person twice). Exact counts, not private: only a ``ContinualCounter`` lets them out.
    """
    first = pa.scalar(start.astimezone(dt.UTC), type=pa.timestamp("us", tz="UTC"))
    end = pa.scalar((start + dt.timedelta(days=days)).astimezone(dt.UTC), type=pa.timestamp("us", tz="UTC"))
    day_us, start_us = 86_400_000_000, _micros(start)

    def daily_counts(table: pa.Table) -> pa.Table:
        placed = table.column("placed_at").cast(pa.timestamp("us", tz="UTC"))
        table = table.filter(pc.and_(pc.greater_equal(placed, first), pc.less(placed, end)))
        table = table.sort_by([(person, "ascending"), *((column, "ascending") for column in order_by)])
        # rows: (person, group, placed_at, ...) in the horizon, sorted by person, then purchase order
        public = keys.value
        codes = pc.index_in(table.column(group), value_set=public).fill_null(-1).to_numpy(zero_copy_only=False)
        bounded = bound_contributions(encode_persons(table.column(person)), GroupCodes.of(codes, len(public)),
                                      max_partitions=max_partitions, max_rows_per_partition=1)
        micros = table.column("placed_at").cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy(
            zero_copy_only=False)
        day = ((micros[bounded.kept] - start_us) // day_us + 1).astype(np.int64)
        cell = codes[bounded.kept].astype(np.int64) * (days + 1) + day
        present, counts = np.unique(cell, return_counts=True)
        # rows: (key_index, day, bounded count) for the cells this partition's persons count in
        return pa.table({"key_index": pa.array((present // (days + 1)).astype(np.int32)),
                         "day": pa.array((present % (days + 1)).astype(np.int32)),
                         "count": pa.array(counts.astype(np.int64))}, schema=DAILY_COUNTS_SCHEMA)

    return Kernel(daily_counts, DAILY_COUNTS_SCHEMA, name="daily_bounded_counts")


def _micros(moment: dt.datetime) -> int:
    return int((moment.astimezone(dt.UTC) - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) / dt.timedelta(microseconds=1))


def release_scheduled_popularity(engine: Engine, workspace: Workspace, bought: Frame, counter: ContinualCounter,
                                 keys: Sequence[str], as_of: dt.datetime) -> dict:
    """Release the cumulative buyers per item of the last whole day before ``as_of`` through ``counter``.

    ``bought`` holds one row per item bought (``pipelines.engine_jobs.PURCHASES_SCHEMA``) by a
    gated person, partitioned by person. Nothing is charged (the schedule's horizon was). Returns
    a summary row of public figures only; its note says why nothing was released when the
    schedule refuses (day 1 not over, the day already released, past the horizon, catalogue changed).
    """
    summary = {"stage": "popularity", "table": "popularity", "rows": 0, "epsilon": 0.0, "engine": engine.name}
    day = counter.day_of(as_of)
    released = [d["day"] for d in counter.released_days()]
    where = f"schedule {SCHEDULE!r} ({counter.schedule_id})"
    if day == 0:
        return {**summary, "note": f"{where} starts {counter.start.isoformat()}: its day 1 has not ended"}
    if released and day <= released[-1]:
        return {**summary, "note": f"{where} released day {released[-1]} already; the release in place is kept"}
    try:
        counter.check_day(day)
        counter.check_keys(keys)
        kernel = daily_bounded_counts_kernel(person=bought.key, group="item_id", keys=engine.broadcast(pa.array(keys)),
                                             start=counter.start, days=day, order_by=PURCHASE_ORDER,
                                             max_partitions=counter.record["max_keys_per_person"])
        partial = engine.collect(engine.map(bought, kernel))
        # rows: (key_index, day, count), one per partition and cell it counts in
        daily = np.zeros((day, len(keys)), dtype=np.int64)
        np.add.at(daily, (partial.column("day").to_numpy() - 1, partial.column("key_index").to_numpy()),
                  partial.column("count").to_numpy())
        release = counter.release(day, daily, keys)
    except ScheduleError as refusal:
        return {**summary, "note": str(refusal).splitlines()[0]}
    write_popularity(workspace, release.counts, {"popularity_schedule": counter.schedule_id,
                                                 "popularity_day": release.day,
                                                 "popularity_release": release.release_id})
    # public figures only: one row per catalogue item, the schedule's day (no count of persons)
    return {**summary, "rows": len(keys),
            "note": f"{where} day {release.day} of {counter.shape.horizon} (charged once at creation; "
                    f"95% half-width {release.counts['count_ci95'].iloc[0]:.3g})"}
