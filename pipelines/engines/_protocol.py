"""The engine protocol: what a job may ask of an engine, and the partition kernel it runs.

A job is written once against ``Engine``: read a Parquet dataset partitioned by the person
key, map *partition kernels* (pure functions from the Arrow table of one whole partition to
another table) over it, bring several inputs of one person (or identity) to one partition
(``co_partition``), collect the small results to the driver, broadcast small read-only values
to the kernels, and write a result folder atomically into a workspace.

Each operation keeps the same privacy guarantee on every engine; an operation that could not
(sampling, per-partition noise) is not in the protocol. DP noise is never drawn inside a
kernel: kernels bound contributions and aggregate, the driver adds noise once to the reduced
totals (see ``pipelines.engine_jobs``).
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.engines._factors import FactorSettings
from profiling.checks import check_int
from profiling.errors import PortraitError, SchemaError

__all__ = ["Broadcast", "Engine", "Frame", "Kernel", "PartitioningError", "check_partitions",
           "co_partitioned_schema", "input_rows", "kept_key", "selection", "wanted_columns"]

T = TypeVar("T")


class PartitioningError(PortraitError):
    """A kernel that bounds or scores per person got rows that are not partitioned by the person key."""


@dataclass(frozen=True)
class Kernel:
    """A pure function from one whole partition (``pa.Table``) to a table of ``schema``.

    ``by_person``: the kernel computes per person (bounding, features, scoring), so every
    call first checks that its rows are partitioned by the input's key (``PartitioningError``
    otherwise). Kernels must not depend on the rows' order: one that needs an order sorts its
    partition by (person key, a stable tiebreak) first. Kernels are not called on empty
    partitions. On Spark a kernel is pickled to the workers: capture broadcasts, not big arrays.
    The local engine calls it on two partitions at once, in threads: what it captures is read, never
    changed (a cache it fills must take a lock, as ``LazyStringIndex`` does).
    """

    function: Callable[[pa.Table], pa.Table]
    schema: pa.Schema
    name: str = ""
    by_person: bool = True

    def __post_init__(self) -> None:
        if not callable(self.function):
            raise TypeError(f"a kernel's function must be callable, got {type(self.function).__name__}")
        if not isinstance(self.schema, pa.Schema):
            raise TypeError(f"a kernel's schema must be a pyarrow Schema, got {type(self.schema).__name__}")
        if not self.name:
            object.__setattr__(self, "name", getattr(self.function, "__name__", "kernel"))


class Broadcast(Generic[T]):
    """A small read-only value shipped once to every kernel; read it inside the kernel as ``.value``."""

    @property
    @abc.abstractmethod
    def value(self) -> T: ...


@dataclass(frozen=True)
class Frame:
    """Partitioned rows on an engine (lazy: nothing runs until ``collect`` or ``write``).

    ``key`` is the column the rows are hash-partitioned by (kept through a kernel whose output
    has that column; None when read with ``key=None`` or after a kernel that dropped it),
    ``partitions`` how many there are.
    ``schema`` is the rows' Arrow schema; ``handle`` is the engine's own representation.
    """

    engine: Engine
    schema: pa.Schema
    key: str | None
    partitions: int
    handle: Any = field(repr=False)


class Engine(abc.ABC):
    """Runs partition kernels over data partitioned by person (see the module docstring).

    Use as a context manager, or call ``close`` when done.
    """

    name: str = ""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @abc.abstractmethod
    def close(self) -> None:
        """Release what the engine holds (scratch files, a Spark session it started)."""

    @abc.abstractmethod
    def read(self, path: str | os.PathLike, *, columns: Sequence[str], key: str | None,
             partitions: int | None = None) -> Frame:
        """A Parquet dataset (a folder of files) with ``columns``, hash-partitioned by ``key`` into ``partitions``
        (default: ``default_partitions`` of its rows).

        ``key=None``: not repartitioned; the partitions are the stored pieces (row groups, file
        splits), for kernels that are not per person (a filter, a lookup) before ``co_partition``.
        """

    @abc.abstractmethod
    def from_table(self, table: pa.Table, *, key: str | None, partitions: int | None = None) -> Frame:
        """An in-memory table, hash-partitioned by ``key`` into ``partitions`` (default: as ``read`` picks;
        ``key=None``: not partitioned by any key)."""

    @abc.abstractmethod
    def default_partitions(self, rows: int) -> int:
        """How many partitions ``read`` makes of ``rows`` rows when not told: a partition is computed in one
        piece, so this bounds its size (local) or follows the cluster's setting (Spark)."""

    @abc.abstractmethod
    def map(self, frame: Frame, kernel: Kernel) -> Frame:
        """``kernel`` applied to each non-empty partition of ``frame`` (lazy)."""

    @abc.abstractmethod
    def select(self, frame: Frame, columns: Sequence[str]) -> Frame:
        """``frame`` with only ``columns`` (in that order), in the same partitions (lazy): what a kernel that
        reads a few columns of a wide frame is given, so the engine moves only those to it (on Spark each
        column crosses to the Python workers; lists of floats or strings cost most). The key is kept when
        among ``columns``; ``SchemaError`` names a column the frame lacks."""

    @abc.abstractmethod
    def co_partition(self, inputs: Mapping[str, Frame], *, key: str, source: str = "source",
                     partitions: int | None = None) -> Frame:
        """The rows of every input together, hash-partitioned by ``key``: one frame whose partition p holds
        every input's rows whose ``key`` hashes to p (so a person's orders, waybills and devices meet in one
        kernel call), each row tagged with its input's name in column ``source``.

        Columns: ``source``, then every input's columns in order of first appearance, all nullable (a row
        holds null in the columns its input lacks); a column in several inputs must have one type, and
        every input needs ``key``. ``partitions`` defaults to the engine's setting on Spark and to the
        largest input's count locally. Exactly a hash repartition of the union: nothing is sampled or
        dropped, so it keeps every guarantee of the rows it moves.
        """

    @abc.abstractmethod
    def connected_components(self, edges: Frame, *, ends: tuple[str, str] = ("u", "v")) -> Frame:
        """The connected components of the undirected graph whose edges are the rows of ``edges``.

        ``ends`` names the two string columns holding an edge's vertices (rows with a null end are
        ignored; loops and duplicates are fine). Result: one row ``(vertex, component)`` per vertex,
        ``component`` the least vertex of its component in string order, hash-partitioned by
        ``vertex``. Local: scipy's ``connected_components``; Spark: large-star/small-star (Kiveris
        et al., SoCC 2014), nothing collected to the driver but two counts per round. Deterministic:
        the same rows on both engines.
        """

    @abc.abstractmethod
    def implicit_factors(self, feedback: Frame, *, row: str, column: str, weight: str,
                         settings: FactorSettings = FactorSettings()) -> tuple[Frame, pa.Table]:
        """Implicit-feedback ALS factors of the (``row``, ``column``, ``weight``) rows of ``feedback``.

        Returns the row factors, a frame ``(row, factors)`` hash-partitioned by ``row`` into
        ``feedback``'s partition count, and the column factors, a small table ``(column, factors)``
        in string order (factors: list of float32, ``settings.factors`` long). Stored pairs are the
        rows with a positive weight (repeats add up); a negative or non-finite weight is a
        ``ValueError``. The compiled conjugate-gradient solver on both: in this process locally, in
        one barrier stage on Spark, nothing person-level collected (see ``pipelines.engines._factors``):
        the same quality, not the same factors.
        """

    @abc.abstractmethod
    def keep(self, frame: Frame) -> Frame:
        """``frame``, computed once when first needed and kept (in the engine's scratch space or executors'
        memory and disks) until the engine closes: for a frame read more than once, whose kernels and
        reads would otherwise run again for each use. The rows are the same, so are the guarantees."""

    @abc.abstractmethod
    def collect(self, frame: Frame) -> pa.Table:
        """All rows of ``frame`` on the driver, in no particular order: only for small (reduced) results."""

    @abc.abstractmethod
    def broadcast(self, value: T) -> Broadcast[T]:
        """Ship a small value (a table, numpy arrays) to every kernel once."""

    @property
    def kernel_threads(self) -> int:
        """Threads one kernel call may use without oversubscribing the cores the engine runs on."""
        return 1

    @abc.abstractmethod
    def save(self, frame: Frame, folder: Path) -> None:
        """Compute ``frame`` and write it as Parquet files into the new folder ``folder`` (not atomic by itself:
        give a folder inside ``workspace.staging()`` and publish it, as ``write`` does)."""

    def write(self, frame: Frame, workspace, name: str) -> Path:
        """Write ``frame`` as Parquet to ``workspace.outputs(name)``, replacing the folder atomically.

        Computed into a staging folder inside the workspace and published only when every
        partition succeeded: a failure leaves the previous folder as it was.
        """
        self._check_frame(frame)
        destination = workspace.outputs(name)
        with workspace.staging() as stage:
            self.save(frame, stage / name)
            workspace.publish({destination: stage / name})
        return destination

    def _check_frame(self, frame: Frame, kernel: Kernel | None = None) -> None:
        if not isinstance(frame, Frame):
            raise TypeError(f"expected a Frame from this engine, got {type(frame).__name__}")
        if frame.engine is not self:
            raise ValueError(f"this frame belongs to another engine ({frame.engine!r}); read it through {self!r}")
        if kernel is None:
            return
        if not isinstance(kernel, Kernel):
            raise TypeError(f"map needs a Kernel, got {type(kernel).__name__}")
        if kernel.by_person and frame.key is None:
            raise PartitioningError(f"kernel {kernel.name!r} needs data partitioned by person, but its input is not "
                                    f"partitioned by any key (the output of a kernel that dropped the key column?); "
                                    f"read it through the engine with key=...")


