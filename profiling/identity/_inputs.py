"""Checks and integer encoding of the identity graph's inputs: pseudonym columns to dense codes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from profiling._string_hash import _dictionary_encode
from profiling.errors import SchemaError
from profiling.identity._rules import sign_in_ticks

__all__ = ["EncodedInputs", "encode_inputs"]

LINK_COLUMNS = ("device_id", "person_id", "event_at")


@dataclass(frozen=True)
class EncodedInputs:
    """Inputs as dense integer codes.

    Person code ``c`` names ``person_names[c]``; device code ``d`` names ``device_names[d]``.
    Person codes follow string order, so the smallest code of a set is its smallest pseudonym;
    device codes follow first appearance in ``links``.
    """

    person_names: pa.Array  # strings in string order, distinct: every person in links, persons or linking_persons
    device_names: pa.Array  # strings in first-seen order, distinct: every device seen with a non-null person
    link_devices: np.ndarray  # int64 device code per distinct (device, person) sign-in link
    link_persons: np.ndarray  # int64 person code, same length as link_devices
    link_first: np.ndarray  # int64 first sign-in of the link's person on its device, ticks of time_unit, same length
    link_last: np.ndarray  # int64 last sign-in of the link's person on its device, ticks of time_unit, same length
    time_unit: str  # unit of link_first and link_last ("s", "ms", "us" or "ns"): that of links' event_at
    eligible: np.ndarray  # bool per person code: the person is in `persons`
    linking: np.ndarray  # bool per person code: the person is in `linking_persons`


def _is_text(arrow_type: pa.DataType) -> bool:
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    return pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or pa.types.is_null(arrow_type)


def _as_one_array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks else pa.array([], values.type)
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    return values.cast(pa.string()) if pa.types.is_null(values.type) else values


def _same_text_type(*arrays: pa.Array) -> list[pa.Array]:
    """The arrays as ``string``, or all as ``large_string`` when one is (no copy when already alike)."""
    wide = any(pa.types.is_large_string(a.type) for a in arrays)
    target = pa.large_string() if wide else pa.string()
    return [a if a.type == target else a.cast(target) for a in arrays]


def _present(links: pa.Table, name: str) -> pa.ChunkedArray:
    if name not in links.column_names:
        raise SchemaError(f"table links is missing column {name!r}; it has {links.column_names} (a sign-in link "
                          f"needs {list(LINK_COLUMNS)})")
    return links.column(name)


def _links_times(links: pa.Table) -> pa.Array:
    column = _present(links, "event_at")
    if not pa.types.is_timestamp(column.type) or column.type.tz is None:
        raise SchemaError(f"column 'event_at' of table links must hold sign-in times as timestamps with a time zone "
                          f"(UTC), got {column.type}")
    return column.combine_chunks() if column.num_chunks else pa.array([], column.type)


def _links_column(links: pa.Table, name: str) -> pa.Array:
    column = _present(links, name)
    if not _is_text(column.type):
        raise SchemaError(f"column {name!r} of table links must hold pseudonyms as strings, got {column.type}")
    return _as_one_array(column)


def _person_list(values: object, name: str) -> pa.Array:
    if not isinstance(values, (pa.Array, pa.ChunkedArray)):
        raise TypeError(f"{name} must be a pyarrow Array of person pseudonyms, got {type(values).__name__}; "
                        f"wrap a list with pa.array(...)")
    if not _is_text(values.type):
        raise TypeError(f"{name} must hold person pseudonyms as strings, got {values.type}")
    if values.null_count:
        first = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"{name} holds {values.null_count} null person id(s), the first at position {first}; "
                         f"every entry must name a person")
    return _as_one_array(values)


def encode_inputs(links: object, persons: object, linking_persons: object) -> EncodedInputs:
    """Validate the inputs and encode them (see ``build_identity_graph`` for their meaning).

    Rows of ``links`` with a null person_id are dropped; a null device_id or event_at beside a
    non-null person_id is an error naming the row. Duplicate links collapse to one, keeping the first
    and the last of their sign-in times.
    """
    if not isinstance(links, pa.Table):
        raise TypeError(f"links must be a pyarrow Table with columns {list(LINK_COLUMNS)}, "
                        f"got {type(links).__name__}")
    devices = _links_column(links, "device_id")
    link_persons = _links_column(links, "person_id")
    times = _links_times(links)
    eligible_names = _person_list(persons, "persons")
    linking_names = _person_list(linking_persons, "linking_persons")

    signed_in = link_persons.is_valid()
    for name, values in (("device_id", devices), ("event_at", times)):
        missing = pc.and_(values.is_null(), signed_in).to_numpy(zero_copy_only=False)
        if missing.any():
            row = int(np.flatnonzero(missing)[0])
            raise ValueError(f"table links, row {row}: column {name!r} is null while person_id is "
                             f"{link_persons[row].as_py()!r}; a sign-in link needs a device_id and an event_at "
                             f"({int(missing.sum())} such row(s))")
    # rows: (device, person, time), person signed in
    devices, link_persons, times = devices.filter(signed_in), link_persons.filter(signed_in), times.filter(signed_in)

    # One encoding for every person pseudonym, wherever it comes from.
    everyone = pa.concat_arrays(_same_text_type(link_persons, eligible_names, linking_names))
    person_names, person_codes = _codes(everyone, sort=True)
    device_names, device_codes = _codes(devices, sort=False)

    n_links = len(link_persons)
    n_eligible = len(eligible_names)
    eligible = np.zeros(len(person_names), dtype=bool)
    eligible[person_codes[n_links:n_links + n_eligible]] = True
    linking = np.zeros(len(person_names), dtype=bool)
    linking[person_codes[n_links + n_eligible:]] = True

    # rows: distinct (device, person) pairs, as one int64 key each (dictionary codes are int32: no overflow)
    stride = np.int64(max(len(person_names), 1))
    pairs, first, last = _span_per_pair(device_codes * stride + person_codes[:n_links], sign_in_ticks(times))
    link_devices, link_person_codes = np.divmod(pairs, stride)
    return EncodedInputs(person_names, device_names, link_devices, link_person_codes, first, last, times.type.unit,
                         eligible, linking)

def _codes(values: pa.Array, *, sort: bool) -> tuple[pa.Array, np.ndarray]:
    """The distinct values (in string order if ``sort``, else first-seen order) and each value's code (int64)."""
    if len(values) == 0:
        return pa.array([], values.type), np.zeros(0, dtype=np.int64)
    distinct, indices = _dictionary_encode(values)  # the callers pass non-null values
    codes = indices.astype(np.int64)
    if not sort:
        return distinct, codes
    order = pc.sort_indices(distinct).to_numpy()
    rank = np.empty(len(distinct), dtype=np.int64)
    rank[order] = np.arange(len(distinct), dtype=np.int64)
    return distinct.take(pa.array(order)), rank[codes]


def _span_per_pair(pairs: np.ndarray, ticks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sorted distinct ``pairs`` (int64 keys) and, for each, the least and the greatest of its ``ticks`` (int64,
    one per pair occurrence): one int64 sort (faster here than numpy's hashing unique), then a reduction per run."""
    if pairs.size == 0:
        return pairs, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    order = np.argsort(pairs)
    pairs, ticks = pairs[order], ticks[order]
    starts = np.flatnonzero(np.r_[True, pairs[1:] != pairs[:-1]])
    return pairs[starts], np.minimum.reduceat(ticks, starts), np.maximum.reduceat(ticks, starts)
