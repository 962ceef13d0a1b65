"""Seeded synthetic raw data set: the seven tables of ``profiling.schema``, realistic and consistent.

``generate`` writes ``<out_dir>/<table>/part-NNNNN.parquet`` with exactly the data model's Arrow
schemas. Accounts are made in batches; each batch draws from its own stream
``np.random.default_rng([seed, batch_index])`` and writes one part file per table, so memory is
bounded by the batch and the output is byte-identical for the same parameters. The catalogue, the
merchants and a pool of shared devices come from a separate stream common to all batches.

Everything is vectorized (numpy and pyarrow compute); Python loops run per batch or per small word
list, never per row. Times are int64 microseconds since the Unix epoch (UTC) until they become
Arrow timestamps; money is in CNY unless an order says otherwise, weights in kilograms.

No privacy guarantee applies here: the data is made up and identifies nobody, but it is shaped
like personal data (names, phones, addresses, ID numbers) so that pseudonymization and the
privacy mechanisms downstream can be exercised on it.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from pipelines import _synthetic_words as words
from profiling.errors import InternalError
from profiling.identifiers import CITY_CODES, PHONE_PREFIXES, PROVINCE_CODES, id_card_check_chars
from profiling.schema import (
    CATEGORIES,
    CURRENCIES,
    PAYMENT_INSTITUTIONS,
    SERVICE_TYPES,
    TABLE_NAMES,
    TIMESTAMP,
    arrow_schema,
    table as schema_table,
)

__all__ = ["generate"]

# ---------------------------------------------------------------------------------------------
# Time, in int64 microseconds since 1970-01-01 UTC.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = 1_000_000
_HOUR = 3_600 * _SECOND
_DAY = 24 * _HOUR
_BEIJING_OFFSET = 8 * _HOUR


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


_ACCOUNTS_FROM = _micros(datetime(2018, 1, 1, tzinfo=UTC))   # first account creation
_LISTINGS_FROM = _micros(datetime(2012, 1, 1, tzinfo=UTC))   # first catalogue listing
_POLICY_CHANGE = _micros(datetime(2019, 6, 10, tzinfo=UTC))  # the 2019-06 policy takes effect
_EARLIEST_UNTIL = datetime(2018, 3, 1, tzinfo=UTC)
_NEVER = np.iinfo(np.int64).max
# Orders per hour of the day, Beijing time (evening peak).
_ORDER_HOURS = np.array([2, 1, .5, .3, .3, .5, 1, 2, 3, 4, 5, 5, 6, 5, 4, 4, 4, 5, 6, 8, 10, 11, 9, 5], float)

# ---------------------------------------------------------------------------------------------
# Size knobs.
_MAX_ACCOUNTS = 9_999_999_999     # account ids have ten digits
_MAX_BATCHES = 99_999             # part-NNNNN and the batch digits of event ids
_MAX_BATCH_ACCOUNTS = 1_000_000   # keeps one batch's string columns under Arrow's 2 GB (int32 offsets)
_MAX_CATALOGUE_ITEMS = 10_000_000  # every worker holds the catalogue in memory (ids have room for 10^8)
_ORDERS_PER_ACCOUNT = 10.0        # mean
_MAX_ORDER_RATE = 800.0           # per account over its lifetime
_ACTIVITY_SIGMA = 1.2             # lognormal spread of account activity (heavy tail of orders)
_DEVICES_PER_ACCOUNT_P = np.array([.40, .33, .17, .07, .03])  # 1..5 devices, mean 2.0
_EVENTS_PER_DEVICE = 3.0          # mean
_SHARED_DEVICE_SHARE = 0.002      # shared devices per account
_SHARED_DEVICE_USERS = 0.015      # share of accounts that also use a shared device
_ITEMS_PER_ORDER_P = np.array([.55, .22, .12, .07, .04])     # 1..5 items
_SHIPPED_SHARE = 0.85             # of orders whose main item is a commodity
_CROSS_BORDER_SHARE = 0.03        # of commodity orders
_STANDALONE_PER_ACCOUNT = 0.35    # parcels sent by the account holder, mean
_WALK_IN_PER_ACCOUNT = 0.05       # parcels sent by people without an account, per account
_CONTACT_POOL_SHARE = 0.5         # people without an account, per account in the batch
_CANCEL_SHARE = 0.01
_SIGNUP_SKEW = 0.85               # created = start + span * u ** skew: more sign-ups lately
_MEAN_TENURE = 1 - 1 / (1 + _SIGNUP_SKEW)  # mean of (until - created) / span under that skew
_COMPRESSION = "snappy"

_CROSS_BORDER_CURRENCIES = np.array([CURRENCIES.index(c) for c in ("CNY", "HKD", "USD")])
_CNY_TO = {"HKD": 1.08, "USD": 0.14}  # rough exchange rates: units of the currency per CNY
_KINDS = ("commodity", "service", "coupon")
_KIND_P = np.array([.90, .06, .04])
_COMMODITY, _SERVICE, _COUPON = 0, 1, 2
_MAINLAND_PROVINCES = tuple(code for code in sorted(PROVINCE_CODES) if code < "70")

# Columns with few distinct values: dictionary-encode them, write everything else plain.
_DICTIONARY_COLUMNS = {
    "catalogue": ["kind", "category"],
    "accounts": ["gender", "region"],
    "devices": ["device_type", "os", "carrier", "app_version"],
    "orders": ["currency", "payment_institution", "category"],
    "waybills": ["origin_region", "destination_region", "service_type"],
    "device_events": ["event_type", "coarse_region"],
    "consent_events": ["event_type", "purpose", "policy_version", "channel"],
}


# ---------------------------------------------------------------------------------------------
# Small vectorized building blocks.

def _draw(rng: np.random.Generator, n: int, weights) -> np.ndarray:
    """``n`` indices drawn with probability proportional to ``weights``."""
    cdf = np.cumsum(np.asarray(weights, dtype=float))
    return np.minimum(np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right"), len(cdf) - 1)


def _words(values) -> pa.Array:
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


def _timestamps(micros: np.ndarray) -> pa.Array:
    values = np.ascontiguousarray(micros, dtype=np.int64)
    return pa.Array.from_buffers(TIMESTAMP, len(values), [None, pa.py_buffer(values)])


def _floats(values: np.ndarray, present: np.ndarray | None = None) -> pa.Array:
    return pa.array(values, type=pa.float64(), mask=None if present is None else ~present)


def _taken(values: pa.Array, index: np.ndarray, present: np.ndarray | None = None) -> pa.Array:
    """``values[index]``, null where ``present`` is False."""
    return values.take(pa.array(index, mask=None if present is None else ~present))


def _uniform_between(rng: np.random.Generator, low: np.ndarray, high: np.ndarray | int) -> np.ndarray:
    """Microsecond times uniform in ``[low, high]`` (element-wise)."""
    span = np.maximum(np.asarray(high, dtype=np.int64) - low, 0)
    return low + (rng.random(len(low)) * span).astype(np.int64)


def _exponential_delay(rng: np.random.Generator, n: int, mean_days: float) -> np.ndarray:
    return (rng.exponential(mean_days * _DAY, n)).astype(np.int64) + _SECOND


def _group_starts(counts: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)


def _rank_within_group(counts: np.ndarray) -> np.ndarray:
    """0, 1, ... within each group of ``np.repeat(arange, counts)``."""
    total = int(counts.sum())
    return np.arange(total, dtype=np.int64) - np.repeat(_group_starts(counts), counts)


# ---------------------------------------------------------------------------------------------
# Vocabulary as Arrow arrays (built once per process).

class _Vocabulary:
    def __init__(self) -> None:
        self.surname = _words(s for s, _, _ in words.SURNAMES)
        self.surname_pinyin = _words(p for _, p, _ in words.SURNAMES)
        self.surname_weight = np.array([w for _, _, w in words.SURNAMES])
        given = words.GIVEN_MALE + words.GIVEN_FEMALE + words.GIVEN_EITHER
        self.given = _words([g for g, _ in given] + [""])  # last entry: no second character
        self.given_pinyin = _words([p for _, p in given] + [""])
        self.n_male, self.n_female, self.n_either = map(len, (words.GIVEN_MALE, words.GIVEN_FEMALE, words.GIVEN_EITHER))
        self.nick_adjective = _words(words.NICK_ADJECTIVES)
        self.nick_noun = _words(words.NICK_NOUNS)
        self.email_domain = _words(d for d, _ in words.EMAIL_DOMAINS)
        self.email_weight = np.array([w for _, w in words.EMAIL_DOMAINS])
        self.district = _words(words.DISTRICTS)
        self.street = _words(words.STREETS)
        codes = list(CITY_CODES)
        self.city_code = _words(codes)
        self.city_prefix = np.frombuffer("".join(c[:4] for c in codes).encode("ascii"), np.uint8).reshape(-1, 4)
        self.city_weight = np.array([CITY_CODES[c][1] for c in codes])
        self.city_place = _words(words.CITY_PLACES.get(c, (CITY_CODES[c][0],))[0] for c in codes)
        self.city_lat = np.array([words.CITY_PLACES.get(c, ("", 35.0, 105.0))[1] for c in codes])
        self.city_lon = np.array([words.CITY_PLACES.get(c, ("", 35.0, 105.0))[2] for c in codes])
        self.outside_mainland = np.array([i for i, c in enumerate(codes) if c[:2] in ("71", "81", "82")], np.int64)
        self.hub_weight = self.city_weight * np.array([words.MERCHANT_HUBS.get(c, 1.0) for c in codes])
        self.category = _words(CATEGORIES)
        self.phone_prefix = np.frombuffer("".join(PHONE_PREFIXES).encode("ascii"), np.uint8).reshape(-1, 3)
        self.octet = _words(str(i) for i in range(256))
        self.ipv4_first = np.array(words.CN_IPV4_FIRST_OCTETS, dtype=np.int64)
        self.ipv6_prefix = _words(words.CN_IPV6_PREFIXES)
        self.carrier_prefix = np.frombuffer("".join(words.CARRIER_PREFIXES).encode("ascii"), np.uint8).reshape(-1, 2)
        profiles = [words.CATEGORY_PROFILES[c] for c in CATEGORIES]
        self.category_kind = np.array([_KINDS.index(p[0]) for p in profiles])
        self.category_share = np.array([p[1] for p in profiles], dtype=float)
        self.category_price = np.array([np.nan if p[2] is None else p[2] for p in profiles])
        self.category_weight_kg = np.array([p[3] for p in profiles])
        self.category_word = _words(p[4] for p in profiles)
        nouns = [(i, noun) for i, p in enumerate(profiles) for noun in p[5]]
        self.noun = _words(noun for _, noun in nouns)
        self.noun_category = np.array([i for i, _ in nouns])
        self.brand = _words(words.BRANDS)
        self.merchant_suffix = _words(words.MERCHANT_SUFFIXES)
        self.title_adjective = _words(words.TITLE_ADJECTIVES)
        self.spec = {_COMMODITY: _words(words.COMMODITY_SPECS), _SERVICE: _words(words.SERVICE_SPECS),
                     _COUPON: _words(words.COUPON_SPECS)}


@lru_cache(maxsize=1)
def _vocabulary() -> _Vocabulary:
    return _Vocabulary()


# ---------------------------------------------------------------------------------------------
# People: account holders, people without an account, merchants.

@dataclass(frozen=True)
class _People:
    """Arrays describing ``n`` people, one row each (numpy or Arrow, all of length ``n``)."""

    name: pa.Array            # Chinese name
    name_pinyin: pa.Array     # the same in pinyin, no spaces
    female: np.ndarray        # bool
    phone: pa.Array
    city: np.ndarray          # index into CITY_CODES
    region: pa.Array          # six-digit region code: city prefix + district "01".."12"
    region_chars: np.ndarray  # (n, 6) uint8 ASCII of ``region``
    address: pa.Array


def _phones(rng: np.random.Generator, n: int, *, with_account: bool) -> pa.Array:
    """Mainland mobile numbers; the 8-digit suffix is 3 mod 7 exactly for people without an account.

    Keeps the numbers of account holders and of everyone else disjoint, so "receivers with no
    account" really have no account, without any visible pattern.
    """
    vocabulary = _vocabulary()
    prefix = vocabulary.phone_prefix[rng.integers(0, len(vocabulary.phone_prefix), n)]
    block = rng.integers(0, 14_285_714, n, dtype=np.int64) * 7
    if with_account:
        suffix = block + np.array([0, 1, 2, 4, 5, 6])[rng.integers(0, 6, n)]
    else:
        suffix = block + 3
    return _text(np.hstack([prefix, _digits(suffix, 8)]))


def _addresses(rng: np.random.Generator, city: np.ndarray, district: np.ndarray) -> pa.Array:
    """"<province city> <district> <street> <number>号[ <building>栋<unit>单元<room>室]"."""
    vocabulary = _vocabulary()
    n = len(city)
    number = pa.array(rng.integers(1, 1000, n)).cast(pa.string())
    flat = _join(" ", pa.array(rng.integers(1, 40, n)).cast(pa.string()), "栋",
                 pa.array(rng.integers(1, 7, n)).cast(pa.string()), "单元",
                 pa.array(rng.integers(1, 33, n) * 100 + rng.integers(1, 5, n)).cast(pa.string()), "室")
    flat = pc.if_else(pa.array(rng.random(n) < 0.7), flat, "")
    return _join(_pick(vocabulary.city_place, city), " ", _pick(vocabulary.district, district), " ",
                 _pick(vocabulary.street, rng.integers(0, len(vocabulary.street), n)), " ", number, "号", flat)


def _people(rng: np.random.Generator, n: int, *, with_account: bool, city_weight: np.ndarray | None = None) -> _People:
    vocabulary = _vocabulary()
    female = rng.random(n) < 0.52
    surname = _draw(rng, n, vocabulary.surname_weight)
    # Given-name characters: male list + either, or female list + either (indices into vocabulary.given).
    n_m, n_f, n_e = vocabulary.n_male, vocabulary.n_female, vocabulary.n_either
    pool_size = np.where(female, n_f + n_e, n_m + n_e)
    first_draw = (rng.random(n) * pool_size).astype(np.int64)
    second_draw = (rng.random(n) * pool_size).astype(np.int64)

    def given_index(draw: np.ndarray) -> np.ndarray:
        own = np.where(female, n_m + draw, draw)
        return np.where(draw < np.where(female, n_f, n_m), own, n_m + n_f + draw - np.where(female, n_f, n_m))

    first = given_index(first_draw)
    second = np.where(rng.random(n) < 0.7, given_index(second_draw), len(vocabulary.given) - 1)
    name = _join(_pick(vocabulary.surname, surname), _pick(vocabulary.given, first), _pick(vocabulary.given, second))
    name_pinyin = _join(_pick(vocabulary.surname_pinyin, surname), _pick(vocabulary.given_pinyin, first),
                        _pick(vocabulary.given_pinyin, second))
    city = _draw(rng, n, vocabulary.city_weight if city_weight is None else city_weight)
    district = rng.integers(1, 13, n)
    region_chars = np.hstack([vocabulary.city_prefix[city], _digits(district, 2)])
    return _People(name=name, name_pinyin=name_pinyin, female=female,
                   phone=_phones(rng, n, with_account=with_account), city=city,
                   region=_text(region_chars), region_chars=region_chars,
                   address=_addresses(rng, city, district - 1))


# ---------------------------------------------------------------------------------------------
# The run and what every batch shares.

@dataclass(frozen=True)
class _Run:
    """Parameters of one ``generate`` call (hashable: keys the per-process cache of ``_World``)."""

    accounts: int
    seed: int
    catalogue_items: int
    batch_accounts: int
    until: int  # microseconds

    @property
    def batches(self) -> int:
        return math.ceil(self.accounts / self.batch_accounts)

    def batch_accounts_range(self, batch_index: int) -> tuple[int, int]:
        first = batch_index * self.batch_accounts
        return first, min(self.batch_accounts, self.accounts - first)


@dataclass(frozen=True)
class _World:
    """The catalogue, merchants and shared devices: one seeded stream, common to all batches."""

    catalogue: pa.Table
    item_id: pa.Array
    item_kind: np.ndarray        # index into _KINDS
    item_category: np.ndarray    # index into CATEGORIES
    item_price: np.ndarray       # CNY, NaN for coupons
    item_weight_kg: np.ndarray   # typical parcel weight of one item
    item_merchant: np.ndarray    # index into merchants
    item_by_rank: np.ndarray     # most popular first
    rank_cdf: np.ndarray         # cumulative popularity by rank, ends at 1
    early_item_by_rank: np.ndarray  # items listed before the first account: always orderable
    early_rank_cdf: np.ndarray
    item_listed: np.ndarray      # microseconds
    merchants: _People
    shared_devices: pa.Table     # devices rows, written with batch 0
    shared_device_id: pa.Array
    shared_first_seen: np.ndarray
    shared_city: np.ndarray
    shared_ip24: np.ndarray      # a.b.c of the place's network, as a << 16 | b << 8 | c


def _popularity(n: int) -> np.ndarray:
    """Zipf-like cumulative popularity of ranks 0..n-1."""
    weight = 1.0 / (np.arange(n) + 10.0) ** 1.1
    cdf = np.cumsum(weight)
    return cdf / cdf[-1]


def _catalogue(rng: np.random.Generator, run: _Run) -> dict:
    vocabulary = _vocabulary()
    n = run.catalogue_items
    item_by_rank = rng.permutation(n)
    kind = _draw(rng, n, _KIND_P)
    # The most popular item is an early-listed commodity: every order can then be shipped and
    # placed after its items were listed, however small the catalogue.
    kind[item_by_rank[0]] = _COMMODITY
    category = np.empty(n, dtype=np.int32)
    for k in range(len(_KINDS)):
        members = np.flatnonzero(kind == k)
        of_kind = np.flatnonzero(vocabulary.category_kind == k)
        category[members] = of_kind[_draw(rng, len(members), vocabulary.category_share[of_kind])]
    price = vocabulary.category_price[category] * rng.lognormal(0.0, 0.7, n)
    price = np.round(np.clip(price, 0.01, 999_999.0), 2)
    weight_kg = vocabulary.category_weight_kg[category] * rng.lognormal(0.0, 0.5, n)
    # rows: (item) with kind, category, price (NaN for coupons), weight
    early = rng.random(n) < 0.7
    early[item_by_rank[0]] = True
    listed = np.where(early, _uniform_between(rng, np.full(n, _LISTINGS_FROM), _ACCOUNTS_FROM - _SECOND),
                      _uniform_between(rng, np.full(n, _ACCOUNTS_FROM), run.until))
    # Served provinces: null (nationwide) for most, 1-5 distinct mainland provinces for ~10%.
    regional = rng.random(n) < 0.10
    province_count = np.where(regional, rng.integers(1, 6, n), 0)
    shuffled = np.argsort(rng.random((int(regional.sum()), len(_MAINLAND_PROVINCES))), axis=1)[:, :5]
    chosen = shuffled[np.arange(5)[None, :] < province_count[regional][:, None]]
    offsets = np.concatenate([[0], np.cumsum(province_count)]).astype(np.int32)
    served = pa.ListArray.from_arrays(pa.array(offsets), _pick(_words(_MAINLAND_PROVINCES), chosen),
                                      mask=pa.array(~regional))
    nouns = np.empty(n, dtype=np.int64)
    for c in np.unique(category):
        members = np.flatnonzero(category == c)
        options = np.flatnonzero(vocabulary.noun_category == c)
        nouns[members] = options[rng.integers(0, len(options), len(members))]
    specs = [_pick(vocabulary.spec[k], rng.integers(0, len(vocabulary.spec[k]), n)) for k in range(len(_KINDS))]
    spec = pc.choose(pa.array(kind.astype(np.int8)), *specs)
    adjective = pc.if_else(pa.array(kind == _COMMODITY),
                           _pick(vocabulary.title_adjective, rng.integers(0, len(vocabulary.title_adjective), n)), "")
    title = _join(_pick(vocabulary.brand, rng.integers(0, len(vocabulary.brand), n)), " ", adjective,
                  _pick(vocabulary.noun, nouns), " ", spec)
    item_id = _text(np.hstack([_ascii("I", n), _digits(np.arange(n), 8)]))
    table = {
        "item_id": item_id,
        "kind": _pick(_words(_KINDS), kind),
        "category": _pick(vocabulary.category, category),
        "title": title,
        "price": _floats(np.nan_to_num(price), kind != _COUPON),
        "served_provinces": served,
        "active": pa.array(rng.random(n) < 0.95),
        "listed_at": _timestamps(listed),
    }
    return dict(table=table, item_id=item_id, kind=kind, category=category, price=price,
                weight_kg=weight_kg, item_by_rank=item_by_rank, listed=listed)


def _merchants(rng: np.random.Generator, run: _Run, item_category: np.ndarray) -> tuple[_People, np.ndarray]:
    """Merchants (shippers of ordered goods) and the merchant of each catalogue item."""
    vocabulary = _vocabulary()
    n = max(2 * len(CATEGORIES), run.catalogue_items // 10)
    people = _people(rng, n, with_account=False, city_weight=vocabulary.hub_weight)
    # Every category has at least one merchant; the rest follow category shares.
    category = np.concatenate([np.arange(len(CATEGORIES)),
                               _draw(rng, n - len(CATEGORIES), vocabulary.category_share)])
    name = _join(_pick(vocabulary.brand, rng.integers(0, len(vocabulary.brand), n)),
                 _pick(vocabulary.category_word, category),
                 _pick(vocabulary.merchant_suffix, rng.integers(0, len(vocabulary.merchant_suffix), n)))
    people = _People(**{**people.__dict__, "name": name})
    by_category = np.argsort(category, kind="stable")
    counts = np.bincount(category, minlength=len(CATEGORIES))
    starts = _group_starts(counts)
    pick = starts[item_category] + (rng.random(len(item_category)) * counts[item_category]).astype(np.int64)
    return people, by_category[pick]


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
    os_table = _words(name for names in os_names for name in names)
    os_offset = np.cumsum([0] + [len(names) for names in os_names])[:-1]
    mobile = np.isin(device_type, [0, 3]) | ((device_type == 1) & (rng.random(n) < 0.3))
    carrier = _taken(_words(_CARRIERS), _draw(rng, n, _CARRIER_P), mobile)
    # Version of the app installed at first sight: a minor release every two months since 2018.
    months = np.clip((first_seen - _ACCOUNTS_FROM) // (30 * _DAY), 0, None)
    version = _join(pa.array(3 + months // 24).cast(pa.string()), ".",
                    pa.array((months % 24) // 2).cast(pa.string()), ".",
                    pa.array(rng.integers(0, 6, n)).cast(pa.string()))
    return {
        "device_type": _pick(_words(t for t, _ in _DEVICE_TYPES), device_type),
        "os": _pick(os_table, os_offset[device_type] + os_index),
        "carrier": carrier,
        "app_version": version,
        "first_seen_at": _timestamps(first_seen),
    }


def _random_ip24(rng: np.random.Generator, n: int) -> np.ndarray:
    vocabulary = _vocabulary()
    first = vocabulary.ipv4_first[rng.integers(0, len(vocabulary.ipv4_first), n)]
    return (first << 16) | rng.integers(0, 65536, n)


@lru_cache(maxsize=1)
def _world(run: _Run) -> _World:
    rng = np.random.default_rng(np.random.SeedSequence(run.seed, spawn_key=(1,)))
    catalogue = _catalogue(rng, run)
    merchants, item_merchant = _merchants(rng, run, catalogue["category"])
    # Shared devices: internet-cafe PCs, shop tablets and family phones used by several accounts.
    n_shared = max(1, round(run.accounts * _SHARED_DEVICE_SHARE))
    shared_type = _draw(rng, n_shared, [20, 40, 40, 0])
    shared_first_seen = _uniform_between(rng, np.full(n_shared, _ACCOUNTS_FROM), run.until)
    shared_id = _hex16(np.arange(n_shared, dtype=np.uint64) | np.uint64(1 << 62), _salt(run.seed, 2))
    shared_rows = {"device_id": shared_id, **_device_rows(rng, shared_first_seen, shared_type)}
    listed = catalogue["listed"]
    item_by_rank = catalogue["item_by_rank"]
    early_by_rank = item_by_rank[listed[item_by_rank] < _ACCOUNTS_FROM]
    rank_weight = np.diff(np.concatenate([[0.0], _popularity(run.catalogue_items)]))
    early_cdf = np.cumsum(rank_weight[listed[item_by_rank] < _ACCOUNTS_FROM])
    return _World(
        catalogue=pa.table(catalogue["table"], schema=arrow_schema("catalogue")),
        item_id=catalogue["item_id"], item_kind=catalogue["kind"], item_category=catalogue["category"],
        item_price=catalogue["price"], item_weight_kg=catalogue["weight_kg"], item_merchant=item_merchant,
        item_by_rank=item_by_rank, rank_cdf=_popularity(run.catalogue_items),
        early_item_by_rank=early_by_rank, early_rank_cdf=early_cdf / early_cdf[-1], item_listed=listed,
        merchants=merchants,
        shared_devices=pa.table(shared_rows, schema=arrow_schema("devices")), shared_device_id=shared_id,
        shared_first_seen=shared_first_seen, shared_city=_draw(rng, n_shared, _vocabulary().city_weight),
        shared_ip24=_random_ip24(rng, n_shared),
    )


def _popular_items(rng: np.random.Generator, world: _World, n: int, *, early: bool = False) -> np.ndarray:
    by_rank, cdf = (world.early_item_by_rank, world.early_rank_cdf) if early else (world.item_by_rank, world.rank_cdf)
    rank = np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), len(by_rank) - 1)
    return by_rank[rank]


# ---------------------------------------------------------------------------------------------
# One batch of accounts and everything they did.

@dataclass(frozen=True)
class _Holders:
    """The batch's account holders (one row each) and what later stages need about them."""

    people: _People
    account_id: pa.Array
    created: np.ndarray       # microseconds
    birth_day: np.ndarray     # days since epoch (also for accounts that did not give a birthday)
    activity: np.ndarray      # mean 1, heavy-tailed
    id_card: pa.Array         # resident ID number (used only on cross-border waybills)
    ip24: np.ndarray          # home network a.b.c
    friend: np.ndarray        # another holder of the batch they send parcels to
    contact: np.ndarray       # a person without an account they send parcels to (index into the pool)
    pay_with: np.ndarray      # preferred payment institution


