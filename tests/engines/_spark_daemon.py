"""The Python worker daemon of the test Spark session, with Portrait imported and compiled before workers fork.

Spark forks a Python worker from its daemon for each task slot, and again after a task raised;
importing Portrait (numpy, numba, OpenDP) and loading its compiled kernels once in the daemon
saves seconds on every fork.
"""

import numpy as np
import pyarrow as pa
from pyspark import daemon

from dp._bounding import GroupCodes, bound_contributions, encode_persons
from pipelines.engines import partition_of
from profiling.scoring import top_k_batches


def _load_kernels() -> None:
    for keys in (pa.array(["a"]), pa.array([1], pa.int64()), pa.array([1], pa.int32())):
        partition_of(keys, 2)
    bound_contributions(encode_persons(pa.array(["a", "b"])), GroupCodes.of(np.array([0, 1]), 2),
                        max_partitions=1, max_rows_per_partition=1)
    list(top_k_batches(np.ones((1, 2)), np.ones((3, 2)), 2, threads=1))


if __name__ == "__main__":
    _load_kernels()
    daemon.manager()
