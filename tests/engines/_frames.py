"""Data for the engine tests: pseudonyms, and frames that only claim to be partitioned by person."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipelines.engines import Frame
from pipelines.engines.local import _Partitions


def scattered(engine, table: pa.Table, key: str, partitions: int) -> Frame:
    """``table`` in ``partitions`` partitions dealt round-robin, NOT by ``key``, yet claiming to be keyed by it."""
    if engine.name == "spark":
        handle = engine.spark.createDataFrame(table).repartition(partitions)
        return Frame(engine, table.schema, key, partitions, handle)
    slices = [table.take(pa.array(np.arange(p, table.num_rows, partitions))) for p in range(partitions)]
    return Frame(engine, table.schema, key, partitions, _Partitions(lambda p: slices[p]))


def person_ids(count: int, seed: int) -> list[str]:
    """``count`` pseudonyms like the real ones: 32 random hex characters."""
    rng = np.random.default_rng(seed)
    return [bytes(row).hex() for row in rng.integers(0, 256, size=(count, 16), dtype=np.uint8)]