def check_partitions(partitions: object) -> int:
    """A positive number of partitions, or ``ValueError``."""
    return check_int(partitions, "partitions")


def wanted_columns(names: Sequence[str], columns: Sequence[str], key: str | None, where: object) -> list[str]:
    """The columns to read, the key (if any) first; ``SchemaError`` naming any that the data lacks."""
    if isinstance(columns, str):
        raise TypeError(f"columns must be a list of column names, got the string {columns!r}")
    wanted = list(dict.fromkeys([*([] if key is None else [key]), *columns]))
    missing = [c for c in wanted if c not in names]
    if missing:
        raise SchemaError(f"{where} has no column {', '.join(map(repr, missing))}; it has {', '.join(names)}")
    return wanted


def selection(frame: Frame, columns: Sequence[str]) -> tuple[pa.Schema, str | None]:
    """The schema and key of ``Engine.select(frame, columns)`` (see there)."""
    if isinstance(columns, str) or not isinstance(columns, Sequence):
        raise TypeError(f"columns must be a list of column names, got {columns!r}")
    if not columns:
        raise ValueError("select needs at least one column")
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise ValueError(f"select names column(s) {', '.join(map(repr, repeated))} more than once")
    missing = [c for c in columns if c not in frame.schema.names]
    if missing:
        raise SchemaError(f"the frame has no column {', '.join(map(repr, missing))}; it has "
                          f"{', '.join(frame.schema.names)}")
    return pa.schema([frame.schema.field(c) for c in columns]), frame.key if frame.key in columns else None


