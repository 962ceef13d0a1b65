"""The Spark engine: the same partition kernels, run by PySpark on a cluster (or ``local[n]``).

``read`` is ``spark.read.parquet(path).repartition(n, key)`` (Spark's hash partitioning, the
one ``partition_of`` computes); ``map`` is ``mapInArrow``, with each partition's record batches
concatenated into one table before the kernel sees it (per-person kernels need the whole
partition) and cast to the frame's schema (so kernels see the same types as on the local
engine); maps one after the other run in one ``mapInArrow``, each kernel's output handed to
the next as Arrow (each crossing between Spark's rows and Arrow costs, lists most); a
per-person kernel checks its rows against the frame's own partition index
(``spark_partition_id()`` where the rows are computed, whatever union the output feeds next);
``broadcast`` is ``SparkContext.broadcast``. Results are written by Spark into a
staging folder inside the workspace and published only when the job succeeded.

PySpark is optional: ``pip install 'portrait[spark]'``.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipelines.engines._components import COMPONENTS_SCHEMA, check_edges, components_on_spark
from pipelines.engines._factors import FactorSettings, check_feedback, factors_on_spark, factors_schema
from pipelines.engines._optional import import_optional
from pipelines.engines._partitioning import call_kernel
from pipelines.engines._protocol import (
    Broadcast,
    Engine,
    Frame,
    Kernel,
    PartitioningError,
    T,
    check_partitions,
    co_partitioned_schema,
    kept_key,
    selection,
    wanted_columns,
)
from profiling.errors import SchemaError
from profiling.file_modes import make_owner_only

__all__ = ["SESSION_DEFAULTS", "SparkEngine"]

_PURPOSE = "the Spark engine"
# Settings of a session the engine starts, under the caller's ``config``: no web UI or console
# progress bars in batch jobs, a driver heap that holds the broadcast tables of a million
# persons (Spark's default is 1g; in local mode the driver runs the tasks too), and Arrow
# batches to the Python workers of the local engine's size instead of 10,000 rows (a kernel
# takes its whole partition anyway; at 200,000 accounts this took a third off a map of the orders).
SESSION_DEFAULTS = {"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false",
                    "spark.driver.memory": "4g", "spark.sql.execution.arrow.maxRecordsPerBatch": "131072"}
# PySpark 4.3 warns on every mapInArrow that it does not fully support pandas 3; mapInArrow does
# not go through pandas at all, so that one warning is silenced where mapInArrow is called.
_PANDAS_WARNING = "PySpark does not yet fully support pandas"
# The column that carries each row's partition index (``spark_partition_id()``) into ``map``'s kernels.
_PARTITION = "__portrait_partition"


@dataclass(frozen=True)
class _Step:
    """A kernel mapped over rows of ``schema`` keyed by ``key``."""

    kernel: Kernel
    key: str | None
    schema: pa.Schema


@dataclass(frozen=True)
class _Mapped:
    """A frame's kernels (``steps``, in order) over ``rows`` (a Spark DataFrame), not yet given to Spark."""

    rows: Any
    steps: tuple[_Step, ...]


class _SparkValue(Broadcast[T]):
    def __init__(self, broadcast: Any) -> None:
        self._broadcast = broadcast

    @property
    def value(self) -> T:
        return self._broadcast.value


