"""One batch's orders, and the waybills of its parcels: shipped orders, parcels the holders send, and
parcels from walk-in senders without an account.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipelines.synthetic._accounts import _ACTIVITY_SIGMA, _CONTACT_POOL_SHARE, _MEAN_TENURE, _Holders
from pipelines.synthetic._arrays import _digits, _draw, _floats, _group_starts, _ids, _pick, _strings, _taken, _text
from pipelines.synthetic._people import _people
from pipelines.synthetic._run import _Run
from pipelines.synthetic._times import (
    _ACCOUNTS_FROM,
    _BEIJING_OFFSET,
    _DAY,
    _HOUR,
    _SECOND,
    _timestamps,
    _uniform_between,
)
from pipelines.synthetic._vocabulary import _COMMODITY, _COUPON, _vocabulary
from pipelines.synthetic._world import _popular_items, _World
from profiling.schema import CATEGORIES, CURRENCIES, PAYMENT_INSTITUTIONS, SERVICE_TYPES

_ORDERS_PER_ACCOUNT = 10.0        # mean
_MAX_ORDER_RATE = 800.0           # per account over its lifetime
_ITEMS_PER_ORDER_P = np.array([.55, .22, .12, .07, .04])     # 1..5 items
_SHIPPED_SHARE = 0.85             # of orders whose main item is a commodity
_CROSS_BORDER_SHARE = 0.03        # of commodity orders
_STANDALONE_PER_ACCOUNT = 0.35    # parcels sent by the account holder, mean
_WALK_IN_PER_ACCOUNT = 0.05       # parcels sent by people without an account, per account
_CROSS_BORDER_CURRENCIES = np.array([CURRENCIES.index(c) for c in ("CNY", "HKD", "USD")])
_CNY_TO = {"HKD": 1.08, "USD": 0.14}  # rough exchange rates: units of the currency per CNY
# Orders per hour of the day, Beijing time (evening peak).
_ORDER_HOURS = np.array([2, 1, .5, .3, .3, .5, 1, 2, 3, 4, 5, 5, 6, 5, 4, 4, 4, 5, 6, 8, 10, 11, 9, 5], float)


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
        "currency": _pick(_strings(CURRENCIES), currency),
        "payment_institution": _pick(_strings(PAYMENT_INSTITUTIONS), payment),
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
        "service_type": _pick(_strings(SERVICE_TYPES), service),
        "cross_border": pa.array(way["cross"]),
        "id_card_number": _taken(holders.id_card, np.where(way["cross"], way["account"], 0), way["cross"]),
    }
    cross_holder = way["account"][way["cross"]]
    cross_time = np.concatenate([orders.placed[shipped_parts["order"][shipped_parts["cross"]]],
                                 sent_parts["created"][sent_parts["cross"]]])
    return columns, cross_holder, cross_time, way["account"], way["created"]
