"""Compiled kernels of the ledger chains (``profiling.ledger_chain``) over many rows at once.

The rows' canonical JSON text (``canonical_rows``), their content hashes and chain links: the same
text and digests as ``ledger_chain._CANONICAL``, ``content_hash`` and ``link_hash`` (checked against
them in the tests), computed over contiguous buffers instead of one Python call per row, with the
SHA-256 blocks of ``profiling.pseudonyms`` (libcrypto's where it is found). Digests are (n, 64)
uint8 arrays of lowercase hex digits.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numba import njit

from profiling._string_hash import _offsets_and_data
from profiling.pseudonyms import _HEX, _IV, _SHA256_CTX_WORDS, _finish, _libcrypto_loaded

_NULL = np.frombuffer(b"null", dtype=np.uint8)
_COMMA, _CLOSE, _OPEN, _QUOTE = (ord(c) for c in ',]["')


@njit(nogil=True, cache=True)
def _integer_widths(values, valid, widths):
    """Add each row's JSON width of ``values`` (``null`` where not ``valid``) to ``widths``."""
    for row in range(len(values)):
        if not valid[row]:
            widths[row] += 4
            continue
        value = values[row]
        digits = 1 if value >= 0 else 2   # the minus sign
        magnitude = np.uint64(value) if value >= 0 else np.uint64(-(value + 1)) + np.uint64(1)
        while magnitude >= np.uint64(10):
            magnitude //= np.uint64(10)
            digits += 1
        widths[row] += digits


@njit(nogil=True, cache=True)
def _write_integers(values, valid, null, separator, out, cursor):
    """Write each row's integer (or ``null``) and ``separator`` at ``out[cursor[row]]``; advance ``cursor``."""
    for row in range(len(values)):
        at = cursor[row]
        if not valid[row]:
            out[at:at + 4] = null
            at += 4
        else:
            value = values[row]
            magnitude = np.uint64(value) if value >= 0 else np.uint64(-(value + 1)) + np.uint64(1)
            if value < 0:
                out[at] = 45   # '-'
                at += 1
            digits, probe = 1, magnitude
            while probe >= np.uint64(10):
                probe //= np.uint64(10)
                digits += 1
            for place in range(digits - 1, -1, -1):
                out[at + place] = np.uint8(np.uint64(48) + magnitude % np.uint64(10))
                magnitude //= np.uint64(10)
            at += digits
        out[at] = separator
        cursor[row] = at + 1


@njit(nogil=True, cache=True)
def _write_strings(offsets, data, valid, null, separator, out, cursor, escaped):
    """Write each row's text between quotes (or ``null``) and ``separator``; advance ``cursor``. A row whose
    text holds a byte JSON escapes (a control character, quote, backslash, non-ASCII) is marked ``escaped``."""
    for row in range(len(offsets) - 1):
        at = cursor[row]
        if not valid[row]:
            out[at:at + 4] = null
            at += 4
        else:
            out[at] = 34   # '"'
            at += 1
            for position in range(offsets[row], offsets[row + 1]):
                byte = data[position]
                if byte < 32 or byte > 126 or byte == 34 or byte == 92:
                    escaped[row] = True
                out[at] = byte
                at += 1
            out[at] = 34
            at += 1
        out[at] = separator
        cursor[row] = at + 1

__all__ = ["canonical_rows", "content_digests", "content_digests_between", "hex_strings", "link_digests"]


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


def canonical_rows(columns: list[pa.Array]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The JSON list of each row of ``columns`` (integers, strings or nulls, equal lengths), in the form of
    ``ledger_chain._CANONICAL`` (no spaces): (offsets (n + 1), UTF-8 bytes, rows marked ``escaped``).

    A row holding text that JSON escapes (anything but printable ASCII other than a quote or a
    backslash) is written unescaped and marked: the caller writes its text another way.
    """
    count = len(columns[0]) if columns else 0
    widths = np.full(count, 1 + len(columns), dtype=np.int64)   # '[', then a ',' or ']' after each value
    prepared = []
    for column in columns:
        valid = (np.zeros(count, dtype=np.bool_) if pa.types.is_null(column.type) else
                 np.ones(count, dtype=np.bool_) if not column.null_count else
                 pc.is_valid(column).to_numpy(zero_copy_only=False))
        if pa.types.is_integer(column.type) or pa.types.is_null(column.type):
            values = (np.zeros(count, dtype=np.int64) if pa.types.is_null(column.type) else
                      pc.fill_null(column, 0).cast(pa.int64()).to_numpy())
            _integer_widths(values, valid, widths)
            prepared.append((values, None, valid))
        else:
            offsets, data = _offsets_and_data(column)
            widths += np.where(valid, np.diff(offsets) + 2, 4)
            prepared.append((offsets, data, valid))
    starts = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(widths, out=starts[1:])
    out = np.empty(starts[-1], dtype=np.uint8)
    out[starts[:-1]] = _OPEN
    cursor = starts[:-1] + 1
    escaped = np.zeros(count, dtype=np.bool_)
    for at, (first, data, valid) in enumerate(prepared):
        separator = np.uint8(_CLOSE if at == len(prepared) - 1 else _COMMA)
        if data is None:
            _write_integers(first, valid, _NULL, separator, out, cursor)
        else:
            _write_strings(first, data, valid, _NULL, separator, out, cursor, escaped)
    return starts, out, escaped


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
