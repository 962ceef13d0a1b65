"""Coarsening of quasi-identifiers, vectorized over Arrow arrays: ages, regions, IP prefixes, geohashes.

Every function keeps nulls null and turns a value it cannot read into null, so nothing of the
raw value survives in the output or in an error message.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numba import njit

from profiling._string_hash import _offsets_and_data, _validity_bits

__all__ = ["AGE_BANDS", "age_band", "province", "city", "ip_prefix", "geohash"]

# (lowest age in years, label); a band runs up to the next band's lowest age.
AGE_BANDS: tuple[tuple[int, str], ...] = (
    (0, "0-17"), (18, "18-24"), (25, "25-34"), (35, "35-44"), (45, "45-54"), (55, "55-64"), (65, "65+"),
)


def age_band(birthdays: pa.Array, as_of: dt.date, bands: tuple[tuple[int, str], ...] = AGE_BANDS) -> pa.Array:
    """Age band (completed years at ``as_of``) of each birthday; a birthday after ``as_of`` gives null.

    >>> age_band(pa.array([dt.date(2000, 6, 2), dt.date(2000, 6, 1), None]), dt.date(2025, 6, 1)).to_pylist()
    ['18-24', '25-34', None]
    """
    if isinstance(as_of, dt.datetime):
        as_of = as_of.date()
    if not isinstance(as_of, dt.date):
        raise TypeError(f"as_of must be a date, not {type(as_of).__name__}")
    lows = np.array([low for low, _ in bands], dtype=np.int64)
    if len(lows) == 0 or lows[0] != 0 or np.any(np.diff(lows) <= 0):
        raise ValueError("age bands must start at 0 and have strictly increasing lower ages")
    if isinstance(birthdays, pa.ChunkedArray):
        birthdays = birthdays.combine_chunks()
    birthdays = birthdays.cast(pa.date32())
    years = pc.year(birthdays).to_numpy(zero_copy_only=False)
    month_day = (pc.month(birthdays).to_numpy(zero_copy_only=False) * 100
                 + pc.day(birthdays).to_numpy(zero_copy_only=False))
    missing = birthdays.is_null().to_numpy(zero_copy_only=False)
    years = np.where(missing, 0, years).astype(np.int64)
    month_day = np.where(missing, 0, month_day).astype(np.int64)
    ages = as_of.year - years - (month_day > as_of.month * 100 + as_of.day)
    band = np.searchsorted(lows, np.maximum(ages, 0), side="right") - 1
    labels = pa.array([label for _, label in bands], pa.string())
    return labels.take(pa.array(band, mask=missing | (ages < 0)))


def _region_prefix(regions: pa.Array, digits: int) -> pa.Array:
    valid = pc.match_substring_regex(regions, r"^[0-9]{6}$")
    return pc.if_else(valid, pc.utf8_slice_codeunits(regions, 0, digits), pa.scalar(None, pa.string()))


def province(regions: pa.Array) -> pa.Array:
    """2-digit province of each 6-digit GB/T 2260 region code.

    >>> province(pa.array(["440305", None, "bad"])).to_pylist()
    ['44', None, None]
    """
    return _region_prefix(regions, 2)


def city(regions: pa.Array) -> pa.Array:
    """4-digit prefecture-level city of each 6-digit GB/T 2260 region code.

    >>> city(pa.array(["440305"])).to_pylist()
    ['4403']
    """
    return _region_prefix(regions, 4)


_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV4 = rf"^({_OCTET}\.{_OCTET}\.{_OCTET})\.{_OCTET}$"
_COLON, _DOT, _PERCENT, _SLASH = ord(":"), ord("."), ord("%"), ord("/")
_MAX_PARTS = 9  # ``ipaddress``: at most 8 colons


@njit(inline="always")
def _hex_value(byte):
    """The value of one ASCII hex digit, or -1."""
    if 48 <= byte <= 57:
        return byte - 48
    if 97 <= byte <= 102:
        return byte - 87
    if 65 <= byte <= 70:
        return byte - 55
    return -1


@njit(inline="always")
def _ipv4_tail_valid(data, start, end):
    """Whether ``data[start:end]`` is a dotted quad as ``ipaddress.IPv4Address`` takes it: four
    decimal octets of 1-3 ASCII digits, at most 255, no leading zero."""
    octets = 0
    position = start
    while True:
        stop = position
        while stop < end and data[stop] != _DOT:
            stop += 1
        length = stop - position
        if length == 0 or length > 3 or (length > 1 and data[position] == 48):
            return False
        value = 0
        for i in range(position, stop):
            if not 48 <= data[i] <= 57:
                return False
            value = 10 * value + data[i] - 48
        if value > 255:
            return False
        octets += 1
        if stop == end:
            return octets == 4
        if octets == 4:
            return False
        position = stop + 1


@njit(nogil=True, cache=True)
def _ipv6_networks48(offsets, data, bitmap, bit_offset):
    """The /48 network of each IPv6 address, parsed exactly as ``ipaddress.IPv6Address`` parses it.

    Returns ``(hextets, valid)``: ``hextets[i]`` holds row i's first three hextets; ``valid[i]`` is
    False for a null row or text ``IPv6Address`` refuses (a '/', an empty or '%'-holding scope id,
    a misplaced or second '::', a hextet of more than 4 hex digits, a bad dotted-quad tail, ...).
    """
    n = len(offsets) - 1
    has_nulls = len(bitmap) > 0
    hextets = np.zeros((n, 3), dtype=np.uint16)
    valid = np.zeros(n, dtype=np.bool_)
    starts = np.empty(_MAX_PARTS + 1, dtype=np.int64)
    ends = np.empty(_MAX_PARTS + 1, dtype=np.int64)
    for row in range(n):
        if has_nulls:
            bit = bit_offset + row
            if not (bitmap[bit >> 3] >> (bit & 7)) & 1:
                continue
        start = offsets[row]
        end = offsets[row + 1]
        # '/' anywhere is refused; the scope id after the first '%' must be non-empty, without '%'
        address_end = end
        refused = False
        for i in range(start, end):
            if data[i] == _SLASH:
                refused = True
                break
            if data[i] == _PERCENT:
                if address_end == end:
                    address_end = i
                else:
                    refused = True
                    break
        if refused or address_end == start or address_end == end - 1:
            continue
        # parts between colons: (starts[k], ends[k])
        parts = 0
        position = start
        too_many = False
        while True:
            stop = position
            while stop < address_end and data[stop] != _COLON:
                stop += 1
            if parts == _MAX_PARTS:
                too_many = True
                break
            starts[parts] = position
            ends[parts] = stop
            parts += 1
            if stop == address_end:
                break
            position = stop + 1
        if too_many or parts < 3:
            continue
        last = parts - 1
        dotted = False
        for i in range(starts[last], ends[last]):
            if data[i] == _DOT:
                dotted = True
                break
        if dotted:
            if not _ipv4_tail_valid(data, starts[last], ends[last]):
                continue
            total = parts + 1  # the dotted quad counts as two hextets
            if total > _MAX_PARTS:
                continue
        else:
            total = parts
        skip = -1
        for k in range(1, parts - 1):
            if starts[k] == ends[k]:
                if skip >= 0:
                    skip = -2
                    break
                skip = k
        if skip == -2:
            continue
        first_empty = starts[0] == ends[0]
        last_empty = not dotted and starts[last] == ends[last]
        if skip >= 0:
            high = skip
            low = total - skip - 1
            if first_empty:
                high -= 1
                if high:
                    continue
            if last_empty:
                low -= 1
                if low:
                    continue
            skipped = 8 - (high + low)
            if skipped < 1:
                continue
        else:
            if total != 8 or first_empty or last_empty:
                continue
            high, low, skipped = 8, 0, 0
        # every hextet written out: 1-4 hex digits (the dotted quad was checked above)
        written = parts - 1 if dotted else parts
        bad = False
        for k in range(written):
            if (k < high or k >= total - low) and not (skip >= 0 and k == skip):
                length = ends[k] - starts[k]
                if length == 0 or length > 4:
                    bad = True
                    break
                value = 0
                for i in range(starts[k], ends[k]):
                    digit = _hex_value(data[i])
                    if digit < 0:
                        bad = True
                        break
                    value = 16 * value + digit
                if bad:
                    break
                # where the part lands among the 8 hextets: before '::' in place, after it from the end
                position = k if k < high else 8 - (total - k)
                if position < 3:
                    hextets[row, position] = value
        if not bad:
            valid[row] = True
    return hextets, valid


def _ipv6_prefixes(addresses: pa.Array) -> pa.Array:
    """``str(IPv6Network((int(IPv6Address(a)) >> 80 << 80, 48)))`` of each address, null where refused.

    The network's last five hextets are zero, the longest run of zeros ``ipaddress`` compresses,
    so the text is the first three hextets up to the last non-zero one, then ``::/48``.
    """
    offsets, data = _offsets_and_data(addresses)
    bitmap, bit_offset = _validity_bits(addresses)
    hextets, valid = _ipv6_networks48(offsets, data, bitmap, bit_offset)
    offsets, texts = _network_texts(hextets, valid)
    null_bitmap = pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.StringArray.from_buffers(len(valid), pa.py_buffer(offsets), pa.py_buffer(texts), null_bitmap,
                                       int(len(valid) - valid.sum()))


_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_NETWORK_END = np.frombuffer(b"::/48", dtype=np.uint8)


@njit(nogil=True, cache=True)
def _network_texts(hextets, valid):
    """``(int32 offsets, UTF-8 bytes)`` of ``h0[:h1[:h2]]::/48`` per valid row (hex without leading
    zeros, up to the last non-zero hextet); an invalid row is empty."""
    n = len(valid)
    offsets = np.zeros(n + 1, dtype=np.int32)
    for row in range(n):
        length = 0
        if valid[row]:
            length = len(_NETWORK_END)
            kept = 3 if hextets[row, 2] else 2 if hextets[row, 1] else 1 if hextets[row, 0] else 0
            for k in range(kept):
                value = np.int64(hextets[row, k])
                length += (1 if value < 0x10 else 2 if value < 0x100 else 3 if value < 0x1000 else 4) + (k > 0)
        offsets[row + 1] = offsets[row] + length
    texts = np.empty(offsets[n], dtype=np.uint8)
    for row in range(n):
        if not valid[row]:
            continue
        position = offsets[row]
        kept = 3 if hextets[row, 2] else 2 if hextets[row, 1] else 1 if hextets[row, 0] else 0
        for k in range(kept):
            if k:
                texts[position] = _COLON
                position += 1
            value = np.int64(hextets[row, k])
            digits = 1 if value < 0x10 else 2 if value < 0x100 else 3 if value < 0x1000 else 4
            for d in range(digits):
                texts[position + d] = _HEX_DIGITS[(value >> (4 * (digits - 1 - d))) & 0xF]
            position += digits
        for i in range(len(_NETWORK_END)):
            texts[position + i] = _NETWORK_END[i]
    return offsets, texts


def ip_prefix(addresses: pa.Array) -> pa.Array:
    """The network of each address: IPv4 -> its /24, IPv6 -> its /48, in ``ipaddress`` notation.

    Both are rewritten vectorized: IPv4 by a regular expression, IPv6 by a compiled parser that
    accepts and refuses exactly what ``ipaddress.IPv6Address`` does.

    >>> ip_prefix(pa.array(["192.168.7.42", "2001:db8:1234:5678::1", "nonsense", None])).to_pylist()
    ['192.168.7.0/24', '2001:db8:1234::/48', None, None]
    """
    if isinstance(addresses, pa.ChunkedArray):
        addresses = addresses.combine_chunks()
    addresses = pc.utf8_trim_whitespace(addresses.cast(pa.string()))
    is_v4 = pc.fill_null(pc.match_substring_regex(addresses, _IPV4), False)
    v4 = pc.replace_substring_regex(addresses, _IPV4, r"\1.0/24")
    return pc.if_else(is_v4, v4, _ipv6_prefixes(addresses))


_BASE32 = np.frombuffer(b"0123456789bcdefghjkmnpqrstuvwxyz", dtype=np.uint8)


def geohash(latitudes: pa.Array, longitudes: pa.Array, precision: int = 5) -> pa.Array:
    """Geohash cell (``precision`` characters; 5 = about 4.9 km x 4.9 km) of each point in degrees.

    A point with a null, NaN or out-of-range coordinate gives null.

    >>> geohash(pa.array([57.64911]), pa.array([10.40744]), 11).to_pylist()
    ['u4pruydqqvj']
    """
    if not isinstance(precision, int) or not 1 <= precision <= 12:
        raise ValueError(f"geohash precision is 1 to 12 characters, got {precision!r}")
    lat = pc.cast(latitudes, pa.float64()).to_numpy(zero_copy_only=False)
    lon = pc.cast(longitudes, pa.float64()).to_numpy(zero_copy_only=False)
    if lat.shape != lon.shape:
        raise ValueError(f"{len(lat)} latitudes but {len(lon)} longitudes")
    with np.errstate(invalid="ignore"):
        bad = ~((np.abs(lat) <= 90.0) & (np.abs(lon) <= 180.0))
    lat = np.where(bad, 0.0, lat)
    lon = np.where(bad, 0.0, lon)
    bounds = [np.full(len(lat), -180.0), np.full(len(lat), 180.0), np.full(len(lat), -90.0), np.full(len(lat), 90.0)]
    codes = np.zeros((len(lat), precision), dtype=np.uint8)
    for bit in range(5 * precision):
        # even bits split longitude, odd bits latitude
        low, high, value = (bounds[0], bounds[1], lon) if bit % 2 == 0 else (bounds[2], bounds[3], lat)
        mid = (low + high) / 2
        upper = value >= mid
        np.copyto(low, mid, where=upper)
        np.copyto(high, mid, where=~upper)
        codes[:, bit // 5] |= upper.astype(np.uint8) << (4 - bit % 5)
    chars = _BASE32[codes]
    offsets = np.arange(0, precision * len(lat) + 1, precision, dtype=np.int32)
    cells = pa.StringArray.from_buffers(len(lat), pa.py_buffer(offsets), pa.py_buffer(chars.tobytes()))
    return pc.if_else(pa.array(bad), pa.scalar(None, pa.string()), cells)
