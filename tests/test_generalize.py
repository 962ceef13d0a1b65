"""Generalization of quasi-identifiers, each checked against a plain reference."""

from __future__ import annotations

import datetime as dt
import ipaddress

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from profiling.generalize import AGE_BANDS, age_band, city, geohash, ip_prefix, province

_BASE32 = "0123456789bcdefghjkmnpqrstuvwxyz"


def _reference_geohash(lat: float, lon: float, precision: int) -> str:
    lat_range, lon_range, bits, out = [-90.0, 90.0], [-180.0, 180.0], [], []
    for i in range(5 * precision):
        interval, value = (lon_range, lon) if i % 2 == 0 else (lat_range, lat)
        mid = (interval[0] + interval[1]) / 2
        if value >= mid:
            bits.append(1)
            interval[0] = mid
        else:
            bits.append(0)
            interval[1] = mid
    for i in range(0, len(bits), 5):
        out.append(_BASE32[int("".join(map(str, bits[i:i + 5])), 2)])
    return "".join(out)


def _reference_age_band(birthday: dt.date, as_of: dt.date) -> str | None:
    age = as_of.year - birthday.year - ((birthday.month, birthday.day) > (as_of.month, as_of.day))
    if age < 0:
        return None
    return [label for low, label in AGE_BANDS if age >= low][-1]


@given(st.lists(st.one_of(st.none(), st.dates(dt.date(1900, 1, 1), dt.date(2030, 12, 31))), max_size=40),
       st.dates(dt.date(1990, 1, 1), dt.date(2030, 12, 31)))
def test_age_band_matches_reference(birthdays, as_of):
    expected = [None if b is None else _reference_age_band(b, as_of) for b in birthdays]
    assert age_band(pa.array(birthdays, pa.date32()), as_of).to_pylist() == expected


def test_age_band_edges():
    as_of = dt.date(2024, 2, 29)
    got = age_band(pa.array([dt.date(2000, 2, 29), dt.date(2000, 3, 1), dt.date(2024, 3, 1)]), as_of).to_pylist()
    assert got == ["18-24", "18-24", None]
    assert age_band(pa.array([dt.date(1999, 2, 28)]), as_of).to_pylist() == ["25-34"]
    with pytest.raises(ValueError, match="must start at 0"):
        age_band(pa.array([dt.date(2000, 1, 1)]), as_of, bands=((5, "5+"),))


@given(st.lists(st.one_of(st.none(), st.from_regex(r"[1-8][0-9]{5}", fullmatch=True), st.text(max_size=7)),
                max_size=30))
def test_region_prefixes(regions):
    def ok(r):
        return r is not None and len(r) == 6 and r.isascii() and r.isdigit()
    assert province(pa.array(regions, pa.string())).to_pylist() == [r[:2] if ok(r) else None for r in regions]
    assert city(pa.array(regions, pa.string())).to_pylist() == [r[:4] if ok(r) else None for r in regions]


def _reference_prefix(text: str) -> str | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    return str(ipaddress.ip_network(f"{address}/{24 if address.version == 4 else 48}", strict=False))


_addresses = st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str),
                       st.ip_addresses(v=6).map(lambda a: a.exploded.upper()),
                       st.text(alphabet="0123456789.:abcdefg", max_size=20))


@given(st.lists(st.one_of(st.none(), _addresses), max_size=30))
def test_ip_prefix_matches_ipaddress(addresses):
    expected = [None if a is None else _reference_prefix(a) for a in addresses]
    assert ip_prefix(pa.array(addresses, pa.string())).to_pylist() == expected


def _slow_ipv6_prefix(text: str) -> str | None:
    """The row-by-row /48 the door used before its compiled parser: the reference it must match."""
    try:
        address = ipaddress.IPv6Address(text)
    except ValueError:
        return None
    return str(ipaddress.IPv6Network((int(address) >> 80 << 80, 48)))


