"""Jobs written once on the engine protocol (``pipelines.engines``): DP counts per public key, the popularity
release, and top-K scoring.

A job is a few kernels and a reduce. Adding one (e.g. portrait features) is a function from a
partition table to a table, wrapped in ``Kernel(function, schema, name=...)`` and mapped with
``engine.map``; whatever it needs from the driver goes through ``engine.broadcast``.

DP counts (``release_group_counts``): each partition bounds its persons' contributions with
``dp._bounding`` (the rule ``PrivateSession`` applies: first rows in order, at most
``max_partitions`` groups and ``max_rows_per_partition`` rows per group per person) and emits
its bounded counts per key; the driver sums them, charges the ledger once and draws the noise
once (a ``dp.QueryPlan``, compiled before the job runs and charged after the reduce). Bounding
per partition equals bounding the whole table because every
person is in exactly one partition (checked by every call, see ``Kernel.by_person``) and the
kept rows of a person depend only on that person's rows in (person, ``order_by``) order.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import scipy.sparse as sp

from dp import KeySet
from dp._bounding import GroupCodes, bound_contributions, encode_persons
from dp._errors import BudgetExceededError, BudgetNotSetError
from dp._parameters import check_positive_int
from dp.budget import DEFAULT_PERIOD, BudgetLedger
from dp.plan import BoundedTotals, QueryPlan
from pipelines.engines._protocol import Broadcast, Engine, Frame, Kernel
from pipelines.popularity import (
    DATASET,
    EPSILON,
    ITEMS_PER_PERSON,
    PURCHASE_ORDER,
    popularity_schedule,
    release_scheduled_popularity,
    write_popularity,
)
from pipelines.workspace import Workspace
from profiling._string_hash import LazyStringIndex
from profiling.checks import check_int
from profiling.scoring import TOP_K_SCHEMA, ItemEligibility, top_k_batches

__all__ = ["BOUNDED_COUNTS_SCHEMA", "PURCHASES_SCHEMA", "bounded_counts_kernel", "purchases_kernel",
           "release_group_counts", "release_item_buyers", "score_top_k", "top_k_kernel"]

BOUNDED_COUNTS_SCHEMA = pa.schema([pa.field("key_index", pa.int32(), nullable=False),
                                   pa.field("count", pa.int64(), nullable=False)])


def _ordered(table: pa.Table, person: str, order_by: Sequence[str]) -> pa.Table:
    """The partition grouped by person, each person's rows in ``order_by`` order (Arrow's sort is stable),
    whatever order the engine gave it. Persons come in order of first appearance: only the grouping
    matters to the bounding, and sorting on their dictionary codes spares comparing pseudonyms."""
    sort_keys = pa.table({"person_code": pc.dictionary_encode(table.column(person).combine_chunks()).indices,
                          **{column: table.column(column) for column in order_by}})
    order = pc.sort_indices(sort_keys, sort_keys=[(name, "ascending") for name in sort_keys.column_names])
    del sort_keys  # the codes go before the rows are copied in order
    return table.take(order)


def bounded_counts_kernel(*, person: str, group: str, keys: Broadcast[pa.Array], order_by: Sequence[str] = (),
                          max_partitions: int, max_rows_per_partition: int) -> Kernel:
    """Kernel: a partition's rows (person, group, *order_by) -> its bounded row count per key
    (``BOUNDED_COUNTS_SCHEMA``).

    ``keys`` (broadcast) are the public keys; rows of another group are not counted. Rows are
    visited in (person, *order_by) order: give ``order_by`` columns that order each person's
    rows completely (ties keep the engine's order, which differs between engines).
    Exact counts, not private: only ``release_group_counts`` lets them out, noised.
    """
    order_by = tuple(order_by)
    max_partitions = check_positive_int(max_partitions, "max_partitions")
    max_rows_per_partition = check_positive_int(max_rows_per_partition, "max_rows_per_partition")

    def bounded_counts(table: pa.Table) -> pa.Table:
        table = _ordered(table, person, order_by)
        # rows: (person, group, *order_by) sorted by person, then order_by
        public = keys.value
        codes = pc.index_in(table.column(group), value_set=public).fill_null(-1).to_numpy(zero_copy_only=False)
        bounded = bound_contributions(encode_persons(table.column(person)), GroupCodes.of(codes, len(public)),
                                      max_partitions=max_partitions, max_rows_per_partition=max_rows_per_partition)
        present = np.flatnonzero(bounded.counts)
        # rows: (key_index, bounded count) for the keys this partition's persons count for
        return pa.table({"key_index": pa.array(present.astype(np.int32)),
                         "count": pa.array(bounded.counts[present].astype(np.int64))}, schema=BOUNDED_COUNTS_SCHEMA)

    return Kernel(bounded_counts, BOUNDED_COUNTS_SCHEMA, name="bounded_counts")


def _bounded_totals(engine: Engine, frame: Frame, *, person: str, group: str, keys: Sequence, order_by: Sequence[str],
                    max_partitions: int, max_rows_per_partition: int) -> np.ndarray:
    """Exact bounded count per key (int64, in ``keys``' order), summed over partitions. Not private."""
    public = pa.array(list(keys))
    kernel = bounded_counts_kernel(person=person, group=group, keys=engine.broadcast(public), order_by=order_by,
                                   max_partitions=max_partitions, max_rows_per_partition=max_rows_per_partition)
    partial = engine.collect(engine.map(frame, kernel))
    # rows: (key_index, count), one per partition and key it counts for
    totals = np.zeros(len(public), dtype=np.int64)
    np.add.at(totals, partial.column("key_index").to_numpy(), partial.column("count").to_numpy())
    return totals


def _count_plan(columns: pa.Schema, privacy_unit: str, *, dataset: str, group: str, keys: Sequence,
                epsilon: float | None, delta: float, rho: float | None, mechanism: str, max_partitions: int,
                max_rows_per_partition: int, accounts_per_human: int) -> QueryPlan:
    """The plan of ``release_group_counts`` over rows with ``columns``, before it is compiled (nothing charged)."""
    return (QueryPlan.start(columns=columns, privacy_unit=privacy_unit, source=f"dataset {dataset!r}",
                            epsilon=epsilon, delta=delta, rho=rho, mechanism=mechanism,
                            accounts_per_human=accounts_per_human)
            .group_by(group, keys=keys).bound(max_partitions=max_partitions,
                                              max_rows_per_partition=max_rows_per_partition).count())


def release_group_counts(engine: Engine, frame: Frame, *, group: str, keys: Sequence, ledger: BudgetLedger,
                         dataset: str, purpose: str, epsilon: float | None = None, delta: float = 0.0,
                         rho: float | None = None, mechanism: str = "laplace", max_partitions: int = 1,
                         max_rows_per_partition: int = 1, order_by: Sequence[str] = (), analyst: str | None = None,
                         period: str = DEFAULT_PERIOD, accounts_per_human: int = 1) -> pd.DataFrame:
    """Noisy count of rows per public key of ``group``, with person-level bounding; ``(group, count, count_ci95)``.

    ``frame`` is partitioned by its privacy unit (``frame.key``: the person, or ``identity_id`` for rows
    attributed by ``dp.units.attach_identity``; person-keyed tables such as orders are their identity's
    already, since the identity graph never links two accounts). ``accounts_per_human=k``: any k units
    together get the claimed loss (the charge records it). Privacy: as
    ``PrivateSession.query(...).group_by(group, keys).bound(...).count()`` (epsilon-DP per
    person, or as the budget is kept), with the same charge: validated before anything runs,
    charged to ``ledger`` once, after the bounded totals are reduced and immediately before
    the noise, which is drawn once on the driver. Same result distribution on every engine.
    """
    if frame.key is None:
        raise ValueError("release_group_counts needs a frame partitioned by the person key; read it with key=...")
    plan = _count_plan(frame.schema, frame.key, dataset=dataset, group=group, keys=keys, epsilon=epsilon, delta=delta,
                       rho=rho, mechanism=mechanism, max_partitions=max_partitions,
                       max_rows_per_partition=max_rows_per_partition, accounts_per_human=accounts_per_human)
    compiled = plan.compile(ledger=ledger, dataset=dataset, purpose=purpose, analyst=analyst, period=period)
    totals = _bounded_totals(engine, frame, person=frame.key, group=group, keys=[key for key, in plan.keys.rows],
                             order_by=order_by, max_partitions=max_partitions,
                             max_rows_per_partition=max_rows_per_partition)
    return compiled.release(BoundedTotals(counts=totals))


PURCHASES_SCHEMA = pa.schema([pa.field("person_id", pa.string()), pa.field("item_id", pa.string()),
                              pa.field("placed_at", pa.timestamp("us", tz="UTC")), pa.field("order_id", pa.string()),
                              pa.field("position", pa.int32())])


def purchases_kernel(*, persons: Broadcast[pa.Array], before: dt.datetime) -> Kernel:
    """Kernel: a partition of orders (person_id, order_id, placed_at, items) -> one row per item bought
    (``PURCHASES_SCHEMA``) by one of ``persons`` (broadcast) before ``before``; ``position`` is the item's
    place in its order, so (placed_at, order_id, position) orders a person's purchases completely."""
    before_scalar = pa.scalar(before.astimezone(dt.UTC), type=pa.timestamp("us", tz="UTC"))
    gated_persons = LazyStringIndex(lambda: pc.unique(persons.value).drop_null())

    def purchases(table: pa.Table) -> pa.Table:
        gated = gated_persons.positions(table.column("person_id")) >= 0
        table = table.filter(pa.array(gated & pc.less(table.column("placed_at"), before_scalar).fill_null(False)
                                      .to_numpy(zero_copy_only=False)))
        # rows: (person_id, order_id, placed_at, items) of gated persons before the as-of moment
        items = table.column("items").combine_chunks()
        parents = pc.list_parent_indices(items)
        owner = parents.to_numpy()            # ascending: each order's items are consecutive
        position = np.arange(len(owner)) - np.searchsorted(owner, owner, side="left")
        return pa.table({"person_id": table.column("person_id").take(parents),
                         "item_id": pc.list_flatten(items),
                         "placed_at": table.column("placed_at").take(parents).cast(PURCHASES_SCHEMA.field(2).type),
                         "order_id": table.column("order_id").take(parents),
                         "position": pa.array(position.astype(np.int32))}, schema=PURCHASES_SCHEMA)

    return Kernel(purchases, PURCHASES_SCHEMA, name="purchases")


def release_item_buyers(engine: Engine, workspace: Workspace, persons: pa.Array, as_of: dt.datetime, *,
                        epsilon: float = EPSILON, analyst: str = "portrait run", partitions: int | None = None) -> dict:
    """Release buyers per catalogue item among ``persons`` (PERSON pseudonyms); return a summary row.

    The summary holds nothing computed from persons: the catalogue's size, the epsilon, the budget left.

    The release of ``pipelines.popularity`` (``orders`` budget, purpose ``product_improvement``: epsilon-DP
    per person, each person counting once per item for at most ``ITEMS_PER_PERSON`` items), written to
    ``WS/outputs/popularity/``. A person's items are taken in purchase order (placed_at, order_id,
    place in the order), whatever order the orders are stored in. The summary says why nothing
    was released when the budget refuses. With a continual schedule (``popularity_schedule``) the
    day's cumulative buyers are released through it instead, charging nothing
    (``pipelines.popularity.release_scheduled_popularity``).
    """
    if isinstance(persons, pa.ChunkedArray):
        persons = persons.combine_chunks()
    catalogue = ds.dataset(workspace.verified(workspace.pseudonymized("catalogue")), format="parquet").to_table(columns=["item_id"])
    keys = catalogue.column("item_id").to_pylist()
    item_keys = KeySet.from_dict({"item_id": keys})  # checked once, for both plans below
    schedule = popularity_schedule(workspace)
    if schedule is None:
        try:  # a release the budget refuses is refused before a single order is read
            _count_plan(PURCHASES_SCHEMA, "person_id", dataset=DATASET, group="item_id", keys=item_keys, epsilon=epsilon,
                        delta=0.0, rho=None, mechanism="laplace", max_partitions=ITEMS_PER_PERSON,
                        max_rows_per_partition=1, accounts_per_human=1).compile(
                ledger=BudgetLedger(workspace.ledger), dataset=DATASET, purpose="product_improvement", analyst=analyst)
        except (BudgetNotSetError, BudgetExceededError) as refusal:
            return _refused(refusal)
    orders = engine.read(workspace.verified(workspace.pseudonymized("orders")), columns=["order_id", "placed_at", "items"],
                         key="person_id", partitions=partitions)
    # rows: (person_id, order_id, placed_at, items), partitioned by person
    bought = engine.map(orders, purchases_kernel(persons=engine.broadcast(persons), before=as_of))
    # rows: (person_id, item_id, placed_at, order_id, position), one per item bought, still by person
    if schedule is not None:
        return release_scheduled_popularity(engine, workspace, bought, schedule, keys, as_of)
    try:
        frame = release_group_counts(engine, bought, group="item_id", keys=item_keys, ledger=BudgetLedger(workspace.ledger),
                                     dataset=DATASET, purpose="product_improvement", analyst=analyst, epsilon=epsilon,
                                     max_partitions=ITEMS_PER_PERSON, max_rows_per_partition=1,
                                     order_by=PURCHASE_ORDER)
    except (BudgetNotSetError, BudgetExceededError) as refusal:
        return _refused(refusal)
    write_popularity(workspace, frame)
    left = BudgetLedger(workspace.ledger).remaining(DATASET)
    # public figures only: one row per catalogue item, the epsilon asked, the budget left (no count of persons)
    return {"stage": "popularity", "table": "popularity", "rows": len(keys), "epsilon": epsilon,
            "engine": engine.name,
            "note": "budget left: " + ", ".join(f"{k} {v:.3g}" for k, v in left.items() if v is not None)}


def _refused(refusal: Exception) -> dict:
    """The popularity summary row of a release the budget refused (nothing was released)."""
    return {"stage": "popularity", "table": "popularity", "rows": 0, "epsilon": 0.0,
            "note": str(refusal).splitlines()[0]}


def top_k_kernel(*, person: str, factors: str, items: Broadcast[tuple[pa.Array, np.ndarray, np.ndarray | None]],
                 k: int, exclude: str | None = None, group: str | None = None, threads: int = 1) -> Kernel:
    """Kernel: a partition's (person, factor vector[, excluded item ids][, group]) rows -> their top-``k``
    items, ``TOP_K_SCHEMA`` rows.

    ``items`` (broadcast) is (item ids, item factors: items x d float32, allowed: groups x items
    bool or None); ``exclude`` names a list column of item ids a person must not be shown (e.g.
    bought ones; unknown ids are ignored); ``group`` names an integer column giving each person's
    row of ``allowed`` (items not allowed to the group are never shown). Scores are the exact
    inner products of ``profiling.scoring.top_k_batches`` (ties: lower item index first), so
    the result does not depend on the partitioning. No privacy mechanism: the output is per
    person and stays in the analytics zone.
    """
    def top_k(table: pa.Table) -> pa.Table:
        item_ids, item_factors, allowed = items.value
        vectors = table.column(factors).combine_chunks()
        lengths = pc.list_value_length(vectors).fill_null(-1).to_numpy(zero_copy_only=False)
        dims = item_factors.shape[1]
        if (lengths != dims).any():
            row = int(np.flatnonzero(lengths != dims)[0])
            raise ValueError(f"column {factors!r} row {row} (person {table.column(person)[row].as_py()!r}) holds "
                             f"{'no' if lengths[row] < 0 else int(lengths[row])} factors; the item factors have {dims}")
        person_factors = pc.list_flatten(vectors).to_numpy(zero_copy_only=False).reshape(len(table), dims)
        # rows: persons x factors, in the partition's order
        excluded = None if exclude is None else _excluded(table.column(exclude), item_ids)
        eligibility = None if group is None else ItemEligibility(allowed, _groups(table, group, person, len(allowed)))
        batches = [b.to_record_batch(table.column(person).combine_chunks(), item_ids)
                   for b in top_k_batches(person_factors, item_factors, k, bought=excluded, eligibility=eligibility,
                                          threads=threads)]
        return pa.Table.from_batches(batches, schema=TOP_K_SCHEMA)

    return Kernel(top_k, TOP_K_SCHEMA, name="top_k")


def _groups(table: pa.Table, group: str, person: str, groups: int) -> np.ndarray:
    """The ``group`` column as int32 row numbers of the allowed matrix; ``ValueError`` naming a bad one."""
    values = table.column(group).combine_chunks()
    codes = values.fill_null(-1).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero((codes < 0) | (codes >= groups))
    if len(bad):
        row = int(bad[0])
        raise ValueError(f"column {group!r} row {row} (person {table.column(person)[row].as_py()!r}) holds group "
                         f"{values[row].as_py()!r}; the allowed matrix has groups 0..{groups - 1}")
    return codes.astype(np.int32)


def _excluded(lists: pa.ChunkedArray, item_ids: pa.Array) -> sp.csr_array:
    """A persons x items matrix with an entry for each listed item id (ids not in ``item_ids`` dropped)."""
    lists = lists.combine_chunks()
    columns = pc.index_in(pc.list_flatten(lists), value_set=item_ids).fill_null(-1).to_numpy(zero_copy_only=False)
    rows = pc.list_parent_indices(lists).to_numpy()
    known = columns >= 0
    return sp.csr_array((np.ones(int(known.sum()), dtype=np.int8), (rows[known], columns[known])),
                        shape=(len(lists), len(item_ids)))


def score_top_k(engine: Engine, frame: Frame, *, item_ids: Sequence[str] | pa.Array, item_factors: np.ndarray,
                k: int, factors: str = "factors", exclude: str | None = None, group: str | None = None,
                allowed: np.ndarray | None = None, threads: int | None = None) -> Frame:
    """Top-``k`` items of every person of ``frame`` (rows: person key, ``factors`` vector, optionally an
    ``exclude`` list of item ids and a ``group`` index into ``allowed``); a lazy ``TOP_K_SCHEMA`` frame.

    ``allowed`` (groups x items bool) says which items each group may be shown; give it with
    ``group``. ``threads`` per kernel call default to ``engine.kernel_threads``. Write the result
    with ``engine.write`` (or ``engine.save``). The item factors are broadcast once to the kernels.
    """
    item_factors = np.ascontiguousarray(item_factors, dtype=np.float32)
    item_ids = item_ids if isinstance(item_ids, pa.Array) else pa.array(list(item_ids), pa.string())
    if item_factors.ndim != 2 or len(item_ids) != item_factors.shape[0]:
        raise ValueError(f"{len(item_ids)} item ids do not match item factors of shape {item_factors.shape}; "
                         f"pass one factor row per item")
    if (group is None) != (allowed is None):
        raise ValueError("give group (the column naming each person's row of allowed) and allowed together")
    if allowed is not None:
        allowed = np.asarray(allowed)
        if allowed.dtype != np.bool_ or allowed.ndim != 2 or allowed.shape[1] != len(item_ids):
            raise ValueError(f"allowed must be a groups x items boolean matrix with {len(item_ids)} items, "
                             f"got {allowed.dtype} of shape {allowed.shape}")
    if frame.key is None:
        raise ValueError("score_top_k needs a frame keyed by the person; read it with key=...")
    threads = engine.kernel_threads if threads is None else check_int(threads, "threads")
    kernel = top_k_kernel(person=frame.key, factors=factors, items=engine.broadcast((item_ids, item_factors, allowed)),
                          k=k, exclude=exclude, group=group, threads=threads)
    return engine.map(frame, kernel)
