"""One job, two engines: partition kernels over data partitioned by person, run locally or on Spark.

A job reads a Parquet dataset partitioned by the pseudonymous person id, maps pure partition
kernels over it (contribution bounding, features, scoring), brings several inputs of one person
or identity to one partition (``Engine.co_partition``), collects the small per-partition results
and, for DP releases, adds noise once on the driver. Every per-person kernel checks that its
partition really holds whole persons. This package is the protocol and its two engines only; the
jobs are beside the other stages (``pipelines.engine_jobs``, ``pipelines.portraits``).

>>> import pyarrow as pa
>>> engine = get_engine("local")
>>> frame = engine.from_table(pa.table({"person_id": ["a", "b", "a"], "n": [1, 2, 3]}), key="person_id",
...                           partitions=2)
>>> per_person = Kernel(lambda t: t.group_by("person_id").aggregate([("n", "sum")]),
...                     pa.schema([("person_id", pa.string()), ("n_sum", pa.int64())]), name="per_person")
>>> sorted(engine.collect(engine.map(frame, per_person)).to_pylist(), key=lambda r: r["person_id"])
[{'person_id': 'a', 'n_sum': 4}, {'person_id': 'b', 'n_sum': 2}]
>>> engine.close()
"""

from __future__ import annotations

from pipelines.engines._factors import FactorSettings
from pipelines.engines._partitioning import partition_of
from pipelines.engines._protocol import Broadcast, Engine, Frame, Kernel, PartitioningError, input_rows
from pipelines.engines.local import LocalEngine

__all__ = ["ENGINES", "Broadcast", "Engine", "FactorSettings", "Frame", "Kernel", "LocalEngine", "PartitioningError",
           "get_engine", "input_rows", "partition_of"]

ENGINES = ("local", "spark")


def get_engine(name: str = "local", **options: object) -> Engine:
    """The engine called ``name`` ("local" or "spark"), built with ``options``.

    "spark" needs PySpark (``pip install 'portrait[spark]'``); options are ``SparkEngine``'s
    (``spark=`` an existing session, ``master=``, ``config=``, ``partitions=``).
    """
    if name == "local":
        return LocalEngine(**options)
    if name == "spark":
        from pipelines.engines.spark import SparkEngine

        return SparkEngine(**options)
    raise ValueError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
