"""The word lists of ``_words`` as Arrow arrays and numpy weights (built once per process); item kinds."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from pipelines.synthetic import _words as words
from pipelines.synthetic._arrays import _strings
from profiling.identifiers import CITY_CODES, PHONE_PREFIXES
from profiling.schema import CATEGORIES

# Kinds of catalogue items; arrays hold their index.
_KINDS = ("commodity", "service", "coupon")
_COMMODITY, _SERVICE, _COUPON = 0, 1, 2


class _Vocabulary:
    """The word lists as Arrow string arrays and numpy weights, in the order of the lists."""

    def __init__(self) -> None:
        self.surname = _strings(s for s, _, _ in words.SURNAMES)
        self.surname_pinyin = _strings(p for _, p, _ in words.SURNAMES)
        self.surname_weight = np.array([w for _, _, w in words.SURNAMES])
        given = words.GIVEN_MALE + words.GIVEN_FEMALE + words.GIVEN_EITHER
        self.given = _strings([g for g, _ in given] + [""])  # last entry: no second character
        self.given_pinyin = _strings([p for _, p in given] + [""])
        self.n_male, self.n_female, self.n_either = map(len, (words.GIVEN_MALE, words.GIVEN_FEMALE, words.GIVEN_EITHER))
        self.nick_adjective = _strings(words.NICK_ADJECTIVES)
        self.nick_noun = _strings(words.NICK_NOUNS)
        self.email_domain = _strings(d for d, _ in words.EMAIL_DOMAINS)
        self.email_weight = np.array([w for _, w in words.EMAIL_DOMAINS])
        self.district = _strings(words.DISTRICTS)
        self.street = _strings(words.STREETS)
        codes = list(CITY_CODES)
        self.city_code = _strings(codes)
        self.city_prefix = np.frombuffer("".join(c[:4] for c in codes).encode("ascii"), np.uint8).reshape(-1, 4)
        self.city_weight = np.array([CITY_CODES[c][1] for c in codes])
        self.city_place = _strings(words.CITY_PLACES.get(c, (CITY_CODES[c][0],))[0] for c in codes)
        self.city_lat = np.array([words.CITY_PLACES.get(c, ("", 35.0, 105.0))[1] for c in codes])
        self.city_lon = np.array([words.CITY_PLACES.get(c, ("", 35.0, 105.0))[2] for c in codes])
        self.outside_mainland = np.array([i for i, c in enumerate(codes) if c[:2] in ("71", "81", "82")], np.int64)
        self.hub_weight = self.city_weight * np.array([words.MERCHANT_HUBS.get(c, 1.0) for c in codes])
        self.category = _strings(CATEGORIES)
        self.phone_prefix = np.frombuffer("".join(PHONE_PREFIXES).encode("ascii"), np.uint8).reshape(-1, 3)
        self.octet = _strings(str(i) for i in range(256))
        self.ipv4_first = np.array(words.CN_IPV4_FIRST_OCTETS, dtype=np.int64)
        self.ipv6_prefix = _strings(words.CN_IPV6_PREFIXES)
        self.carrier_prefix = np.frombuffer("".join(words.CARRIER_PREFIXES).encode("ascii"), np.uint8).reshape(-1, 2)
        profiles = [words.CATEGORY_PROFILES[c] for c in CATEGORIES]
        self.category_kind = np.array([_KINDS.index(p[0]) for p in profiles])
        self.category_share = np.array([p[1] for p in profiles], dtype=float)
        self.category_price = np.array([np.nan if p[2] is None else p[2] for p in profiles])
        self.category_weight_kg = np.array([p[3] for p in profiles])
        self.category_word = _strings(p[4] for p in profiles)
        nouns = [(i, noun) for i, p in enumerate(profiles) for noun in p[5]]
        self.noun = _strings(noun for _, noun in nouns)
        self.noun_category = np.array([i for i, _ in nouns])
        self.brand = _strings(words.BRANDS)
        self.merchant_suffix = _strings(words.MERCHANT_SUFFIXES)
        self.title_adjective = _strings(words.TITLE_ADJECTIVES)
        self.spec = {_COMMODITY: _strings(words.COMMODITY_SPECS), _SERVICE: _strings(words.SERVICE_SPECS),
                     _COUPON: _strings(words.COUPON_SPECS)}


@lru_cache(maxsize=1)
def _vocabulary() -> _Vocabulary:
    return _Vocabulary()
