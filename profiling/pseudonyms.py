"""Keyed pseudonyms: 128-bit truncated HMAC-SHA256 of normalized identifiers, one key per domain.

A pseudonym is ``HMAC-SHA256(derive_key(master, domain, version), normalize(value))[:16]`` in 32
lowercase hex digits. Without the key it cannot be computed or reversed (beyond guessing whole
identifiers *and* holding the key); with different domains the same identifier gets unrelated
pseudonyms, so tables pseudonymized for different domains or recipients cannot be joined.
Destroying a key version (``profiling.keys.destroy_key_version``) unlinks its pseudonyms for good.

Each distinct value is hashed once: the column is dictionary-encoded (a column that already is,
e.g. one read from Parquet with ``dictionary_columns``, keeps its dictionary), the dictionary
normalized and hashed, and the pseudonyms are taken back out by the indices.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numba import njit

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
        if (pa.types.is_string(values.type.value_type) and values.dictionary.null_count == 0
                and len(values.dictionary) <= len(values)):
            return values  # already encoded (e.g. read from Parquet): hash its dictionary as it is
        values = values.cast(values.type.value_type)
    if pa.types.is_large_string(values.type):
        values = values.cast(pa.string())
    if not pa.types.is_string(values.type):
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


@njit(nogil=True, cache=True)
def _finish(state, data, start, length, prefix_bytes, tail, w):
    """Absorb ``data[start:start+length]`` then SHA-256 padding; ``prefix_bytes`` were absorbed already."""
    position = start
    end = start + length
    while end - position >= 64:
        _compress(state, data, position, w)
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
    _compress(state, tail, 0, w)
    if blocks == 2:
        _compress(state, tail, 64, w)


@njit(nogil=True, cache=True)
def _hmac_hex(offsets, data, inner_state, outer_state, hexdigits):
    """First 16 bytes of HMAC-SHA256 of each value, as 32 lowercase hex digits: a (n, 32) uint8 array."""
    n = len(offsets) - 1
    out = np.empty((n, 32), dtype=np.uint8)
    state = np.empty(8, dtype=np.uint32)
    w = np.empty(64, dtype=np.uint32)
    tail = np.empty(128, dtype=np.uint8)
    digest = np.empty(32, dtype=np.uint8)
    for row in range(n):
        state[:] = inner_state
        _finish(state, data, offsets[row], offsets[row + 1] - offsets[row], 64, tail, w)
        for j in range(8):
            for k in range(4):
                digest[4 * j + k] = np.uint8((state[j] >> np.uint32(24 - 8 * k)) & np.uint32(0xFF))
        state[:] = outer_state
        _finish(state, digest, 0, 32, 64, tail, w)
        for j in range(4):
            for k in range(4):
                byte = (state[j] >> np.uint32(24 - 8 * k)) & np.uint32(0xFF)
                out[row, 8 * j + 2 * k] = hexdigits[byte >> np.uint32(4)]
                out[row, 8 * j + 2 * k + 1] = hexdigits[byte & np.uint32(0xF)]
    return out


def _hmac_states(key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """SHA-256 states after absorbing the HMAC (RFC 2104) inner and outer key blocks."""
    block = np.frombuffer(key.ljust(64, b"\x00"), dtype=np.uint8)
    w = np.empty(64, dtype=np.uint32)
    inner, outer = _IV.copy(), _IV.copy()
    _compress(inner, block ^ np.uint8(0x36), 0, w)
    _compress(outer, block ^ np.uint8(0x5C), 0, w)
    return inner, outer


def _hex_pseudonyms(values: pa.Array, key: bytes) -> pa.Array:
    """Truncated HMAC-SHA256 (32 hex digits) of each UTF-8 value of a null-free string array."""
    if values.null_count or len(key) > 64:
        raise InternalError("hashing needs null-free values and a key of at most 64 bytes; this is a bug")
    count = len(values)
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int32)[values.offset:values.offset + count + 1]
    data_buffer = values.buffers()[2]
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.zeros(1, np.uint8)
    inner, outer = _hmac_states(key)
    chars = _hmac_hex(offsets, data, inner, outer, _HEX)
    return pa.StringArray.from_buffers(count, pa.py_buffer(np.arange(0, 32 * count + 1, 32, dtype=np.int32)),
                                       pa.py_buffer(chars))


def pseudonymize(values, key: MasterKey, domain: str, *, identifier: str,
                 version: int | None = None) -> pa.Array:
    """Pseudonyms (32 lowercase hex digits) of ``values`` in ``domain`` at key ``version`` (newest if None).

    ``identifier`` is the field registry's ``Field.identifier`` and picks the normalization. Nulls
    stay null. Deterministic for a given key, domain and version; see the module docstring for
    what a pseudonym does and does not protect.

    >>> from profiling.keys import MasterKey
    >>> key = MasterKey(bytes(32))
    >>> ids = pseudonymize(["+86 13812345678", "138-1234-5678", None], key, PERSON, identifier="phone")
    >>> ids[0] == ids[1], len(ids[0].as_py()), ids[2].as_py()
    (True, 32, None)
    """
    values = _as_string_array(values)
    normalizer = _NORMALIZERS.get(identifier)
    if normalizer is None:
        raise ValueError(f"unknown identifier kind {identifier!r}; known: {', '.join(IDENTIFIERS)}")
    domain_key = derive_key(key, domain, version)
    # rows: (index into the distinct values); each distinct value is normalized and hashed once
    encoded = values if pa.types.is_dictionary(values.type) else pc.dictionary_encode(values)
    hashed = _hex_pseudonyms(normalizer(encoded.dictionary), domain_key)
    return hashed.take(encoded.indices)


def pseudonymize_one(value: str, key: MasterKey, domain: str, *, identifier: str,
                     version: int | None = None) -> str:
    """The pseudonym of a single value (for lookups, e.g. a data-subject request)."""
    if not isinstance(value, str):
        raise TypeError(f"pseudonymize_one needs a string, not {type(value).__name__}")
    return pseudonymize(pa.array([value]), key, domain, identifier=identifier, version=version)[0].as_py()
