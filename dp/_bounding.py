"""Person-level contribution bounding, and bounded device joins.

A person may contribute to at most ``max_partitions`` groups and at most
``max_rows_per_partition`` rows in each: a person's rows are visited in the order they are
stored and a row is kept iff its person has fewer than ``max_partitions`` groups so far (or
the row's group is already one of them) and fewer than ``max_rows_per_partition`` kept rows
in that group (OpenDP's ``keep="first"`` truncation).

Why this bounds a whole person's influence: which of a person's rows are kept depends only
on that person's own rows (their groups and relative order), never on anyone else's rows,
on codes assigned from the whole dataset, or on any amount. Adding or removing one person
leaves every other person's kept rows unchanged, so each bounded aggregate moves by at most
the stated sensitivity; this holds for every dataset and needs no randomness. (The order
only steers *which* of an over-contributing person's rows count: a table sorted by value
biases the kept sample, never the privacy guarantee.)

The work is done by the compiled kernels of ``dp._truncation``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from dp import _truncation
from profiling.errors import InternalError, PortraitError

__all__ = ["BoundedRows", "GroupCodes", "PersonCodes", "SumColumn", "bound_contributions", "encode_persons",
           "hash_values", "join_devices"]


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
    """Each row's person code is ``values[i] - offset``; codes outside ``[0, count)`` mean a missing id.

    Integer ids in a compact range are used as they are (``offset`` = the smallest id), so
    no 10M-row array is written to code them.
    """

    values: np.ndarray
    offset: int
    count: int

    @property
    def codes(self) -> np.ndarray:
        """Each row's code in ``[0, count)``, or -1 for a missing id (a copy, for tests and small data)."""
        codes = self.values.astype(np.int64) - self.offset
        codes[(codes < 0) | (codes >= self.count)] = -1
        return codes


@dataclass(frozen=True)
class GroupCodes:
    """Row i's group is ``table[raw[i]]`` in ``[0, count)``; a negative ``raw[i]`` or table entry means not counted.

    ``raw`` may be a categorical's own codes (int8 for 50 categories) with ``table`` mapping
    categories to the query's keys, so the groups are never materialized as a 10M-row array.
    """

    raw: np.ndarray
    table: np.ndarray
    count: int

    @classmethod
    def of(cls, codes, count: int) -> GroupCodes:
        """Groups given directly as codes in ``[0, count)`` (-1: not counted)."""
        return cls(np.asarray(codes, dtype=np.int64), np.arange(count, dtype=np.int64), count)


@dataclass(frozen=True)
class BoundedRows:
    """The rows kept under the bounds (``kept``: one bool per input row), with per-group totals.

    ``counts[g]`` is group g's kept rows; ``sums[name][g]`` the kept values of sum column
    ``name`` in whole multiples of its resolution, each clamped (missing values add 0): exact int64.
    """

    kept: np.ndarray
    groups: GroupCodes
    counts: np.ndarray
    sums: dict[str, np.ndarray]

    def kept_groups(self) -> np.ndarray:
        """The group code of each kept row, in the rows' original order."""
        return self.groups.table[self.groups.raw[self.kept].astype(np.int64)]


@dataclass(frozen=True)
class SumColumn:
    """A column to sum over the kept rows: values (float64, NaN = missing), resolution, clamp in resolution units."""

    values: np.ndarray
    resolution: float
    lower_units: int
    upper_units: int


def encode_persons(persons) -> PersonCodes:
    """Codes for a column of person ids (pandas Series, numpy array or Arrow array).

    Integer ids in a compact range are used as codes directly (nothing is written per row);
    strings are dictionary-encoded by Arrow (10M 32-hex pseudonyms take seconds either way,
    about as long as ``pd.factorize``: a session codes its persons once); other ids are
    factorized. Codes are only row labels: the bounding never lets their values steer which
    rows are kept.
    """
    if isinstance(persons, pa.ChunkedArray):
        persons = persons.combine_chunks()
    if isinstance(persons, pa.Array):
        if pa.types.is_integer(persons.type) and persons.null_count == 0:
            persons = persons.to_numpy()
        else:
            return _dictionary_codes(persons)
    series = persons if isinstance(persons, pd.Series) else pd.Series(persons)
    if isinstance(series.dtype, np.dtype) and series.dtype.kind in "iu" and len(series):
        values = series.to_numpy()
        if values.dtype.kind == "u" and values.dtype.itemsize == 8:
            values = values.astype(np.int64) if int(values.max()) < 1 << 63 else None
    else:
        values = None
    if values is not None:
        low, high = int(values.min()), int(values.max())
        if high - low < max(4 * len(values), 1 << 16):
            return PersonCodes(values, low, high - low + 1)
    if isinstance(series.dtype, pd.CategoricalDtype):
        return PersonCodes(series.cat.codes.to_numpy(), 0, len(series.cat.categories))
    if isinstance(series.dtype, pd.StringDtype) or series.dtype.kind in "OU":
        try:
            array = pa.array(series, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            array = None          # mixed types: pandas can still factorize them
        if array is not None and (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)
                                  or pa.types.is_string_view(array.type)):
            return _dictionary_codes(array)
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    return PersonCodes(codes, 0, len(uniques))


