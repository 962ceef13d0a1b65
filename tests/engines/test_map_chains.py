"""Maps one after the other: the same rows as one map at a time, with every check of every kernel.

On Spark they run in one ``mapInArrow`` (each kernel's output handed to the next as Arrow); that
must not skip a later kernel's partition check, call a kernel on an empty partition, or change
a row.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from engines._frames import person_ids
from pipelines.engines import Kernel, PartitioningError

ROWS = pa.schema([("person_id", pa.string()), ("amount", pa.float64())])
TOTALS = pa.schema([("person_id", pa.string()), ("total", pa.float64())])


def orders() -> pa.Table:
    ids = person_ids(120, 3)
    return pa.table({"person_id": [ids[i % 120] for i in range(700)], "amount": [float(i % 13) for i in range(700)]},
                    schema=ROWS)


def doubled(table: pa.Table) -> pa.Table:
    return pa.table([table["person_id"], pc.multiply(table["amount"], 2.0)], schema=ROWS)


def totals(table: pa.Table) -> pa.Table:
    grouped = table.group_by("person_id").aggregate([("amount", "sum")])
    return pa.table([grouped["person_id"], grouped["amount_sum"]], schema=TOTALS)


def renamed(table: pa.Table) -> pa.Table:
    """Every person's id replaced by another: rows no longer in the partition their key hashes to."""
    return pa.table([pc.binary_join_element_wise(table["person_id"], "x", ""), table["amount"]], schema=ROWS)


def nothing_above_100(table: pa.Table) -> pa.Table:
    return table.filter(pc.greater(table["amount"], 100.0))


def never_called(table: pa.Table) -> pa.Table:
    raise AssertionError(f"a kernel was called on {table.num_rows} rows")


def test_maps_in_a_row_give_what_each_map_gives_alone(engine):
    frame = engine.from_table(orders(), key="person_id", partitions=3)
    chained = engine.map(engine.map(frame, Kernel(doubled, ROWS, by_person=False)), Kernel(totals, TOTALS))
    one_by_one = engine.map(engine.keep(engine.map(frame, Kernel(doubled, ROWS, by_person=False))),
                            Kernel(totals, TOTALS))
    assert (chained.key, chained.partitions) == ("person_id", 3)
    got = engine.collect(chained).sort_by("person_id")
    assert got == engine.collect(one_by_one).sort_by("person_id")
    expected = orders().group_by("person_id").aggregate([("amount", "sum")])
    assert dict(zip(got["person_id"].to_pylist(), got["total"].to_pylist(), strict=True)) == {
        person: 2 * amount for person, amount in zip(expected["person_id"].to_pylist(),
                                                     expected["amount_sum"].to_pylist(), strict=True)}


def test_a_later_per_person_kernel_still_checks_its_partition(engine):
    frame = engine.from_table(orders(), key="person_id", partitions=3)
    moved = engine.map(engine.map(frame, Kernel(renamed, ROWS, by_person=False)), Kernel(totals, TOTALS))
    with pytest.raises(PartitioningError, match="kernel 'totals'.*hashes to another partition"):
        engine.collect(moved)


def test_no_kernel_is_called_on_what_an_earlier_one_emptied(engine):
    frame = engine.from_table(orders(), key="person_id", partitions=3)
    emptied = engine.map(frame, Kernel(nothing_above_100, ROWS, by_person=False))
    after = engine.map(emptied, Kernel(never_called, TOTALS, by_person=False))
    assert engine.collect(after).num_rows == 0
    assert engine.collect(after).schema == TOTALS


def test_spark_runs_maps_in_a_row_in_one_map_in_arrow(spark):
    from pipelines.engines import get_engine

    with get_engine("spark", spark=spark, partitions=3) as engine:
        frame = engine.from_table(orders(), key="person_id", partitions=3)
        one = engine.map(frame, Kernel(doubled, ROWS, by_person=False))
        three = engine.map(engine.map(one, Kernel(doubled, ROWS, by_person=False)), Kernel(totals, TOTALS))
        plans = [engine._rows(f)._jdf.queryExecution().executedPlan().toString() for f in (one, three)]
    assert [plan.count("MapInArrow") for plan in plans] == [1, 1]
