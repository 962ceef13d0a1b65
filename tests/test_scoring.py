"""The top-K kernel against a plain brute-force reference, and its input checks."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st

from profiling.scoring import (
    ItemEligibility,
    eligibility_by_province,
    top_k_batches,
    top_k_record_batches,
)


def brute_force_top_k(person_factors, item_factors, k, bought=None, eligibility=None):
    """Obviously correct: every score, excluded ones dropped, sorted by (-score, item)."""
    result = []
    for p, person in enumerate(np.asarray(person_factors, dtype=np.float64)):
        candidates = []
        for i, item in enumerate(np.asarray(item_factors, dtype=np.float64)):
            if bought is not None and bought[p, i] != 0:
                continue
            if eligibility is not None and not eligibility.allowed[eligibility.person_group[p], i]:
                continue
            candidates.append((-float(person @ item), i))
        result.append([i for _, i in sorted(candidates)[:k]])
    return result


def kernel_top_k(person_factors, item_factors, k, **options):
    rows = []
    for batch in top_k_batches(person_factors, item_factors, k, **options):
        rows.extend(batch.items[p, : batch.counts[p]].tolist() for p in range(len(batch.persons)))
    return rows


@st.composite
def problems(draw):
    persons = draw(st.integers(0, 40))
    items = draw(st.integers(0, 300))
    dims = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    # Small integers: every inner product is exact in float32, so ties are real ties.
    low = draw(st.sampled_from([0, -1, -3]))
    person_factors = rng.integers(low, 4, (persons, dims)).astype(np.float32)
    item_factors = rng.integers(low, 4, (items, dims)).astype(np.float32)
    density = draw(st.sampled_from([0.0, 0.05, 0.5, 1.0]))
    bought = sp.random(persons, items, density=density, random_state=seed % 2**31, format="csr") if persons and items else None
    groups = draw(st.integers(1, 3))
    allowed = rng.random((groups, items)) < draw(st.sampled_from([1.0, 0.7, 0.1, 0.0]))
    eligibility = ItemEligibility(allowed, rng.integers(0, groups, persons))
    k = draw(st.integers(1, 40))
    return person_factors, item_factors, k, bought, eligibility


@given(problems(), st.sampled_from([(1, 64, 64), (2, 3, 128), (2, 256, 512)]))
def test_matches_brute_force_including_ties_and_exclusions(problem, layout):
    person_factors, item_factors, k, bought, eligibility = problem
    threads, block, tile = layout
    expected = brute_force_top_k(person_factors, item_factors, k, bought, eligibility)
    got = kernel_top_k(person_factors, item_factors, k, bought=bought, eligibility=eligibility,
                       threads=threads, persons_per_block=block, items_per_tile=tile, persons_per_batch=7)
    assert got == expected


@given(st.integers(0, 2**32 - 1), st.integers(1, 15))
def test_random_float_factors_agree_up_to_rounding(seed, k):
    rng = np.random.default_rng(seed)
    person_factors = rng.standard_normal((20, 16)).astype(np.float32)
    item_factors = rng.standard_normal((700, 16)).astype(np.float32)
    scores = person_factors.astype(np.float64) @ item_factors.astype(np.float64).T
    for p, got in enumerate(kernel_top_k(person_factors, item_factors, k, items_per_tile=128)):
        kth = np.sort(scores[p])[::-1][k - 1]
        # Every chosen item is at least the true k-th best, and the order is by score.
        assert len(got) == k and np.all(scores[p, got] >= kth - 1e-4)
        assert np.all(np.diff(scores[p, got]) <= 1e-4)


def test_everything_excluded_and_empty_catalogue_give_no_rows():
    persons = np.ones((3, 2), dtype=np.float32)
    items = np.ones((4, 2), dtype=np.float32)
    bought = sp.csr_array(np.ones((3, 4)))
    assert kernel_top_k(persons, items, 2, bought=bought) == [[], [], []]
    assert kernel_top_k(persons, np.zeros((0, 2)), 2) == [[], [], []]
    assert kernel_top_k(np.zeros((0, 2)), items, 2) == []


def test_fewer_rows_when_k_exceeds_allowed_items():
    persons = np.array([[1.0, 0.0]])
    items = np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    eligibility = ItemEligibility(np.array([[True, False, True]]), np.array([0]))
    assert kernel_top_k(persons, items, 10, eligibility=eligibility) == [[2, 0]]


def test_record_batches_carry_ids_scores_and_ranks():
    batches = list(top_k_record_batches(pa.array(["x", "y"]), ["a", "b", "c"], np.eye(2),
                                        np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]]), 2))
    table = pa.Table.from_batches(batches)
    assert table.to_pylist() == [
        {"person_id": "x", "item_id": "c", "score": 2.0, "rank": 1},
        {"person_id": "x", "item_id": "a", "score": 1.0, "rank": 2},
        {"person_id": "y", "item_id": "b", "score": 1.0, "rank": 1},
        {"person_id": "y", "item_id": "a", "score": 0.0, "rank": 2},
    ]


@pytest.mark.parametrize(("persons", "items", "k", "match"), [
    (np.ones((2, 3)), np.ones((4, 2)), 1, "3 factors per row but item_factors has 2"),
    (np.array([[np.nan, 1.0]]), np.ones((4, 2)), 1, "person_factors holds NaN or infinity .first in row 0"),
    (np.ones((2, 2)), np.array([[1.0, 1.0], [np.inf, 0.0]]), 1, "item_factors holds NaN or infinity .first in row 1"),
    (np.ones((2, 2)), np.ones((4, 2)), 0, "k must be a positive integer, got 0"),
    (np.ones((2, 2)), np.ones((4, 2)), -3, "k must be a positive integer, got -3"),
    (np.ones((2, 2)), np.ones((4, 2)), 2.5, "k must be a positive integer"),
    (np.ones((2, 2)), np.ones((4, 2)), True, "k must be a positive integer"),
    (np.ones(2), np.ones((4, 2)), 1, "person_factors must be a 2-D array"),
    (np.full((1, 2), 1e20), np.full((1, 2), 1e20), 1, "could overflow float32"),
])
def test_bad_inputs_are_rejected_with_a_clear_message(persons, items, k, match):
    with pytest.raises(ValueError, match=match):
        list(top_k_batches(persons, items, k))


def test_bad_exclusions_are_rejected():
    persons, items = np.ones((2, 2)), np.ones((4, 2))
    with pytest.raises(ValueError, match=r"bought has shape \(4, 2\) but there are 2 persons and 4 items"):
        list(top_k_batches(persons, items, 1, bought=sp.csr_array((4, 2))))
    with pytest.raises(ValueError, match="eligibility covers 3 persons x 4 items"):
        list(top_k_batches(persons, items, 1, eligibility=ItemEligibility.everything(3, 4)))
    with pytest.raises(ValueError, match="group numbers outside 0..0"):
        ItemEligibility(np.ones((1, 4), dtype=bool), np.array([0, 1]))


def test_eligibility_by_province_hides_inactive_and_unserved_items():
    eligibility = eligibility_by_province([None, ["44"], None, ["44", "11"]], [True, True, False, True],
                                          ["44", "11", None, "99"])
    shown = eligibility.allowed[eligibility.person_group]
    assert shown.tolist() == [[True, True, False, True], [True, False, False, True],
                              [True, False, False, False], [True, False, False, False]]


def test_equal_scores_across_groups_and_tiles_keep_the_lowest_items():
    persons = np.ones((3, 4), dtype=np.float32)
    items = np.ones((5_000, 4), dtype=np.float32)
    bought = sp.csr_array(([1.0, 1.0], ([0, 0], [0, 3])), shape=(3, 5_000))
    got = kernel_top_k(persons, items, 6, bought=bought, items_per_tile=256)
    assert got == [[1, 2, 4, 5, 6, 7], [0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5]]


@pytest.mark.parametrize("layout", [{}, {"persons_per_block": 16, "items_per_tile": 64}])
def test_many_tiles_with_default_and_small_layouts_match_brute_force(layout):
    rng = np.random.default_rng(5)
    person_factors = rng.integers(-2, 5, (40, 4)).astype(np.float32)
    item_factors = rng.integers(-2, 5, (2_500, 4)).astype(np.float32)
    # The best items are bought often: exclusions land in groups that can hold a winner.
    best = np.argsort(-(person_factors @ item_factors.T), axis=1, kind="stable")[:, :30]
    rows = np.repeat(np.arange(40), 15)
    bought = sp.coo_array((np.ones(rows.size), (rows, best[:, ::2].ravel())), shape=(40, 2_500))
    eligibility = ItemEligibility(rng.random((2, 2_500)) < 0.8, rng.integers(0, 2, 40))
    expected = brute_force_top_k(person_factors, item_factors, 12, bought.toarray(), eligibility)
    assert kernel_top_k(person_factors, item_factors, 12, bought=bought, eligibility=eligibility, **layout) == expected


def test_duplicate_and_unsorted_exclusions_exclude_once():
    persons = np.array([[1.0, 0.0]])
    items = np.array([[float(i), 0.0] for i in range(10)])
    # Stored out of order and twice: the kernel walks sorted, de-duplicated exclusions.
    bought = sp.csr_array((np.ones(3), np.array([9, 7, 9]), np.array([0, 3])), shape=(1, 10))
    assert kernel_top_k(persons, items, 3, bought=bought) == [[8, 6, 5]]
