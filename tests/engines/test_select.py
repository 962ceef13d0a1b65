"""``Engine.select`` on both engines: the same rows with fewer columns, in the same partitions."""

from __future__ import annotations

import pyarrow as pa
import pytest

from engines._frames import person_ids
from engines.test_keep import TAGGED, calls, tagged
from pipelines.engines import Kernel, PartitioningError, get_engine
from profiling.errors import SchemaError

WIDE = pa.schema([("person_id", pa.string()), ("factors", pa.list_(pa.float32())),
                  ("bought", pa.list_(pa.string())), ("group", pa.int32())])


def wide_rows() -> pa.Table:
    ids = person_ids(300, 11)
    return pa.table({"person_id": [ids[i % 300] for i in range(1000)],
                     "factors": [[float(i), float(-i)] if i % 3 else None for i in range(1000)],
                     "bought": [[f"item-{i % 7}"] * (i % 4) for i in range(1000)],
                     "group": pa.array([i % 5 for i in range(1000)], pa.int32())}, schema=WIDE)


def rows(table: pa.Table) -> list[tuple]:
    return sorted(zip(*(table.column(name).to_pylist() for name in table.column_names), strict=True),
                  key=repr)


def seen_columns(table: pa.Table) -> pa.Table:
    """Per partition: the columns the kernel was given, and its rows."""
    return pa.table({"columns": [",".join(table.column_names)], "rows": [table.num_rows]})


SEEN = pa.schema([("columns", pa.string()), ("rows", pa.int64())])


def test_a_selection_holds_the_same_rows_in_the_same_partitions(engine):
    frame = engine.from_table(wide_rows(), key="person_id", partitions=3)
    narrow = engine.select(frame, ["group", "person_id"])
    assert (narrow.key, narrow.partitions) == ("person_id", 3)
    assert narrow.schema == pa.schema([WIDE.field("group"), WIDE.field("person_id")])
    assert rows(engine.collect(narrow)) == rows(wide_rows().select(["group", "person_id"]))
    # a per-person kernel over it is given only those columns, and its partition check passes: same partitions
    seen = engine.collect(engine.map(narrow, Kernel(seen_columns, SEEN, name="seen")))
    assert set(seen["columns"].to_pylist()) == {"group,person_id"}
    assert sum(seen["rows"].to_pylist()) == 1000 and seen.num_rows == 3


def test_a_selection_without_the_key_is_not_keyed(engine):
    frame = engine.from_table(wide_rows(), key="person_id", partitions=3)
    narrow = engine.select(frame, ["bought"])
    assert narrow.key is None and narrow.partitions == 3
    assert rows(engine.collect(narrow)) == rows(wide_rows().select(["bought"]))
    with pytest.raises(PartitioningError, match="not partitioned by any key"):
        engine.map(narrow, Kernel(seen_columns, SEEN, name="seen"))


def test_a_selection_of_a_kept_frame_reads_the_kept_rows(engine):
    kept = engine.keep(tagged(engine))
    first = engine.collect(kept)
    narrow = engine.collect(engine.select(kept, ["call", "person_id"]))
    # the kernel that tags each call with a fresh id did not run again
    assert rows(narrow) == rows(first.select(["call", "person_id"]))
    assert calls(engine.collect(engine.select(kept, TAGGED.names))) == calls(first)


@pytest.mark.parametrize(("columns", "error", "message"), [
    (["group", "nope"], SchemaError, "has no column 'nope'; it has person_id, factors, bought, group"),
    ("group", TypeError, "columns must be a list of column names"),
    ([], ValueError, "at least one column"),
    (["group", "group"], ValueError, "names column\\(s\\) 'group' more than once"),
])
def test_a_bad_selection_says_what_is_wrong(engine, columns, error, message):
    frame = engine.from_table(wide_rows(), key="person_id", partitions=2)
    with pytest.raises(error, match=message):
        engine.select(frame, columns)


def test_a_frame_of_another_engine_is_refused(engine):
    with get_engine("local") as other:
        foreign = other.from_table(wide_rows(), key="person_id", partitions=2)
        with pytest.raises(ValueError, match="belongs to another engine"):
            engine.select(foreign, ["group"])
