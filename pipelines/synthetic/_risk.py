"""Account-risk incidents planted among a batch's holders, for the transaction-safety stage to find.

Drawn from their own stream ``np.random.default_rng([seed, batch_index, 9])`` and appended after the
batch's other rows (ids continue theirs), so every other draw of the batch stays as it was. Two
patterns, on about 1% of holders old enough to have a history, all in the year before ``until``:

* **account takeover** (0.6% of holders): someone else signs in on a device new to the holder
  (60% from devices a ring uses for about three takeovers each, the rest from one of its own),
  usually from another region and a network the holder never used (half of them through a few
  networks the ring shares), then within hours places one to three orders of expensive goods,
  usually shipped to a new address under the holder's name (a drop), with the holder's usual
  payment institution;
* **order burst** (0.4%): six to twenty orders within a few hours, each shipped to a different
  receiver without an account, across many regions (resale of stolen value, or a stolen account
  used as a mule).

The rows are ordinary rows of the raw tables and pass ingest's checks; which holders were hit, how
and when is written only to the ground truth (``risk_incidents``, ``pipelines.synthetic._truth``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipelines.synthetic._accounts import _Holders
from pipelines.synthetic._arrays import (
    _digits,
    _draw,
    _floats,
    _group_starts,
    _hex16,
    _ids,
    _pick,
    _salt,
    _strings,
    _taken,
    _text,
)
from pipelines.synthetic._devices import _device_rows, _ip_addresses, _random_ip24
from pipelines.synthetic._people import _people
from pipelines.synthetic._run import _Run
from pipelines.synthetic._times import _DAY, _HOUR, _SECOND, _timestamps
from pipelines.synthetic._truth import TRUTH_SCHEMAS
from pipelines.synthetic._vocabulary import _COMMODITY, _vocabulary
from pipelines.synthetic._world import _World
from profiling.schema import SERVICE_TYPES, arrow_schema, table as schema_table

TAKEOVER, BURST = "account_takeover", "order_burst"
PATTERNS = (TAKEOVER, BURST)
_TAKEOVER_SHARE = 0.006
_BURST_SHARE = 0.004
_INCIDENT_SPAN = 365 * _DAY       # incidents fall in the last year before ``until``
_MIN_HISTORY = 60 * _DAY          # a holder is hit only after this much account history
_RING_NETWORKS = 24               # networks a takeover ring shares (from the run's seed)
_DEVICE_ID_BIT = np.uint64(1 << 30)  # attackers' device ids: (batch << 32) | 2^30 | index
_RING_DEVICE_SHARE = 0.6          # of takeovers made from a device the ring uses for several
_TAKEOVERS_PER_RING_DEVICE = 3    # about
_EXPENSIVE_QUANTILE = 0.97        # takeovers buy commodities above this price quantile


@dataclass(frozen=True)
class _Incidents:
    """One batch's planted rows and their truth."""

    orders: dict[str, pa.Array]
    waybills: dict[str, pa.Array]
    devices: pa.Table
    events: dict[str, pa.Array]
    truth: pa.Table                 # risk_incidents rows of the ground truth
    activity: list[tuple[np.ndarray, np.ndarray]]  # (holder, time) of what the holders "did"


def _items_between(world: _World, low_quantile: float, high_quantile: float, listed_before: int) -> np.ndarray:
    """Commodities listed before ``listed_before`` whose price lies between the two quantiles of commodities."""
    commodity = (world.item_kind == _COMMODITY) & np.isfinite(world.item_price)
    low, high = np.quantile(world.item_price[commodity], [low_quantile, high_quantile])
    chosen = np.flatnonzero(commodity & (world.item_price >= low) & (world.item_price <= high)
                            & (world.item_listed < listed_before))
    return chosen if len(chosen) else world.early_item_by_rank[:1]


