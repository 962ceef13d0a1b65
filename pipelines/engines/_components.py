"""Connected components of an undirected graph given as edges: scipy in this process, large-star/small-star on Spark.

Both name each component by its least vertex (string order), so the two engines give the same
``(vertex, component)`` rows. The Spark path is the alternating large-star/small-star algorithm
of Kiveris, Lattanzi, Mirrokni, Rastogi and Vassilvitskii, "Connected Components in MapReduce
and Beyond" (SoCC 2014): O(log^2 n) rounds of joins and groupings, each row moved by Spark, none
brought to the driver (the convergence test returns two counts).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from profiling.errors import InternalError, SchemaError

__all__ = ["COMPONENTS_SCHEMA", "MAX_ROUNDS", "check_edges", "components_in_memory", "components_on_spark"]

COMPONENTS_SCHEMA = pa.schema([pa.field("vertex", pa.string(), nullable=False),
                               pa.field("component", pa.string(), nullable=False)])
# Large-star/small-star converges in O(log^2 n) rounds; 64 rounds cover any graph Spark can hold.
MAX_ROUNDS = 64


def check_edges(schema: pa.Schema, ends: tuple[str, str]) -> None:
    """``SchemaError`` unless ``ends`` names two string columns of ``schema``."""
    if not isinstance(ends, tuple) or len(ends) != 2 or ends[0] == ends[1]:
        raise ValueError(f"ends names the two distinct end columns of an edge, got {ends!r}")
    for end in ends:
        if end not in schema.names:
            raise SchemaError(f"the edges have no column {end!r}; they have {', '.join(schema.names)}")
        if not pa.types.is_string(schema.field(end).type):
            raise SchemaError(f"edge column {end!r} must hold vertex names as strings, got {schema.field(end).type}")


def components_in_memory(edges: pa.Table, ends: tuple[str, str]) -> pa.Table:
    """``(vertex, component)`` of every vertex of ``edges`` (rows with a null end are dropped), by scipy."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    first, second = (edges.column(end).combine_chunks() for end in ends)
    kept = pc.and_(first.is_valid(), second.is_valid())
    first, second = first.filter(kept), second.filter(kept)
    # vertices in string order, so a component's least code is its least name
    vertices = pc.unique(pa.concat_arrays([first, second]))
    vertices = vertices.take(pc.sort_indices(vertices))
    u = pc.index_in(first, value_set=vertices).to_numpy()
    v = pc.index_in(second, value_set=vertices).to_numpy()
    n = len(vertices)
    graph = coo_matrix((np.ones(len(u), dtype=np.int8), (u, v)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    least = np.full(labels.max(initial=-1) + 1, n, dtype=np.int64)
    np.minimum.at(least, labels, np.arange(n, dtype=np.int64))
    return pa.table([vertices, vertices.take(pa.array(least[labels]))], schema=COMPONENTS_SCHEMA)


def components_on_spark(edges: Any, ends: tuple[str, str]) -> Any:
    """``(vertex, component)`` of every vertex of the Spark DataFrame ``edges``, by large-star/small-star."""
    from pyspark.sql import functions as F  # noqa: N812 - PySpark's usual name

    a, b = (F.col(end) for end in ends)
    # rows: (u, v) with u >= v, each undirected edge once, loops kept (a vertex alone is its own component);
    # computed once: the rows behind the edges are read a single time
    pairs = (edges.filter(a.isNotNull() & b.isNotNull())
             .select(F.greatest(a, b).alias("u"), F.least(a, b).alias("v")).distinct().localCheckpoint())
    u, v = F.col("u"), F.col("v")
    vertices = pairs.select(u.alias("vertex")).union(pairs.select(v.alias("vertex"))).distinct()
    # rows: (u, v) with u > v, no loops
    current = pairs.filter(u != v)
    for _ in range(MAX_ROUNDS):
        current = _small_star(_large_star(current)).localCheckpoint()
        if _stars(current):
            break
    else:
        raise InternalError(f"large-star/small-star did not converge in {MAX_ROUNDS} rounds; this is a bug")
    # rows: (u, v): every vertex but its component's least points to that least vertex
    return (vertices.join(current, vertices["vertex"] == current["u"], "left")
            .select(F.col("vertex"), F.coalesce(F.col("v"), F.col("vertex")).alias("component")))


def _large_star(edges: Any) -> Any:
    """Each vertex x links its larger neighbours to the least of x and its neighbours."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F  # noqa: N812

    # rows: (x, y) both ways
    both = (edges.select(F.col("u").alias("x"), F.col("v").alias("y"))
            .union(edges.select(F.col("v").alias("x"), F.col("u").alias("y"))))
    least = F.least(F.col("x"), F.min("y").over(Window.partitionBy("x")))
    # rows: (y, least of x's closed neighbourhood) for each neighbour y > x
    return (both.withColumn("m", least).filter(F.col("y") > F.col("x"))
            .select(F.col("y").alias("u"), F.col("m").alias("v")).distinct())


def _small_star(edges: Any) -> Any:
    """Each vertex x links itself and its smaller neighbours to the least of them."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F  # noqa: N812

    # rows: (u, v, m) with v < u; m the least of u's smaller neighbours
    smaller = edges.withColumn("m", F.min("v").over(Window.partitionBy("u")))
    return (smaller.filter(F.col("v") != F.col("m")).select(F.col("v").alias("u"), F.col("m").alias("v"))
            .union(smaller.select(F.col("u"), F.col("m").alias("v"))).distinct())


def _stars(edges: Any) -> bool:
    """Every vertex points to at most one vertex, and no pointed-to vertex points on: the graph is stars.

    One Spark job: the vertices pointing to two or more, and those both pointed to and pointing, are
    counted together (at most one of them).
    """
    from pyspark.sql import functions as F  # noqa: N812

    branching = edges.groupBy("u").count().filter(F.col("count") > 1).select("u")
    chained = edges.select("v").intersect(edges.select("u"))
    return branching.union(chained).limit(1).count() == 0
