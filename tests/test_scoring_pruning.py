"""The pruned top-K kernel against a float64 brute force, on factors chosen to break its bounds.

Factors are small integers (times integer scales), so every inner product is exact in float32
and float64 alike: ties are real ties and the lists must match item for item.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from profiling.scoring import ItemEligibility, top_k_batches


def reference_top_k(person_factors, item_factors, k, bought, eligibility):
    """Obviously correct: float64 scores, excluded and disallowed items dropped, sorted by (-score, item)."""
    scores = np.asarray(person_factors, np.float64) @ np.asarray(item_factors, np.float64).T
    lists = []
    for p, row in enumerate(scores):
        allowed = eligibility.allowed[eligibility.person_group[p]] & (bought[[p]].toarray()[0] == 0)
        candidates = sorted((-row[i], i) for i in np.flatnonzero(allowed))
        lists.append([i for _, i in candidates[:k]])
    return lists


def scored(person_factors, item_factors, k, **options):
    """(lists, products computed) from ``top_k_batches``."""
    lists, products = [], 0
    for batch in top_k_batches(person_factors, item_factors, k, **options):
        lists.extend(batch.items[p, : batch.counts[p]].tolist() for p in range(len(batch.persons)))
        products += batch.products
    return lists, products


SHAPES = ("skewed norms", "equal norms", "negative products", "zero vectors", "parallel to the person")


@st.composite
def adversarial_problems(draw):
    shape = draw(st.sampled_from(SHAPES))
    persons = draw(st.integers(1, 30))
    items = draw(st.integers(1, 400))
    dims = draw(st.integers(1, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    person_factors = rng.integers(-3, 4, (persons, dims))
    item_factors = rng.integers(-3, 4, (items, dims))
    if shape == "skewed norms":
        # Zipf-like scales: a few items with large norms, as with fitted factors of popular items.
        person_factors = np.abs(person_factors)
        item_factors = np.abs(item_factors) * (64 // (1 + rng.zipf(1.5, items).clip(max=64)))[:, None]
    elif shape == "equal norms":
        # Signed permutations of one vector: every item has the same norm, so no bound prunes.
        base = rng.integers(-3, 4, dims)
        item_factors = np.array([rng.permutation(base) * rng.choice([-1, 1], dims) for _ in range(items)])
    elif shape == "negative products":
        person_factors = -np.abs(person_factors)
        item_factors = np.abs(item_factors) * rng.integers(1, 8, (items, 1))
    elif shape == "zero vectors":
        person_factors[rng.random(persons) < 0.3] = 0
        item_factors[rng.random(items) < 0.5] = 0
    else:
        # Items along the person's direction at a few lengths: scores equal to the bound exactly.
        direction = np.abs(rng.integers(0, 3, dims)) + 1
        person_factors = np.repeat(direction[None, :], persons, axis=0) * rng.integers(1, 3, (persons, 1))
        item_factors = direction[None, :] * rng.integers(0, 4, (items, 1))
    density = draw(st.sampled_from([0.0, 0.1, 0.6]))
    bought = sp.random(persons, items, density=density, random_state=rng.integers(2**31), format="lil")
    if draw(st.booleans()):
        bought[0, :] = 1.0  # a person whose every item is excluded
    bought = sp.csr_matrix(bought)
    groups = draw(st.integers(1, 3))
    allowed = rng.random((groups, items)) < draw(st.sampled_from([1.0, 0.8, 0.2]))
    eligibility = ItemEligibility(allowed, rng.integers(0, groups, persons))
    k = draw(st.integers(1, 25))
    return (person_factors.astype(np.float32), item_factors.astype(np.float32), k, bought, eligibility)


@settings(max_examples=150, deadline=None)
@given(adversarial_problems(), st.sampled_from([(1, 64, 64, 5), (2, 3, 64, 7), (2, 512, 128, 64)]))
def test_pruned_kernel_matches_float64_brute_force(problem, layout):
    person_factors, item_factors, k, bought, eligibility = problem
    threads, block, tile, batch = layout
    expected = reference_top_k(person_factors, item_factors, k, bought, eligibility)
    got, products = scored(person_factors, item_factors, k, bought=bought, eligibility=eligibility, threads=threads,
                           persons_per_block=block, items_per_tile=tile, persons_per_batch=batch)
    assert got == expected
    assert products <= person_factors.shape[0] * item_factors.shape[0]


def test_unequal_norms_skip_products_and_equal_norms_do_not():
    rng = np.random.default_rng(3)
    person_factors = np.abs(rng.integers(0, 4, (300, 8))).astype(np.float32) + 1
    popularity = (1000 // np.arange(1, 5001)).astype(np.float32) + 1  # Zipf: item i scaled by about 1000 / i
    item_factors = np.abs(rng.integers(0, 4, (5000, 8))).astype(np.float32) * popularity[:, None]
    bought = sp.csr_matrix((np.ones(300), (np.arange(300), np.arange(300) % 7)), shape=(300, 5000))
    everyone = ItemEligibility.everything(300, 5000)
    expected = reference_top_k(person_factors, item_factors, 10, bought, everyone)
    got, products = scored(person_factors, item_factors, 10, bought=bought)
    assert got == expected
    assert products < 0.2 * 300 * 5000

    # Unit items in every direction of 64 dimensions: no bound falls below a K-th best, the scan is dense.
    persons_64 = rng.standard_normal((300, 64)).astype(np.float32)
    same_norm = rng.standard_normal((5000, 64))
    same_norm = (same_norm / np.linalg.norm(same_norm, axis=1, keepdims=True)).astype(np.float32)
    assert scored(persons_64, same_norm, 10)[1] == 300 * 5000


def test_a_persons_scores_do_not_depend_on_who_shares_their_block():
    # Scored alone, a person is one row of the product; BLAS sums a one-row product another way.
    rng = np.random.default_rng(11)
    person_factors = rng.standard_normal((40, 64)).astype(np.float32)
    item_factors = rng.standard_normal((3000, 64)).astype(np.float32)
    together = next(top_k_batches(person_factors, item_factors, 20))
    for p in range(0, 40, 3):
        alone = next(top_k_batches(person_factors[p: p + 1], item_factors, 20))
        assert alone.items[0].tolist() == together.items[p].tolist()
        assert alone.scores[0].tobytes() == together.scores[p].tobytes()


def test_a_tie_across_tiles_goes_to_the_lower_item():
    # Item 0 is short, items 1.. are longer: norm order visits item 0 last, yet it wins the tie.
    person_factors = np.array([[1.0, 0.0]], dtype=np.float32)
    item_factors = np.array([[2.0, 0.0]] + [[2.0, 3.0 + i % 5] for i in range(1, 700)], dtype=np.float32)
    got, _ = scored(person_factors, item_factors, 3, items_per_tile=64)
    assert got == [[0, 1, 2]]
