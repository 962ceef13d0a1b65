"""Which partition a person's rows belong to, the check that they are there, and the kernel call.

``partition_of`` is Spark's own hash partitioning (``pmod(hash(key), n)``: Murmur3 x86 32-bit,
seed 42, over the key's UTF-8 bytes or its integer value), computed here with a compiled
kernel, so the local engine puts every person in the same partition Spark's
``repartition(n, key)`` does, and both engines can check it with the same function.

Why a check at all: contribution bounding runs per partition and is correct only if all of
a person's rows are in one partition. Every kernel that needs that (``Kernel.by_person``) is
called through ``call_kernel``, which first checks that every row's key hashes to the
partition being processed (one pass over the key column, a few ns per row). Since a key
hashes to one partition only, passing the check proves each person is in exactly one
partition; data that was not partitioned by person fails it with ``PartitioningError``.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from numba import njit

from pipelines.engines._protocol import Kernel, PartitioningError
from profiling.checks import check_int
from profiling.errors import InternalError

__all__ = ["call_kernel", "check_by_person", "partition_of"]

_SEED = 42          # Spark's Murmur3Hash seed


# Every constant is a uint64: numba turns uint64 mixed with int64 into float64.
_M32 = np.uint64(0xFFFFFFFF)
_C1, _C2 = np.uint64(0xCC9E2D51), np.uint64(0x1B873593)
_F1, _F2 = np.uint64(0x85EBCA6B), np.uint64(0xC2B2AE35)
_N1, _FIVE = np.uint64(0xE6546B64), np.uint64(5)
_U13, _U15, _U16, _U17, _U19 = (np.uint64(b) for b in (13, 15, 16, 17, 19))


@njit(inline="always")
def _mix_k1(k1):
    k1 = (k1 * _C1) & _M32
    k1 = ((k1 << _U15) | (k1 >> _U17)) & _M32
    return (k1 * _C2) & _M32


@njit(inline="always")
def _mix_h1(h1, k1):
    h1 ^= k1
    h1 = ((h1 << _U13) | (h1 >> _U19)) & _M32
    return (h1 * _FIVE + _N1) & _M32


@njit(inline="always")
def _fmix(h1, length):
    h1 ^= length
    h1 ^= h1 >> _U16
    h1 = (h1 * _F1) & _M32
    h1 ^= h1 >> _U13
    h1 = (h1 * _F2) & _M32
    h1 ^= h1 >> _U16
    return h1


@njit(inline="always")
def _pmod(h1, partitions):
    signed = np.int64(h1)
    if signed >= np.int64(1) << 31:
        signed -= np.int64(1) << 32
    return ((signed % partitions) + partitions) % partitions


@njit(nogil=True, cache=True)
def _string_partitions(offsets, data, valid, partitions):  # pragma: no cover - compiled
    """Spark's ``hashUnsafeBytes``: whole little-endian 4-byte words, then each tail byte (sign-extended) alone."""
    n = offsets.shape[0] - 1
    out = np.empty(n, np.int32)
    for i in range(n):
        h1 = np.uint64(_SEED)
        if valid[i]:
            start, stop = np.int64(offsets[i]), np.int64(offsets[i + 1])
            length = stop - start
            aligned = start + length - length % 4
            for at in range(start, aligned, 4):
                word = (np.uint64(data[at]) | (np.uint64(data[at + 1]) << np.uint64(8))
                        | (np.uint64(data[at + 2]) << np.uint64(16)) | (np.uint64(data[at + 3]) << np.uint64(24)))
                h1 = _mix_h1(h1, _mix_k1(word))
            for at in range(aligned, stop):
                byte = np.uint64(data[at])
                if byte >= 128:
                    byte |= np.uint64(0xFFFFFF00)   # Java's byte is signed
                h1 = _mix_h1(h1, _mix_k1(byte))
            h1 = _fmix(h1, np.uint64(length))
        out[i] = _pmod(h1, partitions)
    return out