def _dictionary_codes(array: pa.Array | pa.ChunkedArray) -> PersonCodes:
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    encoded = array.dictionary_encode()
    codes = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False)
    return PersonCodes(codes, 0, len(encoded.dictionary))


def _bucket_shift(n_persons: int) -> int:
    """log2 of persons per bucket: 1024 (whose state fits in L2), more when there would be over 4096 buckets."""
    return max(10, int(max(n_persons, 1) - 1).bit_length() - 12)


def _packed_widths(max_partitions: int, max_rows_per_partition: int, n_groups: int) -> tuple[int, int, int] | None:
    """Bit widths (used, group, row count) of one person's state in a uint64, or None if it does not fit."""
    used_bits = max(1, int(max_partitions).bit_length())
    group_bits = max(1, int(n_groups - 1).bit_length())
    count_bits = max(1, int(max_rows_per_partition).bit_length())
    if used_bits + max_partitions * (group_bits + count_bits) > 64:
        return None
    return used_bits, group_bits, count_bits


def bound_contributions(persons: PersonCodes, groups: GroupCodes, *, max_partitions: int,
                        max_rows_per_partition: int, sums: dict[str, SumColumn] | None = None,
                        packed: bool | None = None) -> BoundedRows:
    """The rows kept under the person-level bounds (see the module docstring for the rule),
    with each group's kept-row count and the clamped sums of ``sums``' columns.

    Rows of a missing person or an uncounted group are dropped. ``packed`` picks the kernel
    (tests only; by default the one-pass packed kernel whenever a person's state fits in 64 bits).
    """
    n = len(persons.values)
    if len(groups.raw) != n:
        raise InternalError(f"person and group codes differ in length ({n} and {len(groups.raw)}); this is a bug")
    if groups.count >= 1 << 31:
        raise InternalError("more than 2**31 groups; this is a bug (group keys have 31 bits)")
    sums = dict(sums or {})
    if any(len(column.values) != n for column in sums.values()):
        raise InternalError("a sum column differs in length from the rows; this is a bug")
    widths = _packed_widths(max_partitions, max_rows_per_partition, groups.count)
    table = np.asarray(groups.table, dtype=np.int64)
    offset, count = np.int64(persons.offset), np.int64(persons.count)
    K, R = np.int64(max_partitions), np.int64(max_rows_per_partition)
    # rows: (person, group, sum columns...) in stored order
    if (widths is not None) if packed is None else packed:
        if widths is None:
            raise InternalError("the packed kernel was asked for bounds whose state does not fit in 64 bits")
        if len(sums) == 1:
            matrix = np.ascontiguousarray(next(iter(sums.values())).values, dtype=np.float64).reshape(1, n)
        elif sums:
            matrix = np.stack([np.asarray(column.values, dtype=np.float64) for column in sums.values()])
        else:
            matrix = np.empty((0, n), dtype=np.float64)
        specs = list(sums.values())
        kept, counts, totals, _ = _truncation.truncate_packed(
            persons.values, offset, count, groups.raw, table, K, R, *(np.int64(w) for w in widths), matrix,
            np.array([c.resolution for c in specs], dtype=np.float64),
            np.array([c.lower_units for c in specs], dtype=np.float64),
            np.array([c.upper_units for c in specs], dtype=np.float64), np.int64(groups.count))
        totals = dict(zip(sums, totals))
    else:
        shift = np.int64(_bucket_shift(persons.count))
        starts, keys, rows = _truncation.bucket_rows(persons.values, offset, count, groups.raw, table, shift)
        # rows: (person within bucket << 31 | group, original row) in buckets of 2**shift persons
        kept = _truncation.truncate_buckets(starts, keys, rows, np.int64(n), shift, K, R)
        counts = _truncation.masked_counts(kept, groups.raw, table, np.int64(groups.count))
        totals = {name: _truncation.masked_clamped_sums(kept, groups.raw, table,
                                                        np.asarray(c.values, dtype=np.float64), float(c.resolution),
                                                        float(c.lower_units), float(c.upper_units),
                                                        np.int64(groups.count)) for name, c in sums.items()}
    # rows: kept or not, at most max_partitions groups x max_rows_per_partition rows per person kept
    return BoundedRows(kept, GroupCodes(groups.raw, table, groups.count), counts, totals)


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