def _id_cards(rng: np.random.Generator, region_chars: np.ndarray, birth_day: np.ndarray,
              female: np.ndarray) -> pa.Array:
    """GB 11643 resident ID numbers: region, birth date YYYYMMDD, sequence (odd for men), check character."""
    n = len(birth_day)
    day = birth_day.astype("datetime64[D]")
    year = day.astype("datetime64[Y]").astype(np.int64) + 1970
    month = day.astype("datetime64[M]").astype(np.int64) % 12 + 1
    day_of_month = (day - day.astype("datetime64[M]")).astype(np.int64) + 1
    sequence = rng.integers(0, 500, n) * 2 + np.where(female, 0, 1)
    body = np.hstack([region_chars, _digits(year * 10_000 + month * 100 + day_of_month, 8), _digits(sequence, 3)])
    return _text(np.hstack([body, id_card_check_chars(body - ord("0"))[:, None]]))


def _nicknames(rng: np.random.Generator, people: _People, birth_year: np.ndarray) -> pa.Array:
    vocabulary = _vocabulary()
    n = len(birth_year)
    handle_digits = pc.choose(
        pa.array(_draw(rng, n, [4, 4, 2]).astype(np.int8)),
        pa.array(birth_year).cast(pa.string()),
        pa.array(rng.integers(1, 1000, n)).cast(pa.string()),
        pa.array([""] * n, type=pa.string()),
    )
    styles = [
        people.name,
        _join(_pick(vocabulary.nick_adjective, rng.integers(0, len(vocabulary.nick_adjective), n)),
              _pick(vocabulary.nick_noun, rng.integers(0, len(vocabulary.nick_noun), n))),
        _join(people.name_pinyin, handle_digits),
        _join("用户", pa.array(rng.integers(10_000_000, 100_000_000, n)).cast(pa.string())),
    ]
    return pc.choose(pa.array(_draw(rng, n, [30, 20, 35, 15]).astype(np.int8)), *styles)


