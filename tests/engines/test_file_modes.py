"""What each engine writes into the workspace is owner-only, whatever umask the caller's shell has."""

from __future__ import annotations

import os
import stat

import pyarrow as pa

from engines._frames import person_ids
from pipelines.engines import Kernel
from pipelines.workspace import Workspace

SCHEMA = pa.schema([("person_id", pa.string()), ("n", pa.int64())])


def unchanged(table: pa.Table) -> pa.Table:
    return table.select(SCHEMA.names).cast(SCHEMA)


def test_written_folders_and_files_are_owner_only(engine, tmp_path):
    previous = os.umask(0o022)
    try:
        workspace = Workspace(tmp_path / "ws")  # tightens the process umask; Hadoop applies its own
        rows = pa.table({"person_id": person_ids(40, seed=5), "n": pa.array(range(40), pa.int64())})
        frame = engine.from_table(rows, key="person_id", partitions=4)
        destination = engine.write(engine.map(frame, Kernel(unchanged, SCHEMA)), workspace, "copied")
    finally:
        os.umask(previous)
    written = [destination, *destination.rglob("*")]
    assert len(written) > 1
    assert [f"{p} {stat.filemode(p.stat().st_mode)}" for p in written if p.stat().st_mode & 0o077] == []
