"""Account-risk features of person-weeks, from analytics-zone rows only (pseudonyms and coarse places).

The unit scored is a **person-week**: one person's activity in a window of seven days, the windows
counted back from the as-of moment (window 0 ends at it). Only person-weeks with at least one
order are scored: the patterns the policy's transaction safety is about end in an order.

Each feature compares the week with the person's own history before it (everything the zone holds
earlier, whatever its age), so a first sign-in somewhere is "new" only to that person:

===========================  ====================================================================
feature                      meaning (unit)
===========================  ====================================================================
``orders``                   orders placed in the week (count)
``max_amount``               the week's largest order (currency major units)
``amount_ratio``             ``max_amount`` over the median of the person's earlier orders (100
                             when there are none)
``most_orders_in_a_day``     largest number of orders within one UTC day of the week
``destinations``             distinct destination provinces of the week's waybills
``new_destinations``         destination provinces the person never shipped to before
``new_devices``              devices the person signed in on for the first time
``new_provinces``            provinces the person's signed-in events were never seen from before
``new_networks``             IP /24 (/48) prefixes the person never signed in from before
``hours_new_device_to_order``  shortest time from a first sign-in on a new device to a later
                             order of the week (hours, 168 when none)
``history_days``             days from the person's first row in the zone to the week's end
===========================  ====================================================================
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from numba import njit

from profiling._string_hash import StringIndex

__all__ = ["FEATURE_COLUMNS", "WEEK", "risk_feature_table", "risk_features"]

WEEK = dt.timedelta(days=7)
FEATURE_COLUMNS: tuple[str, ...] = (
    "orders", "max_amount", "amount_ratio", "most_orders_in_a_day", "destinations", "new_destinations",
    "new_devices", "new_provinces", "new_networks", "hours_new_device_to_order", "history_days",
)
_NO_HISTORY_RATIO = 100.0
_NEVER_HOURS = 168.0
_MICROS_PER_WEEK = 7 * 86_400 * 1_000_000
_MICROS_PER_HOUR = 3_600 * 1_000_000


def _arrow(table: pa.Table | pd.DataFrame) -> pa.Table:
    return table if isinstance(table, pa.Table) else pa.Table.from_pandas(table, preserve_index=False)


def _codes(values: pa.ChunkedArray) -> np.ndarray:
    """An integer per value (-1 for null; equal values, equal codes): grouping on these is fast."""
    encoded = pc.dictionary_encode(values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values)
    return encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


def _frame(table: pa.Table, time: str, keys: list[str], persons: StringIndex, as_of_us: int) -> pd.DataFrame:
    """``person`` (index into ``persons``), ``t`` (µs since the epoch) and the ``keys`` as codes (-1: null)
    of the rows with a person before ``as_of_us``; ``amount`` too when the table has it."""
    micros = pc.cast(pc.cast(table[time], pa.timestamp("us", tz="UTC")), pa.int64())
    chunks = table["person_id"].cast(pa.string()).chunks  # looked up chunk by chunk: no copy of the column
    frame = pd.DataFrame({"person": np.concatenate([persons.positions(chunk) for chunk in chunks] or
                                                   [np.zeros(0, np.int64)]),
                          "t": micros.to_numpy(zero_copy_only=False).astype(np.int64),
                          **{key: _codes(table[key]) for key in keys}})
    if "amount" in table.column_names:
        frame["amount"] = table["amount"].to_numpy(zero_copy_only=False).astype(np.float64)
    return frame[(frame["person"] >= 0) & (frame["t"] < as_of_us)].reset_index(drop=True)


def _week_of(micros: pd.Series | np.ndarray, as_of_us: int) -> np.ndarray:
    return (as_of_us - 1 - np.asarray(micros, dtype=np.int64)) // _MICROS_PER_WEEK


def _new_per_week(rows: pd.DataFrame, key: str, as_of_us: int) -> pd.Series:
    """``(person, week) -> count`` of values of ``key`` the person shows for the first time that week."""
    first = rows[rows[key] >= 0].groupby(["person", key])["t"].min().reset_index()
    first["week"] = _week_of(first["t"], as_of_us)
    return first.groupby(["person", "week"]).size()


def risk_features(orders: pa.Table | pd.DataFrame, waybills: pa.Table | pd.DataFrame,
                  device_events: pa.Table | pd.DataFrame, *, as_of: dt.datetime, weeks: int) -> pd.DataFrame:
    """The features of every person-week with an order among the ``weeks`` weeks before ``as_of``.

    ``orders``: ``person_id, placed_at, amount``; ``waybills``: ``person_id, created_at,
    destination_province``; ``device_events``: ``person_id, device_id, event_at, coarse_province,
    ip_prefix`` (analytics-zone columns; rows without a person and rows at or after ``as_of`` are
    ignored). Returns ``person_id, week, week_start, week_end`` and ``FEATURE_COLUMNS``, sorted by
    week then person; ``week`` 0 ends at ``as_of``.

    >>> at = dt.datetime(2026, 1, 8, tzinfo=dt.timezone.utc)
    >>> orders = pa.table({"person_id": ["p", "p"], "amount": [10.0, 900.0],
    ...     "placed_at": pa.array([dt.datetime(2025, 12, 1), dt.datetime(2026, 1, 5)], pa.timestamp("us", "UTC"))})
    >>> empty = {"person_id": pa.array([], pa.string())}
    >>> waybills = pa.table({**empty, "created_at": pa.array([], pa.timestamp("us", "UTC")),
    ...     "destination_province": pa.array([], pa.string())})
    >>> events = pa.table({**empty, "device_id": pa.array([], pa.string()),
    ...     "event_at": pa.array([], pa.timestamp("us", "UTC")), "coarse_province": pa.array([], pa.string()),
    ...     "ip_prefix": pa.array([], pa.string())})
    >>> risk_features(orders, waybills, events, as_of=at, weeks=1)[["week", "orders", "amount_ratio"]].to_dict("records")
    [{'week': 0, 'orders': 1, 'amount_ratio': 90.0}]
    """
    features, persons, as_of_us = _coded_features(orders, waybills, device_events, as_of=as_of, weeks=weeks)
    week_end_us = as_of_us - features["week"].to_numpy() * _MICROS_PER_WEEK
    features["week_end"] = pd.to_datetime(week_end_us, unit="us", utc=True)
    features["week_start"] = features["week_end"] - pd.Timedelta(WEEK)
    features["person_id"] = persons.take(pa.array(features["person"].to_numpy())).to_pandas()
    return features[["person_id", "week", "week_start", "week_end", *FEATURE_COLUMNS]]


def risk_feature_table(orders: pa.Table, waybills: pa.Table, device_events: pa.Table, *, as_of: dt.datetime,
                       weeks: int) -> pa.Table:
    """``risk_features`` as an Arrow table with the features as float64 (``person_id``, ``week`` (int64),
    ``week_start``, ``week_end`` (µs, UTC), ``FEATURE_COLUMNS``), built without Python strings or
    timestamps: the partition kernel of the risk stage."""
    features, persons, as_of_us = _coded_features(orders, waybills, device_events, as_of=as_of, weeks=weeks)
    week = features["week"].to_numpy().astype(np.int64)
    week_end = pa.array(as_of_us - week * _MICROS_PER_WEEK, pa.int64())
    moment = pa.timestamp("us", tz="UTC")
    return pa.table({"person_id": persons.take(pa.array(features["person"].to_numpy())), "week": pa.array(week),
                     "week_start": pc.subtract(week_end, _MICROS_PER_WEEK).cast(moment),
                     "week_end": week_end.cast(moment),
                     **{name: pa.array(features[name].to_numpy(np.float64)) for name in FEATURE_COLUMNS}})


def _coded_features(orders, waybills, device_events, *, as_of: dt.datetime,
                    weeks: int) -> tuple[pd.DataFrame, pa.Array, int]:
    """``(features, persons, as_of_us)``: ``person`` (a position in ``persons``), ``week`` and ``FEATURE_COLUMNS``
    of each person-week, sorted by week then person_id (see ``risk_features``)."""
    if weeks < 1:
        raise ValueError(f"weeks must be at least 1, got {weeks}")
    if as_of.tzinfo is None:
        raise ValueError("as_of must be timezone-aware (UTC)")
    as_of_us = (as_of - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)
    tables = [_arrow(orders), _arrow(waybills), _arrow(device_events)]
    chunks = [chunk for t in tables for chunk in t["person_id"].cast(pa.string()).chunks]
    persons = pc.unique(pa.chunked_array(chunks, type=pa.string()).drop_null())  # person codes index this
    index = StringIndex(persons)
    orders = _frame(tables[0], "placed_at", [], index, as_of_us)
    waybills = _frame(tables[1], "created_at", ["destination_province"], index, as_of_us)
    events = _frame(tables[2], "event_at", ["device_id", "coarse_province", "ip_prefix"], index, as_of_us)
    del index, tables, chunks  # the frames hold what follows needs
    for frame in (orders, waybills, events):
        frame["week"] = _week_of(frame["t"], as_of_us)
    # rows: (person, week) of the scored person-weeks
    scored = orders[orders["week"] < weeks]
    grouped = scored.groupby(["person", "week"])
    features = pd.DataFrame({"orders": grouped.size(), "max_amount": grouped["amount"].max()})
    day = scored.assign(day=scored["t"] // (24 * _MICROS_PER_HOUR))
    recent_waybills = waybills[(waybills["week"] < weeks) & (waybills["destination_province"] >= 0)]
    computed = {
        "most_orders_in_a_day": day.groupby(["person", "week", "day"]).size().groupby(
            level=["person", "week"]).max(),
        "amount_ratio": _amount_ratio(orders, features),
        "destinations": recent_waybills.groupby(["person", "week"])["destination_province"].nunique(),
        **{name: _new_per_week(rows, key, as_of_us) for name, rows, key in (
            ("new_destinations", waybills, "destination_province"), ("new_devices", events, "device_id"),
            ("new_provinces", events, "coarse_province"), ("new_networks", events, "ip_prefix"))},
        "hours_new_device_to_order": _hours_new_device_to_order(events, scored),
    }
    for name, values in computed.items():   # only the scored person-weeks, even when none is scored
        features[name] = values.reindex(features.index) if len(values) else np.nan
    first_seen = pd.concat([orders.groupby("person")["t"].min(), waybills.groupby("person")["t"].min(),
                            events.groupby("person")["t"].min()], axis=1).min(axis=1)
    features = features.reset_index()
    week_end_us = as_of_us - features["week"].to_numpy() * _MICROS_PER_WEEK
    features["history_days"] = (week_end_us - first_seen.reindex(features["person"]).to_numpy()) / (
        24 * _MICROS_PER_HOUR)
    defaults = {"destinations": 0, "new_destinations": 0, "new_devices": 0, "new_provinces": 0, "new_networks": 0,
                "hours_new_device_to_order": _NEVER_HOURS}
    features = features.fillna(defaults)
    for name in ("orders", "most_orders_in_a_day", "destinations", "new_destinations", "new_devices",
                 "new_provinces", "new_networks"):
        features[name] = features[name].astype(np.int64)
    # sorted by week, then person_id: each person code's rank among the sorted pseudonyms stands for it
    rank = np.empty(len(persons), dtype=np.int64)
    rank[pc.sort_indices(persons).to_numpy()] = np.arange(len(persons))
    order = np.lexsort((rank[features["person"].to_numpy()], features["week"].to_numpy()))
    return features.iloc[order].reset_index(drop=True), persons, as_of_us


@njit(nogil=True, cache=True)
def _earlier_medians(order_week, order_amount, block_start, block_end, scored_week):
    """For each scored person-week: the median amount (NaN skipped, as pandas does) of the person's
    orders in weeks before it, NaN when there are none.

    A person's orders are ``order_*[block_start[i]:block_end[i]]`` in descending week order (oldest
    first), so the earlier weeks' orders are a prefix of the block; a person's scored weeks are
    consecutive and in descending week order, so each prefix extends the last one: its amounts are
    kept sorted by insertion.
    """
    n = len(scored_week)
    medians = np.full(n, np.nan)
    longest = 1
    for i in range(n):
        longest = max(longest, block_end[i] - block_start[i])
    ordered = np.empty(longest, dtype=np.float64)
    i = 0
    while i < n:
        count = 0
        position = block_start[i]
        while True:
            while position < block_end[i] and order_week[position] > scored_week[i]:
                value = order_amount[position]
                position += 1
                if np.isnan(value):
                    continue
                k = count
                while k > 0 and ordered[k - 1] > value:
                    ordered[k] = ordered[k - 1]
                    k -= 1
                ordered[k] = value
                count += 1
            if count:
                half = count // 2
                medians[i] = ordered[half] if count % 2 else (ordered[half] + ordered[half - 1]) / 2
            i += 1
            if i == n or block_start[i] != block_start[i - 1]:
                break
    return medians


def _amount_ratio(orders: pd.DataFrame, features: pd.DataFrame) -> pd.Series:
    """The week's largest order over the median of the person's orders in earlier weeks."""
    if features.empty:
        return pd.Series(dtype=float)
    # rows: the orders, then the scored person-weeks, each by person, then week descending (oldest first)
    person, week = orders["person"].to_numpy(), orders["week"].to_numpy()
    order = np.lexsort((-week, person))
    person, week, amount = person[order], week[order], orders["amount"].to_numpy(np.float64)[order]
    scored_person = features.index.get_level_values("person").to_numpy()
    scored_week = features.index.get_level_values("week").to_numpy().astype(np.int64)
    scored = np.lexsort((-scored_week, scored_person))
    median = np.empty(len(scored))
    median[scored] = _earlier_medians(week, amount, np.searchsorted(person, scored_person[scored], side="left"),
                                      np.searchsorted(person, scored_person[scored], side="right"),
                                      scored_week[scored])
    ratio = np.where(np.isnan(median), _NO_HISTORY_RATIO,
                     features["max_amount"].to_numpy() / np.maximum(np.nan_to_num(median), 1.0))
    return pd.Series(ratio, index=features.index)


def _hours_new_device_to_order(events: pd.DataFrame, scored: pd.DataFrame) -> pd.Series:
    """Per scored person-week: hours from the latest first sign-in on a new device before an order to it."""
    firsts = events.groupby(["person", "device_id"], observed=True)["t"].min().reset_index()
    firsts = firsts.rename(columns={"t": "device_t"}).sort_values("device_t")
    placed = scored[["person", "week", "t"]].sort_values("t")
    if placed.empty or firsts.empty:
        return pd.Series(dtype=float)
    joined = pd.merge_asof(placed, firsts[["person", "device_t"]], left_on="t", right_on="device_t",
                           by="person", direction="backward")
    joined["hours"] = (joined["t"] - joined["device_t"]) / _MICROS_PER_HOUR
    return joined.dropna(subset=["hours"]).groupby(["person", "week"])["hours"].min().clip(upper=_NEVER_HOURS)