def _emails(rng: np.random.Generator, people: _People, birth_year: np.ndarray) -> pa.Array:
    vocabulary = _vocabulary()
    n = len(birth_year)
    domain = _draw(rng, n, vocabulary.email_weight)
    qq_number = pa.array(rng.integers(100_000, 4_000_000_000, n)).cast(pa.string())
    suffix = pc.if_else(pa.array(rng.random(n) < 0.5), pa.array(birth_year % 100).cast(pa.string()),
                        pa.array(rng.integers(1, 1000, n)).cast(pa.string()))
    local = pc.if_else(pa.array(domain == 0), qq_number, _join(people.name_pinyin, suffix))
    return _join(local, "@", _pick(vocabulary.email_domain, domain))


def _accounts(rng: np.random.Generator, run: _Run, first: int, n: int) -> tuple[_Holders, dict[str, pa.Array]]:
    people = _people(rng, n, with_account=True)
    # Sign-ups grow over time: density rising towards ``until``.
    created = _ACCOUNTS_FROM + (rng.random(n) ** _SIGNUP_SKEW * (run.until - _ACCOUNTS_FROM)).astype(np.int64)
    age_days = ((16 + 64 * rng.beta(2.0, 5.0, n)) * 365.25).astype(np.int64)
    birth_day = created // _DAY - age_days
    birth_year = birth_day.astype("datetime64[D]").astype("datetime64[Y]").astype(np.int64) + 1970
    activity = rng.lognormal(-_ACTIVITY_SIGMA ** 2 / 2, _ACTIVITY_SIGMA, n)
    holders = _Holders(
        people=people,
        account_id=_text(np.hstack([_ascii("A", n), _digits(np.arange(first, first + n), 10)])),
        created=created, birth_day=birth_day, activity=activity,
        id_card=_id_cards(rng, people.region_chars, birth_day, people.female),
        ip24=_random_ip24(rng, n),
        friend=(np.arange(n) + rng.integers(1, max(n, 2), n)) % n,
        contact=rng.integers(0, max(1, int(n * _CONTACT_POOL_SHARE)), n),
        pay_with=_draw(rng, n, [6, 45, 35, 10, 4]),
    )
    gender = _taken(_words(("female", "male")), np.where(people.female, 0, 1), rng.random(n) < 0.7)
    birthday_given = rng.random(n) < 0.6
    columns = {
        "account_id": holders.account_id,
        "phone": people.phone,
        "nickname": _nicknames(rng, people, birth_year),
        "email": _taken(_emails(rng, people, birth_year), np.arange(n), rng.random(n) < 0.3),
        "birthday": pa.array(birth_day.astype(np.int32), type=pa.date32(), mask=~birthday_given),
        "gender": gender,
        "region": _taken(people.region, np.arange(n), rng.random(n) < 0.8),
        "created_at": _timestamps(created),
    }
    return holders, columns


