"""Implicit-feedback factors of a (row, column, weight) frame: the compiled solver here, MLlib's ALS on Spark.

Both fit the model of Hu, Koren and Volinsky (ICDM 2008): every stored pair has preference 1 and
confidence ``1 + alpha * weight``, every other pair preference 0 and confidence 1, with an L2
penalty on the factors. In this process the rows are numbered in string order and solved by
``profiling.factors.ImplicitALS`` (conjugate gradient, deterministic for a seed). On Spark,
MLlib's blocked ALS with ``implicitPrefs``: rows are numbered in the JVM (string order within
hash buckets) and the row factors stay on the executors; only the columns (the catalogue: few),
the bucket sizes and a few counts come to the driver. MLlib solves each row exactly rather than
by conjugate gradient, and scales the penalty by the row's number of stored pairs (ALS-WR), so
the two engines give factors of the same quality on a holdout, not the same factors.

No privacy mechanism is applied: the factors are per row and stay with the engine; fit them only
on rows of persons whose consent covers the purpose.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from profiling._string_hash import StringIndex, _dictionary_encode
from profiling.checks import check_int, check_number
from profiling.errors import SchemaError

__all__ = ["FACTORS_FIELD", "FactorSettings", "check_feedback", "factors_in_memory", "factors_on_spark",
           "factors_schema"]

FACTORS_FIELD = "factors"
# MLlib numbers rows and columns with 32-bit integers.
_MAX_IDS = 2**31 - 1


@dataclass(frozen=True)
class FactorSettings:
    """``factors`` per row and column, ``iterations`` alternating sweeps, penalty ``regularization``
    (per stored pair on Spark), confidence ``1 + alpha * weight``, ``seed`` for the starting factors."""

    factors: int = 64
    iterations: int = 15
    regularization: float = 0.01
    alpha: float = 40.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_int(self.factors, "factors")
        check_int(self.iterations, "iterations")
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
    columns in string order.

    Each partition is reduced as it comes to integer codes into its own distinct rows and columns
    and float64 weights (16 bytes a pair, the ids themselves not kept), then renumbered in string
    order once all are seen. Pairs with a null or zero weight are not stored pairs; repeated pairs
    add up (in float64, then solved in float32). A bad weight is refused before the fit.
    """
    from profiling.factors import ImplicitALS

    pieces, smallest, non_finite = [], None, 0
    for table in partitions:
        weights = table.column(weight).cast(pa.float64())
        low = pc.min(weights).as_py()
        smallest = low if smallest is None or (low is not None and low < smallest) else smallest
        non_finite += pc.sum(pc.invert(pc.is_finite(weights).fill_null(True))).as_py() or 0
        kept = pc.and_(pc.greater(weights, 0).fill_null(False),
                       pc.and_(table.column(row).is_valid(), table.column(column).is_valid()))
        (rows, row_codes), (columns, column_codes) = (
            _dictionary_encode(table.column(name).filter(kept).combine_chunks()) for name in (row, column))
        # per partition: (its distinct rows, its distinct columns, row code, column code, weight) per stored pair
        pieces.append((rows, columns, row_codes, column_codes, weights.filter(kept).to_numpy()))
    _refuse_bad_weights(smallest, non_finite)
    rows, columns = (_sorted_unique([piece[side] for piece in pieces]) for side in (0, 1))
    row_index, column_index = StringIndex(rows), StringIndex(columns)
    row_codes, column_codes = (np.concatenate([np.zeros(0, np.int32), *(
        index.positions(piece[side]).astype(np.int32)[piece[side + 2]] for piece in pieces)])
        for index, side in ((row_index, 0), (column_index, 1)))
    values = np.concatenate([np.zeros(0, np.float64), *(piece[4] for piece in pieces)])
    del pieces
    # repeated pairs summed in float64 (as recency_weighted_counts does), then kept in float32 for the solver
    matrix = sp.csr_array((values, (row_codes, column_codes)), shape=(len(rows), len(columns))).astype(np.float32)
    del values, row_codes, column_codes
    if not len(rows):  # no stored pair: nothing to fit
        empty = np.zeros((0, settings.factors), dtype=np.float32)
        return _factor_table(row, rows, empty), _factor_table(column, columns, empty)
    model = ImplicitALS(factors=settings.factors, iterations=settings.iterations,
                        regularization=settings.regularization, alpha=settings.alpha,
                        random_state=settings.seed).fit(matrix)
    return (_factor_table(row, rows, model.person_factors_), _factor_table(column, columns, model.item_factors_))


def _sorted_unique(arrays: list[pa.Array]) -> pa.Array:
    """The distinct strings of ``arrays``, in string order."""
    unique = pc.unique(pa.chunked_array(arrays, pa.string()).combine_chunks())
    return unique.take(pc.sort_indices(unique))


def _factor_table(key: str, ids: pa.Array, factors: np.ndarray) -> pa.Table:
    flat = pa.array(np.ascontiguousarray(factors, dtype=np.float32).reshape(-1))
    lists = pa.FixedSizeListArray.from_arrays(flat, factors.shape[1]).cast(pa.list_(pa.float32()))
    return pa.table([ids.cast(pa.string()), lists], schema=factors_schema(key))


