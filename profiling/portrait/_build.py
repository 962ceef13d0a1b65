"""Portraits from streamed batches: encode each batch once, then compute every feature per partition.

Memory: a batch is turned into a few integer and float columns (22 bytes an order, 17 a waybill,
5 an event) as it arrives. With ``partitions > 1`` those rows are split by identity and spilled to
Arrow IPC files, and each partition is computed alone, so the memory for the rows is that of one
partition: 10x the orders in 10x the partitions need no more of it. Per-identity state (flags,
linked accounts and devices, the output of one partition) is held for every identity.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from profiling._string_hash import StringIndex
from profiling.checks import check_int
from profiling.portrait._dictionary import (
    DEVICE_TYPES,
    LOCAL_UTC_OFFSET_HOURS,
    portrait_schema,
)
from profiling.portrait._kernels import (
    MICROS_PER_DAY,
    MICROS_PER_HOUR,
    event_features,
    order_features,
    waybill_features,
)
from profiling.schema import CATEGORIES, CURRENCIES, PAYMENT_INSTITUTIONS, SERVICE_TYPES

__all__ = ["DEFAULT_CNY_PER_UNIT", "DEVICES_COLUMNS", "PERSONS_COLUMNS", "SOURCE_COLUMNS", "PortraitBuilder",
           "portraits", "spill_folder"]

# Reference rates (CNY per unit, late 2026) used when a job passes none; pass the rates of your books.
DEFAULT_CNY_PER_UNIT: Mapping[str, float] = {
    "CNY": 1.0, "HKD": 0.91, "MOP": 0.88, "TWD": 0.22, "USD": 7.1, "EUR": 7.7, "JPY": 0.047,
    "KRW": 0.0051, "GBP": 9.0,
}
PERSONS_COLUMNS = ("person_id", "identity_id", "dnd", "non_personalized", "cross_device_sync")
DEVICES_COLUMNS = ("device_id", "identity_id", "device_type")
SOURCE_COLUMNS = {
    "orders": ("person_id", "placed_at", "amount", "currency", "payment_institution", "category"),
    "waybills": ("person_id", "created_at", "service_type", "origin_province", "destination_province",
                 "weight_kg", "cross_border"),
    "device_events": ("person_id", "event_at"),
}
_LOCAL_OFFSET_US = LOCAL_UTC_OFFSET_HOURS * MICROS_PER_HOUR
_PROVINCE_NAMES = pa.array([f"{code:02d}" for code in range(100)])


def _require_columns(table, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in table.schema.names]
    if missing:
        raise ValueError(f"{what} lacks column(s) {', '.join(missing)}; it has {', '.join(table.schema.names)}")


def _micros(column: pa.Array) -> np.ndarray:
    """UTC timestamps as int64 microseconds (nulls are rejected by the callers' masks)."""
    return pc.cast(pc.cast(column, pa.timestamp("us", tz="UTC")), pa.int64()).to_numpy(zero_copy_only=False)


def _codes(column: pa.Array, allowed: tuple[str, ...], table: str, name: str, keep: np.ndarray) -> np.ndarray:
    """int8 position of each value in ``allowed``; a kept row with another value or a null is an error."""
    codes = pc.fill_null(pc.index_in(column, value_set=pa.array(allowed)), -1).to_numpy(zero_copy_only=False)
    bad = keep & (codes < 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{table}.{name} row {row} holds {column[row].as_py()!r}, not one of {', '.join(allowed)}")
    return codes.astype(np.int8)


def _provinces(column: pa.Array, table: str, name: str) -> np.ndarray:
    """int8 2-digit province code, -1 for null."""
    try:
        codes = pc.cast(column, pa.int16())
    except pa.ArrowInvalid:
        raise ValueError(f"{table}.{name} holds a value that is not a 2-digit province code") from None
    values = pc.fill_null(codes, -1).to_numpy(zero_copy_only=False)
    if ((values < -1) | (values > 99)).any():
        raise ValueError(f"{table}.{name} holds a value that is not a 2-digit province code")
    return values.astype(np.int8)


def _lists(values: pa.Array, owner: np.ndarray, owners: int) -> pa.ListArray:
    """List array with entry i holding ``values`` whose ``owner`` is i (values sorted within an entry)."""
    order = np.lexsort((pc.sort_indices(values).to_numpy().argsort(), owner))
    counts = np.bincount(owner, minlength=owners)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), values.take(pa.array(order)))


