"""``Engine.keep`` on both engines: a frame used several times is computed once, and released on close."""

from __future__ import annotations

import uuid

import pyarrow as pa
import pyarrow.compute as pc

from engines._frames import person_ids
from pipelines.engines import Kernel, get_engine

TAGGED = pa.schema([("call", pa.string()), ("person_id", pa.string()), ("amount", pa.float64())])


def tag_call(table: pa.Table) -> pa.Table:
    """The partition's rows, each tagged with an id drawn once per kernel call (= per partition)."""
    return pa.table([pa.repeat(pa.scalar(uuid.uuid4().hex), table.num_rows), table.column("person_id"),
                     table.column("amount")], schema=TAGGED)


def total(table: pa.Table) -> pa.Table:
    return pa.table({"rows": [table.num_rows]})


def tagged(engine):
    ids = person_ids(200, 5)
    rows = pa.table({"person_id": pa.array([ids[i % 200] for i in range(900)]),
                     "amount": pa.array([float(i) for i in range(900)])})
    return engine.map(engine.from_table(rows, key="person_id", partitions=3), Kernel(tag_call, TAGGED))


def calls(table: pa.Table) -> list[tuple]:
    return sorted(zip(*(table.column(name).to_pylist() for name in TAGGED.names), strict=True))


def test_a_kept_frame_is_computed_once_for_all_its_uses(engine):
    frame = tagged(engine)
    # control: without keep, each use runs the kernel again and draws new ids
    assert set(engine.collect(frame)["call"].to_pylist()).isdisjoint(engine.collect(frame)["call"].to_pylist())
    kept = engine.keep(frame)
    assert (kept.key, kept.partitions, kept.schema) == (frame.key, frame.partitions, frame.schema)
    first = engine.collect(kept)
    assert len(set(first["call"].to_pylist())) == 3 and first.num_rows == 900
    assert calls(engine.collect(kept)) == calls(first)
    # a kernel mapped over the kept frame reads the kept rows too
    again = engine.map(kept, Kernel(lambda table: table, TAGGED, name="same"))
    assert calls(engine.collect(again)) == calls(first)
    assert pc.sum(engine.collect(engine.map(kept, Kernel(total, pa.schema([("rows", pa.int64())]))))["rows"]) \
        .as_py() == 900


def test_the_spark_engine_releases_kept_frames_when_it_closes(spark):
    persisted = spark.sparkContext._jsc.getPersistentRDDs().size()
    with get_engine("spark", spark=spark, partitions=3) as engine:
        kept = engine.keep(tagged(engine))
        engine.collect(kept)
        assert spark.sparkContext._jsc.getPersistentRDDs().size() > persisted
    assert spark.sparkContext._jsc.getPersistentRDDs().size() == persisted


def test_the_local_engine_keeps_a_frame_in_its_scratch_folder_until_it_closes(tmp_path):
    with get_engine("local", workspace=tmp_path / "ws") as engine:
        kept = engine.keep(tagged(engine))
        engine.collect(kept)
        assert len(list((tmp_path / "ws").rglob("kept-*/part-*.arrow"))) == 3
    assert not list((tmp_path / "ws").rglob("*.arrow"))
    # a frame that already lies in files is not copied again
    with get_engine("local", workspace=tmp_path / "ws") as engine:
        spilled = engine.from_table(pa.table({"person_id": ["a", "b"]}), key="person_id", partitions=2)
        assert engine.keep(spilled) is spilled
