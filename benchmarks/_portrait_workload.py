"""The portrait benchmark's workload: analytics-zone Parquet files made from a seed, cached on disk.

Layout of a workload folder (every table split into ``FILES_PER_TABLE`` files, row groups of
``ROW_GROUP_ROWS`` rows, rows in time order as a daily ingest leaves them):

* ``orders/``: person_id (32-hex PERSON pseudonym), placed_at, amount, currency, payment_institution,
  category. Orders per person are Poisson with a gamma(0.3) rate: most persons have 0-3 orders, a
  few hundreds. ~8% of the amounts are in a currency other than CNY.
* ``waybills/`` (~0.8 per order): person_id (null for ~3%), created_at, service_type,
  origin_province / destination_province (2-digit codes, null for ~5%), weight_kg, cross_border.
* ``device_events/`` (~6 per person): person_id (null for ~10%: nobody signed in), event_at.
* ``persons.parquet``: the eligible persons (~95% of the persons in the data) with identity_id
  (~2% of identities join two persons; the identity is named by the smaller pseudonym) and the
  dnd, non_personalized and cross_device_sync flags.
* ``devices.parquet``: device_id, identity_id, device_type; only identities whose every account
  syncs across devices have devices.

Timestamps span the five years before ``AS_OF``; ~1% fall after it and must be ignored.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from profiling.portrait import DEVICE_TYPES
from profiling.schema import (
    CATEGORIES,
    CURRENCIES,
    PAYMENT_INSTITUTIONS,
    SERVICE_TYPES,
    TIMESTAMP,
)

AS_OF = dt.datetime(2026, 11, 1, 3, 30, tzinfo=dt.UTC)
FILES_PER_TABLE = 4
ROW_GROUP_ROWS = 1_000_000
WAYBILLS_PER_ORDER = 0.8
EVENTS_PER_PERSON = 6
_FORMAT = 1  # bump when the generator changes, so cached folders are rebuilt

_US_PER_DAY = 86_400_000_000
_AS_OF_US = int(AS_OF.timestamp()) * 1_000_000
_SPAN_US = 5 * 365 * _US_PER_DAY
_PROVINCES = ("11", "12", "13", "14", "15", "21", "22", "23", "31", "32", "33", "34", "35", "36", "37", "41",
              "42", "43", "44", "45", "46", "50", "51", "52", "53", "54", "61", "62", "63", "64", "65", "71",
              "81", "82")
_CURRENCY_SHARES = (0.92, 0.025, 0.005, 0.01, 0.02, 0.008, 0.007, 0.003, 0.002)
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def _shares(count: int, rng: np.random.Generator) -> np.ndarray:
    """Zipf-like shares over ``count`` values, in a random order."""
    shares = 1.0 / np.arange(1, count + 1) ** 0.8
    return rng.permutation(shares / shares.sum())


def _pseudonyms(count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` random 32-hex pseudonyms as a numpy ``S32`` array."""
    raw = np.frombuffer(rng.bytes(16 * count), dtype=np.uint8).reshape(count, 16)
    text = np.empty((count, 32), dtype=np.uint8)
    text[:, 0::2], text[:, 1::2] = _HEX[raw >> 4], _HEX[raw & 15]
    return text.reshape(-1).view("S32")


def _strings(values: np.ndarray) -> pa.StringArray:
    """A StringArray from a fixed-width ``S`` array, without a Python object per value."""
    width = values.dtype.itemsize
    offsets = np.arange(0, width * (len(values) + 1), width, dtype=np.int32)
    return pa.StringArray.from_buffers(len(values), pa.py_buffer(offsets), pa.py_buffer(values.tobytes()))


def _choose(values: tuple[str, ...] | pa.Array, codes: np.ndarray, null: np.ndarray | None = None) -> pa.Array:
    """``values[codes]``, null where ``null`` is true."""
    return pa.array(values).take(pa.array(codes, mask=null))