class _Rows:
    """Encoded rows per (source, partition): kept in memory, or spilled to Arrow IPC files."""

    def __init__(self, partitions: int, spill_dir: Path | None) -> None:
        self.partitions = partitions
        self.spill_dir = spill_dir
        self._batches: dict[tuple[str, int], list[pa.RecordBatch]] = {}
        self._writers: dict[tuple[str, int], pa.ipc.RecordBatchFileWriter] = {}

    def append(self, source: str, ident: np.ndarray, columns: dict[str, np.ndarray]) -> None:
        bucket = ident % self.partitions
        for part in range(self.partitions):
            mask = bucket == part if self.partitions > 1 else slice(None)
            batch = pa.record_batch({"ident": ident[mask] // self.partitions,
                                     **{name: values[mask] for name, values in columns.items()}})
            if self.spill_dir is None:
                self._batches.setdefault((source, part), []).append(batch)
                continue
            writer = self._writers.get((source, part))
            if writer is None:
                writer = pa.ipc.new_file(self.spill_dir / f"{source}-{part}.arrow", batch.schema)
                self._writers[(source, part)] = writer
            writer.write_batch(batch)

    def read(self, source: str, part: int, names: tuple[str, ...]) -> dict[str, np.ndarray] | None:
        if self.spill_dir is None:
            batches = self._batches.pop((source, part), [])
        else:
            writer = self._writers.pop((source, part), None)
            if writer is None:
                return None
            writer.close()
            with pa.memory_map(str(self.spill_dir / f"{source}-{part}.arrow")) as source_file:
                batches = pa.ipc.open_file(source_file).read_all().to_batches()
        if not batches:
            return None
        table = pa.Table.from_batches(batches)
        return {name: table.column(name).to_numpy() for name in ("ident", *names)}


