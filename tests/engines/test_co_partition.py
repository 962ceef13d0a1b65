"""``Engine.co_partition`` on both engines: several inputs of one key meet in one partition, nothing lost."""

from __future__ import annotations

import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engines._frames import person_ids
from pipelines.engines import Kernel
from profiling.errors import SchemaError

CALLS = pa.schema([("call", pa.string()), ("source", pa.string()), ("person_id", pa.string()),
                   ("amount", pa.float64()), ("device_id", pa.string())])


def tag_call(table: pa.Table) -> pa.Table:
    """The partition's rows, each tagged with an id drawn once per kernel call (= per partition)."""
    call = pa.repeat(pa.scalar(uuid.uuid4().hex), table.num_rows)
    return pa.table([call, *(table.column(name) for name in CALLS.names[1:])], schema=CALLS)


def _inputs(tmp_path, seed: int) -> tuple[pa.Table, pa.Table]:
    rng = np.random.default_rng(seed)
    ids = person_ids(120, seed)
    orders = pa.table({"person_id": pa.array([ids[i] for i in rng.integers(0, 120, 500)]),
                       "amount": pa.array(rng.random(500))})
    devices = pa.table({"device_id": pa.array([f"device-{i}" for i in range(90)]),
                        "person_id": pa.array([ids[i] for i in rng.integers(0, 120, 90)])})
    folder = tmp_path / "orders"
    folder.mkdir()
    for part in range(3):   # several files of several row groups, read as stored
        pq.write_table(orders.slice(part * 200, 200), folder / f"part-{part}.parquet", row_group_size=70)
    return orders, devices


def test_every_inputs_rows_of_a_key_meet_in_one_partition(engine, tmp_path):
    orders, devices = _inputs(tmp_path, seed=61)
    stored = engine.read(tmp_path / "orders", columns=["person_id", "amount"], key=None)
    assert stored.key is None
    nobody = engine.from_table(devices.slice(0, 0), key=None)     # an empty input adds nothing, breaks nothing
    frame = engine.co_partition({"orders": stored, "devices": engine.from_table(devices, key=None), "none": nobody},
                                key="person_id", partitions=4)
    assert frame.key == "person_id" and frame.partitions == 4
    assert frame.schema.names == ["source", "person_id", "amount", "device_id"]
    rows = engine.collect(engine.map(frame, Kernel(tag_call, CALLS))).to_pandas()
    # rows: (call, source, person_id, amount, device_id), one per input row
    assert rows.groupby("person_id")["call"].nunique().max() == 1, "a person's rows were split over partitions"
    assert rows["call"].nunique() <= 4
    got_orders = rows[rows["source"] == "orders"]
    assert got_orders["device_id"].isna().all()
    assert sorted(zip(got_orders["person_id"], got_orders["amount"])) == sorted(
        zip(orders["person_id"].to_pylist(), orders["amount"].to_pylist()))
    got_devices = rows[rows["source"] == "devices"]
    assert got_devices["amount"].isna().all()
    assert sorted(zip(got_devices["person_id"], got_devices["device_id"])) == sorted(
        zip(devices["person_id"].to_pylist(), devices["device_id"].to_pylist()))


def test_co_partition_names_the_input_at_fault(engine, tmp_path):
    _, devices = _inputs(tmp_path, seed=62)
    stored = engine.read(tmp_path / "orders", columns=["person_id", "amount"], key=None)
    other = engine.from_table(pa.table({"person_id": ["a"], "amount": pa.array(["1.5"])}), key=None)
    with pytest.raises(SchemaError, match=r"column 'amount' is string in co_partition input 'typed' but double in "
                                          r"'orders'; cast one of them"):
        engine.co_partition({"orders": stored, "typed": other}, key="person_id")
    with pytest.raises(SchemaError, match=r"co_partition input 'devices' has no key column 'identity_id'"):
        engine.co_partition({"devices": engine.from_table(devices, key=None)}, key="identity_id")
    with pytest.raises(ValueError, match="partitions are the stored pieces when key is None"):
        engine.read(tmp_path / "orders", columns=["amount"], key=None, partitions=3)