def _order_times(rng: np.random.Generator, created: np.ndarray, until: int) -> np.ndarray:
    """Order times in ``[created, until]``: uniform days, evening-heavy hours, Singles' Day peaks."""
    n = len(created)
    uniform = _uniform_between(rng, created, until)
    local_day = (uniform + _BEIJING_OFFSET) // _DAY * _DAY - _BEIJING_OFFSET
    hour = _draw(rng, n, _ORDER_HOURS)
    shaped = local_day + hour * _HOUR + rng.integers(0, _HOUR, n)
    # About 6% of orders move to November 11th of their year (the shopping festival).
    year = uniform.astype("datetime64[us]").astype("datetime64[Y]")
    november = (year.astype("datetime64[M]") + np.timedelta64(10, "M")).astype("datetime64[D]")
    november_11 = november + np.timedelta64(10, "D")
    festival_day = november_11.astype("datetime64[us]").astype(np.int64) - _BEIJING_OFFSET
    shaped = np.where(rng.random(n) < 0.06, festival_day + (shaped - local_day), shaped)
    return np.where((shaped >= created) & (shaped <= until), shaped, uniform)


@dataclass(frozen=True)
class _Orders:
    account: np.ndarray       # holder index
    placed: np.ndarray
    first_item: np.ndarray
    items_count: np.ndarray
    cross_border: np.ndarray  # bool