def _moments(start: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """UTC microseconds between each row's ``start`` and ~1% of the span past ``AS_OF``."""
    return start + (rng.random(len(start)) * (_AS_OF_US - start) * 1.01).astype(np.int64)


def _write(table: pa.Table, folder: Path, sort_by: str) -> None:
    table = table.take(pa.array(np.argsort(table.column(sort_by).cast(pa.int64()).to_numpy(), kind="stable")))
    folder.mkdir(parents=True)
    bounds = np.linspace(0, table.num_rows, FILES_PER_TABLE + 1).astype(np.int64)
    for k in range(FILES_PER_TABLE):
        pq.write_table(table.slice(bounds[k], bounds[k + 1] - bounds[k]), folder / f"part-{k:05d}.parquet",
                       row_group_size=ROW_GROUP_ROWS)


def make_workload(folder: Path, *, persons: int, orders: int, seed: int) -> None:
    """Write the workload into ``folder`` (which must not exist)."""
    rng = np.random.default_rng(seed)
    ids = _pseudonyms(persons, rng)
    person_ids = _strings(ids)
    first_seen = _AS_OF_US - (rng.random(persons) * _SPAN_US).astype(np.int64)

    # persons: ~5% not eligible; ~2% of identities join two eligible persons
    eligible = np.flatnonzero(rng.random(persons) >= 0.05)
    pairs = rng.permutation(eligible)[: 2 * int(0.02 * len(eligible) / 1.02)].reshape(-1, 2)
    identity = ids.copy()
    smaller = np.where(ids[pairs[:, 0]] < ids[pairs[:, 1]], ids[pairs[:, 0]], ids[pairs[:, 1]])
    identity[pairs[:, 0]], identity[pairs[:, 1]] = smaller, smaller
    syncing = rng.random(persons) < 0.7
    syncing[pairs.reshape(-1)] = True
    folder.mkdir(parents=True)
    pq.write_table(pa.table({
        "person_id": person_ids.take(pa.array(eligible)),
        "identity_id": _strings(identity[eligible]),
        "dnd": pa.array(rng.random(len(eligible)) < 0.1),
        "non_personalized": pa.array(rng.random(len(eligible)) < 0.05),
        "cross_device_sync": pa.array(syncing[eligible]),
    }), folder / "persons.parquet")

    # devices: ~1.4 a syncing identity (an identity syncs when all its accounts do)
    owners = np.unique(identity[eligible][syncing[eligible]])
    per_owner = rng.poisson(1.4, len(owners))
    device_owner = np.repeat(owners, per_owner)
    pq.write_table(pa.table({
        "device_id": _strings(_pseudonyms(len(device_owner), rng)),
        "identity_id": _strings(device_owner),
        "device_type": _choose(DEVICE_TYPES, rng.choice(len(DEVICE_TYPES), len(device_owner),
                                                        p=[0.6, 0.15, 0.15, 0.1])),
    }), folder / "devices.parquet")

    # orders: person drawn with a gamma(0.3) weight, so counts per person are very skewed
    weight = rng.gamma(0.3, 1.0, persons)
    cumulative = np.cumsum(weight)
    buyer = np.searchsorted(cumulative, rng.random(orders) * cumulative[-1]).clip(0, persons - 1)
    currency = rng.choice(len(CURRENCIES), orders, p=np.array(_CURRENCY_SHARES) / sum(_CURRENCY_SHARES))
    _write(pa.table({
        "person_id": person_ids.take(pa.array(buyer)),
        "placed_at": pa.array(_moments(first_seen[buyer], rng), pa.int64()).cast(TIMESTAMP),
        "amount": pa.array(np.round(rng.lognormal(4.0, 1.2, orders).clip(0.01, 1_000_000), 2)),
        "currency": _choose(CURRENCIES, currency),
        "payment_institution": _choose(PAYMENT_INSTITUTIONS, rng.choice(len(PAYMENT_INSTITUTIONS), orders,
                                                                        p=_shares(len(PAYMENT_INSTITUTIONS), rng))),
        "category": _choose(CATEGORIES, rng.choice(len(CATEGORIES), orders, p=_shares(len(CATEGORIES), rng))),
    }), folder / "orders", "placed_at")
    del buyer, currency

    # waybills: same skew as orders; destination mostly the person's home province
    count = int(orders * WAYBILLS_PER_ORDER)
    sender = np.searchsorted(cumulative, rng.random(count) * cumulative[-1]).clip(0, persons - 1)
    province_shares = _shares(len(_PROVINCES), rng)
    home = rng.choice(len(_PROVINCES), persons, p=province_shares)
    destination = np.where(rng.random(count) < 0.6, home[sender],
                           rng.choice(len(_PROVINCES), count, p=province_shares))
    _write(pa.table({
        "person_id": _choose(person_ids, sender, rng.random(count) < 0.03),
        "created_at": pa.array(_moments(first_seen[sender], rng), pa.int64()).cast(TIMESTAMP),
        "service_type": _choose(SERVICE_TYPES, rng.choice(len(SERVICE_TYPES), count, p=_shares(len(SERVICE_TYPES), rng))),
        "origin_province": _choose(_PROVINCES, rng.choice(len(_PROVINCES), count, p=province_shares),
                                   rng.random(count) < 0.05),
        "destination_province": _choose(_PROVINCES, destination, rng.random(count) < 0.05),
        "weight_kg": pa.array(np.round(rng.lognormal(0.5, 1.0, count).clip(0.01, 50_000), 2)),
        "cross_border": pa.array(rng.random(count) < 0.03),
    }), folder / "waybills", "created_at")
    del sender, destination

    # device events: ~6 a person, person weight gamma(1); ~10% with nobody signed in
    count = EVENTS_PER_PERSON * persons
    weight = rng.gamma(1.0, 1.0, persons)
    cumulative = np.cumsum(weight)
    actor = np.searchsorted(cumulative, rng.random(count) * cumulative[-1]).clip(0, persons - 1)
    _write(pa.table({
        "person_id": _choose(person_ids, actor, rng.random(count) < 0.1),
        "event_at": pa.array(_moments(first_seen[actor], rng), pa.int64()).cast(TIMESTAMP),
    }), folder / "device_events", "event_at")


def workload(parent: Path, *, persons: int, orders: int, seed: int) -> tuple[Path, bool]:
    """``(folder, made)``: the cached workload for these parameters, made first when missing."""
    params = {"format": _FORMAT, "persons": persons, "orders": orders, "seed": seed}
    folder = parent / f"persons{persons}-orders{orders}-seed{seed}"
    marker = folder / "_params.json"
    if marker.exists() and json.loads(marker.read_text()) == params:
        return folder, False
    if folder.exists():
        shutil.rmtree(folder)
    make_workload(folder, persons=persons, orders=orders, seed=seed)
    marker.write_text(json.dumps(params) + "\n")
    return folder, True
