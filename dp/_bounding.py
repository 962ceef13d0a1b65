"""Person-level contribution bounding in one vectorized pass, and bounded device joins.

A person may contribute to at most ``max_partitions`` groups and at most
``max_rows_per_partition`` rows in each. The choice of what is kept depends only on that
person's own rows, a keyed hash of the person's id and the group's *value* (never on
codes assigned from the whole dataset), and the rows' order: adding or removing one person
leaves every other person's kept rows unchanged, so the bounded aggregates move by at most
the stated sensitivity. Amounts are never looked at, so no value steers the choice.

How (one sort, no loop over persons): each row gets one 63-bit key
``person | priority(person, group) | group | row``, with ``priority`` the low 12 bits of
``hash(person) XOR hash(group)`` (ties go to the group that sorts first by value); after one ``np.sort`` a person's groups come in their
keyed order and a group's rows in their original order, so the kept rows are those whose
group is among the person's first ``max_partitions`` and whose rank within the group is
below ``max_rows_per_partition`` (a person's rows in a group are kept first-come). When the
bits do not fit in 63, ``np.lexsort`` does the same on separate columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from profiling.errors import InternalError, PortraitError

__all__ = ["PersonCodes", "bound_contributions", "encode_persons", "hash_values", "join_devices"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(values: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a fast keyed-enough bijection of uint64 values."""
    z = values.astype(np.uint64, copy=True)
    z ^= z >> np.uint64(30)
    z *= np.uint64(0xBF58476D1CE4E5B9)
    z ^= z >> np.uint64(27)
    z *= np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return z


def hash_values(values, seed: int) -> np.ndarray:
    """A uint64 keyed hash of each value (ints, strings or other objects), the same in every dataset."""
    array = np.asarray(values)
    salt = _mix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
    if array.dtype.kind in "iub":
        return _mix64(array.astype(np.int64).view(np.uint64) ^ salt)
    key = format(int(salt), "016x")[:16]
    return _mix64(pd.util.hash_array(np.asarray(array, dtype=object), hash_key=key) ^ salt)


@dataclass(frozen=True)
class PersonCodes:
    """Each row's person as a code in ``[0, count)`` (-1 for a missing id) and each code's keyed hash."""

    codes: np.ndarray
    count: int
    hashes: np.ndarray


def encode_persons(persons, seed: int) -> PersonCodes:
    """Codes for a column of person ids (pandas Series, numpy array or Arrow array).

    Integer ids in a compact range are used as codes directly (no hashing of every row);
    other ids are factorized. Hashes are of the id values, so they do not depend on who else
    is in the data.
    """
    if isinstance(persons, (pa.Array, pa.ChunkedArray)):
        persons = persons.to_pandas()
    series = persons if isinstance(persons, pd.Series) else pd.Series(persons)
    if series.dtype.kind in "iu" and len(series):
        values = series.to_numpy(dtype=np.int64)
        low, high = int(values.min()), int(values.max())
        if high - low < max(4 * len(values), 1 << 16):
            codes = values - low
            return PersonCodes(codes, high - low + 1, hash_values(np.arange(low, high + 1, dtype=np.int64), seed))
    if isinstance(series.dtype, pd.CategoricalDtype):
        codes = series.cat.codes.to_numpy().astype(np.int64)
        uniques = series.cat.categories
    else:
        codes, uniques = pd.factorize(series, use_na_sentinel=True)
        codes = codes.astype(np.int64, copy=False)
    uniques = np.asarray(uniques)
    return PersonCodes(codes, len(uniques), hash_values(uniques, seed) if len(uniques) else np.zeros(0, np.uint64))


def _bits(count: int) -> int:
    return max(1, int(count - 1).bit_length())


_PRIORITY_BITS = 12   # fixed: a width that varied with the data would let one person reorder another's groups


