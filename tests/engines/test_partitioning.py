"""Partitioning by person, on both engines: every person in one partition, rows kept, misplaced rows refused."""

from __future__ import annotations

import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engines._frames import person_ids, scattered
from pipelines.engines import Kernel, PartitioningError, partition_of
from profiling.errors import SchemaError

TAGGED = pa.schema([("person_id", pa.string()), ("call", pa.string()), ("rows", pa.int64())])


def tag_calls(table: pa.Table) -> pa.Table:
    """Each person's row count, tagged with an id drawn once per kernel call (= per partition)."""
    counts = table.group_by("person_id").aggregate([("person_id", "count")])
    call = uuid.uuid4().hex
    return pa.table({"person_id": counts["person_id"], "call": pa.array([call] * counts.num_rows, pa.string()),
                     "rows": counts["person_id_count"]}, schema=TAGGED)


def _rows(persons: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    ids = person_ids(persons, seed)
    owner = rng.integers(0, persons, size=persons * 4)
    return pa.table({"person_id": pa.array([ids[i] for i in owner], pa.string()),
                     "amount": pa.array(rng.random(len(owner)))})


def test_every_person_lands_in_exactly_one_partition(engine, tmp_path):
    rows = _rows(300, seed=1)
    folder = tmp_path / "rows"
    folder.mkdir()
    for part in range(3):   # a dataset of several files, read as one
        pq.write_table(rows.slice(part * 400, 400), folder / f"part-{part}.parquet")
    frame = engine.read(folder, columns=["person_id"], key="person_id", partitions=4)
    tags = engine.collect(engine.map(frame, Kernel(tag_calls, TAGGED))).to_pandas()
    # rows: (person, call, rows) per person and kernel call
    assert not tags["person_id"].duplicated().any(), "a person was split over two partitions"
    assert tags["call"].nunique() <= 4
    assert tags["rows"].sum() == rows.num_rows
    expected = rows.to_pandas().groupby("person_id").size()
    assert tags.set_index("person_id")["rows"].sort_index().equals(expected.sort_index().rename("rows"))


def test_reading_a_missing_column_names_it(engine, tmp_path):
    pq.write_table(_rows(10, seed=2), tmp_path / "part-0.parquet")
    with pytest.raises(SchemaError, match=r"has no column 'placed_at'; it has person_id, amount"):
        engine.read(tmp_path, columns=["placed_at"], key="person_id")


def test_rows_not_partitioned_by_person_are_refused(engine):
    rows = _rows(200, seed=3)
    frame = scattered(engine, rows, "person_id", partitions=4)
    with pytest.raises(PartitioningError, match=r"the data is not partitioned by 'person_id', so per-person bounding "
                                                r"would be wrong"):
        engine.collect(engine.map(frame, Kernel(tag_calls, TAGGED)))


def test_a_per_person_kernel_needs_a_keyed_input(engine):
    frame = engine.from_table(_rows(20, seed=4), key="person_id", partitions=2)
    unkeyed = engine.map(frame, Kernel(lambda t: t.select(["amount"]), pa.schema([("amount", pa.float64())]),
                                       by_person=False))
    assert unkeyed.key is None
    with pytest.raises(PartitioningError, match="not partitioned by any key"):
        engine.map(unkeyed, Kernel(lambda t: t, unkeyed.schema, name="per_person"))


def test_a_kernel_result_off_its_schema_is_named(engine):
    frame = engine.from_table(_rows(20, seed=5), key="person_id", partitions=2)
    wrong = Kernel(lambda t: t.select(["person_id"]), pa.schema([("total", pa.float64())]), name="totals")
    with pytest.raises(Exception, match="kernel 'totals' returned columns"):
        engine.collect(engine.map(frame, wrong))


def test_broadcast_values_reach_the_kernels(engine):
    frame = engine.from_table(_rows(50, seed=6), key="person_id", partitions=3)
    weights = engine.broadcast(np.array([2.0, 3.0]))
    schema = pa.schema([("weighted", pa.float64())])
    kernel = Kernel(lambda t: pa.table({"weighted": pa.array([float(weights.value.sum()) * t.num_rows])}), schema)
    assert sum(engine.collect(engine.map(frame, kernel))["weighted"].to_pylist()) == 5.0 * 200


@given(st.lists(st.one_of(st.none(), st.text(max_size=40)), max_size=60), st.integers(1, 64), st.integers(0, 5))
def test_partition_of_is_a_function_of_the_key_alone(keys, partitions, cut):
    array = pa.array(keys, pa.string())
    whole = partition_of(array, partitions)
    assert ((0 <= whole) & (whole < partitions)).all()
    # the same key gets the same partition wherever it sits: in a slice, in another chunk, as large_string
    assert partition_of(array.slice(cut), partitions).tolist() == whole[cut:].tolist()
    chunked = pa.chunked_array([array.slice(0, cut), array.slice(cut)], pa.string())
    assert partition_of(chunked, partitions).tolist() == whole.tolist()
    assert partition_of(array.cast(pa.large_string()), partitions).tolist() == whole.tolist()
    seen = {}
    for key, part in zip(keys, whole.tolist(), strict=True):
        assert seen.setdefault(key, part) == part


def test_partition_of_is_sparks_hash_partitioning(spark):
    from pyspark.sql import functions as F

    rng = np.random.default_rng(7)
    strings = [*person_ids(200, seed=7), "", "a", "ab", "abc", "héllo", "数据", None]
    table = pa.table({"text": pa.array(strings, pa.string()),
                      "wide": pa.array(rng.integers(-2**62, 2**62, len(strings)), pa.int64()),
                      "narrow": pa.array(rng.integers(-2**31, 2**31 - 1, len(strings)), pa.int32())})
    frame = spark.createDataFrame(table)
    for partitions in (1, 3, 8):
        expected = frame.select(*(F.pmod(F.hash(c), F.lit(partitions)).alias(c) for c in table.column_names)).toArrow()
        for column in table.column_names:
            assert partition_of(table[column], partitions).tolist() == expected[column].to_pylist(), column


def test_partition_of_refuses_other_keys():
    with pytest.raises(TypeError, match="must be a string or integer column, got double"):
        partition_of(pa.array([1.5]), 2)
    with pytest.raises(ValueError, match="partitions must be a positive integer, got 0"):
        partition_of(pa.array(["a"]), 0)
