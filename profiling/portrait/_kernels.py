"""Compiled per-person feature kernels over integer-coded rows of one partition.

Every kernel takes ``ident`` (the row's identity, 0..n_ident-1) and fills arrays indexed by it.
Rows that need per-person order (purchase days) are grouped with a counting sort, O(rows).
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["MICROS_PER_DAY", "MICROS_PER_HOUR", "event_features", "order_features", "waybill_features"]

MICROS_PER_HOUR = 3_600_000_000
MICROS_PER_DAY = 24 * MICROS_PER_HOUR
PROVINCE_CODES = 100  # 2-digit GB/T 2260 province codes


@njit(nogil=True, cache=True)
def _grouped(ident, n_ident):
    """``(starts, rows, longest)``: ``rows[starts[i]:starts[i + 1]]`` are the rows of identity i, in row
    order; ``longest`` is the most rows any identity has."""
    starts = np.zeros(n_ident + 1, dtype=np.int64)
    for i in ident:
        starts[i + 1] += 1
    for i in range(n_ident):
        starts[i + 1] += starts[i]
    fill = starts[:-1].copy()
    rows = np.empty(len(ident), dtype=np.int64)
    for row in range(len(ident)):
        rows[fill[ident[row]]] = row
        fill[ident[row]] += 1
    longest = 0
    for i in range(n_ident):
        longest = max(longest, starts[i + 1] - starts[i])
    return starts, rows, longest


@njit(nogil=True, cache=True)
def _sort_pairs(keys, values, count):
    """Sort ``keys[:count]`` ascending with ``values[:count]``, ties by value (insertion sort when short)."""
    if count <= 32:
        for k in range(1, count):
            key, value, j = keys[k], values[k], k - 1
            while j >= 0 and (keys[j] > key or (keys[j] == key and values[j] > value)):
                keys[j + 1], values[j + 1] = keys[j], values[j]
                j -= 1
            keys[j + 1], values[j + 1] = key, value
        return
    by_value = np.argsort(values[:count], kind="mergesort")
    keys_by_value, values_by_value = keys[:count][by_value], values[:count][by_value]
    by_key = np.argsort(keys_by_value, kind="mergesort")
    keys[:count], values[:count] = keys_by_value[by_key], values_by_value[by_key]


@njit(nogil=True, cache=True)
def order_features(ident, local_ts, amount, category, institution, n_ident, n_categories, n_institutions,
                   as_of_day):
    """Per-identity order counts, first/last order, RFM in days and category/payment counts.

    ``local_ts`` is microseconds since the epoch shifted to local time, so ``// MICROS_PER_DAY`` is
    the local calendar day. Frequency, recency, T and monetary value follow the customer-base
    literature (Fader, Hardie & Lee): orders of one day are one purchase of the day's summed amount;
    frequency counts purchase days after the first; monetary value averages those repeat days.
    """
    orders = np.zeros(n_ident, dtype=np.int32)
    first_ts = np.zeros(n_ident, dtype=np.int64)
    last_ts = np.zeros(n_ident, dtype=np.int64)
    total = np.zeros(n_ident, dtype=np.float64)
    frequency = np.zeros(n_ident, dtype=np.int32)
    recency = np.zeros(n_ident, dtype=np.int32)
    age = np.zeros(n_ident, dtype=np.int32)
    monetary = np.zeros(n_ident, dtype=np.float64)
    category_counts = np.zeros((n_ident, n_categories), dtype=np.int32)
    institution_counts = np.zeros((n_ident, n_institutions), dtype=np.int32)
    starts, rows, longest = _grouped(ident, n_ident)
    stamps = np.empty(longest, dtype=np.int64)
    amounts = np.empty(longest, dtype=np.float64)
    for i in range(n_ident):
        count = starts[i + 1] - starts[i]
        if count == 0:
            continue
        for k in range(count):
            row = rows[starts[i] + k]
            stamps[k] = local_ts[row]
            amounts[k] = amount[row]
            category_counts[i, category[row]] += 1
            institution_counts[i, institution[row]] += 1
        _sort_pairs(stamps, amounts, count)
        # sums run in (time, amount) order, so the same rows give the same bits in any input order
        spend = 0.0
        for k in range(count):
            spend += amounts[k]
        first_day = stamps[0] // MICROS_PER_DAY
        day = first_day
        repeat_days = 0
        repeat_sum = 0.0
        for k in range(1, count):
            next_day = stamps[k] // MICROS_PER_DAY
            if next_day != day:
                repeat_days += 1
                day = next_day
            if next_day != first_day:
                repeat_sum += amounts[k]
        orders[i] = count
        first_ts[i] = stamps[0]
        last_ts[i] = stamps[count - 1]
        total[i] = spend
        frequency[i] = repeat_days
        recency[i] = day - first_day
        age[i] = as_of_day - first_day
        monetary[i] = repeat_sum / repeat_days if repeat_days else 0.0
    return (orders, first_ts, last_ts, total, frequency, recency, age, monetary, category_counts,
            institution_counts)


@njit(nogil=True, cache=True)
def waybill_features(ident, service, origin, destination, weight, cross_border, n_ident, n_services):
    """Per-identity waybill counts, service-type counts, cross-border count, weight sum/max, and the
    most frequent origin and destination province (-1 if none; ties go to the smallest code) with
    the number of distinct destination provinces. Province codes are 0..99, -1 for none."""
    waybills = np.zeros(n_ident, dtype=np.int32)
    service_counts = np.zeros((n_ident, n_services), dtype=np.int32)
    cross = np.zeros(n_ident, dtype=np.int32)
    weight_sum = np.zeros(n_ident, dtype=np.float64)
    weight_max = np.zeros(n_ident, dtype=np.float64)
    top_origin = np.full(n_ident, -1, dtype=np.int16)
    top_destination = np.full(n_ident, -1, dtype=np.int16)
    destinations = np.zeros(n_ident, dtype=np.int32)
    starts, rows, longest = _grouped(ident, n_ident)
    origin_counts = np.zeros(PROVINCE_CODES, dtype=np.int32)
    destination_counts = np.zeros(PROVINCE_CODES, dtype=np.int32)
    weights = np.empty(longest, dtype=np.float64)
    for i in range(n_ident):
        count = starts[i + 1] - starts[i]
        if count == 0:
            continue
        for k in range(count):
            row = rows[starts[i] + k]
            service_counts[i, service[row]] += 1
            cross[i] += cross_border[row]
            weights[k] = weight[row]
            if origin[row] >= 0:
                origin_counts[origin[row]] += 1
            if destination[row] >= 0:
                destination_counts[destination[row]] += 1
        weights[:count].sort()  # summed in ascending order: the same bits in any input order
        for k in range(count):
            weight_sum[i] += weights[k]
        waybills[i] = count
        weight_max[i] = weights[count - 1]
        best_origin, best_destination, distinct = -1, -1, 0
        for k in range(count):  # read the modes, then reset only the touched counters
            row = rows[starts[i] + k]
            o, d = origin[row], destination[row]
            if o >= 0 and origin_counts[o] > 0:
                if (best_origin < 0 or origin_counts[o] > origin_counts[best_origin]
                        or (origin_counts[o] == origin_counts[best_origin] and o < best_origin)):
                    best_origin = o
            if d >= 0 and destination_counts[d] > 0:
                if (best_destination < 0 or destination_counts[d] > destination_counts[best_destination]
                        or (destination_counts[d] == destination_counts[best_destination] and d < best_destination)):
                    best_destination = d
        for k in range(count):
            row = rows[starts[i] + k]
            o, d = origin[row], destination[row]
            if d >= 0 and destination_counts[d] > 0:
                distinct += 1
                destination_counts[d] = -destination_counts[d]  # counted; zeroed below
            if o >= 0:
                origin_counts[o] = 0
        for k in range(count):
            d = destination[rows[starts[i] + k]]
            if d >= 0:
                destination_counts[d] = 0
        top_origin[i] = best_origin
        top_destination[i] = best_destination
        destinations[i] = distinct
    return waybills, service_counts, cross, weight_sum, weight_max, top_origin, top_destination, destinations


@njit(nogil=True, cache=True)
def event_features(ident, hour, n_ident):
    """Per-identity event count and events by local hour of day (24 columns)."""
    events = np.zeros(n_ident, dtype=np.int32)
    hours = np.zeros((n_ident, 24), dtype=np.int32)
    for row in range(len(ident)):
        events[ident[row]] += 1
        hours[ident[row], hour[row]] += 1
    return events, hours
