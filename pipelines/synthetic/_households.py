"""Households: a few holders of a batch who live together and share one family device, each signing in on it.

Drawn from their own stream ``np.random.default_rng([seed, batch_index, 8])`` and appended after the
batch's other devices and events, so every other draw of the batch stays as it was.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipelines.synthetic._accounts import _Holders
from pipelines.synthetic._arrays import _draw, _floats, _group_starts, _hex16, _ids, _pick, _salt, _strings, _taken
from pipelines.synthetic._device_events import _ANONYMOUS_EVENTS, _SIGNED_IN_EVENTS
from pipelines.synthetic._devices import _device_rows, _ip_addresses
from pipelines.synthetic._run import _Run
from pipelines.synthetic._times import _DAY, _timestamps, _uniform_between
from pipelines.synthetic._vocabulary import _vocabulary
from pipelines.synthetic._world import _popular_items, _World
from profiling.schema import arrow_schema, table as schema_table

_HOUSEHOLD_BLOCK = 4            # households are formed inside blocks of this many consecutive holders
_HOUSEHOLD_SHARE = 0.06         # share of blocks that are a household
_FAMILY_DEVICE_TYPE_P = np.array([10, 60, 30, 0])  # phone, tablet, pc, watch
_SIGN_INS_PER_MEMBER = 3.0      # mean, besides the first
_SIGNED_SHARE = 0.8             # of a member's events; the first is always signed in
_DEVICE_ID_BIT = np.uint64(1 << 31)  # family device ids: (batch << 32) | 2^31 | index


@dataclass(frozen=True)
class _Households:
    """One batch's family devices, their rows and events."""

    devices: pa.Table                   # devices rows
    device_id: pa.Array                 # one per household
    members: list[np.ndarray]           # holder indices of each household (2 to 4)
    events: dict[str, pa.Array]         # device_events columns
    signed_holder: np.ndarray           # (holder, time) of signed-in events
    signed_at: np.ndarray


def _households(run: _Run, world: _World, holders: _Holders, batch_index: int, first_event: int) -> _Households:
    """Households of the batch, one family device each; event ids continue from ``first_event``."""
    rng = np.random.default_rng([run.seed, batch_index, 8])
    vocabulary = _vocabulary()
    n_holders = len(holders.created)
    blocks = np.flatnonzero(rng.random(n_holders // _HOUSEHOLD_BLOCK) < _HOUSEHOLD_SHARE)
    sizes = rng.integers(2, _HOUSEHOLD_BLOCK + 1, len(blocks))
    members = [block * _HOUSEHOLD_BLOCK + np.arange(size) for block, size in zip(blocks, sizes, strict=True)]
    n = len(members)
    member = np.concatenate(members) if n else np.zeros(0, dtype=np.int64)
    household = np.repeat(np.arange(n), sizes)
    # rows: (member) -> household
    first_seen = np.full(n, np.iinfo(np.int64).max)
    np.minimum.at(first_seen, household, holders.created[member])
    first_seen = first_seen - rng.integers(0, 30 * _DAY, n)
    device_type = _draw(rng, n, _FAMILY_DEVICE_TYPE_P)
    device_id = _hex16((np.uint64(batch_index) << np.uint64(32)) | _DEVICE_ID_BIT | np.arange(n, dtype=np.uint64),
                       _salt(run.seed, 2))
    devices = pa.table({"device_id": device_id, **_device_rows(rng, first_seen, device_type)},
                       schema=arrow_schema("devices"))

    # Each member signs in at least once; later events are signed in with probability _SIGNED_SHARE.
    counts = 1 + rng.poisson(_SIGN_INS_PER_MEMBER, len(member))
    holder = np.repeat(member, counts)
    device = np.repeat(household, counts)
    at = _uniform_between(rng, np.maximum(first_seen[device], holders.created[holder]), run.until)
    first_of_member = np.zeros(len(holder), dtype=bool)
    first_of_member[_group_starts(counts)[:len(counts)]] = True
    signed_in = first_of_member | (rng.random(len(holder)) < _SIGNED_SHARE)
    order = np.lexsort((at, device))
    holder, device, at, signed_in = holder[order], device[order], at[order], signed_in[order]
    # rows: (event) sorted by device, time
    m = len(holder)
    allowed_types = schema_table("device_events")["event_type"].allowed
    signed_type = np.array([allowed_types.index(t) for t, _ in _SIGNED_IN_EVENTS])
    anonymous_type = np.array([allowed_types.index(t) for t, _ in _ANONYMOUS_EVENTS])
    event_type = np.where(signed_in, signed_type[_draw(rng, m, [w for _, w in _SIGNED_IN_EVENTS])],
                          anonymous_type[_draw(rng, m, [w for _, w in _ANONYMOUS_EVENTS])])
    viewing = event_type == allowed_types.index("view_item")
    head = np.array([g[0] for g in members], dtype=np.int64)
    city = holders.people.city[head[device]]
    events = {
        "event_id": _ids("E", batch_index, first_event + np.arange(m), 10),
        "device_id": _pick(device_id, device),
        "account_id": _taken(holders.account_id, holder, signed_in),
        "event_at": _timestamps(at),
        "event_type": _pick(_strings(allowed_types), event_type),
        "ip": _ip_addresses(rng, holders.ip24[head[device]]),
        "coarse_region": _taken(vocabulary.city_code, city, rng.random(m) < 0.9),
        "precise_lat": _floats(np.zeros(m), np.zeros(m, dtype=bool)),
        "precise_lon": _floats(np.zeros(m), np.zeros(m, dtype=bool)),
        "item_id": _taken(world.item_id, _popular_items(rng, world, m), viewing),
    }
    return _Households(devices=devices, device_id=device_id, members=members, events=events,
                       signed_holder=holder[signed_in], signed_at=at[signed_in])