class SparkEngine(Engine):
    """Runs kernels with PySpark (see the module docstring).

    ``spark``: a running ``SparkSession`` to use (kept running on ``close``); without one, a
    session is started with ``master`` and ``config`` and stopped on ``close``. Python workers
    run this interpreter (``PYSPARK_PYTHON`` is set to it unless already set).
    ``partitions``: default number of partitions for ``read`` (default: ``spark.sql.shuffle.partitions``).
    """

    name = "spark"

    def __init__(self, *, spark: Any = None, master: str = "local[2]", config: Mapping[str, str] | None = None,
                 partitions: int | None = None) -> None:
        sql = import_optional("pyspark.sql", extra="spark", purpose=_PURPOSE)
        self._owns_session = spark is None
        if spark is None:
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
            os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
            builder = sql.SparkSession.builder.master(master).appName("portrait")
            for name, value in {**SESSION_DEFAULTS, **_local_defaults(master), **(config or {})}.items():
                builder = builder.config(name, value)
            spark = builder.getOrCreate()
        self.spark = spark
        self.partitions = partitions
        self._broadcasts: list[Any] = []
        self._kept: list[Any] = []

    def __repr__(self) -> str:
        return f"SparkEngine(master={self.spark.sparkContext.master!r})"

    def close(self) -> None:
        for kept in self._kept:
            kept.unpersist()
        self._kept.clear()
        for broadcast in self._broadcasts:
            broadcast.destroy()
        self._broadcasts.clear()
        if self._owns_session:
            self.spark.stop()

    # reading ---------------------------------------------------------------------------------------------

    def read(self, path: str | os.PathLike, *, columns: Sequence[str], key: str | None,
             partitions: int | None = None) -> Frame:
        frame = self.spark.read.parquet(str(path))
        wanted = wanted_columns(frame.columns, columns, key, path)
        return self._partitioned(frame.select(*wanted), key, partitions)

    def from_table(self, table: pa.Table, *, key: str | None, partitions: int | None = None) -> Frame:
        wanted_columns(table.column_names, table.column_names, key, "the table")
        return self._partitioned(self.spark.createDataFrame(table), key, partitions, schema=table.schema)

    def default_partitions(self, rows: int) -> int:
        return self.partitions or int(self.spark.conf.get("spark.sql.shuffle.partitions"))

    def co_partition(self, inputs: Mapping[str, Frame], *, key: str, source: str = "source",
                     partitions: int | None = None) -> Frame:
        schema = co_partitioned_schema(inputs, key, source)
        functions = import_optional("pyspark.sql.functions", extra="spark", purpose=_PURPOSE)
        union = None
        for name, frame in inputs.items():
            self._check_frame(frame)
            tagged = self._rows(frame).withColumn(source, functions.lit(name))
            union = tagged if union is None else union.unionByName(tagged, allowMissingColumns=True)
        # rows: (source, every input's columns), then hash-partitioned by key as read does
        return self._partitioned(union.select(*schema.names), key, partitions, schema)

    def _partitioned(self, frame: Any, key: str | None, partitions: int | None,
                     schema: pa.Schema | None = None) -> Frame:
        types = import_optional("pyspark.sql.pandas.types", extra="spark", purpose=_PURPOSE)
        schema = schema or types.to_arrow_schema(frame.schema, timezone="UTC")
        if key is None:
            if partitions is not None:
                raise ValueError("partitions are the stored pieces when key is None; give a key to repartition")
            # rows: as stored, in Spark's input splits
            return Frame(self, schema, None, frame.rdd.getNumPartitions(), frame)
        if partitions is None:
            partitions = self.default_partitions(0)
        check_partitions(partitions)
        # rows: as read, then hash-partitioned by key: pmod(murmur3(key), partitions)
        return Frame(self, schema, key, partitions, frame.repartition(partitions, key))

    # running ---------------------------------------------------------------------------------------------

    def map(self, frame: Frame, kernel: Kernel) -> Frame:
        self._check_frame(frame, kernel)
        if _PARTITION in frame.schema.names:
            raise SchemaError(f"column {_PARTITION!r} is the Spark engine's own; rename it before mapping a kernel")
        step = _Step(kernel, frame.key, frame.schema)
        # a map over a map waits to run in the same mapInArrow: one kernel's output goes to the next as Arrow
        mapped = (_Mapped(frame.handle.rows, (*frame.handle.steps, step)) if isinstance(frame.handle, _Mapped)
                  else _Mapped(frame.handle, (step,)))
        return Frame(self, kernel.schema, kept_key(frame, kernel), frame.partitions, mapped)

    def _rows(self, frame: Frame) -> Any:
        """``frame``'s Spark DataFrame: its kernels still waiting (``_Mapped``) run in one ``mapInArrow``."""
        if not isinstance(frame.handle, _Mapped):
            return frame.handle
        steps, partitions = frame.handle.steps, frame.partitions
        types = import_optional("pyspark.sql.pandas.types", extra="spark", purpose=_PURPOSE)
        functions = import_optional("pyspark.sql.functions", extra="spark", purpose=_PURPOSE)

        def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            whole = [batch for batch in batches if batch.num_rows]
            if not whole:
                return
            # rows: one whole partition, then its index; with a key, every row's key hashes to that index
            table = pa.Table.from_batches(whole)
            partition = table.column(_PARTITION)[0].as_py()
            table = table.drop_columns([_PARTITION]).cast(steps[0].schema)
            for step in steps:   # as maps one after the other: no kernel is called on an empty partition
                if not table.num_rows:
                    return
                table = call_kernel(step.kernel, table, key=step.key, partition=partition, partitions=partitions)
            yield from table.to_batches()

        # The frame's own partition index, taken where its rows are computed: the task's partition id
        # (TaskContext) is another number when the kernel's output feeds a union (co_partition, the
        # connected components), which runs in the same task and numbers its partitions on from the
        # first input's.
        indexed = frame.handle.rows.select("*", functions.spark_partition_id().alias(_PARTITION))
        return self._map_in_arrow(indexed, run, types.from_arrow_schema(frame.schema))

    def select(self, frame: Frame, columns: Sequence[str]) -> Frame:
        self._check_frame(frame)
        schema, key = selection(frame, columns)
        # a projection: no exchange, the rows stay in their partitions (a kept frame's cache reads only these)
        return Frame(self, schema, key, frame.partitions, self._rows(frame).select(*schema.names))

    def _map_in_arrow(self, frame: Any, function: Any, schema: Any, *, barrier: bool = False) -> Any:
        """``frame.mapInArrow(function, schema, barrier=barrier)`` (Spark DataFrames)."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_PANDAS_WARNING, category=FutureWarning)
            return frame.mapInArrow(function, schema, barrier=barrier)

    def connected_components(self, edges: Frame, *, ends: tuple[str, str] = ("u", "v")) -> Frame:
        self._check_frame(edges)
        check_edges(edges.schema, ends)
        # rows: (vertex, component) by large-star/small-star, then hash-partitioned by vertex
        return self._partitioned(components_on_spark(self._rows(edges), ends), "vertex", None, COMPONENTS_SCHEMA)

    def implicit_factors(self, feedback: Frame, *, row: str, column: str, weight: str,
                         settings: FactorSettings = FactorSettings()) -> tuple[Frame, pa.Table]:
        self._check_frame(feedback)
        check_feedback(feedback.schema, row, column, weight)
        row_factors, column_factors = factors_on_spark(self, self._rows(feedback), row, column, weight, settings,
                                                       blocks=feedback.partitions)
        # rows: (row, factors) from the fit's tasks, then hash-partitioned by row as read does
        return self._partitioned(row_factors, row, feedback.partitions, factors_schema(row)), column_factors

    def keep(self, frame: Frame) -> Frame:
        self._check_frame(frame)
        return Frame(self, frame.schema, frame.key, frame.partitions, self._keep(self._rows(frame)))

    def _keep(self, frame: Any) -> Any:
        """``frame`` (a Spark DataFrame) persisted in memory and on disk once computed, until the engine closes."""
        kept = frame.persist(import_optional("pyspark", extra="spark", purpose=_PURPOSE).StorageLevel.MEMORY_AND_DISK)
        self._kept.append(kept)
        # a new DataFrame over the kept rows: one that already ran an action keeps its plan, and would compute
        # itself again without looking the kept rows up
        return kept.select("*")

    def collect(self, frame: Frame) -> pa.Table:
        self._check_frame(frame)
        table = _translated(self._rows(frame).toArrow)
        return table.cast(frame.schema)

    def broadcast(self, value: T) -> Broadcast[T]:
        broadcast = self.spark.sparkContext.broadcast(value)
        self._broadcasts.append(broadcast)
        return _SparkValue(broadcast)

    @property
    def kernel_threads(self) -> int:
        return int(self.spark.conf.get("spark.task.cpus", "1"))

    def save(self, frame: Frame, folder: Path) -> None:
        self._check_frame(frame)
        # timestamps as Arrow and the local engine write them (Spark's default is the legacy INT96)
        self.spark.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        rows = self._rows(frame)
        _translated(lambda: rows.write.parquet(str(folder)))
        # Hadoop's file system applies its own umask (022 unless configured), not the process's.
        make_owner_only(folder, *Path(folder).rglob("*"))


def _local_defaults(master: str) -> dict[str, str]:
    """For a local master, four shuffle partitions per core instead of Spark's 200: on two cores
    that halved the portraits and cut the popularity release threefold (200k accounts)."""
    found = re.fullmatch(r"local(?:\[(\d+|\*)(?:,\d+)?\])?", master)
    if found is None:
        return {}
    cores = {None: 1, "*": os.cpu_count() or 1}.get(found.group(1)) or int(found.group(1))
    return {"spark.sql.shuffle.partitions": str(4 * cores)}


def _translated(action):
    """Run a Spark action; a kernel's ``PartitioningError`` comes back as itself, not as a Java stack trace."""
    try:
        return action()
    except Exception as error:
        found = re.search(r"PartitioningError: (.+)", str(error))
        if found is None:
            raise
        raise PartitioningError(found.group(1)) from error