@njit(nogil=True, cache=True)
def _integer_partitions(values, valid, wide, partitions):  # pragma: no cover - compiled
    """Spark's ``hashLong`` (low word, then high word; length 8) or ``hashInt`` (length 4)."""
    n = values.shape[0]
    out = np.empty(n, np.int32)
    for i in range(n):
        h1 = np.uint64(_SEED)
        if valid[i]:
            bits = np.uint64(values[i])
            h1 = _mix_h1(h1, _mix_k1(bits & _M32))
            if wide:
                h1 = _mix_h1(h1, _mix_k1(bits >> np.uint64(32)))
                h1 = _fmix(h1, np.uint64(8))
            else:
                h1 = _fmix(h1, np.uint64(4))
        out[i] = _pmod(h1, partitions)
    return out


def partition_of(keys: pa.Array | pa.ChunkedArray, partitions: int) -> np.ndarray:
    """The partition (int32 in ``[0, partitions)``) of each key, as Spark's ``repartition(partitions, key)`` assigns it.

    Keys are strings or integers (int32 hashed as Spark's int, other integers as its long);
    a null key hashes as Spark's null does.

    >>> partition_of(pa.array(["5f2b9c0e8a7d4e3f9b1c2d3e4f5a6b7c", None]), 4).tolist()
    [3, 2]
    """
    partitions = check_int(partitions, "partitions")
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks() if keys.num_chunks != 1 else keys.chunk(0)
    if not isinstance(keys, pa.Array):
        raise TypeError(f"keys must be an Arrow array, got {type(keys).__name__}")
    kind = keys.type
    if not (pa.types.is_integer(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind)
            or pa.types.is_string_view(kind)):
        raise TypeError(f"a partition key must be a string or integer column, got {kind}")
    if partitions == 1:
        return np.zeros(len(keys), np.int32)     # pmod(anything, 1): no need to hash
    valid = keys.is_valid().to_numpy(zero_copy_only=False)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        if pa.types.is_string_view(kind):
            keys = keys.cast(pa.large_string())
        # the offsets as stored (int32 for string, int64 for large_string): no copy of the text
        width = np.int32 if pa.types.is_string(keys.type) else np.int64
        offsets = np.frombuffer(keys.buffers()[1], dtype=width)[keys.offset: keys.offset + len(keys) + 1]
        data = keys.buffers()[2]
        data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, dtype=np.uint8)
        return _string_partitions(offsets, data, valid, np.int64(partitions))
    values = keys.fill_null(0).cast(pa.int64()).to_numpy()
    return _integer_partitions(values, valid, not pa.types.is_int32(kind), np.int64(partitions))


def check_by_person(table: pa.Table, key: str, partition: int, partitions: int, kernel: str) -> None:
    """Raise ``PartitioningError`` unless every row's ``key`` hashes to ``partition`` (of ``partitions``)."""
    if key not in table.column_names:
        raise PartitioningError(f"kernel {kernel!r} needs its rows partitioned by {key!r}, but the partition has "
                                f"no column {key!r} (it has {', '.join(table.column_names)})")
    expected = partition_of(table.column(key), partitions)
    misplaced = np.flatnonzero(expected != partition)
    if len(misplaced):
        row = int(misplaced[0])
        raise PartitioningError(
            f"kernel {kernel!r}: partition {partition} of {partitions} holds {len(misplaced)} row(s) whose {key!r} "
            f"hashes to another partition (first: row {row}, which belongs in partition {int(expected[row])}); the "
            f"data is not partitioned by {key!r}, so per-person bounding would be wrong. Read it through the engine "
            f"with key={key!r}")


def call_kernel(kernel: Kernel, table: pa.Table, *, key: str | None, partition: int, partitions: int) -> pa.Table:
    """Run ``kernel`` on one whole partition: first check it is by person (if the kernel needs that),
    then check the result's schema."""
    if kernel.by_person:
        if key is None:
            raise InternalError(f"kernel {kernel.name!r} needs data partitioned by person and got an unkeyed "
                                f"partition; Engine.map should have refused it")
        check_by_person(table, key, partition, partitions, kernel.name)
    result = kernel.function(table)
    if not isinstance(result, pa.Table):
        raise TypeError(f"kernel {kernel.name!r} returned {type(result).__name__}, not a pyarrow Table")
    if not result.schema.equals(kernel.schema):
        try:
            result = result.select(kernel.schema.names).cast(kernel.schema)
        except (KeyError, pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as error:
            raise TypeError(f"kernel {kernel.name!r} returned columns {result.schema} that do not fit its declared "
                            f"schema {kernel.schema}: {error}") from error
    return result
