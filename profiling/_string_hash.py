"""Compiled open-addressing hash tables over Arrow string arrays: dictionary encoding and lookups.

Arrow's generic hash kernels rebuild their table on every call and dominate the time of
pseudonymization and of person-keyed joins; these kernels keep a table that a row reaches in one
random memory access. ``StringIndex`` answers "which position of a fixed set of distinct strings
is this value?" for many batches against one table built once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import pyarrow as pa
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["LazyStringIndex", "StringIndex"]


def _offsets_and_data(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Zero-copy numpy views of a (large_)string array's offsets (sliced to it) and UTF-8 bytes."""
    offset_type = np.int64 if pa.types.is_large_string(values.type) else np.int32
    _, offsets_buffer, data_buffer = values.buffers()
    count = len(values)
    if offsets_buffer is None:  # an empty array may come without buffers
        return np.zeros(count + 1, offset_type), np.zeros(1, np.uint8)
    offsets = np.frombuffer(offsets_buffer, dtype=offset_type)[values.offset:values.offset + count + 1]
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None and data_buffer.size else None
    return offsets, (data if data is not None else np.zeros(1, np.uint8))


def _validity_bits(values: pa.Array) -> tuple[np.ndarray, int]:
    """The validity bitmap bytes and the bit of the first value; an empty bitmap when nothing is null."""
    bitmap = values.buffers()[0]
    if not values.null_count or bitmap is None:
        return np.zeros(0, np.uint8), 0
    return np.frombuffer(bitmap, dtype=np.uint8), values.offset


# Dictionary encoding with a compiled open-addressing hash table (Arrow's generic hash kernel and
# string ``take`` were most of the time). Each slot holds everything a lookup needs, so a row costs
# one random memory access: [hash, (distinct index + 1) << 32 | byte length, then the value's
# first 16 bytes (zero-padded) if it is that short, else where its first occurrence starts].
_MIN_TABLE_BITS = 4
_INLINE_BYTES = 16
_LENGTH_MASK = 0xFFFFFFFF


@intrinsic
def _prefetch(typingctx, array, index):
    """Ask the CPU to fetch ``array[index]`` into cache (a hint; never faults)."""
    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        array_struct = context.make_array(array_type)(context, builder, args[0])
        pointer = cgutils.get_item_pointer(context, builder, array_type, array_struct, [args[1]], wraparound=False)
        byte_pointer = ir.IntType(8).as_pointer()
        int32 = ir.IntType(32)
        function_type = ir.FunctionType(ir.VoidType(), [byte_pointer, int32, int32, int32])
        function = cgutils.get_or_insert_function(builder.module, function_type, "llvm.prefetch.p0")
        # read, keep in all cache levels, data cache
        builder.call(function, [builder.bitcast(pointer, byte_pointer), int32(0), int32(3), int32(1)])
        return context.get_dummy_value()
    return types.void(array, types.intp), codegen


@njit(inline="always")
def _word(data, start, count):
    """Up to 8 bytes of ``data`` from ``start`` as a little-endian uint64 (missing bytes are 0)."""
    word = np.uint64(0)
    for i in range(count):
        word |= np.uint64(data[start + i]) << np.uint64(8 * i)
    return word


@njit(inline="always")
def _bytes_hash(data, start, length):
    """64-bit hash of ``data[start:start + length]`` (word-at-a-time multiply-xorshift, fmix64 finish)."""
    h = np.uint64(length) * np.uint64(0x9E3779B97F4A7C15)
    position = start
    end = start + length
    while end - position >= 8:
        h = (h ^ _word(data, position, 8)) * np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(31)
        position += 8
    h = (h ^ _word(data, position, end - position)) * np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xC4CEB9FE1A85EC53)
    h ^= h >> np.uint64(33)
    return h


@njit(inline="always")
def _same_bytes(data, a, b, length):
    for i in range(length):
        if data[a + i] != data[b + i]:
            return False
    return True


@njit(nogil=True, cache=True)
def _grown(table, table_bits):
    """The entries of ``table`` rehashed into a table twice its size."""
    bigger = np.zeros(2 * len(table), dtype=np.uint64)
    mask = (1 << (table_bits + 1)) - 1
    shift = np.uint64(64 - (table_bits + 1))
    for old in range(0, len(table), 4):
        if table[old + 1] != 0:
            slot = np.int64(table[old] >> shift)
            while bigger[4 * slot + 1] != 0:
                slot = (slot + 1) & mask
            bigger[4 * slot:4 * slot + 4] = table[old:old + 4]
    return bigger


