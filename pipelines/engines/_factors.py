"""Implicit-feedback factors of a (row, column, weight) frame by the compiled solver, on either engine.

Both fit the model of Hu, Koren and Volinsky (ICDM 2008): every stored pair has preference 1 and
confidence ``1 + alpha * weight``, every other pair preference 0 and confidence 1, with an L2
penalty on the factors, by ``cg_steps`` conjugate-gradient steps per row and column and sweep.
In this process the rows are numbered in string order and solved by ``profiling.factors.ImplicitALS``
(deterministic for a seed). On Spark, one barrier stage runs the same half-steps with the rows
split among its tasks (``profiling.factors._partitioned``): the row factors stay on the executors,
the tasks exchange only column-sized sums, and only the columns (the catalogue: few) and their
factors come to the driver. The two engines start from other random factors and add up in
another order, so they give factors of the same quality on a holdout, not the same factors.

No privacy mechanism is applied: the factors are per row and stay with the engine; fit them only
on rows of persons whose consent covers the purpose.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from pipelines.engines._exchange import task_sums
from profiling._string_hash import StringIndex, _dictionary_encode
from profiling.checks import check_int, check_number
from profiling.errors import SchemaError

__all__ = ["FACTORS_FIELD", "FactorSettings", "check_feedback", "factors_in_memory", "factors_on_spark",
           "factors_schema"]

FACTORS_FIELD = "factors"


@dataclass(frozen=True)
class FactorSettings:
    """``factors`` per row and column, ``iterations`` alternating sweeps of ``cg_steps`` conjugate-gradient
    steps per row and column, penalty ``regularization``, confidence ``1 + alpha * weight``, ``seed``
    for the starting factors."""

    factors: int = 64
    iterations: int = 15
    regularization: float = 0.01
    alpha: float = 40.0
    seed: int = 0
    cg_steps: int = 3

    def __post_init__(self) -> None:
        check_int(self.factors, "factors")
        check_int(self.iterations, "iterations")
        check_int(self.cg_steps, "cg_steps")
        check_int(self.seed, "seed", minimum=0)
        check_number(self.regularization, "regularization", minimum=0)
        check_number(self.alpha, "alpha", positive=True)


def factors_schema(key: str) -> pa.Schema:
    """``(key, factors)``: an id and its factors as a list of float32."""
    return pa.schema([pa.field(key, pa.string(), nullable=False),
                      pa.field(FACTORS_FIELD, pa.list_(pa.float32()), nullable=False)])


def check_feedback(schema: pa.Schema, row: str, column: str, weight: str) -> None:
    """``SchemaError`` unless ``row`` and ``column`` are string columns and ``weight`` a numeric one."""
    if len({row, column, weight}) != 3:
        raise ValueError(f"row, column and weight name three different columns, got {row!r}, {column!r}, {weight!r}")
    for name, wanted, test in ((row, "strings", pa.types.is_string), (column, "strings", pa.types.is_string),
                               (weight, "numbers", lambda t: pa.types.is_integer(t) or pa.types.is_floating(t))):
        if name not in schema.names:
            raise SchemaError(f"the feedback has no column {name!r}; it has {', '.join(schema.names)}")
        if not test(schema.field(name).type):
            raise SchemaError(f"feedback column {name!r} must hold {wanted}, got {schema.field(name).type}")


def _refuse_bad_weights(smallest: float | None, non_finite: int) -> None:
    if non_finite or (smallest is not None and smallest < 0):
        raise ValueError("feedback weights must be finite and non-negative (recency-weighted counts); "
                         f"found {'a non-finite weight' if non_finite else f'the weight {smallest}'}")


def factors_in_memory(partitions: Iterable[pa.Table], row: str, column: str, weight: str,
                      settings: FactorSettings) -> tuple[pa.Table, pa.Table]:
    """``(row factors, column factors)`` of the feedback in ``partitions`` by the compiled solver, rows and
    columns in string order; the stored pairs as ``_feedback_matrix`` reads them (a bad weight is refused
    before the fit).
    """
    from profiling.factors import ImplicitALS

    rows, columns, matrix = _feedback_matrix(partitions, row, column, weight)
    if not len(rows):  # no stored pair: nothing to fit
        empty = np.zeros((0, settings.factors), dtype=np.float32)
        return _factor_table(row, rows, empty), _factor_table(column, columns, empty)
    model = ImplicitALS(factors=settings.factors, iterations=settings.iterations, cg_steps=settings.cg_steps,
                        regularization=settings.regularization, alpha=settings.alpha,
                        random_state=settings.seed).fit(matrix)
    return (_factor_table(row, rows, model.person_factors_), _factor_table(column, columns, model.item_factors_))


def _feedback_matrix(partitions: Iterable[pa.Table], row: str, column: str, weight: str,
                     columns: pa.Array | None = None) -> tuple[pa.Array, pa.Array, sp.csr_array]:
    """``(rows, columns, matrix)``: the stored pairs of ``partitions`` as a float32 CSR matrix, rows in string order,
    columns those of the pairs in string order, or ``columns`` as given (every stored column among them).

    Each partition is reduced as it comes to integer codes into its own distinct rows and columns
    and float64 weights (16 bytes a pair, the ids themselves not kept), then renumbered once all
    are seen. Pairs with a null or zero weight are not stored pairs; repeated pairs add up (in
    float64, then kept in float32). A bad weight is refused before anything is built.
    """
    pieces, smallest, non_finite = [], None, 0
    for table in partitions:
        weights = table.column(weight).cast(pa.float64())
        low = pc.min(weights).as_py()
        smallest = low if smallest is None or (low is not None and low < smallest) else smallest
        non_finite += pc.sum(pc.invert(pc.is_finite(weights).fill_null(True))).as_py() or 0
        kept = pc.and_(pc.greater(weights, 0).fill_null(False),
                       pc.and_(table.column(row).is_valid(), table.column(column).is_valid()))
        (rows, row_codes), (named, column_codes) = (
            _dictionary_encode(table.column(name).filter(kept).combine_chunks()) for name in (row, column))
        # per partition: (its distinct rows, its distinct columns, row code, column code, weight) per stored pair
        pieces.append((rows, named, row_codes, column_codes, weights.filter(kept).to_numpy()))
    _refuse_bad_weights(smallest, non_finite)
    rows = _sorted_unique([piece[0] for piece in pieces])
    columns = _sorted_unique([piece[1] for piece in pieces]) if columns is None else columns
    row_index, column_index = StringIndex(rows), StringIndex(columns)
    row_codes, column_codes = (np.concatenate([np.zeros(0, np.int32), *(
        index.positions(piece[side]).astype(np.int32)[piece[side + 2]] for piece in pieces)])
        for index, side in ((row_index, 0), (column_index, 1)))
    values = np.concatenate([np.zeros(0, np.float64), *(piece[4] for piece in pieces)])
    del pieces
    # repeated pairs summed in float64 (as recency_weighted_counts does), then kept in float32 for the solver
    matrix = sp.csr_array((values, (row_codes, column_codes)), shape=(len(rows), len(columns))).astype(np.float32)
    return rows, columns, matrix


def _sorted_unique(arrays: list[pa.Array]) -> pa.Array:
    """The distinct strings of ``arrays``, in string order."""
    unique = pc.unique(pa.chunked_array(arrays, pa.string()).combine_chunks())
    return unique.take(pc.sort_indices(unique))


def _factor_table(key: str, ids: pa.Array, factors: np.ndarray) -> pa.Table:
    flat = pa.array(np.ascontiguousarray(factors, dtype=np.float32).reshape(-1))
    lists = pa.FixedSizeListArray.from_arrays(flat, factors.shape[1]).cast(pa.list_(pa.float32()))
    return pa.table([ids.cast(pa.string()), lists], schema=factors_schema(key))


def factors_on_spark(engine: Any, frame: Any, row: str, column: str, weight: str, settings: FactorSettings,
                     blocks: int) -> tuple[Any, pa.Table]:
    """``(row factors as a Spark DataFrame, column factors)`` of the Spark DataFrame ``frame`` by the
    compiled solver's half-steps in one barrier stage.

    The stored pairs are hash-partitioned by row into ``blocks`` tasks at most (no more than the
    cluster's task slots: a barrier stage's tasks all run at once); each task fits its rows with
    ``profiling.factors._partitioned.fit_partition``, summing the column-side terms with the other
    tasks by ``pipelines.engines._exchange.task_sums`` (columns x factors float32 per exchange,
    ``cg_steps + 1`` exchanges a sweep): over the tasks' own connections, or through Spark's
    ``allGather`` (about a second each) when Spark encrypts its traffic or a task cannot connect.
    Row factors stay on the executors (the stage's output is kept until ``engine``, the
    ``SparkEngine``, closes); the columns (a catalogue: few) are collected, numbered in string
    order, broadcast to the tasks, and their factors collected.
    """
    functions = _spark("pyspark.sql.functions")
    # The checks, the columns and the fit each read the feedback: it is computed once (the orders read and
    # weighted by a Python kernel), kept for the three, and released after the fit.
    frame = frame.select(row, column, weight).persist(_spark("pyspark").StorageLevel.MEMORY_AND_DISK)
    value = functions.col(weight).cast("double")
    checks = frame.agg(functions.min(value).alias("smallest"),
                       functions.sum(functions.when(functions.isnan(value) | (functions.abs(value) == float("inf")),
                                                    1).otherwise(0)).alias("non_finite")).first()
    _refuse_bad_weights(checks["smallest"], checks["non_finite"] or 0)
    stored = (frame.where((value > 0) & functions.col(row).isNotNull() & functions.col(column).isNotNull())
              .select(row, column, value.alias(weight)))
    columns = _sorted_unique([pa.array([r[column] for r in stored.select(column).distinct().collect()], pa.string())])
    if not len(columns):  # no stored pair: nothing to fit, no row gets factors
        frame.unpersist()
        return (stored.select(functions.col(row), functions.array().cast("array<float>").alias(FACTORS_FIELD)),
                _factor_table(column, columns, np.zeros((0, settings.factors), dtype=np.float32)))
    task_cores = engine.kernel_threads
    slots = max(1, engine.spark.sparkContext.defaultParallelism // task_cores)
    fitted = engine._keep(engine._map_in_arrow(
        stored.repartition(min(blocks, slots), row),
        _fit_kernel(row, column, weight, engine.broadcast(columns), settings, threads=task_cores,
                    direct=not _encrypts_traffic(engine.spark)), _FITTED_SCHEMA,
        barrier=True))
    # rows: (__side, __id, factors): every task's rows (side 0), and from the first task the columns (side 1) in
    # string order
    learned = fitted.where(functions.col("__side") == 1).select(FACTORS_FIELD).toArrow()
    frame.unpersist()
    row_factors = (fitted.where(functions.col("__side") == 0)
                   .select(functions.col("__id").alias(row), functions.col(FACTORS_FIELD)))
    return row_factors, _factor_table(column, columns, np.array(learned.column(FACTORS_FIELD).to_pylist(),
                                                                  dtype=np.float32).reshape(-1, settings.factors))


_FITTED_SCHEMA = f"__side tinyint, __id string, {FACTORS_FIELD} array<float>"


def _fit_kernel(row: str, column: str, weight: str, columns: Any, settings: FactorSettings,
                threads: int, direct: bool) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The barrier stage's task: its stored pairs -> its rows' factors (and, in the first task, the columns')."""
    def fit(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import BarrierTaskContext

        from profiling.factors._partitioned import fit_partition

        task = BarrierTaskContext.get()
        rows, catalogue, matrix = _feedback_matrix((pa.Table.from_batches([batch]) for batch in batches), row,
                                                   column, weight, columns=columns.value)
        with task_sums(task, direct=direct) as allreduce:
            row_factors, column_factors = fit_partition(
                matrix, factors=settings.factors, iterations=settings.iterations,
                regularization=settings.regularization, alpha=settings.alpha, cg_steps=settings.cg_steps,
                seed=settings.seed, part=task.partitionId(), allreduce=allreduce, threads=threads)
        yield from _fitted_rows(0, rows, row_factors)
        if task.partitionId() == 0:
            yield from _fitted_rows(1, catalogue, column_factors)

    return fit


def _fitted_rows(side: int, ids: pa.Array, factors: np.ndarray) -> list[pa.RecordBatch]:
    table = _factor_table("__id", ids, factors)
    return table.add_column(0, "__side", pa.array(np.full(len(ids), side, np.int8))).to_batches()


def _encrypts_traffic(spark: Any) -> bool:
    """Whether Spark is set to encrypt its own network traffic (then the fit's sums go through its channel)."""
    return any(spark.conf.get(name, "false").strip().lower() == "true"
               for name in ("spark.network.crypto.enabled", "spark.ssl.enabled"))


def _spark(module: str) -> Any:
    from pipelines.engines._optional import import_optional

    return import_optional(module, extra="spark", purpose="the Spark engine")
