"""Formats of the identifiers the data model holds, checked vectorized over Arrow arrays.

Every ``*_invalid`` function takes a string array and returns a boolean array that is
True where a present value is malformed and null where the value is null (a missing
value is the ``required`` rule's business, not the format's).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "PROVINCE_CODES",
    "CITY_CODES",
    "PHONE_PREFIXES",
    "ID_CARD_WEIGHTS",
    "id_card_check_chars",
    "id_card_invalid",
    "phone_invalid",
    "region_invalid",
    "ip_invalid",
    "canonical_phone",
]

# GB/T 2260 province-level codes (first two digits of a region code and of an ID number).
PROVINCE_CODES: dict[str, str] = {
    "11": "Beijing", "12": "Tianjin", "13": "Hebei", "14": "Shanxi", "15": "Inner Mongolia",
    "21": "Liaoning", "22": "Jilin", "23": "Heilongjiang", "31": "Shanghai", "32": "Jiangsu",
    "33": "Zhejiang", "34": "Anhui", "35": "Fujian", "36": "Jiangxi", "37": "Shandong",
    "41": "Henan", "42": "Hubei", "43": "Hunan", "44": "Guangdong", "45": "Guangxi",
    "46": "Hainan", "50": "Chongqing", "51": "Sichuan", "52": "Guizhou", "53": "Yunnan",
    "54": "Tibet", "61": "Shaanxi", "62": "Gansu", "63": "Qinghai", "64": "Ningxia",
    "65": "Xinjiang", "71": "Taiwan", "81": "Hong Kong", "82": "Macao",
}

# Prefecture-level cities (GB/T 2260 codes, district digits 00) with a rough population weight.
CITY_CODES: dict[str, tuple[str, float]] = {
    "110100": ("Beijing", 21.9), "120100": ("Tianjin", 13.9), "130100": ("Shijiazhuang", 11.2),
    "130200": ("Tangshan", 7.7), "140100": ("Taiyuan", 5.4), "150100": ("Hohhot", 3.5),
    "210100": ("Shenyang", 9.1), "210200": ("Dalian", 7.5), "220100": ("Changchun", 9.1),
    "230100": ("Harbin", 10.0), "310100": ("Shanghai", 24.9), "320100": ("Nanjing", 9.4),
    "320200": ("Wuxi", 7.5), "320500": ("Suzhou", 12.9), "330100": ("Hangzhou", 12.4),
    "330200": ("Ningbo", 9.6), "340100": ("Hefei", 9.6), "350100": ("Fuzhou", 8.4),
    "350200": ("Xiamen", 5.3), "360100": ("Nanchang", 6.5), "370100": ("Jinan", 9.4),
    "370200": ("Qingdao", 10.3), "410100": ("Zhengzhou", 12.8), "420100": ("Wuhan", 13.7),
    "430100": ("Changsha", 10.4), "440100": ("Guangzhou", 18.8), "440300": ("Shenzhen", 17.7),
    "440600": ("Foshan", 9.6), "441900": ("Dongguan", 10.5), "450100": ("Nanning", 8.8),
    "460100": ("Haikou", 2.9), "500100": ("Chongqing", 32.1), "510100": ("Chengdu", 21.2),
    "520100": ("Guiyang", 6.1), "530100": ("Kunming", 8.5), "540100": ("Lhasa", 0.9),
    "610100": ("Xi'an", 13.0), "620100": ("Lanzhou", 4.4), "630100": ("Xining", 2.5),
    "640100": ("Yinchuan", 2.9), "650100": ("Urumqi", 4.1), "810000": ("Hong Kong", 7.4),
    "820000": ("Macao", 0.7),
}

# Mainland mobile number prefixes (first three digits) in use by the three carriers.
PHONE_PREFIXES: tuple[str, ...] = (
    "130", "131", "132", "133", "134", "135", "136", "137", "138", "139", "145", "147",
    "150", "151", "152", "153", "155", "156", "157", "158", "159", "166", "170", "171",
    "173", "175", "176", "177", "178", "180", "181", "182", "183", "184", "185", "186",
    "187", "188", "189", "191", "198", "199",
)

# GB 11643-1999 / ISO 7064 MOD 11-2 weights of the first 17 digits of an ID number.
ID_CARD_WEIGHTS = np.array([7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2], dtype=np.int64)
_CHECK_CHARS = np.frombuffer(b"10X98765432", dtype=np.uint8)

_PROVINCES = pa.array(sorted(PROVINCE_CODES))


def id_card_check_chars(body_digits: np.ndarray) -> np.ndarray:
    """ASCII codes of the check characters for ID bodies given as an ``(n, 17)`` array of digits 0-9."""
    remainder = (body_digits.astype(np.int64) @ ID_CARD_WEIGHTS) % 11
    return _CHECK_CHARS[remainder]


def _fixed_width_bytes(values: pa.Array, width: int) -> np.ndarray:
    """View a string array whose values all have ``width`` bytes as an ``(n, width)`` uint8 array."""
    values = values.cast(pa.string())
    if len(values) == 0:
        return np.zeros((0, width), dtype=np.uint8)
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int32)[values.offset : values.offset + len(values) + 1]
    data = np.frombuffer(values.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
    return data.reshape(len(values), width)


def _null_where_null(values: pa.Array, invalid: pa.Array) -> pa.Array:
    return pc.if_else(pc.is_null(values), pa.scalar(None, pa.bool_()), invalid)


def canonical_phone(values: pa.Array) -> pa.Array:
    """Strip spaces, hyphens, dots and brackets and a leading +86 / 0086 / 86 country code."""
    stripped = pc.replace_substring_regex(values, r"[\s\-\.\(\)]", "")
    return pc.replace_substring_regex(stripped, r"^(?:\+86|0086|86)(1[0-9]{10})$", r"\1")


def phone_invalid(values: pa.Array) -> pa.Array:
    """True where a value is not a mainland mobile number (11 digits, ``1[3-9]...``) after canonicalization.

    >>> phone_invalid(pa.array(["+86 138-1234-5678", "12812345678", None])).to_pylist()
    [False, True, None]
    """
    valid = pc.match_substring_regex(canonical_phone(values), r"^1[3-9][0-9]{9}$")
    return _null_where_null(values, pc.invert(valid))


def region_invalid(values: pa.Array) -> pa.Array:
    """True where a value is not a six-digit GB/T 2260 code with a known province prefix."""
    shaped = pc.match_substring_regex(values, r"^[1-8][0-9]{5}$")
    province_known = pc.is_in(pc.utf8_slice_codeunits(values, 0, 2), value_set=_PROVINCES)
    return _null_where_null(values, pc.invert(pc.and_(shaped, province_known)))


def ip_invalid(values: pa.Array) -> pa.Array:
    """True where a value is neither a dotted IPv4 address nor a plausible IPv6 address."""
    octet = r"(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
    v4 = pc.match_substring_regex(values, rf"^{octet}(\.{octet}){{3}}$")
    v6 = pc.match_substring_regex(values, r"^[0-9A-Fa-f:]{2,39}$")
    v6 = pc.and_(v6, pc.match_substring(values, ":"))
    return _null_where_null(values, pc.invert(pc.or_(v4, v6)))


def id_card_invalid(values: pa.Array) -> pa.Array:
    """True where a value is not a valid 18-character resident ID number (GB 11643-1999).

    Checks the shape, the province prefix, the birth date (1900-01-01 to 2099-12-31, a real
    calendar day) and the MOD 11-2 check character (``X`` may be written lower-case).
    """
    values = values.cast(pa.string())
    shaped = pc.fill_null(pc.match_substring_regex(values, r"^[1-8][0-9]{16}[0-9Xx]$"), False)
    province_known = pc.is_in(pc.utf8_slice_codeunits(values, 0, 2), value_set=_PROVINCES)
    shaped = pc.and_(shaped, pc.fill_null(province_known, False))
    valid = np.zeros(len(values), dtype=bool)
    candidate_index = np.flatnonzero(shaped.to_numpy(zero_copy_only=False))
    if len(candidate_index):
        candidates = pc.utf8_upper(values.take(pa.array(candidate_index)))
        birth = pc.strptime(pc.utf8_slice_codeunits(candidates, 6, 14), format="%Y%m%d", unit="s", error_is_null=True)
        year = pc.year(birth)
        birth_ok = pc.fill_null(pc.and_(pc.greater_equal(year, 1900), pc.less_equal(year, 2099)), False)
        raw = _fixed_width_bytes(candidates, 18)
        check_ok = id_card_check_chars(raw[:, :17] - ord("0")) == raw[:, 17]
        valid[candidate_index] = check_ok & birth_ok.to_numpy(zero_copy_only=False)
    return _null_where_null(values, pa.array(~valid))