@njit(nogil=True, cache=True)
def _encode_kernel(offsets, data, bitmap, bit_offset, table, indices):
    """Dictionary-encode the values ``data[offsets[i]:offsets[i+1]]`` (nulls where ``bitmap`` says).

    Writes ``indices[i]``, the number of row i's distinct value in order of first occurrence
    (leaving null rows alone), and returns ``first_rows``: ``first_rows[d]`` is the row where
    distinct value d first occurs. ``table`` is the empty table to start with (zeros, 4 words a
    slot, a power of two slots); it doubles to stay at most half full. Rows go in batches:
    hashing a whole batch first lets the table lookups of several rows be in flight at once.
    """
    n = len(offsets) - 1
    has_nulls = len(bitmap) > 0
    first_rows = np.empty(max(16, min(n, 1 << 20)), dtype=np.int64)
    table_bits = np.int64(np.log2(len(table) // 4) + 0.5)
    mask = (1 << table_bits) - 1
    shift = np.uint64(64 - table_bits)
    count = 0
    batch = 256
    hashes = np.empty(batch, dtype=np.uint64)
    lows = np.empty(batch, dtype=np.uint64)
    highs = np.empty(batch, dtype=np.uint64)
    for batch_start in range(0, n, batch):
        batch_end = min(n, batch_start + batch)
        for row in range(batch_start, batch_end):
            start = offsets[row]
            length = offsets[row + 1] - start
            if length >= _LENGTH_MASK:
                raise ValueError("pseudonymize takes identifiers shorter than 4 GiB")
            i = row - batch_start
            hashes[i] = _bytes_hash(data, start, length)
            _prefetch(table, 4 * np.int64(hashes[i] >> shift))
            if length <= _INLINE_BYTES:
                lows[i] = _word(data, start, min(length, 8))
                highs[i] = _word(data, start + 8, max(length - 8, 0))
            else:
                lows[i] = np.uint64(start)
                highs[i] = np.uint64(0)
        for row in range(batch_start, batch_end):
            if has_nulls:
                bit = bit_offset + row
                if not (bitmap[bit >> 3] >> (bit & 7)) & 1:
                    continue
            i = row - batch_start
            h = hashes[i]
            low = lows[i]
            high = highs[i]
            start = offsets[row]
            length = offsets[row + 1] - start
            inline = length <= _INLINE_BYTES
            slot = np.int64(h >> shift)
            while True:
                entry = 4 * slot
                meta = table[entry + 1]
                if meta == 0:
                    break
                if table[entry] == h and (meta & np.uint64(_LENGTH_MASK)) == np.uint64(length):
                    if inline:
                        if table[entry + 2] == low and table[entry + 3] == high:
                            break
                    elif _same_bytes(data, start, np.int64(table[entry + 2]), length):
                        break
                slot = (slot + 1) & mask
            if meta != 0:
                indices[row] = np.int32((meta >> np.uint64(32)) - np.uint64(1))
                continue
            if count == len(first_rows):
                grown_rows = np.empty(2 * count, dtype=np.int64)
                grown_rows[:count] = first_rows
                first_rows = grown_rows
            table[entry] = h
            table[entry + 1] = (np.uint64(count + 1) << np.uint64(32)) | np.uint64(length)
            table[entry + 2] = low
            table[entry + 3] = high
            first_rows[count] = row
            indices[row] = count
            count += 1
            if 8 * count > len(table):
                table = _grown(table, table_bits)
                table_bits += 1
                mask = (1 << table_bits) - 1
                shift = np.uint64(64 - table_bits)
    return first_rows[:count].copy()


def _table_bits_for(count: int) -> int:
    """Smallest table (as a power of two) that holds ``count`` values at most half full."""
    return max(_MIN_TABLE_BITS, (2 * max(count, 1) - 1).bit_length())


def _dictionary_encode(values: pa.Array, table_bits: int | None = None) -> tuple[pa.Array, np.ndarray]:
    """``(distinct values, indices)`` of a (large_)string array; indices of null rows are 0.

    ``table_bits`` sets the starting hash table size (tests force tiny, collision-heavy tables);
    by default it is sized for ~1 distinct value per 16 rows and doubles as needed (32 bytes a
    slot, at most half full: 64-128 bytes of table per distinct value while encoding).
    """
    offsets, data = _offsets_and_data(values)
    bitmap, bit_offset = _validity_bits(values)
    if table_bits is None:
        table_bits = _table_bits_for(len(values) // 16)
    # The table is allocated by numpy, not in the kernel: numpy asks for huge pages, which saves
    # TLB misses on its random accesses (a fifth of the encoding time at 10M rows). Arrays
    # written in order are better off in ordinary pages, which fault in more cheaply.
    table = np.zeros(4 << table_bits, dtype=np.uint64)
    indices = np.zeros(len(values), dtype=np.int32)
    first_rows = _encode_kernel(offsets, data, bitmap, bit_offset, table, indices)
    return values.take(pa.array(first_rows)), indices


def _index_values(indices: pa.Array) -> np.ndarray:
    """Zero-copy numpy view of an integer array's values (whatever they are in null slots)."""
    dtype = indices.type.to_pandas_dtype()
    buffer = indices.buffers()[1]
    if buffer is None:
        return np.zeros(len(indices), dtype)
    return np.frombuffer(buffer, dtype=dtype)[indices.offset:indices.offset + len(indices)]


@njit(nogil=True, cache=True)
def _lookup_kernel(offsets, data, bitmap, bit_offset, table, table_bits, keys_data, positions):
    """``positions[i]``: the index of row i's value in the table's keys, or -1 (absent or null)."""
    n = len(offsets) - 1
    has_nulls = len(bitmap) > 0
    mask = (1 << table_bits) - 1
    shift = np.uint64(64 - table_bits)
    batch = 256
    hashes = np.empty(batch, dtype=np.uint64)
    for batch_start in range(0, n, batch):
        batch_end = min(n, batch_start + batch)
        for row in range(batch_start, batch_end):
            start = offsets[row]
            hashes[row - batch_start] = _bytes_hash(data, start, offsets[row + 1] - start)
            _prefetch(table, 4 * np.int64(hashes[row - batch_start] >> shift))
        for row in range(batch_start, batch_end):
            positions[row] = -1
            if has_nulls:
                bit = bit_offset + row
                if not (bitmap[bit >> 3] >> (bit & 7)) & 1:
                    continue
            h = hashes[row - batch_start]
            start = offsets[row]
            length = offsets[row + 1] - start
            slot = np.int64(h >> shift)
            while True:
                entry = 4 * slot
                meta = table[entry + 1]
                if meta == 0:
                    break
                if table[entry] == h and (meta & np.uint64(_LENGTH_MASK)) == np.uint64(length):
                    if length <= _INLINE_BYTES:
                        if (table[entry + 2] == _word(data, start, min(length, 8))
                                and table[entry + 3] == _word(data, start + 8, max(length - 8, 0))):
                            positions[row] = np.int64(meta >> np.uint64(32)) - 1
                            break
                    else:
                        key_start = np.int64(table[entry + 2])
                        same = True
                        for i in range(length):
                            if keys_data[key_start + i] != data[start + i]:
                                same = False
                                break
                        if same:
                            positions[row] = np.int64(meta >> np.uint64(32)) - 1
                            break
                slot = (slot + 1) & mask


class StringIndex:
    """Positions of strings in a fixed array of distinct, non-null strings; built once, probed many times.

    >>> index = StringIndex(pa.array(["b", "a", "c"]))
    >>> index.positions(pa.array(["a", None, "z", "c"])).tolist()
    [1, -1, -1, 2]
    """

    def __init__(self, keys: pa.Array) -> None:
        if isinstance(keys, pa.ChunkedArray):
            keys = keys.combine_chunks()
        if not (pa.types.is_string(keys.type) or pa.types.is_large_string(keys.type)):
            raise TypeError(f"StringIndex needs a string array, not {keys.type}")
        if keys.null_count:
            raise ValueError(f"StringIndex keys hold {keys.null_count} nulls; keys must be non-null")
        self.keys = keys
        self._table_bits = _table_bits_for(len(keys))
        # Sized to stay at most half full, so the encoding kernel never replaces it with a grown copy.
        self._table = np.zeros(4 << self._table_bits, dtype=np.uint64)
        offsets, self._keys_data = _offsets_and_data(keys)
        indices = np.zeros(len(keys), dtype=np.int32)
        first_rows = _encode_kernel(offsets, self._keys_data, np.zeros(0, np.uint8), 0, self._table, indices)
        if len(first_rows) != len(keys):
            raise ValueError(f"StringIndex keys must be distinct: {len(keys) - len(first_rows)} repeat")

    def __len__(self) -> int:
        return len(self.keys)

    def positions(self, values: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """int64 position of each value in ``keys``; -1 where it is null or not a key."""
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        if pa.types.is_dictionary(values.type):
            return self.positions(values.dictionary)[_index_values(values.indices)]
        if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
            raise TypeError(f"StringIndex.positions needs a string array, not {values.type}")
        offsets, data = _offsets_and_data(values)
        bitmap, bit_offset = _validity_bits(values)
        positions = np.empty(len(values), dtype=np.int64)
        _lookup_kernel(offsets, data, bitmap, bit_offset, self._table, self._table_bits, self._keys_data, positions)
        return positions


class LazyStringIndex:
    """A ``StringIndex`` of the strings ``keys()`` returns, built at the first lookup in each process.

    For partition kernels: a kernel captures this (with ``keys`` reading a broadcast) and each
    process that runs it, or a Spark worker that unpickles it, builds the hash table once and probes
    it on every call; the table itself is never pickled.

    >>> index = LazyStringIndex(lambda: pa.array(["b", "a"]))
    >>> index.positions(pa.array(["a", "z"])).tolist()
    [1, -1]
    """

    def __init__(self, keys: Callable[[], pa.Array]) -> None:
        self._keys = keys
        self._index: StringIndex | None = None
        self._building = threading.Lock()   # kernels of one process run in several threads: one build

    def __getstate__(self) -> dict:
        return {"_keys": self._keys}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["_keys"])

    def positions(self, values: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """int64 position of each value among the keys; -1 where it is null or not a key."""
        if self._index is None:
            with self._building:
                if self._index is None:
                    self._index = StringIndex(self._keys())
        return self._index.positions(values)
