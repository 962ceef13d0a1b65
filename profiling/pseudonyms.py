"""Keyed pseudonyms: 128-bit truncated HMAC-SHA256 of normalized identifiers, one key per domain.

A pseudonym is ``HMAC-SHA256(derive_key(master, domain, version), normalize(value))[:16]`` in 32
lowercase hex digits. Without the key it cannot be computed or reversed (beyond guessing whole
identifiers *and* holding the key); with different domains the same identifier gets unrelated
pseudonyms, so tables pseudonymized for different domains or recipients cannot be joined.
Destroying a key version (``profiling.keys.destroy_key_version``) unlinks its pseudonyms for good.

Each distinct value is hashed once: the column is dictionary-encoded by a compiled hash table (a
column that already is, e.g. one read from Parquet with ``dictionary_columns``, keeps its
dictionary), the distinct values are normalized and hashed (SHA-256 blocks by libcrypto where it
is found, else by the compiled ``_compress``), and since every pseudonym is exactly 32 bytes the
output string array is built directly from the digests by the indices.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import hmac
import re
from collections.abc import Callable, Sequence

import llvmlite.binding as llvm
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numba import njit, types

from profiling._string_hash import (
    _dictionary_encode,
    _index_values,
    _offsets_and_data,
    _prefetch,
    _validity_bits,
)
from profiling.errors import InternalError
from profiling.identifiers import canonical_phone
from profiling.keys import MasterKey, derive_key

__all__ = [
    "PERSON",
    "DEVICE",
    "MARKETING",
    "ORDER",
    "WAYBILL",
    "TOMBSTONE",
    "DOMAINS",
    "IDENTIFIERS",
    "recipient_domain",
    "normalize",
    "pseudonymize",
    "pseudonymize_one",
    "pseudonymize_with_key",
]

PERSON = "person"        # account ids -> person_id in the analytics zone
DEVICE = "device"        # device ids
MARKETING = "marketing"  # ids handed to the marketing audience
ORDER = "order"          # order numbers
WAYBILL = "waybill"      # waybill numbers
TOMBSTONE = "tombstone"  # erased persons, so a replayed raw row can be recognised and dropped
DOMAINS: tuple[str, ...] = (PERSON, DEVICE, MARKETING, ORDER, WAYBILL, TOMBSTONE)

_RECIPIENT_NAME = re.compile(r"[a-z0-9][a-z0-9_\-]{0,63}")


def recipient_domain(name: str) -> str:
    """The pseudonym domain of one external recipient (each gets pseudonyms no one else can join).

    >>> recipient_domain("courier_a")
    'recipient:courier_a'
    """
    if not isinstance(name, str) or not _RECIPIENT_NAME.fullmatch(name):
        raise ValueError(f"recipient name {name!r} must be 1-64 lowercase letters, digits, '_' or '-'")
    return f"recipient:{name}"


def _trimmed(values: pa.Array) -> pa.Array:
    return pc.utf8_trim_whitespace(values)


def _folded(values: pa.Array) -> pa.Array:
    # Arrow has no full Unicode case folding; lower-casing covers the scripts the data holds.
    return pc.utf8_lower(pc.replace_substring_regex(_trimmed(values), r"\s+", " "))


def _phone(values: pa.Array) -> pa.Array:
    return canonical_phone(_trimmed(values))


def _upper(values: pa.Array) -> pa.Array:
    return pc.utf8_upper(_trimmed(values))


# ``Field.identifier`` -> normalization; equal identifiers written differently get one pseudonym.
_NORMALIZERS: dict[str, Callable[[pa.Array], pa.Array]] = {
    "account_id": _trimmed,
    "device_id": _trimmed,
    "order_id": _trimmed,
    "waybill_id": _trimmed,
    "phone": _phone,
    "person_name": _folded,
    "email": _folded,
    "address": _folded,
    "id_card": _upper,
    "ip": _folded,
}
IDENTIFIERS: tuple[str, ...] = tuple(_NORMALIZERS)


def normalize(values: pa.Array, identifier: str) -> pa.Array:
    """The canonical form of identifiers of kind ``identifier`` (nulls stay null).

    >>> normalize(pa.array(["+86 138-1234-5678", None]), "phone").to_pylist()
    ['13812345678', None]
    >>> normalize(pa.array(["  Li  Lei "]), "person_name").to_pylist()
    ['li lei']
    """
    try:
        normalizer = _NORMALIZERS[identifier]
    except KeyError:
        raise ValueError(f"unknown identifier kind {identifier!r}; known: {', '.join(IDENTIFIERS)}") from None
    return normalizer(values)


def _as_string_array(values) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks else pa.array([], pa.string())
    elif not isinstance(values, pa.Array):
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise TypeError(f"pseudonymize needs an Arrow array or a sequence of strings, not {type(values).__name__}")
        values = pa.array(values, pa.string())
    if pa.types.is_dictionary(values.type):
        value_type = values.type.value_type
        if ((pa.types.is_string(value_type) or pa.types.is_large_string(value_type))
                and values.dictionary.null_count == 0
                and len(values.dictionary) <= len(values)):
            return values  # already encoded (e.g. read from Parquet): hash its dictionary as it is
        values = values.cast(values.type.value_type)
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        raise TypeError(f"pseudonymize needs string values, got an array of {values.type}")
    return values


_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)

# SHA-256 (FIPS 180-4) compiled with numba, so that hashing a million distinct values costs well
# under a second; checked against ``hmac``/``hashlib`` in the tests.
_K = np.array([
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
], dtype=np.uint32)
_IV = np.array([0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19],
               dtype=np.uint32)


@njit(inline="always")
def _rotr(x, n):
    return (x >> n) | (x << (np.uint32(32) - n))


@njit(nogil=True, cache=True)
def _compress(state, block, start, w):
    """SHA-256 compression of ``block[start:start + 64]`` into ``state`` (uint32[8]) in place."""
    for t in range(16):
        i = start + 4 * t
        w[t] = (np.uint32(block[i]) << np.uint32(24)) | (np.uint32(block[i + 1]) << np.uint32(16)) \
            | (np.uint32(block[i + 2]) << np.uint32(8)) | np.uint32(block[i + 3])
    for t in range(16, 64):
        x = w[t - 15]
        y = w[t - 2]
        s0 = _rotr(x, np.uint32(7)) ^ _rotr(x, np.uint32(18)) ^ (x >> np.uint32(3))
        s1 = _rotr(y, np.uint32(17)) ^ _rotr(y, np.uint32(19)) ^ (y >> np.uint32(10))
        w[t] = np.uint32(w[t - 16] + s0 + w[t - 7] + s1)
    a, b, c, d, e, f, g, h = state[0], state[1], state[2], state[3], state[4], state[5], state[6], state[7]
    for t in range(64):
        s1 = _rotr(e, np.uint32(6)) ^ _rotr(e, np.uint32(11)) ^ _rotr(e, np.uint32(25))
        ch = (e & f) ^ (~e & g)
        t1 = np.uint32(h + s1 + ch + _K[t] + w[t])
        s0 = _rotr(a, np.uint32(2)) ^ _rotr(a, np.uint32(13)) ^ _rotr(a, np.uint32(22))
        maj = (a & b) ^ (a & c) ^ (b & c)
        t2 = np.uint32(s0 + maj)
        h, g, f, e = g, f, e, np.uint32(d + t1)
        d, c, b, a = c, b, a, np.uint32(t1 + t2)
    for i, value in enumerate((a, b, c, d, e, f, g, h)):
        state[i] += value


# libcrypto's one-block SHA-256 function uses the CPU's SHA extensions where it has them (several
# times faster than ``_compress``). Bound by name; where libcrypto is missing the name is bound to
# a stand-in that is never called, and ``_compress`` does the work.
_sha256_transform = types.ExternalFunction("SHA256_Transform", types.void(types.intp, types.intp))
_SHA256_CTX_WORDS = 28  # OpenSSL's SHA256_CTX: the state h[8] first, then counters and a buffer


@njit(inline="always")
def _block(state, block, start, w, use_libcrypto):
    if use_libcrypto:
        _sha256_transform(state.ctypes.data, block.ctypes.data + start)
    else:
        _compress(state, block, start, w)


@njit(nogil=True, cache=True)
def _finish(state, data, start, length, prefix_bytes, tail, w, use_libcrypto):
    """Absorb ``data[start:start+length]`` then SHA-256 padding; ``prefix_bytes`` were absorbed already."""
    position = start
    end = start + length
    while end - position >= 64:
        _block(state, data, position, w, use_libcrypto)
        position += 64
    rest = end - position
    tail[:] = 0
    for i in range(rest):
        tail[i] = data[position + i]
    tail[rest] = 0x80
    blocks = 1 if rest + 9 <= 64 else 2
    bits = np.uint64(prefix_bytes + length) * np.uint64(8)
    last = 64 * blocks
    for i in range(8):
        tail[last - 1 - i] = np.uint8((bits >> np.uint64(8 * i)) & np.uint64(0xFF))
    _block(state, tail, 0, w, use_libcrypto)
    if blocks == 2:
        _block(state, tail, 64, w, use_libcrypto)


@njit(nogil=True, cache=True)
def _hmac_hex(offsets, data, inner_state, outer_state, hexdigits, use_libcrypto, out):
    """First 16 bytes of HMAC-SHA256 of each value, as 32 lowercase hex digits, into ``out`` ((n, 32) uint8).

    One thread: splitting the rows across two (numba ``prange``) measured no faster here.
    """
    n = len(offsets) - 1
    state = np.zeros(_SHA256_CTX_WORDS, dtype=np.uint32)
    w = np.empty(64, dtype=np.uint32)
    tail = np.empty(128, dtype=np.uint8)
    digest = np.empty(32, dtype=np.uint8)
    for row in range(n):
        state[:8] = inner_state
        _finish(state, data, offsets[row], offsets[row + 1] - offsets[row], 64, tail, w, use_libcrypto)
        for j in range(8):
            for k in range(4):
                digest[4 * j + k] = np.uint8((state[j] >> np.uint32(24 - 8 * k)) & np.uint32(0xFF))
        state[:8] = outer_state
        _finish(state, digest, 0, 32, 64, tail, w, use_libcrypto)
        for j in range(4):
            for k in range(4):
                byte = (state[j] >> np.uint32(24 - 8 * k)) & np.uint32(0xFF)
                out[row, 8 * j + 2 * k] = hexdigits[byte >> np.uint32(4)]
                out[row, 8 * j + 2 * k + 1] = hexdigits[byte & np.uint32(0xF)]


_UNUSED_BLOCK_FUNCTION = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)(lambda context, block: None)


@functools.cache
def _libcrypto_loaded() -> bool:
    """Bind ``SHA256_Transform`` for the compiled kernels: True if libcrypto's, else a never-called stand-in.

    libcrypto is checked against ``hashlib`` before it is trusted.
    """
    library = None
    for name in ("libcrypto.so.3", "libcrypto.so", ctypes.util.find_library("crypto")):
        try:
            library = ctypes.CDLL(name) if name else None
            address = ctypes.cast(library.SHA256_Transform, ctypes.c_void_p).value if library else None
        except (OSError, AttributeError):
            library = address = None
        if address:
            break
    if not address:
        llvm.add_symbol("SHA256_Transform", ctypes.cast(_UNUSED_BLOCK_FUNCTION, ctypes.c_void_p).value)
        return False
    llvm.add_symbol("SHA256_Transform", address)
    probe = b"abc" * 30  # a whole block, then a tail that pads into a second one
    got = np.empty((1, 32), np.uint8)
    _hmac_hex(np.array([0, len(probe)], np.int32), np.frombuffer(probe, np.uint8), *_hmac_states(b"k"),
              _HEX, True, got)
    return got.tobytes() == hmac.new(b"k", probe, hashlib.sha256).hexdigest()[:32].encode()


def _hmac_states(key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """SHA-256 states after absorbing the HMAC (RFC 2104) inner and outer key blocks."""
    block = np.frombuffer(key.ljust(64, b"\x00"), dtype=np.uint8)
    w = np.empty(64, dtype=np.uint32)
    inner, outer = _IV.copy(), _IV.copy()
    _compress(inner, block ^ np.uint8(0x36), 0, w)
    _compress(outer, block ^ np.uint8(0x5C), 0, w)
    return inner, outer


def _hex_digests(values: pa.Array, key: bytes) -> np.ndarray:
    """Truncated HMAC-SHA256 of each value of a null-free string array: (n, 32) uint8 hex digits."""
    if values.null_count or len(key) > 64:
        raise InternalError("hashing needs null-free values and a key of at most 64 bytes; this is a bug")
    offsets, data = _offsets_and_data(values)
    inner, outer = _hmac_states(key)
    digests = np.empty((len(values), 32), dtype=np.uint8)
    _hmac_hex(offsets, data, inner, outer, _HEX, _libcrypto_loaded(), digests)
    return digests


@njit(nogil=True, cache=True)
def _gather_kernel(digest_words, indices, bitmap, bit_offset):
    """Rows of 32 hex digits (4 uint64 words each) picked by ``indices``, skipping null rows.

    Returns ``(words, offsets)``: the output's bytes as uint64 words and its int32 string offsets.
    ``indices`` of valid rows must be in range (checked by the caller).
    """
    n = len(indices)
    has_nulls = len(bitmap) > 0
    offsets = np.empty(n + 1, dtype=np.int32)
    offsets[0] = 0
    valid = 0
    for row in range(n):
        if has_nulls:
            bit = bit_offset + row
            valid += (bitmap[bit >> 3] >> (bit & 7)) & 1
        else:
            valid += 1
        offsets[row + 1] = 32 * valid
    words = np.empty(4 * valid, dtype=np.uint64)
    flat = digest_words.reshape(-1)
    ahead = 16  # rows between the prefetch of a digest and its copy
    for row in range(n):
        if row + ahead < n:
            _prefetch(flat, 4 * np.int64(indices[row + ahead]))
        out = offsets[row] // 8
        if offsets[row + 1] // 8 == out:  # a null row
            continue
        source = indices[row]
        for k in range(4):
            words[out + k] = digest_words[source, k]
    return words, offsets


# String offsets are int32 and every pseudonym takes 32 bytes.
_MAX_VALUES = (2**31 - 1) // 32


def _gathered(digests: np.ndarray, indices: np.ndarray, validity: pa.Array) -> pa.Array:
    """The string array whose row i is ``digests[indices[i]]``, null where ``validity`` is null."""
    bitmap, bit_offset = _validity_bits(validity)
    if len(digests) == 0:  # every row is null
        digests = np.zeros((1, 32), np.uint8)
    words, offsets = _gather_kernel(np.ascontiguousarray(digests).view(np.uint64), indices, bitmap, bit_offset)
    null_bitmap = None
    if len(bitmap):
        if bit_offset % 8 == 0:
            null_bitmap = validity.buffers()[0].slice(bit_offset // 8)
        else:
            bits = np.unpackbits(bitmap, bitorder="little")[bit_offset:bit_offset + len(validity)]
            null_bitmap = pa.py_buffer(np.packbits(bits, bitorder="little"))
    return pa.StringArray.from_buffers(len(validity), pa.py_buffer(offsets), pa.py_buffer(words),
                                       null_bitmap, validity.null_count)


def pseudonymize(values, key: MasterKey, domain: str, *, identifier: str,
                 version: int | None = None) -> pa.Array:
    """Pseudonyms (32 lowercase hex digits) of ``values`` in ``domain`` at key ``version`` (newest if None).

    ``identifier`` is the field registry's ``Field.identifier`` and picks the normalization. Nulls
    stay null. Deterministic for a given key, domain and version; see the module docstring for
    what a pseudonym does and does not protect. At most 67,108,863 non-null values per call.

    >>> from profiling.keys import MasterKey
    >>> key = MasterKey(bytes(32))
    >>> ids = pseudonymize(["+86 13812345678", "138-1234-5678", None], key, PERSON, identifier="phone")
    >>> ids[0] == ids[1], len(ids[0].as_py()), ids[2].as_py()
    (True, 32, None)
    """
    if identifier not in _NORMALIZERS:
        raise ValueError(f"unknown identifier kind {identifier!r}; known: {', '.join(IDENTIFIERS)}")
    return pseudonymize_with_key(values, derive_key(key, domain, version), identifier=identifier)


def pseudonymize_with_key(values, domain_key: bytes, *, identifier: str) -> pa.Array:
    """``pseudonymize`` with the domain's derived key (``derive_key``'s 32 bytes) instead of the master key,
    for code that must not hold the master key (the door's kernels on an engine's executors).

    >>> from profiling.keys import MasterKey, derive_key
    >>> key = MasterKey(bytes(32))
    >>> pseudonymize_with_key(["a"], derive_key(key, PERSON), identifier="account_id").equals(
    ...     pseudonymize(["a"], key, PERSON, identifier="account_id"))
    True
    """
    values = _as_string_array(values)
    normalizer = _NORMALIZERS.get(identifier)
    if normalizer is None:
        raise ValueError(f"unknown identifier kind {identifier!r}; known: {', '.join(IDENTIFIERS)}")
    if not isinstance(domain_key, bytes) or len(domain_key) != 32:
        raise TypeError("a domain key is the 32 bytes derive_key returns")
    count = len(values) - values.null_count
    if count > _MAX_VALUES:
        raise ValueError(f"pseudonymize returns at most {_MAX_VALUES:,} non-null pseudonyms per call "
                         f"(32-bit string offsets), got {count:,}; pass the column in smaller batches")
    if pa.types.is_dictionary(values.type):
        # rows: (index into the column's own dictionary)
        distinct, indices = values.dictionary, _index_values(values.indices)
        if count:
            lowest, highest = pc.min_max(values.indices).values()
            if lowest.as_py() < 0 or highest.as_py() >= len(distinct):
                raise ValueError(f"dictionary indices run from {lowest} to {highest}, outside the "
                                 f"{len(distinct)}-value dictionary; the dictionary array is malformed")
    else:
        # rows: (index into the distinct values, in order of first occurrence)
        distinct, indices = _dictionary_encode(values)
    # distinct: (value) -> (32 hex digits); each distinct value is normalized and hashed once
    digests = _hex_digests(normalizer(distinct), domain_key)
    return _gathered(digests, indices, values)


def pseudonymize_one(value: str, key: MasterKey, domain: str, *, identifier: str,
                     version: int | None = None) -> str:
    """The pseudonym of a single value (for lookups, e.g. a data-subject request)."""
    if not isinstance(value, str):
        raise TypeError(f"pseudonymize_one needs a string, not {type(value).__name__}")
    return pseudonymize(pa.array([value]), key, domain, identifier=identifier, version=version)[0].as_py()