def _slow_ip_prefix(text: str | None) -> str | None:
    if text is None:
        return None
    text = text.strip()
    octets = text.split(".")
    if len(octets) == 4 and all(o.isascii() and o.isdigit() and len(o) <= 3 and (o == "0" or o[0] != "0")
                                and int(o) <= 255 for o in octets):
        return ".".join(octets[:3]) + ".0/24"
    return _slow_ipv6_prefix(text) if ":" in text else None


_hextets = st.one_of(st.integers(0, 0xFFFF).map(lambda h: f"{h:x}"), st.integers(0, 0xFFFF).map(lambda h: f"{h:04X}"),
                     st.sampled_from(["0", "00000", "", "g", "12345", "1.2.3.4", "01.2.3.4", "1.2.3.256", "١"]))
_scopes = st.one_of(st.just(""), st.text(alphabet="%ae0 ٣/", max_size=5).map(lambda t: "%" + t))
_near_ipv6 = st.builds(lambda parts, scope, pad: pad + ":".join(parts) + scope + pad,
                       st.lists(_hextets, min_size=0, max_size=11), _scopes, st.sampled_from(["", " ", "\t"]))
_ipv6_texts = st.one_of(_near_ipv6, st.ip_addresses(v=6).map(str), st.ip_addresses(v=6).map(lambda a: a.exploded),
                        st.builds(lambda a, s: f"{a}%{s}", st.ip_addresses(v=6), st.text(min_size=1, max_size=4)),
                        st.text(alphabet="0123456789abcdefABCDEF.:%/ g", max_size=24), st.text(max_size=12))


@given(st.lists(st.one_of(st.none(), _ipv6_texts), max_size=40))
def test_ipv6_prefix_matches_the_row_by_row_reference(addresses):
    """Every text ipaddress takes (scope ids, dotted-quad tails, '::' anywhere, upper case, spaces
    around) gives the same /48 string; every text it refuses gives null."""
    expected = [_slow_ip_prefix(a) for a in addresses]
    assert ip_prefix(pa.array(addresses, pa.string())).to_pylist() == expected
    # the same through a sliced array (offsets and validity bits not starting at zero)
    padded = pa.array([None, "1:2:3::", *addresses], pa.string()).slice(2)
    assert ip_prefix(padded).to_pylist() == expected


def test_ipv6_prefix_edges():
    cases = {"1:2:3:4:5:6:7::": "1:2:3::/48", "::1:2:3:4:5:6:7": "0:1:2::/48", "1:0:0:1::": "1::/48",
             "0:0:1::": "0:0:1::/48", "::ffff:1.2.3.4": "::/48", "1:2::1.2.3.4": "1:2::/48",
             "fe80::1%eth0": "fe80::/48", "ABCD:EF01:2345:6789::": "abcd:ef01:2345::/48",
             "1:2:3:4:5:6:7:8:9": None, "1::2::3": None, "fe80::1%": None, "fe80::1%a%b": None,
             "2001:db8::/48": None, ":1:2:3:4:5:6:7": None, "1:2:3:4:5:6:1.2.3.04": None, "12345::": None}
    assert ip_prefix(pa.array(list(cases), pa.string())).to_pylist() == list(cases.values())
    assert [_slow_ip_prefix(text) for text in cases] == list(cases.values())


@given(st.lists(st.tuples(st.floats(-90, 90), st.floats(-180, 180)), max_size=30), st.integers(1, 9))
def test_geohash_matches_reference(points, precision):
    lats, lons = [p[0] for p in points], [p[1] for p in points]
    got = geohash(pa.array(lats, pa.float64()), pa.array(lons, pa.float64()), precision).to_pylist()
    assert got == [_reference_geohash(la, lo, precision) for la, lo in points]


def test_geohash_rejects_what_it_cannot_place():
    got = geohash(pa.array([None, float("nan"), 91.0, 39.9]), pa.array([0.0, 0.0, 0.0, 116.4])).to_pylist()
    assert got[:3] == [None, None, None] and got[3] == _reference_geohash(39.9, 116.4, 5)
    with pytest.raises(ValueError, match="precision is 1 to 12"):
        geohash(pa.array([0.0]), pa.array([0.0]), 0)