def kept_key(frame: Frame, kernel: Kernel) -> str | None:
    """The key of ``kernel``'s output: the input's, if the output has that column.

    A kernel's output stays in its input's partition; if it still holds the key column, the
    next per-person kernel can rely on it, and its call checks that it really does.
    """
    return frame.key if frame.key is not None and frame.key in kernel.schema.names else None


def co_partitioned_schema(inputs: Mapping[str, Frame], key: str, source: str) -> pa.Schema:
    """The schema of ``Engine.co_partition``'s result (see there); ``SchemaError`` or ``ValueError`` naming
    the input at fault."""
    if not isinstance(inputs, Mapping) or not inputs:
        raise ValueError("co_partition needs a mapping of at least one input name to a Frame")
    fields: dict[str, pa.Field] = {source: pa.field(source, pa.string())}
    owners: dict[str, str] = {}
    for name, frame in inputs.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"co_partition's inputs are named by non-empty strings, got {name!r}")
        if not isinstance(frame, Frame):
            raise TypeError(f"co_partition input {name!r} must be a Frame, got {type(frame).__name__}")
        if key not in frame.schema.names:
            raise SchemaError(f"co_partition input {name!r} has no key column {key!r}; it has "
                              f"{', '.join(frame.schema.names)}")
        if source in frame.schema.names:
            raise SchemaError(f"co_partition input {name!r} already has a column {source!r}; pass another source=")
        for column in frame.schema:
            known = fields.get(column.name)
            if known is None:
                fields[column.name] = pa.field(column.name, column.type)
                owners[column.name] = name
            elif not known.type.equals(column.type):
                raise SchemaError(f"column {column.name!r} is {column.type} in co_partition input {name!r} but "
                                  f"{known.type} in {owners[column.name]!r}; cast one of them")
    return pa.schema(list(fields.values()))


def input_rows(partition: pa.Table, name: str, source: str = "source",
               columns: Sequence[str] | None = None) -> pa.Table:
    """The rows of input ``name`` in one partition of ``Engine.co_partition``'s rows (``source`` names the input),
    only ``columns`` of them when given (selected before the filter: the other inputs' columns are not copied)."""
    mask = pc.equal(partition.column(source), name)
    return (partition if columns is None else partition.select(list(columns))).filter(mask)
