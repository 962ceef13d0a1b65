"""Compiled kernels of person-level contribution bounding and of the bounded aggregates.

Every kernel visits the rows in their stored order and keeps a row iff its person has fewer
than ``max_partitions`` groups so far (or the row's group is already one of them) and fewer
than ``max_rows_per_partition`` kept rows in that group. Inputs are coded as
``dp._bounding`` describes: person ``person[i] - offset`` (outside ``[0, n_persons)``: no
person), group ``table[raw[i]]`` (negative, or a negative ``raw[i]``: not counted).

Two kernels, one rule:

- ``truncate_packed``: one streaming pass with each person's whole state (groups taken and
  rows per group) packed in one uint64, when ``max_partitions`` slots of group and row-count
  bits fit (50 groups, 5 x 5: 48 bits), adding each kept row to its group's count and clamped
  sums in the same pass. The state of 1M persons is 8 MB and stays in the L3 cache.
- ``bucket_rows`` + ``truncate_buckets``: rows scattered into buckets of ``2**shift``
  consecutive persons (original order kept inside a bucket), then each bucket truncated
  with its persons' state in L2. Any number of groups and any bounds.

``masked_counts`` and ``masked_clamped_sums`` then aggregate the bucket kernel's kept rows,
each in one sequential pass.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["bucket_rows", "masked_clamped_sums", "masked_counts", "truncate_buckets", "truncate_packed"]

_GROUP_BITS = 31          # bucket keys: person within bucket << 31 | group


@njit(inline="always")
def _group_of(raw, table, i):
    code = raw[i]
    if code < 0 or code >= table.shape[0]:
        return -1
    return table[code]


@njit(nogil=True, cache=True)
def truncate_packed(person, offset, n_persons, raw, table, max_partitions, max_rows_per_partition,
                    used_bits, group_bits, count_bits, values, resolution, lower_units, upper_units, n_groups):
    """One pass: ``(keep, counts, sums)``. A person's state is ``used | slot_0 << used_bits | ...``
    with slot = ``group | rows << group_bits``. ``values`` is (columns, rows); ``sums[c, g]`` is
    the kept rows' ``rint(values[c] / resolution[c])`` clamped to the column's units (NaN adds 0).
    A fourth value is returned only so the compiler keeps the look-ahead loads; ignore it."""
    n = person.shape[0]
    keep = np.zeros(n, np.bool_)
    counts = np.zeros(n_groups, np.int64)
    columns = values.shape[0]
    sums = np.zeros((columns, n_groups), np.int64)
    state = np.zeros(n_persons, np.uint64)
    slot_bits = group_bits + count_bits
    group_mask = np.uint64((1 << group_bits) - 1)
    count_mask = np.uint64((1 << count_bits) - 1)
    used_mask = np.uint64((1 << used_bits) - 1)
    limit = np.uint64(max_rows_per_partition)
    chunk = 32
    ahead = np.empty(chunk, np.uint64)
    for first in range(0, n, chunk):
        last = min(first + chunk, n)
        # touch the chunk's person states first: independent loads overlap their cache misses
        # (the state of 1M persons is 8 MB; one dependent miss per row would cost 3x more)
        for i in range(first, last):
            p = person[i] - offset
            ahead[i - first] = state[p] if p >= 0 and p < n_persons else np.uint64(0)
        for i in range(first, last):
            p = person[i] - offset
            if p < 0 or p >= n_persons:
                continue
            g = _group_of(raw, table, i)
            if g < 0:
                continue
            st = state[p]
            used = np.int64(st & used_mask)
            s = 0
            rest = st >> np.uint64(used_bits)
            while s < used and (rest & group_mask) != np.uint64(g):
                rest >>= np.uint64(slot_bits)
                s += 1
            if s < used:
                shift = np.uint64(used_bits + s * slot_bits + group_bits)
                if ((st >> shift) & count_mask) >= limit:
                    continue
                st += np.uint64(1) << shift
            elif used < max_partitions:
                st |= (np.uint64(g) | (np.uint64(1) << np.uint64(group_bits))) << np.uint64(used_bits + used * slot_bits)
                st += np.uint64(1)
            else:
                continue
            state[p] = st
            keep[i] = True
            counts[g] += 1
            for c in range(columns):
                v = values[c, i]
                if not np.isnan(v):
                    sums[c, g] += np.int64(min(max(np.rint(v / resolution[c]), lower_units[c]), upper_units[c]))
    return keep, counts, sums, ahead[0]


@njit(nogil=True, cache=True)
def bucket_rows(person, offset, n_persons, raw, table, shift):
    """Counted rows grouped into person buckets: ``(starts, keys, rows)``.

    Bucket b is ``keys[starts[b]:starts[b + 1]]`` (person within bucket << 31 | group) with
    the rows' original indices in ``rows``, in their original relative order.
    """
    n = person.shape[0]
    n_buckets = ((n_persons - 1) >> shift) + 1 if n_persons > 0 else 0
    starts = np.zeros(n_buckets + 1, np.int64)
    for i in range(n):
        p = person[i] - offset
        if p >= 0 and p < n_persons and _group_of(raw, table, i) >= 0:
            starts[(p >> shift) + 1] += 1
    for b in range(n_buckets):
        starts[b + 1] += starts[b]
    fill = starts[:-1].copy()
    keys = np.empty(starts[n_buckets], np.int64)
    rows = np.empty(starts[n_buckets], np.int64)
    mask = (np.int64(1) << shift) - 1
    for i in range(n):
        p = person[i] - offset
        if p < 0 or p >= n_persons:
            continue
        g = _group_of(raw, table, i)
        if g < 0:
            continue
        b = p >> shift
        at = fill[b]
        keys[at] = ((p & mask) << _GROUP_BITS) | g
        rows[at] = i
        fill[b] = at + 1
    return starts, keys, rows


@njit(nogil=True, cache=True)
def truncate_buckets(starts, keys, rows, n_rows, shift, max_partitions, max_rows_per_partition):
    """Keep mask over the ``n_rows`` original rows, truncating one bucket at a time."""
    keep = np.zeros(n_rows, np.bool_)
    width = np.int64(1) << shift
    K = max_partitions
    used = np.zeros(width, np.int64)
    slot_group = np.empty(width * K, np.int64)
    slot_rows = np.zeros(width * K, np.int64)
    group_mask = (np.int64(1) << _GROUP_BITS) - 1
    for b in range(starts.shape[0] - 1):
        used[:] = 0
        for at in range(starts[b], starts[b + 1]):
            key = keys[at]
            p = key >> _GROUP_BITS
            g = key & group_mask
            base = p * K
            u = used[p]
            s = 0
            while s < u and slot_group[base + s] != g:
                s += 1
            if s < u:
                if slot_rows[base + s] >= max_rows_per_partition:
                    continue
                slot_rows[base + s] += 1
            elif u < K:
                slot_group[base + u] = g
                slot_rows[base + u] = 1
                used[p] = u + 1
            else:
                continue
            keep[rows[at]] = True
    return keep


@njit(nogil=True, cache=True)
def masked_counts(keep, raw, table, n_groups):
    """Kept rows per group (int64)."""
    counts = np.zeros(n_groups, np.int64)
    for i in range(keep.shape[0]):
        if keep[i]:
            counts[table[raw[i]]] += 1
    return counts


@njit(nogil=True, cache=True)
def masked_clamped_sums(keep, raw, table, values, resolution, lower_units, upper_units, n_groups):
    """Per group, the kept rows' ``rint(value / resolution)`` clamped to [lower_units, upper_units]; NaN adds 0."""
    sums = np.zeros(n_groups, np.int64)
    for i in range(keep.shape[0]):
        if keep[i]:
            v = values[i]
            if not np.isnan(v):
                units = min(max(np.rint(v / resolution), lower_units), upper_units)
                sums[table[raw[i]]] += np.int64(units)
    return sums
