"""The local engine's own promises: bounded memory by spilling partitions inside the workspace, cleaned up."""

from __future__ import annotations

import os
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engines._frames import person_ids
from pipelines.engines import Kernel, LocalEngine, partition_of
from pipelines.workspace import Workspace
from profiling._threads import LARGE_RESULTS_HELD


def test_partitions_spill_to_arrow_files_inside_the_workspace_and_are_removed(tmp_path):
    ids = person_ids(500, seed=51)
    rows = pa.table({"person_id": pa.array(ids * 3), "n": pa.array(range(1500), pa.int64())})
    pq.write_table(rows, tmp_path / "rows.parquet", row_group_size=100)
    workspace = Workspace(tmp_path / "ws")
    engine = LocalEngine(workspace=workspace, batch_rows=64)
    frame = engine.read(tmp_path / "rows.parquet", columns=["n"], key="person_id", partitions=5)
    (scratch,) = workspace.root.glob(".staging-*")
    files = sorted(scratch.rglob("part-*.arrow"))
    assert len(files) == 5
    for file in files:
        # each file holds exactly the persons Spark's repartition(5, person_id) would put there
        part = int(file.stem.split("-")[1])
        with pa.OSFile(str(file)) as source:
            table = pa.ipc.open_file(source).read_all()
        assert set(partition_of(table["person_id"], 5).tolist()) == {part}
    seen = engine.collect(engine.map(frame, Kernel(lambda t: t, frame.schema)))
    assert sorted(seen["n"].to_pylist()) == list(range(1500))
    engine.close()
    assert not list(workspace.root.glob(".staging-*"))


def test_bad_engine_options_are_refused(tmp_path):
    with pytest.raises(ValueError, match="batch_rows must be a positive integer, got 0"):
        LocalEngine(batch_rows=0)
    with LocalEngine() as engine:
        with pytest.raises(ValueError, match="partitions must be a positive integer, got -1"):
            engine.from_table(pa.table({"person_id": ["a"]}), key="person_id", partitions=-1)
        with pytest.raises(TypeError, match="columns must be a list of column names, got the string 'n'"):
            engine.read(tmp_path, columns="n", key="person_id")


def test_progress_shows_the_partitions_computed(capsys):
    table = pa.table({"person_id": pa.array(person_ids(40, seed=52)), "n": pa.array(range(40), pa.int64())})
    with LocalEngine(progress=True) as engine:
        frame = engine.from_table(table, key="person_id", partitions=3)
        assert engine.collect(frame).num_rows == 40
    err = capsys.readouterr().err
    assert "partitions:" in err and "0/3" in err  # a bar over the 3 partitions (cleared when done)


def test_two_partitions_are_computed_at_once_and_come_back_in_order(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    meeting = threading.Barrier(2, timeout=10)   # broken (an error) unless two partitions' kernels wait at once

    def met(rows: pa.Table) -> pa.Table:
        meeting.wait()
        return rows

    table = pa.table({"person_id": pa.array(person_ids(60, seed=53)), "n": pa.array(range(60), pa.int64())})
    with LocalEngine() as engine:
        frame = engine.from_table(table, key="person_id", partitions=2)
        mapped = engine.map(frame, Kernel(met, frame.schema))
        assert engine.collect(mapped).equals(engine.collect(frame))   # the partitions in their order


def test_a_failing_partition_raises_at_its_turn_and_leaves_no_thread_running(tmp_path):
    # Which call comes second depends on the threads, so the partition holding row 200 is the one that fails.
    called = []

    def fails_on_row_200(rows: pa.Table) -> pa.Table:
        called.append(rows.num_rows)
        if 200 in rows.column("n").to_pylist():
            raise OSError(28, "No space left on device")
        return rows

    table = pa.table({"person_id": pa.array(person_ids(400, seed=54)), "n": pa.array(range(400), pa.int64())})
    with LocalEngine(workspace=Workspace(tmp_path / "ws")) as engine:
        frame = engine.from_table(table, key="person_id", partitions=20)
        engine.save(frame, tmp_path / "whole")
        files = sorted((tmp_path / "whole").glob("*.parquet"))
        before = next(at for at, file in enumerate(files) if 200 in pq.read_table(file).column("n").to_pylist())
        with pytest.raises(OSError, match="No space left on device"):
            engine.save(engine.map(frame, Kernel(fails_on_row_200, frame.schema)), tmp_path / "out")
        assert before + LARGE_RESULTS_HELD < len(files)   # partitions beyond those started with it ...
        assert len(called) <= before + LARGE_RESULTS_HELD   # ... were never computed
        written = sorted((tmp_path / "out").glob("*.parquet"))
        assert [pq.read_table(file) for file in written] == [pq.read_table(file) for file in files[:before]]
    # the engine's partition threads (named so); other threads of this process (Spark's, other tests') may come and go
    assert [thread.name for thread in threading.enumerate() if thread.name.startswith("partitions")] == []
