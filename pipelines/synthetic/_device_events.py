"""One batch's devices (with batch 0, also the shared ones) and their events: app opens, sign-ins,
searches and item views, with IP address, coarse region and, while permitted, precise location.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipelines.synthetic._accounts import _ACTIVITY_SIGMA, _Holders
from pipelines.synthetic._arrays import (
    _draw,
    _floats,
    _group_starts,
    _hex16,
    _ids,
    _pick,
    _rank_within_group,
    _salt,
    _strings,
    _taken,
)
from pipelines.synthetic._consent import _Grants
from pipelines.synthetic._devices import _DEVICE_TYPE_P, _device_rows, _ip_addresses, _random_ip24
from pipelines.synthetic._run import _Run
from pipelines.synthetic._times import _HOUR, _timestamps, _uniform_between
from pipelines.synthetic._vocabulary import _vocabulary
from pipelines.synthetic._world import _popular_items, _World
from profiling.schema import arrow_schema, table as schema_table

_DEVICES_PER_ACCOUNT_P = np.array([.40, .33, .17, .07, .03])  # 1..5 devices, mean 2.0
_EVENTS_PER_DEVICE = 3.0          # mean
_SHARED_DEVICE_USERS = 0.015      # share of accounts that also use a shared device
_SECOND_ACCOUNT_HOLDERS = 0.03    # share of accounts whose owner also signs in to a second account
_SIGNED_IN_EVENTS = (("app_open", 20), ("sign_in", 10), ("sign_out", 4), ("search", 15), ("view_item", 25),
                     ("track_shipment", 12), ("place_order", 10))
_ANONYMOUS_EVENTS = (("app_open", 45), ("search", 20), ("view_item", 35))
_CHINA_LAT, _CHINA_LON = (18.0, 53.5), (73.5, 135.0)


@dataclass(frozen=True)
class _Ownership:
    """Who the batch's own devices belong to, and who keeps a second account."""

    device_id: pa.Array        # the holders' own devices (not the shared pool)
    owner: np.ndarray          # holder index of each
    second_account: np.ndarray  # bool per holder: the holder's owner also holds the next holder's account


def _devices_and_events(rng: np.random.Generator, run: _Run, world: _World, holders: _Holders, location: _Grants,
                        batch_index: int) -> tuple[pa.Table, dict[str, pa.Array], np.ndarray, np.ndarray, _Ownership]:
    """Devices of the batch's holders (plus the shared pool in batch 0) and their events.

    Returns the devices table, the device_events columns, ``(holder, time)`` of signed-in events and
    who owns the holders' devices.
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
    # Some people keep a second account (the next holder) and sign in to it on their own devices too;
    # drawn from a separate stream so that every other draw stays as it was.
    second = np.random.default_rng([run.seed, batch_index, 7])
    second_account = second.random(n_holders) < _SECOND_ACCOUNT_HOLDERS
    switch = second_account[own_holder] & (second.random(len(own_holder)) < 0.3)
    own_holder = np.where(switch, (own_holder + 1) % n_holders, own_holder)
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
        "event_type": _pick(_strings(allowed_types), event_type),
        "ip": _ip_addresses(rng, ip24),
        "coarse_region": _taken(vocabulary.city_code, city, rng.random(n) < 0.9),
        "precise_lat": _floats(np.round(latitude, 6), precise),
        "precise_lon": _floats(np.round(longitude, 6), precise),
        "item_id": _taken(world.item_id, _popular_items(rng, world, n), viewing),
    }
    return devices, events, holder[signed_in], at[signed_in], _Ownership(device_id, owner, second_account)
