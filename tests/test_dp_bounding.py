"""Person-level contribution bounding: the vectorized kernel against a plain reference, and its privacy properties."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dp import join_devices
from dp._bounding import GroupCodes, SumColumn, bound_contributions, encode_persons


def reference_bound(persons, groups, max_partitions, max_rows_per_partition):
    """Obviously correct: per person, rows in stored order; a row is kept iff its group is among the
    person's first ``max_partitions`` groups and among the first ``max_rows_per_partition`` rows of it."""
    taken: dict[object, dict[int, int]] = {}          # person -> {group: rows kept}
    kept = set()
    for i, (person, group) in enumerate(zip(persons, groups)):
        if group < 0:
            continue
        groups_of_person = taken.setdefault(person, {})
        if group not in groups_of_person and len(groups_of_person) < max_partitions:
            groups_of_person[group] = 0
        if group in groups_of_person and groups_of_person[group] < max_rows_per_partition:
            groups_of_person[group] += 1
            kept.add(i)
    return kept


rows_strategy = st.lists(st.tuples(st.integers(0, 6), st.integers(-1, 4)), min_size=0, max_size=60)


def _run(rows, k, r, packed=None, amounts=None):
    persons = [f"person-{p}" for p, _ in rows]
    groups = np.array([g for _, g in rows], dtype=np.int64)
    codes = encode_persons(pd.Series(persons, dtype=object))
    sums = None if amounts is None else {"amount": SumColumn(np.asarray(amounts, dtype=np.float64), 0.5, -4, 10)}
    bounded = bound_contributions(codes, GroupCodes.of(groups, 5), max_partitions=k, max_rows_per_partition=r,
                                  sums=sums, packed=packed)
    return persons, groups, bounded


@given(rows_strategy, st.integers(1, 4), st.integers(1, 4), st.sampled_from([None, True, False]))
def test_kernels_match_the_reference(rows, k, r, packed):
    persons, groups, bounded = _run(rows, k, r, packed)
    kept = set(np.flatnonzero(bounded.kept).tolist())
    assert kept == reference_bound(persons, groups, k, r)
    assert (bounded.kept_groups() == groups[bounded.kept]).all()
    assert bounded.counts.tolist() == np.bincount(groups[bounded.kept], minlength=5).tolist()


@given(st.lists(st.tuples(st.integers(0, 6), st.integers(-1, 4), st.one_of(st.floats(-10, 10), st.just(np.nan))),
                max_size=60), st.integers(1, 3), st.integers(1, 3), st.booleans())
def test_clamped_sums_match_a_plain_sum(rows, k, r, packed):
    amounts = [a for _, _, a in rows]
    _, groups, bounded = _run([(p, g) for p, g, _ in rows], k, r, packed, amounts)
    expected = np.zeros(5, dtype=np.int64)
    for i in np.flatnonzero(bounded.kept):
        if not np.isnan(amounts[i]):
            expected[groups[i]] += int(min(max(np.rint(amounts[i] / 0.5), -4), 10))
    assert bounded.sums["amount"].tolist() == expected.tolist()


@given(rows_strategy, st.integers(1, 3), st.integers(1, 3), st.integers(0, 6), st.booleans())
def test_removing_a_person_leaves_everyone_elses_rows_unchanged(rows, k, r, removed, packed):
    _persons, _, bounded = _run(rows, k, r, packed)
    others = [(p, g) for p, g in rows if p != removed]
    original_index = [i for i, (p, _) in enumerate(rows) if p != removed]
    _, _, without = _run(others, k, r, packed)
    expected = {i for i in np.flatnonzero(bounded.kept).tolist() if rows[i][0] != removed}
    assert {original_index[i] for i in np.flatnonzero(without.kept).tolist()} == expected


@given(rows_strategy, st.integers(1, 3), st.integers(1, 3))
def test_bounds_hold(rows, k, r):
    persons, groups, bounded = _run(rows, k, r)
    frame = pd.DataFrame({"person": np.asarray(persons, dtype=object)[bounded.kept] if rows else [],
                          "group": groups[bounded.kept]})
    if len(frame):
        assert frame.groupby("person")["group"].nunique().max() <= k
        assert frame.groupby(["person", "group"]).size().max() <= r


def test_many_groups_and_wide_integer_ids_take_the_bucket_kernel_and_agree_with_the_reference():
    rng = np.random.default_rng(3)
    persons = rng.integers(10**12, 10**12 + 5000, 20_000)
    groups = rng.integers(-1, 3000, 20_000)          # 3000 groups x 20 partitions: no 64-bit packing
    codes = encode_persons(pd.Series(persons))
    assert codes.offset == persons.min()
    bounded = bound_contributions(codes, GroupCodes.of(groups, 3000), max_partitions=20, max_rows_per_partition=2)
    assert set(np.flatnonzero(bounded.kept).tolist()) == reference_bound(list(persons), groups, 20, 2)


@pytest.mark.parametrize("persons", [
    pd.Series(["a", None, "b", "a"]),
    pd.Series(["a", None, "b", "a"], dtype=object),
    pd.Series(["a", 3, "b", "a"], dtype=object),
    pd.Series(pd.Categorical(["a", None, "b", "a"])),
    pd.Series([7, 9, 7], dtype=np.uint64),
    pd.Series([10**18, -(10**18), 10**18]),
])
def test_person_codes_give_one_code_per_id_and_none_to_missing_ids(persons):
    codes = encode_persons(persons).codes
    present = persons.notna().to_numpy()
    assert (codes[~present] == -1).all()
    assert len(set(codes[present].tolist())) == persons[present].nunique()
    assert pd.Series(codes[present]).groupby(persons[present].astype(str).to_numpy()).nunique().max() == 1


def test_join_devices_bounds_devices_per_person_and_drops_unmapped_devices():
    events = pd.DataFrame({"device_id": [f"d{i}" for i in range(40)] * 2 + ["solo", "orphan"],
                           "event_type": ["open"] * 82})
    mapping = pd.DataFrame({"device_id": [f"d{i}" for i in range(40)] + ["solo"],
                            "person_id": ["many"] * 40 + ["one"]})
    joined = join_devices(events, mapping, max_devices_per_person=3, seed=9)
    assert joined.groupby("person_id")["device_id"].nunique().to_dict() == {"many": 3, "one": 1}
    assert "orphan" not in set(joined["device_id"])
    assert len(joined) == 3 * 2 + 1


def test_join_devices_rejects_a_device_of_two_persons():
    mapping = pd.DataFrame({"device_id": ["d", "d"], "person_id": ["p", "q"]})
    with pytest.raises(ValueError, match="more than one person"):
        join_devices(pd.DataFrame({"device_id": ["d"]}), mapping, max_devices_per_person=1, seed=0)
