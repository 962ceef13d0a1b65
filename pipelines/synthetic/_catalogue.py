"""The catalogue: commodities, services and coupons with category, price, title, served provinces and
listing time; and the Zipf-like popularity that orders and item views follow.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.synthetic._arrays import _ascii, _digits, _draw, _floats, _join, _pick, _strings, _text
from pipelines.synthetic._run import _Run
from pipelines.synthetic._times import _ACCOUNTS_FROM, _LISTINGS_FROM, _SECOND, _timestamps, _uniform_between
from pipelines.synthetic._vocabulary import _COMMODITY, _COUPON, _KINDS, _vocabulary
from profiling.identifiers import PROVINCE_CODES

_KIND_P = np.array([.90, .06, .04])
_MAINLAND_PROVINCES = tuple(code for code in sorted(PROVINCE_CODES) if code < "70")


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
    served = pa.ListArray.from_arrays(pa.array(offsets), _pick(_strings(_MAINLAND_PROVINCES), chosen),
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
        "kind": _pick(_strings(_KINDS), kind),
        "category": _pick(vocabulary.category, category),
        "title": title,
        "price": _floats(np.nan_to_num(price), kind != _COUPON),
        "served_provinces": served,
        "active": pa.array(rng.random(n) < 0.95),
        "listed_at": _timestamps(listed),
    }
    return dict(table=table, item_id=item_id, kind=kind, category=category, price=price,
                weight_kg=weight_kg, item_by_rank=item_by_rank, listed=listed)
