"""What every batch shares: the catalogue, the merchants and the shared devices, from one seeded stream.

Each worker process builds it once per run (``_world`` is cached) from
``np.random.SeedSequence(seed, spawn_key=(1,))``, so all batches see the same world.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pyarrow as pa

from pipelines.synthetic._arrays import _draw, _group_starts, _hex16, _join, _pick, _salt
from pipelines.synthetic._catalogue import _catalogue, _popularity
from pipelines.synthetic._devices import _device_rows, _random_ip24
from pipelines.synthetic._people import _People, _people
from pipelines.synthetic._run import _Run
from pipelines.synthetic._times import _ACCOUNTS_FROM, _uniform_between
from pipelines.synthetic._vocabulary import _vocabulary
from profiling.schema import CATEGORIES, arrow_schema

_SHARED_DEVICE_SHARE = 0.002      # shared devices per account


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
    rank_cdf = _popularity(run.catalogue_items)
    rank_weight = np.diff(np.concatenate([[0.0], rank_cdf]))
    early_cdf = np.cumsum(rank_weight[listed[item_by_rank] < _ACCOUNTS_FROM])
    return _World(
        catalogue=pa.table(catalogue["table"], schema=arrow_schema("catalogue")),
        item_id=catalogue["item_id"], item_kind=catalogue["kind"], item_category=catalogue["category"],
        item_price=catalogue["price"], item_weight_kg=catalogue["weight_kg"], item_merchant=item_merchant,
        item_by_rank=item_by_rank, rank_cdf=rank_cdf,
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