def factors_on_spark(spark: Any, frame: Any, row: str, column: str, weight: str, settings: FactorSettings,
                     blocks: int) -> tuple[Any, pa.Table]:
    """``(row factors as a Spark DataFrame, column factors)`` of the Spark DataFrame ``frame`` by MLlib's ALS.

    ``blocks``: MLlib's row and column blocks (the frame's partitions). Rows are numbered on the
    executors (``_numbered``); the columns are collected (a catalogue), numbered in string
    order, and their factors collected with them.
    """
    functions = _spark("pyspark.sql.functions")
    recommendation = _spark("pyspark.ml.recommendation")
    kept = _spark("pyspark").StorageLevel.MEMORY_AND_DISK
    # Each of the actions below (and MLlib's own) would otherwise compute the feedback's whole lineage again
    # (the orders read and weighted by a Python kernel): the feedback and its stored pairs are kept once computed.
    frame = frame.select(row, column, weight).persist(kept)
    value = functions.col(weight).cast("double")
    checks = frame.agg(functions.min(value).alias("smallest"),
                       functions.sum(functions.when(functions.isnan(value) | (functions.abs(value) == float("inf")),
                                                    1).otherwise(0)).alias("non_finite")).first()
    _refuse_bad_weights(checks["smallest"], checks["non_finite"] or 0)
    # rows: (row, column, weight) stored pairs only, repeated pairs added up
    pairs = (frame.where(value > 0).where(functions.col(row).isNotNull() & functions.col(column).isNotNull())
             .groupBy(row, column).agg(functions.sum(value).cast("float").alias("__weight"))).persist(kept)
    columns = _sorted_unique([pa.array([r[column] for r in pairs.select(column).distinct().collect()], pa.string())])
    if not len(columns):  # no stored pair: nothing to fit, no row gets factors
        return (pairs.select(functions.col(row), functions.array().cast("array<float>").alias(FACTORS_FIELD)),
                _factor_table(column, columns, np.zeros((0, settings.factors), dtype=np.float32)))
    distinct_rows = pairs.select(row).distinct()
    for what, count in (("rows", distinct_rows.count()), ("columns", len(columns))):
        if count > _MAX_IDS:
            raise ValueError(f"MLlib numbers {what} with 32-bit integers; {count:,} {what} are too many")
    numbered_rows = _numbered(spark, distinct_rows, row, "__row", blocks).persist(kept)  # the row factors use it
    numbered_columns = spark.createDataFrame(
        pa.table({column: columns, "__column": pa.array(np.arange(len(columns), dtype=np.int32))}))
    # rows: (__row, __column, __weight) as MLlib wants them: integer ids
    ratings = (pairs.join(numbered_rows, row).join(functions.broadcast(numbered_columns), column)
               .select("__row", "__column", "__weight"))
    als = recommendation.ALS(rank=settings.factors, maxIter=settings.iterations, regParam=settings.regularization,
                             alpha=settings.alpha, implicitPrefs=True, seed=settings.seed, userCol="__row",
                             itemCol="__column", ratingCol="__weight", numUserBlocks=blocks, numItemBlocks=blocks,
                             nonnegative=False)
    model = als.fit(ratings)
    # rows: (row, factors) on the executors, never collected
    row_factors = (model.userFactors.withColumnRenamed("id", "__row").join(numbered_rows, "__row")
                   .select(functions.col(row), functions.col("features").cast("array<float>").alias(FACTORS_FIELD)))
    learned = {r["id"]: r["features"] for r in model.itemFactors.collect()}
    frame.unpersist()
    pairs.unpersist()
    column_factors = np.zeros((len(columns), settings.factors), dtype=np.float32)
    for index, features in learned.items():
        column_factors[index] = features
    return row_factors, _factor_table(column, columns, column_factors)


def _numbered(spark: Any, distinct: Any, name: str, index: str, buckets: int) -> Any:
    """``(name, index)``: each distinct value numbered 0, 1, ... in the JVM, deterministically.

    Values are hashed into ``buckets``, numbered in string order within their bucket, and offset by
    the sizes of the buckets before (``buckets`` counts come to the driver, nothing else).
    """
    functions = _spark("pyspark.sql.functions")
    window = _spark("pyspark.sql.window").Window
    bucketed = distinct.withColumn("__bucket", functions.pmod(functions.hash(name), functions.lit(buckets)))
    sizes = {r["__bucket"]: r["count"] for r in bucketed.groupBy("__bucket").count().collect()}
    first = np.cumsum([0] + [sizes.get(b, 0) for b in range(buckets)])[:-1]
    offsets = spark.createDataFrame(pa.table({"__bucket": pa.array(np.arange(buckets, dtype=np.int32)),
                                              "__offset": pa.array(first.astype(np.int64))}))
    ranked = bucketed.withColumn("__rank", functions.row_number().over(window.partitionBy("__bucket").orderBy(name)))
    return (ranked.join(functions.broadcast(offsets), "__bucket")
            .select(name, (functions.col("__offset") + functions.col("__rank") - 1).cast("int").alias(index)))


def _spark(module: str) -> Any:
    from pipelines.engines._optional import import_optional

    return import_optional(module, extra="spark", purpose="the Spark engine")