def _orders(rng: np.random.Generator, run: _Run, world: _World, holders: _Holders, batch_index: int
            ) -> tuple[_Orders, dict[str, pa.Array]]:
    n_accounts = len(holders.created)
    # Heavy tail: lognormal activity times tenure, Poisson counts, mean about 10 orders per account.
    tenure = (run.until - holders.created) / max(run.until - _ACCOUNTS_FROM, 1)
    rate = np.minimum(_ORDERS_PER_ACCOUNT * holders.activity * tenure / _MEAN_TENURE, _MAX_ORDER_RATE)
    counts = rng.poisson(rate)
    account = np.repeat(np.arange(n_accounts), counts)
    placed = _order_times(rng, holders.created[account], run.until)
    order = np.lexsort((placed, account))
    account, placed = account[order], placed[order]
    n = len(account)
    # rows: (order) sorted by account, then time
    items_count = _draw(rng, n, _ITEMS_PER_ORDER_P) + 1
    line_order = np.repeat(np.arange(n), items_count)
    item = _popular_items(rng, world, len(line_order))
    too_new = world.item_listed[item] > placed[line_order]
    item[too_new] = _popular_items(rng, world, int(too_new.sum()), early=True)
    # rows: (order line) -> item
    starts = _group_starts(items_count)
    first_item = item[starts]
    line_price = np.nan_to_num(world.item_price[item])
    line_coupons = (world.item_kind[item] == _COUPON).astype(np.int64)
    amount = np.add.reduceat(line_price, starts) if n else np.zeros(0)
    has_coupon = np.add.reduceat(line_coupons, starts) > 0 if n else np.zeros(0, bool)
    amount = amount * np.where(has_coupon, rng.uniform(0.85, 0.97, n), 1.0)
    amount = amount + np.where(rng.random(n) < 0.1, rng.choice([6.0, 8.0, 10.0, 12.0], n), 0.0)
    commodity = world.item_kind[first_item] == _COMMODITY
    cross_border = commodity & (rng.random(n) < _CROSS_BORDER_SHARE)
    currency = np.where(cross_border, _CROSS_BORDER_CURRENCIES[_draw(rng, n, [60, 20, 20])], 0)
    rate_to = np.array([_CNY_TO.get(code, 1.0) for code in CURRENCIES])
    amount = np.round(np.clip(amount * rate_to[currency], 0.0, 999_999.99), 2)
    payment = np.where(rng.random(n) < 0.8, holders.pay_with[account], _draw(rng, n, [6, 45, 35, 10, 4]))
    columns = {
        "order_id": _ids("O", batch_index, np.arange(n), 10),
        "account_id": _pick(holders.account_id, account),
        "placed_at": _timestamps(placed),
        "amount": _floats(amount),
        "currency": _pick(_words(CURRENCIES), currency),
        "payment_institution": _pick(_words(PAYMENT_INSTITUTIONS), payment),
        "category": _pick(_vocabulary().category, world.item_category[first_item]),
        "items": pa.ListArray.from_arrays(pa.array(np.concatenate([starts, [len(item)]]).astype(np.int32)),
                                          _pick(world.item_id, item)),
    }
    return _Orders(account, placed, first_item, items_count, cross_border), columns


