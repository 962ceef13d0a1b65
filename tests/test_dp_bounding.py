"""Person-level contribution bounding: the vectorized kernel against a plain reference, and its privacy properties."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dp import join_devices
from dp._bounding import (
    _PRIORITY_BITS,
    bound_contributions,
    encode_persons,
    hash_values,
)


def reference_bound(persons, groups, group_labels, seed, max_partitions, max_rows_per_partition):
    """Obviously correct: per person, groups in keyed order (priority, then group), rows first-come."""
    person_hash = dict(zip(pd.unique(pd.Series(persons)), hash_values(pd.unique(pd.Series(persons)), seed)))
    group_hash = hash_values(np.asarray(group_labels, dtype=object), seed)
    kept = set()
    for person in set(persons):
        rows = [i for i, p in enumerate(persons) if p == person and groups[i] >= 0]
        distinct = sorted({groups[i] for i in rows})

        def priority(g, person=person):
            value = int(person_hash[person] ^ group_hash[g])
            return (value & ((1 << _PRIORITY_BITS) - 1), g)

        for g in sorted(distinct, key=priority)[:max_partitions]:
            kept.update([i for i in rows if groups[i] == g][:max_rows_per_partition])
    return kept


rows_strategy = st.lists(st.tuples(st.integers(0, 6), st.integers(-1, 4)), min_size=0, max_size=60)


def _run(rows, seed, k, r, labels=("a", "b", "c", "d", "e")):
    persons = [f"person-{p}" for p, _ in rows]
    groups = np.array([g for _, g in rows], dtype=np.int64)
    codes = encode_persons(pd.Series(persons, dtype=object), seed)
    kept, kept_groups = bound_contributions(codes, groups, hash_values(np.asarray(labels, dtype=object), seed),
                                            max_partitions=k, max_rows_per_partition=r)
    return persons, groups, kept, kept_groups


@given(rows_strategy, st.integers(0, 2**32), st.integers(1, 4), st.integers(1, 4))
def test_kernel_matches_reference(rows, seed, k, r):
    persons, groups, kept, kept_groups = _run(rows, seed, k, r)
    assert set(kept.tolist()) == reference_bound(persons, groups, ["a", "b", "c", "d", "e"], seed, k, r)
    assert (kept_groups == groups[kept]).all()


@given(rows_strategy, st.integers(0, 2**32), st.integers(1, 3), st.integers(1, 3), st.integers(0, 6))
def test_removing_a_person_leaves_everyone_elses_rows_unchanged(rows, seed, k, r, removed):
    _persons, _, kept, _ = _run(rows, seed, k, r)
    others = [(p, g) for p, g in rows if p != removed]
    original_index = [i for i, (p, _) in enumerate(rows) if p != removed]
    _, _, kept_without, _ = _run(others, seed, k, r)
    expected = {i for i in kept.tolist() if rows[i][0] != removed}
    assert {original_index[i] for i in kept_without.tolist()} == expected


@given(rows_strategy, st.integers(0, 2**32), st.integers(1, 3), st.integers(1, 3))
def test_bounds_hold(rows, seed, k, r):
    persons, _, kept, kept_groups = _run(rows, seed, k, r)
    frame = pd.DataFrame({"person": np.asarray(persons, dtype=object)[kept] if len(kept) else [], "group": kept_groups})
    if len(frame):
        assert frame.groupby("person")["group"].nunique().max() <= k
        assert frame.groupby(["person", "group"]).size().max() <= r


def test_integer_ids_and_the_lexsort_path_agree_with_the_reference():
    rng = np.random.default_rng(3)
    persons = rng.integers(10**12, 10**12 + 40, 300)
    labels = list(range(3000))          # many groups: too many bits for the packed key
    groups = rng.integers(0, 3000, 300)
    codes = encode_persons(pd.Series(persons), 5)
    kept, _ = bound_contributions(codes, groups, hash_values(np.asarray(labels, dtype=object), 5),
                                  max_partitions=2, max_rows_per_partition=1)
    assert set(kept.tolist()) == reference_bound(list(persons), groups, labels, 5, 2, 1)


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
