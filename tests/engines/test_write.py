"""Writing results into the workspace on both engines: all partitions or nothing."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from engines._frames import person_ids
from pipelines.engines import Kernel
from pipelines.workspace import Workspace

SCHEMA = pa.schema([("person_id", pa.string()), ("doubled", pa.int64())])


def doubled(table: pa.Table) -> pa.Table:
    return pa.table({"person_id": table["person_id"], "doubled": pa.compute.multiply(table["n"], 2)}, schema=SCHEMA)


def fails_on_person_seven(table: pa.Table) -> pa.Table:
    if "7" * 32 in table["person_id"].to_pylist():
        raise RuntimeError("kernel failed midway")
    return doubled(table)


def _rows() -> pa.Table:
    ids = [*person_ids(60, seed=31), "7" * 32]
    return pa.table({"person_id": pa.array(ids), "n": pa.array(range(len(ids)), pa.int64())})


def _written(workspace: Workspace, name: str) -> list[dict]:
    return sorted(ds.dataset(workspace.outputs(name), format="parquet").to_table().to_pylist(),
                  key=lambda row: row["person_id"])


def test_write_publishes_every_partition(engine, tmp_path):
    workspace = Workspace(tmp_path / "ws")
    frame = engine.from_table(_rows(), key="person_id", partitions=4)
    destination = engine.write(engine.map(frame, Kernel(doubled, SCHEMA)), workspace, "doubled")
    assert destination == workspace.outputs("doubled")
    expected = sorted(doubled(_rows()).to_pylist(), key=lambda row: row["person_id"])
    assert _written(workspace, "doubled") == expected


def test_a_kernel_failing_midway_leaves_the_previous_output(engine, tmp_path):
    workspace = Workspace(tmp_path / "ws")
    frame = engine.from_table(_rows(), key="person_id", partitions=4)
    engine.write(engine.map(frame, Kernel(doubled, SCHEMA)), workspace, "doubled")
    before = _written(workspace, "doubled")
    files = sorted(p.name for p in workspace.outputs("doubled").iterdir())
    with pytest.raises(Exception, match="kernel failed midway"):
        engine.write(engine.map(frame, Kernel(fails_on_person_seven, SCHEMA)), workspace, "doubled")
    assert _written(workspace, "doubled") == before
    assert sorted(p.name for p in workspace.outputs("doubled").iterdir()) == files
    assert not list(workspace.root.glob(".staging-*")) and not list(workspace.root.glob("outputs/.retired-*"))
