"""Compiled SHA-256 of many ledger rows at once: content hashes and chain links (``profiling.ledger_chain``).

The same digests as ``ledger_chain.content_hash`` and ``ledger_chain.link_hash`` (checked against
them in the tests), computed by the SHA-256 blocks of ``profiling.pseudonyms`` (libcrypto's where
it is found) over contiguous buffers instead of one Python call per row. Digests are (n, 64)
uint8 arrays of lowercase hex digits.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from profiling.pseudonyms import _HEX, _IV, _SHA256_CTX_WORDS, _finish, _libcrypto_loaded

__all__ = ["content_digests", "content_digests_between", "hex_strings", "link_digests"]


@njit(inline="always")
def _write_hex(state, hexdigits, out, row):
    for j in range(8):
        for k in range(4):
            byte = (state[j] >> np.uint32(24 - 8 * k)) & np.uint32(0xFF)
            out[row, 8 * j + 2 * k] = hexdigits[byte >> np.uint32(4)]
            out[row, 8 * j + 2 * k + 1] = hexdigits[byte & np.uint32(0xF)]


@njit(nogil=True, cache=True)
def _content_kernel(prefix, starts, ends, data, iv, hexdigits, use_libcrypto, out):
    """Row r: SHA-256 of ``prefix + data[starts[r]:ends[r]]`` as hex into ``out[r]``."""
    n = len(starts)
    longest = 0
    for row in range(n):
        longest = max(longest, ends[row] - starts[row])
    width = len(prefix)
    scratch = np.empty(width + longest, dtype=np.uint8)
    scratch[:width] = prefix
    state = np.zeros(_SHA256_CTX_WORDS, dtype=np.uint32)
    w = np.empty(64, dtype=np.uint32)
    tail = np.empty(128, dtype=np.uint8)
    for row in range(n):
        start, length = starts[row], ends[row] - starts[row]
        scratch[width:width + length] = data[start:start + length]
        state[:8] = iv
        _finish(state, scratch, 0, width + length, 0, tail, w, use_libcrypto)
        _write_hex(state, hexdigits, out, row)


@njit(nogil=True, cache=True)
def _link_kernel(first_previous, contents, previous_hashes, chained, iv, hexdigits, use_libcrypto, out):
    """Row r: SHA-256 of ``previous + b":" + contents[r]`` as hex into ``out[r]``.

    ``previous`` is ``out[r - 1]`` (``first_previous`` for row 0) when ``chained``, else ``previous_hashes[r]``.
    """
    n = contents.shape[0]
    message = np.empty(129, dtype=np.uint8)
    message[64] = 58  # ':'
    state = np.zeros(_SHA256_CTX_WORDS, dtype=np.uint32)
    w = np.empty(64, dtype=np.uint32)
    tail = np.empty(128, dtype=np.uint8)
    for row in range(n):
        if not chained:
            message[:64] = previous_hashes[row]
        elif row == 0:
            message[:64] = first_previous
        else:
            message[:64] = out[row - 1]
        message[65:] = contents[row]
        state[:8] = iv
        _finish(state, message, 0, 129, 0, tail, w, use_libcrypto)
        _write_hex(state, hexdigits, out, row)


def content_digests(prefix: bytes, offsets: np.ndarray, data: np.ndarray) -> np.ndarray:
    """Hex SHA-256 of ``prefix`` followed by each of the byte strings ``data[offsets[r]:offsets[r + 1]]``."""
    offsets = offsets.astype(np.int64)
    return content_digests_between(prefix, offsets[:-1], offsets[1:], data)


def content_digests_between(prefix: bytes, starts: np.ndarray, ends: np.ndarray, data: np.ndarray) -> np.ndarray:
    """Hex SHA-256 of ``prefix`` followed by each of the byte strings ``data[starts[r]:ends[r]]``."""
    out = np.empty((len(starts), 64), dtype=np.uint8)
    _content_kernel(np.frombuffer(prefix, dtype=np.uint8), starts.astype(np.int64), ends.astype(np.int64), data,
                    _IV, _HEX, _libcrypto_loaded(), out)
    return out


def link_digests(contents: np.ndarray, *, first_previous: str | None = None,
                 previous_hashes: np.ndarray | None = None) -> np.ndarray:
    """Hex chain hashes ``link_hash(previous, content)`` of each row of ``contents`` ((n, 64) hex digits).

    With ``first_previous`` the rows form a chain from it (each links to the hash computed before
    it); with ``previous_hashes`` ((n, 64)) each row links to its own stored previous hash.
    """
    chained = previous_hashes is None
    first = np.frombuffer((first_previous or "0" * 64).encode(), dtype=np.uint8)
    stored = np.empty((0, 64), dtype=np.uint8) if chained else previous_hashes
    out = np.empty(contents.shape, dtype=np.uint8)
    _link_kernel(first, np.ascontiguousarray(contents), np.ascontiguousarray(stored), chained, _IV, _HEX,
                 _libcrypto_loaded(), out)
    return out


def hex_strings(digests: np.ndarray) -> list[str]:
    """The rows of an (n, 64) hex digit array as Python strings."""
    text = np.ascontiguousarray(digests).tobytes().decode("ascii")
    return [text[at:at + 64] for at in range(0, len(text), 64)]
