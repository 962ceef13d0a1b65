"""Small vectorized building blocks: weighted draws, ASCII text and ids, Arrow columns, group ranks.

Python loops here run per character column or per word list, never per row.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from profiling.errors import InternalError


def _draw(rng: np.random.Generator, n: int, weights) -> np.ndarray:
    """``n`` indices drawn with probability proportional to ``weights``."""
    cdf = np.cumsum(np.asarray(weights, dtype=float))
    return np.minimum(np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right"), len(cdf) - 1)


def _strings(values) -> pa.Array:
    return pa.array(list(values), type=pa.string())


def _pick(vocabulary: pa.Array, index: np.ndarray) -> pa.Array:
    return vocabulary.take(pa.array(index))


def _join(*parts) -> pa.Array:
    """Concatenate string arrays (and plain ``str`` constants) element-wise."""
    return pc.binary_join_element_wise(*parts, "")


def _text(chars: np.ndarray) -> pa.Array:
    """A string array from an ``(n, width)`` uint8 array of ASCII codes, one row per value."""
    n, width = chars.shape
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets),
                                                  pa.py_buffer(np.ascontiguousarray(chars))])


def _digits(values: np.ndarray, width: int) -> np.ndarray:
    """Zero-padded decimal ASCII of non-negative integers: ``(n, width)`` uint8."""
    values = np.asarray(values, dtype=np.int64)
    if len(values) and (values.min() < 0 or values.max() >= 10 ** width):
        raise InternalError(f"value does not fit {width} decimal digits")
    out = np.empty((len(values), width), dtype=np.uint8)
    rest = values.copy()
    for column in range(width - 1, -1, -1):
        rest, digit = np.divmod(rest, 10)
        out[:, column] = digit + ord("0")
    return out


def _ascii(text: str, n: int) -> np.ndarray:
    return np.broadcast_to(np.frombuffer(text.encode("ascii"), dtype=np.uint8), (n, len(text)))


def _ids(prefix: str, batch_index: int, sequence: np.ndarray, width: int) -> pa.Array:
    """Ids ``<prefix><batch, 5 digits><sequence, width digits>``: unique over the whole data set."""
    n = len(sequence)
    return _text(np.hstack([_ascii(prefix, n), _digits(np.full(n, batch_index), 5), _digits(sequence, width)]))


def _hex16(keys: np.ndarray, salt: int) -> pa.Array:
    """16 lower-case hex digits of a bijective 64-bit mix of ``keys``: distinct keys, distinct ids."""
    mixed = keys.astype(np.uint64) ^ np.uint64(salt)
    mixed = (mixed ^ (mixed >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    mixed = (mixed ^ (mixed >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    mixed = mixed ^ (mixed >> np.uint64(31))
    shifts = np.arange(60, -1, -4, dtype=np.uint64)
    nibbles = ((mixed[:, None] >> shifts) & np.uint64(15)).astype(np.uint8)
    return _text(np.frombuffer(b"0123456789abcdef", dtype=np.uint8)[nibbles])


def _salt(seed: int, stream: int) -> int:
    return int(np.random.SeedSequence(seed, spawn_key=(stream,)).generate_state(1, np.uint64)[0])


def _floats(values: np.ndarray, present: np.ndarray | None = None) -> pa.Array:
    return pa.array(values, type=pa.float64(), mask=None if present is None else ~present)


def _taken(values: pa.Array, index: np.ndarray, present: np.ndarray | None = None) -> pa.Array:
    """``values[index]``, null where ``present`` is False."""
    return values.take(pa.array(index, mask=None if present is None else ~present))


def _group_starts(counts: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)


def _rank_within_group(counts: np.ndarray) -> np.ndarray:
    """0, 1, ... within each group of ``np.repeat(arange, counts)``."""
    total = int(counts.sum())
    return np.arange(total, dtype=np.int64) - np.repeat(_group_starts(counts), counts)