def bound_contributions(persons: PersonCodes, group_codes: np.ndarray, group_hashes: np.ndarray, *,
                        max_partitions: int, max_rows_per_partition: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows kept under the person-level bounds: ``(row_indices, group_codes)`` of the kept rows.

    ``group_codes[i]`` is row i's group in ``[0, len(group_hashes))`` or -1 (row not counted);
    ``group_hashes`` are keyed hashes of the group *values*. Rows of a missing person are
    dropped. The kept rows come grouped by person (not in their original order).
    """
    person = persons.codes
    group = np.asarray(group_codes, dtype=np.int64)
    if person.shape != group.shape:
        raise InternalError("person and group codes differ in length")
    rows = np.arange(len(person), dtype=np.int64)
    valid = (person >= 0) & (group >= 0)
    if not valid.all():
        rows, person, group = rows[valid], person[valid], group[valid]
    if len(rows) == 0:
        return rows, group
    n_groups = len(group_hashes)
    row_bits, group_bits = _bits(len(valid)), _bits(n_groups)
    priority_bits = _PRIORITY_BITS
    mask = np.uint64((1 << priority_bits) - 1)
    group_mask = (1 << group_bits) - 1
    packed = _bits(persons.count) + priority_bits + group_bits + row_bits <= 63
    # rows: (person, priority, group, row); in-place steps keep fresh 10M-row allocations few
    if packed:
        # Each field of the key comes from one table, the priority field from both: XOR assembles them.
        group_shift = np.uint64(row_bits)
        priority_shift = np.uint64(group_bits + row_bits)
        person_table = (persons.hashes & mask) << priority_shift
        person_table |= np.arange(persons.count, dtype=np.uint64) << np.uint64(priority_bits + group_bits + row_bits)
        group_table = (group_hashes & mask) << priority_shift
        group_table |= np.arange(n_groups, dtype=np.uint64) << group_shift
        key = person_table[person]
        key ^= group_table[group]
        key ^= rows.view(np.uint64)
        key = key.view(np.int64)
        key.sort()
        pair_key = key >> row_bits
    else:
        priority = ((persons.hashes[person] ^ group_hashes[group]) & mask).astype(np.int64)
        order = np.lexsort((rows, group, priority, person))
        rows, group = rows[order], group[order]
        pair_key = person[order] * n_groups + group
    # rows sorted by (person, keyed group order, group, original row)
    n = len(pair_key)
    # A row is among the first R of its (person, group) iff the row R places earlier is of another pair.
    keep = np.ones(n, dtype=bool)
    if n > max_rows_per_partition:
        np.not_equal(pair_key[max_rows_per_partition:], pair_key[:-max_rows_per_partition],
                     out=keep[max_rows_per_partition:])
    new_pair = np.empty(n, dtype=bool)
    new_pair[0] = True
    np.not_equal(pair_key[1:], pair_key[:-1], out=new_pair[1:])
    pair_starts = np.flatnonzero(new_pair)
    # pairs: (person, group) in the person's keyed order; the same test, K pairs back
    pair_person = pair_key[pair_starts]
    if packed:
        pair_person >>= group_bits + priority_bits
    else:
        pair_person //= n_groups
    pair_kept = np.ones(len(pair_starts), dtype=bool)
    if len(pair_starts) > max_partitions:
        np.not_equal(pair_person[max_partitions:], pair_person[:-max_partitions], out=pair_kept[max_partitions:])
    del pair_person, pair_key
    lengths = pair_starts
    lengths[:-1] = pair_starts[1:] - pair_starts[:-1]
    lengths[-1] = n - lengths[-1]
    keep &= np.repeat(pair_kept, lengths)
    if packed:
        kept = key[keep]
        return kept & ((1 << row_bits) - 1), (kept >> row_bits) & group_mask
    return rows[keep], group[keep]


def join_devices(rows: pd.DataFrame | pa.Table, device_to_person: pd.DataFrame | pa.Table, *,
                 max_devices_per_person: int, seed: int, device_column: str = "device_id",
                 person_column: str = "person_id") -> pd.DataFrame:
    """Attach each row's person through ``device_to_person`` and keep at most ``max_devices_per_person`` devices per person.

    Rows of devices without a person are dropped (their person is unknown, so no bound could
    hold). Among a person's devices that have rows, the kept ones are chosen by a keyed hash
    of (person, device), never by the rows' values: a person with 40 devices contributes as
    many devices as one with ``max_devices_per_person``. Per-device statistics computed on
    the result, with ``max_rows_per_partition <= max_devices_per_person`` rows per device row,
    are bounded per person.
    """
    frame = rows.to_pandas() if isinstance(rows, pa.Table) else rows
    mapping = device_to_person.to_pandas() if isinstance(device_to_person, pa.Table) else device_to_person
    for name, table, columns in (("rows", frame, [device_column]),
                                 ("device_to_person", mapping, [device_column, person_column])):
        missing = [c for c in columns if c not in table.columns]
        if missing:
            raise PortraitError(f"{name} has no column {', '.join(missing)}; it has {', '.join(map(str, table.columns))}")
    pairs = mapping[[device_column, person_column]].dropna().drop_duplicates()
    clash = pairs[device_column].duplicated(keep=False)
    if clash.any():
        example = pairs.loc[clash, device_column].iloc[0]
        raise PortraitError(f"device_to_person maps device {example!r} to more than one person; resolve the identity "
                            f"graph first so each device belongs to one person")
    present = pairs[pairs[device_column].isin(frame[device_column].dropna().unique())]
    # pairs: (device, person), one row per device with rows
    priority = hash_values(present[person_column].to_numpy(), seed) ^ hash_values(present[device_column].to_numpy(), seed)
    person_codes, _ = pd.factorize(present[person_column])
    order = np.lexsort((present[device_column].astype(str).to_numpy(), priority, person_codes))
    ordered_person = person_codes[order]
    starts = np.r_[True, ordered_person[1:] != ordered_person[:-1]]
    position = np.arange(len(order))
    rank = position - np.maximum.accumulate(np.where(starts, position, 0))
    kept = present.iloc[order[rank < max_devices_per_person]]
    device_person = pd.Series(kept[person_column].to_numpy(), index=kept[device_column].to_numpy())
    result = frame[frame[device_column].isin(device_person.index)].copy()
    if person_column in result.columns:
        result = result.drop(columns=person_column)
    result[person_column] = result[device_column].map(device_person).to_numpy()
    return result.reset_index(drop=True)
