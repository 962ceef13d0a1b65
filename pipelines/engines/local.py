"""The local engine: partition kernels run in this process, two partitions at a time.

``read`` streams the Parquet dataset in record batches and spills each batch's rows to its
partition's Arrow IPC file (``partition_of``: the partition Spark would pick), in a scratch
folder inside the workspace (removed on ``close``; a killed job's is swept by the next stage).
Partitions are computed two at a time in threads (``profiling._threads.two_at_a_time``: kernels
spend their time in Arrow, numpy and compiled code, which release the GIL) and handed on in
order, so kernels must not change state they share. Memory is bounded by one batch while
reading and by four partitions while mapping (three computed or waiting, with their kernels'
results, and the one handed on), so choose ``partitions`` to keep a partition to about half a
million rows.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from pipelines.engines._components import check_edges, components_in_memory
from pipelines.engines._factors import FactorSettings, check_feedback, factors_in_memory
from pipelines.engines._partitioning import call_kernel, partition_of
from pipelines.engines._protocol import (
    Broadcast,
    Engine,
    Frame,
    Kernel,
    T,
    check_partitions,
    co_partitioned_schema,
    kept_key,
    selection,
    wanted_columns,
)
from pipelines.workspace import Workspace
from profiling._threads import LARGE_RESULTS_HELD, available_cores, two_at_a_time
from profiling.checks import check_int

__all__ = ["LocalEngine", "ROWS_PER_PARTITION"]

# Default partition size when ``partitions`` is not given: two partitions of this size computed at once hold
# about what one of 2M rows did, and the last partitions of a frame balance better over two cores.
ROWS_PER_PARTITION = 500_000


@dataclass(frozen=True)
class _Partitions:
    """``load(p)`` gives partition p's whole table (None when it is empty); ``stored``: it reads a file or
    memory, computing nothing."""

    load: Callable[[int], pa.Table | None]
    stored: bool = False


class _Value(Broadcast[T]):
    def __init__(self, value: T) -> None:
        self._value = value

    @property
    def value(self) -> T:
        return self._value


class LocalEngine(Engine):
    """Runs kernels in-process over Parquet datasets (see the module docstring).

    ``workspace``: where the scratch folder lives (default: the system's temporary folder);
    ``batch_rows``: rows read per batch; ``progress``: a progress bar over the partitions each
    ``collect`` or ``save`` computes.
    """

    name = "local"

    def __init__(self, *, workspace: Workspace | str | os.PathLike | None = None, batch_rows: int = 131_072,
                 progress: bool = False) -> None:
        self.workspace = None if workspace is None else (
            workspace if isinstance(workspace, Workspace) else Workspace(workspace))
        self.batch_rows = check_int(batch_rows, "batch_rows")
        self.progress = progress
        self._scratch: Path | None = None
        self._exit = contextlib.ExitStack()
        self._spills = 0

    def __repr__(self) -> str:
        return f"LocalEngine(workspace={self.workspace!r})"

    def close(self) -> None:
        self._exit.close()
        self._scratch = None

    def _scratch_folder(self) -> Path:
        if self._scratch is None:
            if self.workspace is not None:
                self._scratch = self._exit.enter_context(self.workspace.staging())
            else:
                self._scratch = Path(self._exit.enter_context(tempfile.TemporaryDirectory(prefix="portrait-engine-")))
        return self._scratch

    # reading ---------------------------------------------------------------------------------------------

    def read(self, path: str | os.PathLike, *, columns: Sequence[str], key: str | None,
             partitions: int | None = None) -> Frame:
        dataset = ds.dataset(path, format="parquet")
        columns = wanted_columns(dataset.schema.names, columns, key, path)
        schema = pa.schema([dataset.schema.field(c) for c in columns])
        if key is None:
            # the stored row groups are the partitions: read one at a time, nothing spilled
            pieces = [piece for fragment in dataset.get_fragments() for piece in fragment.split_by_row_group()]
            return self._unkeyed(schema, partitions, len(pieces),
                                 lambda p: pieces[p].to_table(schema=dataset.schema, columns=columns))
        if partitions is None:
            partitions = self.default_partitions(dataset.count_rows())
        check_partitions(partitions)
        return self._spill(dataset.to_batches(columns=columns, batch_size=self.batch_rows), schema, key, partitions)

    def from_table(self, table: pa.Table, *, key: str | None, partitions: int | None = None) -> Frame:
        wanted_columns(table.column_names, table.column_names, key, "the table")
        if key is None:
            batches = table.to_batches(max_chunksize=self.batch_rows)
            return self._unkeyed(table.schema, partitions, len(batches), lambda p: pa.Table.from_batches([batches[p]]))
        if partitions is None:
            partitions = self.default_partitions(table.num_rows)
        check_partitions(partitions)
        return self._spill(table.to_batches(max_chunksize=self.batch_rows), table.schema, key, partitions)

    def default_partitions(self, rows: int) -> int:
        return max(1, math.ceil(rows / ROWS_PER_PARTITION))

    def _unkeyed(self, schema: pa.Schema, partitions: int | None, pieces: int,
                 piece: Callable[[int], pa.Table]) -> Frame:
        if partitions is not None:
            raise ValueError("partitions are the stored pieces when key is None; give a key to repartition")

        def load(p: int) -> pa.Table | None:
            return piece(p) if p < pieces else None

        return Frame(self, schema, None, max(1, pieces), _Partitions(load, stored=True))

    def co_partition(self, inputs: Mapping[str, Frame], *, key: str, source: str = "source",
                     partitions: int | None = None) -> Frame:
        schema = co_partitioned_schema(inputs, key, source)
        for frame in inputs.values():
            self._check_frame(frame)
        if partitions is None:
            partitions = max(frame.partitions for frame in inputs.values())
        check_partitions(partitions)

        def batches() -> Iterator[pa.RecordBatch]:
            for name, frame in inputs.items():
                for table in self._tables(frame):
                    # rows: one computed partition of input `name` -> (source, every input's columns)
                    tagged = [pa.repeat(pa.scalar(name, pa.string()), table.num_rows) if column.name == source
                              else table.column(column.name).cast(column.type) if column.name in table.column_names
                              else pa.nulls(table.num_rows, column.type) for column in schema]
                    yield from pa.table(tagged, schema=schema).to_batches(max_chunksize=self.batch_rows)

        return self._spill(batches(), schema, key, partitions)

    def _spill(self, batches: Iterator[pa.RecordBatch], schema: pa.Schema, key: str, partitions: int) -> Frame:
        if partitions == 1:
            # one partition is loaded whole by whatever runs on it: keep it in memory, nothing to sort or spill
            whole = pa.Table.from_batches(list(batches), schema=schema)
            return Frame(self, schema, key, 1, _Partitions(lambda p: whole if p == 0 and whole.num_rows else None,
                                                           stored=True))
        self._spills += 1
        folder = self._scratch_folder() / f"read-{self._spills}"
        folder.mkdir()
        writers: dict[int, pa.ipc.RecordBatchFileWriter] = {}
        try:
            for batch in batches:
                # rows: one batch in stored order -> grouped by partition, stored order kept within each
                owner = partition_of(batch.column(key), partitions)
                order = np.argsort(owner, kind="stable")
                bounds = np.searchsorted(owner[order], np.arange(partitions + 1))
                ordered = batch.take(pa.array(order))
                for p in np.flatnonzero(np.diff(bounds)):
                    if p not in writers:
                        writers[p] = pa.ipc.new_file(folder / f"part-{p}.arrow", schema)
                    writers[p].write_batch(ordered.slice(bounds[p], bounds[p + 1] - bounds[p]))
        finally:
            for writer in writers.values():
                writer.close()

        def load(p: int) -> pa.Table | None:
            file = folder / f"part-{p}.arrow"
            if not file.exists():
                return None
            return _read_spilled(file)

        return Frame(self, schema, key, partitions, _Partitions(load, stored=True))

    def keep(self, frame: Frame) -> Frame:
        self._check_frame(frame)
        source: _Partitions = frame.handle
        if source.stored:
            return frame
        self._spills += 1
        folder = self._scratch_folder() / f"kept-{self._spills}"
        folder.mkdir()
        computed: set[int] = set()

        def load(p: int) -> pa.Table | None:
            file = folder / f"part-{p}.arrow"
            if p in computed:
                return _read_spilled(file) if file.exists() else None
            table = source.load(p)
            if table is not None:
                with pa.OSFile(str(file), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
                    writer.write_table(table)
            computed.add(p)
            return table

        return Frame(self, frame.schema, frame.key, frame.partitions, _Partitions(load))

    # running ---------------------------------------------------------------------------------------------

    def map(self, frame: Frame, kernel: Kernel) -> Frame:
        self._check_frame(frame, kernel)
        source: _Partitions = frame.handle

        def load(p: int) -> pa.Table | None:
            table = source.load(p)
            if table is None or table.num_rows == 0:
                return None
            return call_kernel(kernel, table, key=frame.key, partition=p, partitions=frame.partitions)

        return Frame(self, kernel.schema, kept_key(frame, kernel), frame.partitions, _Partitions(load))

    def select(self, frame: Frame, columns: Sequence[str]) -> Frame:
        self._check_frame(frame)
        schema, key = selection(frame, columns)
        source: _Partitions = frame.handle

        def load(p: int) -> pa.Table | None:
            table = source.load(p)
            return None if table is None else table.select(schema.names)

        return Frame(self, schema, key, frame.partitions, _Partitions(load, stored=source.stored))

    def _tables(self, frame: Frame) -> Iterator[pa.Table]:
        self._check_frame(frame)
        loaded = two_at_a_time(frame.handle.load, range(frame.partitions), name="partitions",
                               held=LARGE_RESULTS_HELD)
        with contextlib.closing(loaded):
            for table in tqdm(loaded, total=frame.partitions, desc="partitions", unit=" partition", leave=False,
                              disable=not self.progress):
                if table is not None:
                    yield table

    def connected_components(self, edges: Frame, *, ends: tuple[str, str] = ("u", "v")) -> Frame:
        self._check_frame(edges)
        check_edges(edges.schema, ends)
        # rows: (vertex, component), by scipy over the edges' ends (this process holds them anyway)
        components = components_in_memory(self.collect(edges).select(list(ends)), ends)
        return self.from_table(components, key="vertex")

    def implicit_factors(self, feedback: Frame, *, row: str, column: str, weight: str,
                         settings: FactorSettings = FactorSettings()) -> tuple[Frame, pa.Table]:
        self._check_frame(feedback)
        check_feedback(feedback.schema, row, column, weight)
        # rows: (row, column, weight), a partition at a time, reduced to codes: the compiled solver holds the
        # matrix in this process
        row_factors, column_factors = factors_in_memory(
            (table.select([row, column, weight]) for table in self._tables(feedback)), row, column, weight, settings)
        return self.from_table(row_factors, key=row, partitions=feedback.partitions), column_factors

    def collect(self, frame: Frame) -> pa.Table:
        return pa.concat_tables([frame.schema.empty_table(), *self._tables(frame)])

    def broadcast(self, value: T) -> Broadcast[T]:
        return _Value(value)

    @property
    def kernel_threads(self) -> int:
        return available_cores()

    def save(self, frame: Frame, folder: Path) -> None:
        self._check_frame(frame)
        folder.mkdir()
        # a partition's rows go to its own file, written as it is computed (while the next ones are)
        written = 0
        for table in self._tables(frame):
            pq.write_table(table, folder / f"part-{written:05d}.parquet")
            written += 1
        if not written:
            pq.write_table(frame.schema.empty_table(), folder / "part-00000.parquet")


def _read_spilled(file: Path) -> pa.Table:
    """The whole table of one spilled partition file (Arrow IPC)."""
    with pa.OSFile(str(file)) as source:
        return pa.ipc.open_file(source).read_all()