def _incidents(run: _Run, world: _World, holders: _Holders, batch_index: int, *, first_order: int,
               first_waybill: int, first_event: int) -> _Incidents:
    rng = np.random.default_rng([run.seed, batch_index, 9])
    vocabulary = _vocabulary()
    n_holders = len(holders.created)
    start = run.until - _INCIDENT_SPAN
    old_enough = holders.created + _MIN_HISTORY < run.until
    draw = rng.random(n_holders)
    pattern = np.where(~old_enough, -1, np.where(draw < _TAKEOVER_SHARE, 0,
                                                 np.where(draw < _TAKEOVER_SHARE + _BURST_SHARE, 1, -1)))
    victim = np.flatnonzero(pattern >= 0)
    kind = pattern[victim]
    earliest = np.maximum(start, holders.created[victim] + _MIN_HISTORY)
    at = earliest + (rng.random(len(victim)) * (run.until - 12 * _HOUR - earliest)).astype(np.int64)
    # rows: (incident) -> victim holder, pattern, start time
    takeover, burst = victim[kind == 0], victim[kind == 1]
    takeover_at, burst_at = at[kind == 0], at[kind == 1]
    n_take, n_burst = len(takeover), len(burst)

    # Takeovers: a device new to the holder signs in, then one to three expensive orders. Most come
    # from the ring's devices, each taking over a few accounts; the rest from a device of its own.
    from_ring = rng.random(n_take) < _RING_DEVICE_SHARE
    n_ring = -(-int(from_ring.sum()) // _TAKEOVERS_PER_RING_DEVICE)
    device_of = np.where(from_ring, rng.integers(0, max(n_ring, 1), n_take),
                         n_ring + np.cumsum(~from_ring) - 1)
    n_devices = n_ring + int((~from_ring).sum())
    # rows: (takeover) -> attacker's device (index into the devices below)
    device_first_seen = np.full(n_devices, np.iinfo(np.int64).max)
    np.minimum.at(device_first_seen, device_of, takeover_at)
    used = device_first_seen < np.iinfo(np.int64).max   # a ring device no takeover drew is left out
    renumber = np.cumsum(used) - 1
    device_of, device_first_seen = renumber[device_of], device_first_seen[used]
    device_type = _draw(rng, len(device_first_seen), [75, 0, 25, 0])
    devices = pa.table({"device_id": _hex16((np.uint64(batch_index) << np.uint64(32)) | _DEVICE_ID_BIT
                                            | np.arange(len(device_first_seen), dtype=np.uint64), _salt(run.seed, 2)),
                        **_device_rows(rng, device_first_seen, device_type)}, schema=arrow_schema("devices"))
    moved = rng.random(n_take) < 0.75          # signs in from another region
    home_city = holders.people.city[takeover]
    city = np.where(moved, _draw(rng, n_take, vocabulary.city_weight), home_city)
    ring = np.random.default_rng(np.random.SeedSequence(run.seed, spawn_key=(9,)))
    ring_networks = _random_ip24(ring, _RING_NETWORKS)
    network = np.where(rng.random(n_take) < 0.5, ring_networks[rng.integers(0, _RING_NETWORKS, n_take)],
                       _random_ip24(rng, n_take))
    per_device = 2 + rng.poisson(3.0, n_take)   # the sign-in, then browsing and ordering
    device_starts = _group_starts(per_device)[:n_take]
    event_device = np.repeat(np.arange(n_take), per_device)
    event_at = takeover_at[event_device] + np.where(
        np.arange(len(event_device)) == np.repeat(device_starts, per_device), 0,
        rng.integers(_SECOND, 3 * _HOUR, len(event_device)))
    order = np.lexsort((event_at, event_device))
    event_device, event_at = event_device[order], event_at[order]
    first_of_device = np.zeros(len(event_device), bool)
    first_of_device[device_starts] = True
    allowed_types = schema_table("device_events")["event_type"].allowed
    later_types = np.array([allowed_types.index(t) for t in ("view_item", "search", "place_order", "app_open")])
    event_type = np.where(first_of_device, allowed_types.index("sign_in"),
                          later_types[_draw(rng, len(event_device), [45, 20, 25, 10])])
    m = len(event_device)
    browsed = _items_between(world, 0.9, 1.0, start)
    events = {
        "event_id": _ids("E", batch_index, first_event + np.arange(m), 10),
        "device_id": _pick(devices.column("device_id").combine_chunks(), device_of[event_device]),
        "account_id": _pick(holders.account_id, takeover[event_device]),
        "event_at": _timestamps(event_at),
        "event_type": _pick(_strings(allowed_types), event_type),
        "ip": _ip_addresses(rng, network[event_device]),
        "coarse_region": _taken(vocabulary.city_code, city[event_device], rng.random(m) < 0.95),
        "precise_lat": _floats(np.zeros(m), np.zeros(m, bool)),
        "precise_lon": _floats(np.zeros(m), np.zeros(m, bool)),
        "item_id": _taken(world.item_id, browsed[rng.integers(0, len(browsed), m)],
                          event_type == allowed_types.index("view_item")),
    }
    take_orders = 1 + _draw(rng, n_take, [60, 30, 10])
    take_holder = np.repeat(takeover, take_orders)
    take_placed = np.repeat(takeover_at, take_orders) + rng.integers(10 * 60 * _SECOND, 4 * _HOUR, len(take_holder))
    expensive = _items_between(world, _EXPENSIVE_QUANTILE, 1.0, start)
    take_item = expensive[rng.integers(0, len(expensive), len(take_holder))]
    drop = np.repeat(rng.random(n_take) < 0.7, take_orders)  # shipped to a new address

    # Bursts: many orders within hours, each to another receiver without an account.
    burst_orders = rng.integers(6, 21, n_burst)
    burst_holder = np.repeat(burst, burst_orders)
    burst_placed = np.repeat(burst_at, burst_orders) + rng.integers(0, 3 * _HOUR, len(burst_holder))
    middling = _items_between(world, 0.5, 0.9, start)
    burst_item = middling[rng.integers(0, len(middling), len(burst_holder))]

    # rows: (planted order) takeovers, then bursts
    holder = np.concatenate([take_holder, burst_holder])
    placed = np.minimum(np.concatenate([take_placed, burst_placed]), run.until)
    item = np.concatenate([take_item, burst_item])
    n = len(holder)
    order_id = _ids("O", batch_index, first_order + np.arange(n), 10)
    orders = {
        "order_id": order_id,
        "account_id": _pick(holders.account_id, holder),
        "placed_at": _timestamps(placed),
        "amount": _floats(np.round(world.item_price[item], 2)),
        "currency": _pick(_strings(("CNY",)), np.zeros(n, np.int64)),
        "payment_institution": _pick(_strings(schema_table("orders")["payment_institution"].allowed),
                                     holders.pay_with[holder]),
        "category": _pick(vocabulary.category, world.item_category[item]),
        "items": pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)), _pick(world.item_id, item)),
    }
    # Waybills: merchant -> the holder's name at a drop address (takeover), or a stranger (burst).
    strangers = _people(rng, n, with_account=False)
    to_drop = np.concatenate([drop, np.ones(len(burst_holder), bool)])
    own_name = np.concatenate([np.ones(len(take_holder), bool), np.zeros(len(burst_holder), bool)])
    merchant = world.item_merchant[item]
    created = np.minimum(placed + rng.integers(30 * 60 * _SECOND, 6 * _HOUR, n), run.until)
    carrier = vocabulary.carrier_prefix[_draw(rng, n, [30, 20, 20, 15, 8, 4, 2, 1])]

    def party(holder_values: pa.Array, stranger_values: pa.Array, use_holder: np.ndarray) -> pa.Array:
        return pa.concat_arrays([holder_values, stranger_values]).take(
            pa.array(np.where(use_holder, holder, n_holders + np.arange(n))))

    weight = np.round(np.clip(world.item_weight_kg[item] * rng.lognormal(0.0, 0.3, n), 0.05, 30.0), 2)
    waybills = {
        "waybill_id": _text(np.hstack([carrier, _digits(np.full(n, batch_index), 5),
                                       _digits(first_waybill + np.arange(n), 9)])),
        "order_id": order_id,
        "account_id": _pick(holders.account_id, holder),
        "created_at": _timestamps(created),
        "shipper_name": _pick(world.merchants.name, merchant),
        "shipper_phone": _pick(world.merchants.phone, merchant),
        "shipper_address": _pick(world.merchants.address, merchant),
        "receiver_name": party(holders.people.name, strangers.name, own_name),
        "receiver_phone": party(holders.people.phone, strangers.phone, ~to_drop),
        "receiver_address": party(holders.people.address, strangers.address, ~to_drop),
        "origin_region": _pick(world.merchants.region, merchant),
        "destination_region": party(holders.people.region, strangers.region, ~to_drop),
        "weight_kg": _floats(weight),
        "service_type": _pick(_strings(SERVICE_TYPES), np.full(n, SERVICE_TYPES.index("express"))),
        "cross_border": pa.array(np.zeros(n, bool)),
        "id_card_number": pa.nulls(n, pa.string()),
    }
    ended = np.full(len(victim), 0, np.int64)
    np.maximum.at(ended, np.searchsorted(victim, holder), created)
    truth = pa.table([_pick(holders.account_id, victim), _pick(_strings(PATTERNS), kind),
                      _timestamps(at), _timestamps(np.maximum(ended, at))], schema=TRUTH_SCHEMAS["risk_incidents"])
    activity = [(holder, placed), (takeover[event_device], event_at)]
    return _Incidents(orders=orders, waybills=waybills, devices=devices, events=events, truth=truth,
                      activity=activity)
