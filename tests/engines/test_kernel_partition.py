"""A per-person kernel checks its rows against its own frame's partition, wherever its output goes next.

On Spark, a kernel's output that feeds ``co_partition`` (or a union inside connected components)
runs in the same task as the union: the task's partition number is the union's (input b's
partition 0 is the union's 4), not the kernel's own. The kernel must still see its own frame's
partition index and count, and give the same rows on both engines.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engines._frames import person_ids
from engines.test_components import reference
from pipelines.engines import Kernel, partition_of

PARTITIONS = 4
TOTALS = pa.schema([("person_id", pa.string()), ("rows", pa.int64()), ("amount", pa.float64())])
SEEN = pa.schema([("person_id", pa.string()), ("partition", pa.int32()), ("source", pa.string()),
                  ("rows", pa.int64()), ("amount", pa.float64())])


def totals(table: pa.Table) -> pa.Table:
    """Each person's row count and amount (per person: needs every row of a person in this partition)."""
    grouped = table.group_by("person_id").aggregate([("person_id", "count"), ("amount", "sum")])
    return pa.table([grouped["person_id"], grouped["person_id_count"], grouped["amount_sum"]], schema=TOTALS)


def placed(table: pa.Table) -> pa.Table:
    """The co-partitioned totals, each with the partition its person hashes to (as Spark's repartition does)."""
    return pa.table([table["person_id"], pa.array(partition_of(table["person_id"], PARTITIONS)), table["source"],
                     table["rows"], table["amount"]], schema=SEEN)


def _orders(seed: int, persons: int = 150) -> pa.Table:
    rng = np.random.default_rng(seed)
    ids = person_ids(persons, seed)
    return pa.table({"person_id": pa.array([ids[i] for i in rng.integers(0, persons, 600)]),
                     "amount": pa.array(rng.integers(1, 100, 600).astype(np.float64))})


def _expected(tables: dict[str, pa.Table]) -> list[tuple]:
    rows = []
    for source, table in tables.items():
        for row in totals(table).to_pylist():
            rows.append((row["person_id"], int(partition_of(pa.array([row["person_id"]]), PARTITIONS)[0]), source,
                         row["rows"], row["amount"]))
    return sorted(rows)


def test_per_person_kernels_feeding_co_partition_see_their_own_partitions(engine):
    tables = {"shop": _orders(71), "market": _orders(72)}
    summed = {name: engine.map(engine.from_table(table, key="person_id", partitions=PARTITIONS),
                               Kernel(totals, TOTALS))
              for name, table in tables.items()}
    joined = engine.co_partition(summed, key="person_id", partitions=PARTITIONS)
    rows = engine.collect(engine.map(joined, Kernel(placed, SEEN)))
    assert sorted(zip(*(rows[c].to_pylist() for c in SEEN.names), strict=True)) == _expected(tables)


def test_a_per_person_kernel_under_another_co_partition_with_other_counts(engine):
    """Inputs of 3 and 5 partitions, the first itself co-partitioned: each kernel checks against its own count."""
    tables = {"shop": _orders(73), "market": _orders(74)}
    inner = engine.co_partition({"shop": engine.from_table(tables["shop"], key=None)}, key="person_id", partitions=3)
    shop = engine.map(inner, Kernel(lambda t: totals(t.drop_columns(["source"])), TOTALS, name="shop_totals"))
    market = engine.map(engine.from_table(tables["market"], key="person_id", partitions=5), Kernel(totals, TOTALS))
    joined = engine.co_partition({"shop": shop, "market": market}, key="person_id", partitions=PARTITIONS)
    rows = engine.collect(engine.map(joined, Kernel(placed, SEEN)))
    assert sorted(zip(*(rows[c].to_pylist() for c in SEEN.names), strict=True)) == _expected(tables)
    assert pc.all(pc.equal(rows["partition"], pa.array(partition_of(rows["person_id"], PARTITIONS)))).as_py()


EDGES = pa.schema([("u", pa.string()), ("v", pa.string())])


def busy_links(table: pa.Table) -> pa.Table:
    """(person, shop) edges of the persons with two orders or more (per person: counts all their orders)."""
    counts = table.group_by("person_id").aggregate([("person_id", "count")])
    busy = counts.filter(pc.greater_equal(counts["person_id_count"], 2))["person_id"]
    kept = table.filter(pc.is_in(table["person_id"], value_set=busy))
    return pa.table([kept["person_id"], kept["shop"]], schema=EDGES)


def test_a_per_person_kernel_feeding_connected_components(engine):
    orders = _orders(75, persons=60)
    orders = orders.append_column("shop", pc.cast(pc.remainder(pc.cast(orders["amount"], pa.int64()), 7), pa.string()))
    edges = engine.map(engine.from_table(orders, key="person_id", partitions=PARTITIONS), Kernel(busy_links, EDGES))
    table = engine.collect(engine.connected_components(edges))
    expected = busy_links(orders)
    assert expected.num_rows > 100
    pairs = list(zip(expected["u"].to_pylist(), expected["v"].to_pylist(), strict=True))
    assert dict(zip(table["vertex"].to_pylist(), table["component"].to_pylist(), strict=True)) == reference(pairs)