class PortraitBuilder:
    """Portraits of a fixed set of identities from order, waybill and device-event batches.

    ``persons``: ``person_id, identity_id, dnd, non_personalized, cross_device_sync``, one row per
    account allowed to be portrayed (the consent gate's eligible persons, mapped to identities by
    the identity graph). Rows of any other person are dropped as batches arrive, so no one else's
    data reaches a feature. ``devices``: ``device_id, identity_id, device_type``, the identity
    graph's linked devices. Features are evaluated at ``as_of``: later rows are ignored. Source rows
    name their person (``person_id``), or, already attributed by an engine, their identity
    (``identity_id`` instead): then rows of identities not among ``persons``' are dropped alike.
    """

    def __init__(self, persons: pa.Table, devices: pa.Table, *, as_of: dt.datetime,
                 cny_per_unit: Mapping[str, float] | None = None, partitions: int = 1,
                 spill_dir: str | Path | None = None) -> None:
        _require_columns(persons, PERSONS_COLUMNS, "persons")
        _require_columns(devices, DEVICES_COLUMNS, "devices")
        if as_of.tzinfo is None:
            raise ValueError("as_of must carry a time zone (UTC), e.g. 2026-11-01T00:00:00+00:00")
        partitions = check_int(partitions, "partitions")
        if partitions > 1 and spill_dir is None:
            raise ValueError("partitions > 1 spill rows to disk: pass spill_dir")
        rates = dict(DEFAULT_CNY_PER_UNIT if cny_per_unit is None else cny_per_unit)
        missing = [c for c in CURRENCIES if c not in rates]
        bad = [c for c, r in rates.items() if not (isinstance(r, int | float) and np.isfinite(r) and r > 0)]
        if missing or bad:
            raise ValueError(f"cny_per_unit needs a positive finite rate for every currency; "
                             f"missing {', '.join(missing) or 'none'}, invalid {', '.join(bad) or 'none'}")
        self._rates = np.array([rates[c] for c in CURRENCIES], dtype=np.float64)
        self.as_of = as_of.astimezone(dt.UTC)
        self._as_of_us = int((self.as_of - dt.datetime(1970, 1, 1, tzinfo=dt.UTC))
                             // dt.timedelta(microseconds=1))
        persons = persons.select(list(PERSONS_COLUMNS)).combine_chunks()
        for name in PERSONS_COLUMNS:
            if persons.column(name).null_count:
                raise ValueError(f"persons.{name} holds nulls; every eligible person needs every column")
        identity_ids = pc.unique(persons.column("identity_id"))
        self.identities = identity_ids.take(pc.sort_indices(identity_ids)).combine_chunks() \
            if isinstance(identity_ids, pa.ChunkedArray) else identity_ids.take(pc.sort_indices(identity_ids))
        self._identity_index = StringIndex(self.identities)
        self._persons = StringIndex(persons.column("person_id").combine_chunks())
        self._person_ident = self._identity_index.positions(persons.column("identity_id")).astype(np.int32)
        self._identity_columns = self._identity_level(persons, devices.select(list(DEVICES_COLUMNS)))
        self._rows = _Rows(partitions, Path(spill_dir) if spill_dir is not None else None)

    @property
    def partitions(self) -> int:
        return self._rows.partitions

    def _identity_level(self, persons: pa.Table, devices: pa.Table) -> dict[str, pa.Array]:
        """Columns that depend on the identity alone: linked accounts, consent flags, devices."""
        n = len(self.identities)
        owner = self._person_ident

        def any_of(flag: str) -> np.ndarray:
            return np.bincount(owner, weights=persons.column(flag).to_numpy(zero_copy_only=False).astype(np.float64),
                               minlength=n) > 0

        syncing = np.bincount(owner, weights=persons.column("cross_device_sync").to_numpy(
            zero_copy_only=False).astype(np.float64), minlength=n)
        columns = {
            "linked_person_ids": _lists(persons.column("person_id").combine_chunks(), owner, n),
            "dnd": pa.array(any_of("dnd")),
            "non_personalized": pa.array(any_of("non_personalized")),
            "cross_device_sync": pa.array(syncing == np.bincount(owner, minlength=n)),
        }
        device_owner = self._identity_index.positions(devices.column("identity_id"))
        if (device_owner < 0).any():
            raise ValueError("devices.identity_id holds an identity that no person in persons has")
        device_owner = device_owner.astype(np.int32)
        types = _codes(devices.column("device_type"), DEVICE_TYPES, "devices", "device_type",
                       np.ones(devices.num_rows, dtype=bool))
        columns["device_count"] = pa.array(np.bincount(device_owner, minlength=n).astype(np.int32))
        by_type = np.bincount(device_owner.astype(np.int64) * len(DEVICE_TYPES) + types,
                              minlength=n * len(DEVICE_TYPES)).reshape(n, len(DEVICE_TYPES)).astype(np.int32)
        for k, device_type in enumerate(DEVICE_TYPES):
            columns[f"device_count_{device_type}"] = pa.array(by_type[:, k])
        columns["device_ids"] = _lists(devices.column("device_id").combine_chunks(), device_owner, n)
        return columns

    def _ident(self, batch: pa.RecordBatch, source: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(keep, ident of kept rows, UTC micros of kept rows)``: rows of eligible persons up to as_of.

        A row names its person (``person_id``) or, when the batch has ``identity_id`` and no ``person_id``,
        the identity an engine already attributed it to (rows of other identities are dropped alike).
        """
        keyed_by_identity = "identity_id" in batch.schema.names and "person_id" not in batch.schema.names
        key, time_column, *other = SOURCE_COLUMNS[source]
        _require_columns(batch, ("identity_id" if keyed_by_identity else key, time_column, *other), source)
        if keyed_by_identity:
            positions = self._identity_index.positions(batch.column("identity_id"))
        else:
            positions = self._persons.positions(batch.column(key))
        micros = _micros(batch.column(time_column))
        keep = positions >= 0
        if batch.column(time_column).null_count:
            keep &= ~batch.column(time_column).is_null().to_numpy(zero_copy_only=False)
        keep &= micros <= self._as_of_us
        kept = positions[keep]
        return keep, kept.astype(np.int32) if keyed_by_identity else self._person_ident[kept], micros[keep]

    def add_orders(self, batch: pa.RecordBatch | pa.Table) -> None:
        """Take one batch of ``pseudonymized/orders`` rows."""
        keep, ident, micros = self._ident(batch, "orders")
        currency = _codes(batch.column("currency"), CURRENCIES, "orders", "currency", keep)[keep]
        amount = batch.column("amount").to_numpy(zero_copy_only=False)[keep]
        if not np.isfinite(amount).all():
            raise ValueError("orders.amount holds a null, NaN or infinite amount")
        self._rows.append("orders", ident, {
            "local_ts": micros + _LOCAL_OFFSET_US,
            "amount": amount * self._rates[currency],
            "category": _codes(batch.column("category"), CATEGORIES, "orders", "category", keep)[keep],
            "institution": _codes(batch.column("payment_institution"), PAYMENT_INSTITUTIONS, "orders",
                                  "payment_institution", keep)[keep],
        })

    def add_waybills(self, batch: pa.RecordBatch | pa.Table) -> None:
        """Take one batch of ``pseudonymized/waybills`` rows (waybills without a person are skipped)."""
        keep, ident, _ = self._ident(batch, "waybills")
        weight = batch.column("weight_kg").to_numpy(zero_copy_only=False)[keep]
        if not np.isfinite(weight).all():
            raise ValueError("waybills.weight_kg holds a null, NaN or infinite weight")
        cross = batch.column("cross_border")
        self._rows.append("waybills", ident, {
            "service": _codes(batch.column("service_type"), SERVICE_TYPES, "waybills", "service_type", keep)[keep],
            "origin": _provinces(batch.column("origin_province"), "waybills", "origin_province")[keep],
            "destination": _provinces(batch.column("destination_province"), "waybills",
                                      "destination_province")[keep],
            "weight": weight,
            "cross_border": pc.fill_null(cross, False).to_numpy(zero_copy_only=False)[keep].astype(np.int8),
        })

    def add_device_events(self, batch: pa.RecordBatch | pa.Table) -> None:
        """Take one batch of ``pseudonymized/device_events`` rows (events without a signed-in person are skipped)."""
        _, ident, micros = self._ident(batch, "device_events")
        hour = ((micros + _LOCAL_OFFSET_US) // MICROS_PER_HOUR) % 24
        self._rows.append("device_events", ident, {"hour": hour.astype(np.int8)})

    def tables(self) -> Iterator[pa.Table]:
        """The portraits, one table per partition (``portrait_schema()``), sorted by person_id within it."""
        schema = portrait_schema()
        for part in range(self.partitions):
            members = np.arange(part, len(self.identities), self.partitions)
            yield pa.Table.from_pydict(self._features(part, members), schema=schema)

    def _features(self, part: int, members: np.ndarray) -> dict[str, pa.Array]:
        n = len(members)
        take = pa.array(members)
        columns: dict[str, pa.Array] = {"person_id": self.identities.take(take),
                                        "linked_person_ids": self._identity_columns["linked_person_ids"].take(take),
                                        "as_of": pa.array(np.full(n, self._as_of_us), pa.timestamp("us", tz="UTC"))}
        for name in ("dnd", "non_personalized", "cross_device_sync"):
            columns[name] = self._identity_columns[name].take(take)
        columns.update(self._order_columns(part, n))
        columns.update(self._waybill_columns(part, n))
        for name in ("device_count", *(f"device_count_{t}" for t in DEVICE_TYPES), "device_ids"):
            columns[name] = self._identity_columns[name].take(take)
        rows = self._rows.read("device_events", part, ("hour",))
        empty = np.zeros(0, dtype=np.int32)
        events, hours = event_features(rows["ident"] if rows else empty,
                                       rows["hour"] if rows else empty.astype(np.int8), n)
        columns["events"] = pa.array(events)
        columns["active_hour_counts"] = pa.ListArray.from_arrays(
            pa.array(np.arange(0, 24 * (n + 1), 24, dtype=np.int32)), pa.array(hours.reshape(-1)))
        return columns

    def _order_columns(self, part: int, n: int) -> dict[str, pa.Array]:
        rows = self._rows.read("orders", part, ("local_ts", "amount", "category", "institution"))
        if rows is None:
            rows = {"ident": np.zeros(0, np.int32), "local_ts": np.zeros(0, np.int64),
                    "amount": np.zeros(0), "category": np.zeros(0, np.int8), "institution": np.zeros(0, np.int8)}
        as_of_day = (self._as_of_us + _LOCAL_OFFSET_US) // MICROS_PER_DAY
        (orders, first_ts, last_ts, total, frequency, recency, age, monetary, category_counts,
         institution_counts) = order_features(rows["ident"], rows["local_ts"], rows["amount"], rows["category"],
                                              rows["institution"], n, len(CATEGORIES),
                                              len(PAYMENT_INSTITUTIONS), as_of_day)
        none = orders == 0
        timestamp = pa.timestamp("us", tz="UTC")
        columns = {
            "orders": pa.array(orders),
            "first_order_at": pa.array(first_ts - _LOCAL_OFFSET_US, timestamp, mask=none),
            "last_order_at": pa.array(last_ts - _LOCAL_OFFSET_US, timestamp, mask=none),
            "frequency": pa.array(frequency, mask=none),
            "recency_days": pa.array(recency, mask=none),
            "T_days": pa.array(age, mask=none),
            "monetary_value_cny": pa.array(monetary, mask=none),
            "total_spend_cny": pa.array(total),
            "average_order_value_cny": pa.array(total / np.maximum(orders, 1), mask=none),
        }
        denominator = np.maximum(orders, 1).astype(np.float64)
        for k, category in enumerate(CATEGORIES):
            columns[f"category_share_{category}"] = pa.array(category_counts[:, k] / denominator, mask=none)
        for k, institution in enumerate(PAYMENT_INSTITUTIONS):
            columns[f"payment_share_{institution}"] = pa.array(institution_counts[:, k] / denominator, mask=none)
        return columns

    def _waybill_columns(self, part: int, n: int) -> dict[str, pa.Array]:
        names = ("service", "origin", "destination", "weight", "cross_border")
        rows = self._rows.read("waybills", part, names)
        if rows is None:
            rows = {"ident": np.zeros(0, np.int32), "service": np.zeros(0, np.int8), "origin": np.zeros(0, np.int8),
                    "destination": np.zeros(0, np.int8), "weight": np.zeros(0), "cross_border": np.zeros(0, np.int8)}
        (waybills, service_counts, cross, weight_sum, weight_max, top_origin, top_destination,
         destinations) = waybill_features(rows["ident"], rows["service"], rows["origin"], rows["destination"],
                                          rows["weight"], rows["cross_border"], n, len(SERVICE_TYPES))
        none = waybills == 0
        denominator = np.maximum(waybills, 1).astype(np.float64)
        columns = {"waybills": pa.array(waybills)}
        for k, service in enumerate(SERVICE_TYPES):
            columns[f"service_share_{service}"] = pa.array(service_counts[:, k] / denominator, mask=none)
        columns.update({
            "cross_border_share": pa.array(cross / denominator, mask=none),
            "weight_kg_mean": pa.array(weight_sum / denominator, mask=none),
            "weight_kg_max": pa.array(weight_max, mask=none),
            "weight_kg_total": pa.array(weight_sum),
            "top_origin_province": _PROVINCE_NAMES.take(pa.array(top_origin, mask=top_origin < 0)),
            "top_destination_province": _PROVINCE_NAMES.take(pa.array(top_destination, mask=top_destination < 0)),
            "destination_provinces": pa.array(destinations),
        })
        return columns


def portraits(persons: pa.Table, devices: pa.Table, orders: pa.Table, waybills: pa.Table,
              device_events: pa.Table, *, as_of: dt.datetime,
              cny_per_unit: Mapping[str, float] | None = None) -> pa.Table:
    """The portraits of ``persons`` from whole tables (one partition), as one table.

    Only rows of ``persons`` up to ``as_of`` count; see ``PortraitBuilder``.
    """
    builder = PortraitBuilder(persons, devices, as_of=as_of, cny_per_unit=cny_per_unit)
    builder.add_orders(orders)
    builder.add_waybills(waybills)
    builder.add_device_events(device_events)
    return next(builder.tables())


def spill_folder(parent: str | Path | None = None) -> tempfile.TemporaryDirectory:
    """A temporary folder for spilled partitions (inside ``parent``, e.g. the workspace, when given)."""
    return tempfile.TemporaryDirectory(prefix=".portrait-spill-", dir=parent)
