"""Coarsening of quasi-identifiers, vectorized over Arrow arrays: ages, regions, IP prefixes, geohashes.

Every function keeps nulls null and turns a value it cannot read into null, so nothing of the
raw value survives in the output or in an error message.
"""

from __future__ import annotations

import datetime as dt
import ipaddress

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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


def _ipv6_prefix48(text: str) -> str | None:
    try:
        address = ipaddress.IPv6Address(text)
    except ValueError:
        return None
    return str(ipaddress.IPv6Network((int(address) >> 80 << 80, 48)))


def ip_prefix(addresses: pa.Array) -> pa.Array:
    """The network of each address: IPv4 -> its /24, IPv6 -> its /48, in ``ipaddress`` notation.

    IPv4 is rewritten vectorized; IPv6 is parsed once per distinct value.

    >>> ip_prefix(pa.array(["192.168.7.42", "2001:db8:1234:5678::1", "nonsense", None])).to_pylist()
    ['192.168.7.0/24', '2001:db8:1234::/48', None, None]
    """
    if isinstance(addresses, pa.ChunkedArray):
        addresses = addresses.combine_chunks()
    addresses = pc.utf8_trim_whitespace(addresses.cast(pa.string()))
    is_v4 = pc.fill_null(pc.match_substring_regex(addresses, _IPV4), False)
    v4 = pc.replace_substring_regex(addresses, _IPV4, r"\1.0/24")
    # rows: (index into the distinct values) for the IPv6 candidates
    encoded = pc.dictionary_encode(pc.if_else(pc.match_substring(addresses, ":"), addresses,
                                              pa.scalar(None, pa.string())))
    v6_distinct = pa.array([_ipv6_prefix48(text) for text in encoded.dictionary.to_pylist()], pa.string())
    v6 = v6_distinct.take(encoded.indices)
    return pc.if_else(is_v4, v4, v6)


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