def _waybills(rng: np.random.Generator, run: _Run, world: _World, holders: _Holders, orders: _Orders,
              order_id: pa.Array, batch_index: int
              ) -> tuple[dict[str, pa.Array], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Waybills of shipped orders, of parcels holders send, and of walk-in senders without an account.

    Returns the columns; ``(holder, time)`` of every cross-border waybill, for the sensitive-data
    consent (the order's time for ordered goods: the ID number is given at checkout); and the
    account (-1: none) and creation time of every waybill.
    """
    vocabulary = _vocabulary()
    n_holders = len(holders.created)
    pool = _people(rng, max(1, int(n_holders * _CONTACT_POOL_SHARE)), with_account=False)
    pool_base = n_holders
    merchant_base = pool_base + len(pool.city)
    # person index space: holders, then people without an account, then merchants

    def random_pool(n: int) -> np.ndarray:
        return pool_base + rng.integers(0, len(pool.city), n)

    # 1. Shipped orders: merchant -> usually the holder, sometimes a friend or someone without an account.
    commodity = world.item_kind[orders.first_item] == _COMMODITY
    shipped = np.flatnonzero(commodity & ((rng.random(len(commodity)) < _SHIPPED_SHARE) | orders.cross_border))
    holder = orders.account[shipped]
    n = len(shipped)
    receiver = np.stack([holder, holders.friend[holder], pool_base + holders.contact[holder], random_pool(n)])
    receiver = receiver[_draw(rng, n, [72, 13, 10, 5]), np.arange(n)]
    cross = orders.cross_border[shipped]
    receiver = np.where(cross, holder, receiver)  # customs clears goods for the buyer, with their ID number
    first_item = orders.first_item[shipped]
    delay = np.clip(rng.lognormal(np.log(3 * _HOUR), 1.0, n), 5 * 60 * _SECOND, 7 * _DAY).astype(np.int64)
    shipped_parts = dict(
        order=shipped, account=holder, created=np.minimum(orders.placed[shipped] + delay, run.until),
        shipper=merchant_base + world.item_merchant[first_item], receiver=receiver, cross=cross,
        weight=(world.item_weight_kg[first_item] * rng.lognormal(0.0, 0.4, n)
                * (1 + 0.3 * (orders.items_count[shipped] - 1))),
        fresh=world.item_category[first_item] == CATEGORIES.index("fresh_food"),
    )
    # rows: (shipped order) -> shipper merchant, receiver person
    # 2. Parcels holders send themselves.
    counts = rng.poisson(_STANDALONE_PER_ACCOUNT * holders.activity ** 0.5 / np.exp(-_ACTIVITY_SIGMA ** 2 / 8))
    holder = np.repeat(np.arange(n_holders), counts)
    n = len(holder)
    receiver = np.stack([holders.friend[holder], pool_base + holders.contact[holder], random_pool(n)])
    receiver = receiver[_draw(rng, n, [30, 45, 25]), np.arange(n)]
    # A few go to someone in Hong Kong or Macao: cross-border, declared with the sender's ID number.
    overseas = np.flatnonzero(np.isin(pool.city, vocabulary.outside_mainland))
    cross = (rng.random(n) < 0.015) & (len(overseas) > 0)
    receiver[cross] = pool_base + overseas[rng.integers(0, max(len(overseas), 1), int(cross.sum()))]
    sent_parts = dict(
        order=np.full(n, -1), account=holder, created=_uniform_between(rng, holders.created[holder], run.until),
        shipper=holder, receiver=receiver, cross=cross, weight=rng.lognormal(0.0, 0.9, n), fresh=np.zeros(n, bool),
    )
    # rows: (sent parcel) -> holder as shipper
    # 3. Walk-in senders without an account, often to a holder.
    n = int(rng.binomial(n_holders, _WALK_IN_PER_ACCOUNT))
    receiver = np.where(rng.random(n) < 0.6, rng.integers(0, n_holders, n), random_pool(n))
    walk_in_parts = dict(
        order=np.full(n, -1), account=np.full(n, -1),
        created=_uniform_between(rng, np.full(n, _ACCOUNTS_FROM), run.until),
        shipper=random_pool(n), receiver=receiver, cross=np.zeros(n, bool), weight=rng.lognormal(0.0, 0.9, n),
        fresh=np.zeros(n, bool),
    )
    parts = [shipped_parts, sent_parts, walk_in_parts]
    way = {key: np.concatenate([part[key] for part in parts]) for key in shipped_parts}
    n = len(way["order"])
    # rows: (waybill) -> order or -1, account or -1, created, shipper, receiver, cross, weight
    weight = np.round(np.clip(way["weight"], 0.05, 5_000.0), 2)
    service = _draw(rng, n, [50, 28, 6, 16])  # standard, express, same_day, economy
    service = np.where(way["fresh"] & (rng.random(n) < 0.7), SERVICE_TYPES.index("cold_chain"), service)
    service = np.where(weight > 30, SERVICE_TYPES.index("freight"), service)
    service = np.where(way["cross"], SERVICE_TYPES.index("international"), service)
    name = pa.concat_arrays([holders.people.name, pool.name, world.merchants.name])
    phone = pa.concat_arrays([holders.people.phone, pool.phone, world.merchants.phone])
    address = pa.concat_arrays([holders.people.address, pool.address, world.merchants.address])
    region = pa.concat_arrays([holders.people.region, pool.region, world.merchants.region])
    carrier = vocabulary.carrier_prefix[_draw(rng, n, [30, 20, 20, 15, 8, 4, 2, 1])]
    has_order, has_account = way["order"] >= 0, way["account"] >= 0
    columns = {
        "waybill_id": _text(np.hstack([carrier, _digits(np.full(n, batch_index), 5), _digits(np.arange(n), 9)])),
        "order_id": _taken(order_id, np.where(has_order, way["order"], 0), has_order),
        "account_id": _taken(holders.account_id, np.where(has_account, way["account"], 0), has_account),
        "created_at": _timestamps(way["created"]),
        "shipper_name": _pick(name, way["shipper"]),
        "shipper_phone": _pick(phone, way["shipper"]),
        "shipper_address": _pick(address, way["shipper"]),
        "receiver_name": _pick(name, way["receiver"]),
        "receiver_phone": _pick(phone, way["receiver"]),
        "receiver_address": _pick(address, way["receiver"]),
        "origin_region": _pick(region, way["shipper"]),
        "destination_region": _pick(region, way["receiver"]),
        "weight_kg": _floats(weight),
        "service_type": _pick(_words(SERVICE_TYPES), service),
        "cross_border": pa.array(way["cross"]),
        "id_card_number": _taken(holders.id_card, np.where(way["cross"], way["account"], 0), way["cross"]),
    }
    cross_holder = way["account"][way["cross"]]
    cross_time = np.concatenate([orders.placed[shipped_parts["order"][shipped_parts["cross"]]],
                                 sent_parts["created"][sent_parts["cross"]]])
    return columns, cross_holder, cross_time, way["account"], way["created"]


# ---------------------------------------------------------------------------------------------
# Consent: a plan of grants drawn first (device events honour the location permission), then
# the event history.

# Optional purposes: (purpose, share of accounts granting, share granting at registration,
# mean days to a later grant otherwise).
_OPTIONAL_PURPOSES = (
    ("personalization", 0.80, 0.70, 60), ("marketing_messages", 0.60, 0.70, 60),
    ("cross_device_sync", 0.70, 0.50, 90), ("location", 0.36, 0.50, 20), ("camera", 0.25, 0.0, 60),
    ("speech_input", 0.12, 0.0, 90), ("address_book", 0.10, 0.0, 90), ("third_party_binding", 0.08, 0.2, 120),
)
_CORE_PURPOSES = ("account_registration", "service_provision", "payment_settlement", "messaging",
                  "customer_service", "product_improvement", "transaction_safety")
_CORE_AT_REGISTRATION = 0.30   # share of accounts whose registration also logged the core grants
_REVOKE_SHARE = 0.10           # of grants, revoked later
_REGRANT_SHARE = 0.35          # of revocations, granted again later
_DND_SHARE = 0.20
_NEW_POLICY_ACCEPTED = 0.75    # of accounts created before the 2019-06 policy
_SENSITIVE_PURPOSE = "service_provision"  # ID numbers are processed to clear customs for the delivery
_CHANNELS = ("app", "web", "wechat", "customer_service", "sms")


@dataclass(frozen=True)
class _Grants:
    """Per holder: when an optional purpose was granted, revoked and granted again (_NEVER: not)."""

    granted: np.ndarray
    revoked: np.ndarray
    regranted: np.ndarray

    def in_force(self, holder: np.ndarray, at: np.ndarray) -> np.ndarray:
        return (at >= self.granted[holder]) & ((at < self.revoked[holder]) | (at >= self.regranted[holder]))


def _after(rng: np.random.Generator, start: np.ndarray, share: float, mean_days: float, until: int) -> np.ndarray:
    """For a ``share`` of the non-_NEVER ``start`` times, a later time within ``until``; _NEVER otherwise."""
    later = start + _exponential_delay(rng, len(start), mean_days)
    happens = (start != _NEVER) & (rng.random(len(start)) < share) & (later <= until)
    return np.where(happens, later, _NEVER)


def _consent_plan(rng: np.random.Generator, holders: _Holders, until: int) -> dict[str, _Grants]:
    n = len(holders.created)
    plan = {}
    for purpose, share, at_registration, mean_days in _OPTIONAL_PURPOSES:
        delay = np.where(rng.random(n) < at_registration, 0, _exponential_delay(rng, n, mean_days))
        granted = holders.created + delay
        granted = np.where((rng.random(n) < share) & (granted <= until), granted, _NEVER)
        revoked = _after(rng, granted, _REVOKE_SHARE, 200, until)
        plan[purpose] = _Grants(granted, revoked, _after(rng, revoked, _REGRANT_SHARE, 120, until))
    return plan


def _consent_events(rng: np.random.Generator, run: _Run, holders: _Holders, plan: dict[str, _Grants],
                    cross_holder: np.ndarray, cross_time: np.ndarray, activity: list[tuple[np.ndarray, np.ndarray]],
                    batch_index: int) -> dict[str, pa.Array]:
    """The consent history of every holder, ordered per account by time; nothing follows a cancellation.

    ``activity`` lists ``(holder, time)`` pairs of everything the holders did (orders, waybills,
    signed-in device events): a cancellation comes after all of it.
    """
    events = schema_table("consent_events")
    types, purposes = events["event_type"].allowed, events["purpose"].allowed
    n = len(holders.created)
    everyone = np.arange(n)
    rows: list[tuple[np.ndarray, np.ndarray, int, np.ndarray, int]] = []  # (holder, time, type, purpose, tie rank)

    def add(holder: np.ndarray, at: np.ndarray, event_type: str, purpose: np.ndarray | int = -1, rank: int = 2) -> None:
        keep = at <= run.until
        purpose = np.broadcast_to(np.asarray(purpose), holder.shape)
        rows.append((holder[keep], at[keep], types.index(event_type), purpose[keep], rank))

    # Registration: the policy in force, and for some accounts the core purposes.
    add(everyone, holders.created, "policy_accept", rank=0)
    core = np.flatnonzero(rng.random(n) < _CORE_AT_REGISTRATION)
    for purpose in _CORE_PURPOSES:
        add(core, holders.created[core], "grant", purposes.index(purpose), rank=1)
    for purpose, grants in plan.items():
        for times, event_type in ((grants.granted, "grant"), (grants.revoked, "revoke"), (grants.regranted, "grant")):
            holder = np.flatnonzero(times != _NEVER)
            add(holder, times[holder], event_type, purposes.index(purpose))
    # Do-not-disturb toggles.
    dnd_on = np.where(rng.random(n) < _DND_SHARE, _uniform_between(rng, holders.created, run.until), _NEVER)
    dnd_off = _after(rng, dnd_on, 0.5, 30, run.until)
    dnd_again = _after(rng, dnd_off, 0.2, 60, run.until)
    for times, event_type in ((dnd_on, "dnd_on"), (dnd_off, "dnd_off"), (dnd_again, "dnd_on")):
        holder = np.flatnonzero(times != _NEVER)
        add(holder, times[holder], event_type)
    # The 2019-06 policy: most accounts created under the old one accept it.
    older = np.flatnonzero((holders.created < _POLICY_CHANGE) & (rng.random(n) < _NEW_POLICY_ACCEPTED))
    add(older, np.maximum(_POLICY_CHANGE + _exponential_delay(rng, len(older), 20), holders.created[older]),
        "policy_accept", rank=0)
    # Sensitive data (ID numbers) for cross-border parcels: granted at the first, sometimes revoked after the last.
    if len(cross_holder):
        order = np.lexsort((cross_time, cross_holder))
        holder, at = cross_holder[order], cross_time[order]
        first = np.concatenate([[True], holder[1:] != holder[:-1]])
        last = np.concatenate([holder[1:] != holder[:-1], [True]])
        granted_at = np.maximum(at[first] - rng.integers(_SECOND, 600 * _SECOND, int(first.sum())),
                                holders.created[holder[first]])
        add(holder[first], granted_at, "sensitive_grant", purposes.index(_SENSITIVE_PURPOSE), rank=1)
        revoked_at = _after(rng, at[last], 0.1, 90, run.until)
        revoked = revoked_at != _NEVER
        add(holder[last][revoked], revoked_at[revoked], "sensitive_revoke", purposes.index(_SENSITIVE_PURPOSE), rank=3)
    # Cancellation after everything else the account did.
    cancelled = rng.random(n) < _CANCEL_SHARE
    last_seen = holders.created.copy()
    for holder, at in activity + [(r[0], r[1]) for r in rows]:
        mine = cancelled[holder]
        np.maximum.at(last_seen, holder[mine], at[mine])
    cancel_holder = np.flatnonzero(cancelled)
    cancel_at = np.minimum(last_seen[cancel_holder] + _exponential_delay(rng, len(cancel_holder), 30), run.until)
    add(cancel_holder, cancel_at, "cancel", rank=9)

    holder = np.concatenate([r[0] for r in rows])
    at = np.concatenate([r[1] for r in rows])
    event_type = np.concatenate([np.full(len(r[0]), r[2]) for r in rows])
    purpose = np.concatenate([r[3] for r in rows])
    rank = np.concatenate([np.full(len(r[0]), r[4]) for r in rows])
    order = np.lexsort((rank, at, holder))
    holder, at, event_type, purpose = holder[order], at[order], event_type[order], purpose[order]
    # rows: (consent event) sorted by account, time
    m = len(holder)
    channel = _draw(rng, m, [70, 12, 10, 3, 5])
    # What is said at registration is said where the account was opened (app, web or WeChat).
    registered_on = _draw(rng, n, [75, 15, 10])
    channel = np.where(at == holders.created[holder], registered_on[holder], channel)
    dnd = np.isin(event_type, [types.index("dnd_on"), types.index("dnd_off")])
    channel = np.where(dnd & (rng.random(m) < 0.4), _CHANNELS.index("sms"), channel)
    cancel = event_type == types.index("cancel")
    channel = np.where(cancel, np.where(rng.random(m) < 0.4, _CHANNELS.index("customer_service"), 0), channel)
    return {
        "event_id": _ids("C", batch_index, np.arange(m), 10),
        "account_id": _pick(holders.account_id, holder),
        "event_at": _timestamps(at),
        "event_type": _pick(_words(types), event_type),
        "purpose": _taken(_words(purposes), np.maximum(purpose, 0), purpose >= 0),
        "policy_version": _pick(_words(events["policy_version"].allowed), (at >= _POLICY_CHANGE).astype(np.int64)),
        "channel": _pick(_words(_CHANNELS), channel),
    }


# ---------------------------------------------------------------------------------------------
# Devices and what they did.

_SIGNED_IN_EVENTS = (("app_open", 20), ("sign_in", 10), ("sign_out", 4), ("search", 15), ("view_item", 25),
                     ("track_shipment", 12), ("place_order", 10))
_ANONYMOUS_EVENTS = (("app_open", 45), ("search", 20), ("view_item", 35))
_CHINA_LAT, _CHINA_LON = (18.0, 53.5), (73.5, 135.0)


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


def _devices(rng: np.random.Generator, run: _Run, world: _World, holders: _Holders, location: _Grants,
             batch_index: int) -> tuple[dict[str, pa.Array] | pa.Table, dict[str, pa.Array], np.ndarray, np.ndarray]:
    """Devices of the batch's holders (plus the shared pool in batch 0) and their events.

    Returns the two tables' columns and ``(holder, time)`` of signed-in events.
    """
    vocabulary = _vocabulary()
    n_holders = len(holders.created)
    per_holder = _draw(rng, n_holders, _DEVICES_PER_ACCOUNT_P) + 1
    owner = np.repeat(np.arange(n_holders), per_holder)
    first_device = _rank_within_group(per_holder) == 0
    n_devices = len(owner)
    # The first device is the phone they registered on, seen shortly before the account existed.
    first_seen = np.where(first_device, holders.created[owner] - rng.integers(0, 2 * _HOUR, n_devices),
                          _uniform_between(rng, holders.created[owner], run.until))
    device_type = np.where(first_device, 0, _draw(rng, n_devices, _DEVICE_TYPE_P))
    device_id = _hex16((np.uint64(batch_index) << np.uint64(32)) | np.arange(n_devices, dtype=np.uint64),
                       _salt(run.seed, 2))
    devices = pa.table({"device_id": device_id, **_device_rows(rng, first_seen, device_type)},
                       schema=arrow_schema("devices"))
    if batch_index == 0:
        devices = pa.concat_tables([world.shared_devices, devices])
    # rows: (device) -> owner holder

    # Events on own devices: a few per device, more for busy accounts; the first at first sight.
    counts = rng.poisson(_EVENTS_PER_DEVICE * holders.activity[owner] ** 0.4 / np.exp(-0.12 * _ACTIVITY_SIGMA ** 2))
    device = np.repeat(np.arange(n_devices), counts)
    own_at = _uniform_between(rng, first_seen[device], run.until)
    first_event = _group_starts(counts)[counts > 0]
    own_at[first_event] = first_seen[counts > 0]
    opens_app = np.zeros(len(own_at), dtype=bool)
    opens_app[first_event] = True
    own_holder = owner[device]
    # Events on shared devices by the holders who use one.
    users = np.flatnonzero(rng.random(n_holders) < _SHARED_DEVICE_USERS)
    users = np.concatenate([users, users[rng.random(len(users)) < 0.25]])
    shared = rng.integers(0, len(world.shared_first_seen), len(users))
    pair_counts = rng.poisson(4.0, len(users))
    pair = np.repeat(np.arange(len(users)), pair_counts)
    shared_holder, shared_device = users[pair], shared[pair]
    shared_from = np.maximum(world.shared_first_seen[shared_device], holders.created[shared_holder])
    shared_at = _uniform_between(rng, shared_from, run.until)
    # rows: (event) on own devices, then on shared devices
    holder = np.concatenate([own_holder, shared_holder])
    at = np.concatenate([own_at, shared_at])
    device_index = np.concatenate([device, n_devices + shared_device])
    is_shared = np.arange(len(holder)) >= len(own_holder)
    opens_app = np.concatenate([opens_app, np.zeros(len(shared_holder), dtype=bool)])
    order = np.lexsort((at, device_index))
    holder, at, device_index, is_shared, opens_app = (
        holder[order], at[order], device_index[order], is_shared[order], opens_app[order])
    n = len(holder)
    # rows: (event) sorted by device, time
    signed_in = (at >= holders.created[holder]) & (rng.random(n) >= np.where(is_shared, 0.2, 0.25))
    allowed_types = schema_table("device_events")["event_type"].allowed
    signed_type = np.array([allowed_types.index(t) for t, _ in _SIGNED_IN_EVENTS])
    anonymous_type = np.array([allowed_types.index(t) for t, _ in _ANONYMOUS_EVENTS])
    event_type = np.where(signed_in, signed_type[_draw(rng, n, [w for _, w in _SIGNED_IN_EVENTS])],
                          anonymous_type[_draw(rng, n, [w for _, w in _ANONYMOUS_EVENTS])])
    event_type = np.where(opens_app, allowed_types.index("app_open"), event_type)
    viewing = event_type == allowed_types.index("view_item")
    shared_place = device_index - n_devices
    home = rng.random(n) < 0.7
    network = np.where(is_shared, world.shared_ip24[np.where(is_shared, shared_place, 0)], holders.ip24[holder])
    ip24 = np.where(home | is_shared, network, _random_ip24(rng, n))
    city = np.where(rng.random(n) < 0.85, holders.people.city[holder], _draw(rng, n, vocabulary.city_weight))
    city = np.where(is_shared, world.shared_city[np.where(is_shared, shared_place, 0)], city)
    # Precise location only while the location permission is granted (device owner, or the signed-in user).
    precise = location.in_force(holder, at) & (signed_in | ~is_shared) & (rng.random(n) < 0.95)
    latitude = np.clip(vocabulary.city_lat[city] + rng.normal(0, 0.06, n), *_CHINA_LAT)
    longitude = np.clip(vocabulary.city_lon[city] + rng.normal(0, 0.06, n), *_CHINA_LON)
    device_ids = pa.concat_arrays([device_id, world.shared_device_id])
    events = {
        "event_id": _ids("E", batch_index, np.arange(n), 10),
        "device_id": _pick(device_ids, device_index),
        "account_id": _taken(holders.account_id, holder, signed_in),
        "event_at": _timestamps(at),
        "event_type": _pick(_words(allowed_types), event_type),
        "ip": _ip_addresses(rng, ip24),
        "coarse_region": _taken(vocabulary.city_code, city, rng.random(n) < 0.9),
        "precise_lat": _floats(np.round(latitude, 6), precise),
        "precise_lon": _floats(np.round(longitude, 6), precise),
        "item_id": _taken(world.item_id, _popular_items(rng, world, n), viewing),
    }
    return devices, events, holder[signed_in], at[signed_in]


# ---------------------------------------------------------------------------------------------
# Writing.

def _write(directory: Path, table_name: str, part: int, columns: dict[str, pa.Array] | pa.Table) -> int:
    schema = arrow_schema(table_name)
    if isinstance(columns, dict):
        if list(columns) != schema.names:
            raise InternalError(f"{table_name}: generated columns {list(columns)} differ from the schema's "
                                f"{schema.names}")
        columns = pa.table(columns, schema=schema)
    # Parquet's compliant list element name ("element") would not read back as the model's "item".
    pq.write_table(columns, directory / table_name / f"part-{part:05d}.parquet", compression=_COMPRESSION,
                   use_dictionary=_DICTIONARY_COLUMNS[table_name], use_compliant_nested_type=False)
    return columns.num_rows


def _write_batch(run: _Run, batch_index: int, directory: str) -> dict[str, int]:
    """Generate and write batch ``batch_index``: one part file per table except the catalogue."""
    out = Path(directory)
    world = _world(run)
    rng = np.random.default_rng([run.seed, batch_index])
    first, n = run.batch_accounts_range(batch_index)
    rows = {}
    holders, accounts = _accounts(rng, run, first, n)
    rows["accounts"] = _write(out, "accounts", batch_index, accounts)
    del accounts
    plan = _consent_plan(rng, holders, run.until)
    orders, order_columns = _orders(rng, run, world, holders, batch_index)
    waybills, cross_holder, cross_time, sender, sent_at = _waybills(
        rng, run, world, holders, orders, order_columns["order_id"], batch_index)
    rows["orders"] = _write(out, "orders", batch_index, order_columns)
    del order_columns
    rows["waybills"] = _write(out, "waybills", batch_index, waybills)
    del waybills
    devices, events, signed_holder, signed_at = _devices(rng, run, world, holders, plan["location"], batch_index)
    rows["devices"] = _write(out, "devices", batch_index, devices)
    rows["device_events"] = _write(out, "device_events", batch_index, events)
    del devices, events
    with_account = sender >= 0
    activity = [(orders.account, orders.placed), (sender[with_account], sent_at[with_account]),
                (signed_holder, signed_at)]
    consent = _consent_events(rng, run, holders, plan, cross_holder, cross_time, activity, batch_index)
    rows["consent_events"] = _write(out, "consent_events", batch_index, consent)
    return rows


# ---------------------------------------------------------------------------------------------
# Public entry point.

def _whole_number(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low:,} and {high:,}, got {value:,}")
    return int(value)


def _checked_out_dir(out_dir: str | os.PathLike) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {out} is a file; give a new folder for the synthetic data set")
    if out.is_dir() and any(out.iterdir()):
        held = sorted(p.name for p in out.iterdir() if p.name in TABLE_NAMES)
        what = f"already holds the tables {', '.join(held)}" if held else "is not empty"
        raise ValueError(f"out_dir {out} {what}; refusing to overwrite data: choose a new folder or remove this one")
    return out


def _workers(batches: int) -> int:
    """Processes to use: one per core (at most 4, each holds one batch in memory), no more than batches."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, 4, batches))


def generate(out_dir: str | os.PathLike, accounts: int, seed: int, *, catalogue_items: int = 20_000,
             batch_accounts: int = 100_000, until: datetime = datetime(2026, 11, 1, tzinfo=UTC),
             progress: bool = True) -> dict[str, int]:
    """Write a synthetic raw data set of ``accounts`` accounts to the new folder ``out_dir``; return rows per table.

    Writes ``out_dir/<table>/part-NNNNN.parquet`` for every table of ``profiling.schema`` (one
    part per batch of ``batch_accounts`` accounts; the catalogue in one part), each with exactly
    the table's Arrow schema. About 10 orders, 7.5 waybills, 2 devices, 6 device events and 6
    consent events per account. All timestamps lie in [2000-01-01, ``until``] (UTC). The same
    arguments give byte-identical files. The data set appears at ``out_dir`` only when complete:
    it is written to a hidden sibling folder and renamed. A batch of 100,000 accounts takes about
    1 GB of memory per worker process.

    Raises ``ValueError`` for a bad parameter or an ``out_dir`` that exists and is not empty.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as scratch:
    ...     rows = generate(Path(scratch) / "raw", accounts=20, seed=1, catalogue_items=100, progress=False)
    >>> rows["accounts"], rows["catalogue"], list(rows) == list(TABLE_NAMES)
    (20, 100, True)
    """
    accounts = _whole_number("accounts", accounts, 1, _MAX_ACCOUNTS)
    seed = _whole_number("seed", seed, 0, 2 ** 63 - 1)
    catalogue_items = _whole_number("catalogue_items", catalogue_items, 1, _MAX_CATALOGUE_ITEMS)
    batch_accounts = _whole_number("batch_accounts", batch_accounts, 1, _MAX_BATCH_ACCOUNTS)
    if not isinstance(until, datetime) or until.tzinfo is None:
        raise ValueError(f"until must be a timezone-aware datetime, got {until!r}")
    if until < _EARLIEST_UNTIL:
        raise ValueError(f"until must be on or after {_EARLIEST_UNTIL:%Y-%m-%d} (accounts are created from "
                         f"2018-01-01), got {until.isoformat()}")
    run = _Run(accounts, seed, catalogue_items, batch_accounts, _micros(until.astimezone(UTC)))
    if run.batches > _MAX_BATCHES:
        raise ValueError(f"{accounts:,} accounts in batches of {batch_accounts:,} make {run.batches:,} batches, more "
                         f"than {_MAX_BATCHES:,}; raise batch_accounts")
    out = _checked_out_dir(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        partial.chmod(0o777 & ~umask)
        for name in TABLE_NAMES:
            (partial / name).mkdir()
        rows = dict.fromkeys(TABLE_NAMES, 0)
        rows["catalogue"] = _write(partial, "catalogue", 0, _world(run).catalogue)
        with tqdm(total=run.batches, unit="batch", desc="synthetic data", disable=not progress, file=sys.stderr) as bar:
            workers = _workers(run.batches)
            if workers == 1:
                for batch_index in range(run.batches):
                    for name, count in _write_batch(run, batch_index, str(partial)).items():
                        rows[name] += count
                    bar.update()
            else:
                with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                    futures = [pool.submit(_write_batch, run, b, str(partial)) for b in range(run.batches)]
                    try:
                        for future in futures:
                            for name, count in future.result().items():
                                rows[name] += count
                            bar.update()
                    except BaseException:
                        pool.shutdown(wait=True, cancel_futures=True)
                        raise
        _checked_out_dir(out)
        partial.rename(out)  # atomic; replaces an empty folder
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return rows
