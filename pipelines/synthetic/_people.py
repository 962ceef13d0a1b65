"""People: Chinese names with their pinyin, mainland mobile numbers, region codes and postal addresses."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.synthetic._arrays import _digits, _draw, _join, _pick, _text
from pipelines.synthetic._vocabulary import _vocabulary


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
