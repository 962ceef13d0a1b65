"""Devices: type, operating system, carrier and app version; the networks people connect from, and IP addresses."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.synthetic._arrays import _ascii, _draw, _join, _pick, _strings, _taken, _text
from pipelines.synthetic._times import _ACCOUNTS_FROM, _DAY, _timestamps
from pipelines.synthetic._vocabulary import _vocabulary

_DEVICE_TYPES = (
    ("phone", (("android", 55), ("ios", 25), ("harmonyos", 20))),
    ("tablet", (("ios", 50), ("android", 30), ("harmonyos", 20))),
    ("pc", (("windows", 80), ("macos", 15), ("linux", 5))),
    ("watch", (("harmonyos", 40), ("ios", 35), ("android", 25))),
)
_DEVICE_TYPE_P = np.array([80, 10, 8, 2])
_CARRIERS = ("china_mobile", "china_unicom", "china_telecom", "china_broadnet", "other")
_CARRIER_P = np.array([55, 25, 18, 1, 1])


def _device_rows(rng: np.random.Generator, first_seen: np.ndarray, device_type: np.ndarray) -> dict[str, pa.Array]:
    """devices columns other than device_id, for devices of the given types (index into _DEVICE_TYPES)."""
    n = len(first_seen)
    os_index = np.empty(n, dtype=np.int64)
    for t, (_, os_weights) in enumerate(_DEVICE_TYPES):
        members = np.flatnonzero(device_type == t)
        os_index[members] = _draw(rng, len(members), [w for _, w in os_weights])
    os_names = [[name for name, _ in weights] for _, weights in _DEVICE_TYPES]
    os_table = _strings(name for names in os_names for name in names)
    os_offset = np.cumsum([0] + [len(names) for names in os_names])[:-1]
    mobile = np.isin(device_type, [0, 3]) | ((device_type == 1) & (rng.random(n) < 0.3))
    carrier = _taken(_strings(_CARRIERS), _draw(rng, n, _CARRIER_P), mobile)
    # Version of the app installed at first sight: a minor release every two months since 2018.
    months = np.clip((first_seen - _ACCOUNTS_FROM) // (30 * _DAY), 0, None)
    version = _join(pa.array(3 + months // 24).cast(pa.string()), ".",
                    pa.array((months % 24) // 2).cast(pa.string()), ".",
                    pa.array(rng.integers(0, 6, n)).cast(pa.string()))
    return {
        "device_type": _pick(_strings(t for t, _ in _DEVICE_TYPES), device_type),
        "os": _pick(os_table, os_offset[device_type] + os_index),
        "carrier": carrier,
        "app_version": version,
        "first_seen_at": _timestamps(first_seen),
    }


def _random_ip24(rng: np.random.Generator, n: int) -> np.ndarray:
    """Networks a.b.c of Chinese ISPs, as ``a << 16 | b << 8 | c``."""
    vocabulary = _vocabulary()
    first = vocabulary.ipv4_first[rng.integers(0, len(vocabulary.ipv4_first), n)]
    return (first << 16) | rng.integers(0, 65536, n)


def _ip_addresses(rng: np.random.Generator, ip24: np.ndarray) -> pa.Array:
    """IPv4 addresses in the given /24 networks, 5% replaced by carrier IPv6 addresses."""
    vocabulary = _vocabulary()
    n = len(ip24)
    octets = [ip24 >> 16, (ip24 >> 8) & 255, ip24 & 255, rng.integers(2, 255, n)]
    v4 = _join(*[part for octet in octets for part in (_pick(vocabulary.octet, octet), ".")][:-1])
    nibbles = np.frombuffer(b"0123456789abcdef", np.uint8)[rng.integers(0, 16, (n, 14))]
    colon = _ascii(":", n)
    v6_tail = np.hstack([nibbles[:, :2], colon, nibbles[:, 2:6], colon, nibbles[:, 6:10], colon, colon,
                         nibbles[:, 10:]])
    v6 = _join(_pick(vocabulary.ipv6_prefix, rng.integers(0, len(vocabulary.ipv6_prefix), n)), _text(v6_tail))
    return pc.if_else(pa.array(rng.random(n) < 0.05), v6, v4)
