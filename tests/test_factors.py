"""Implicit ALS: the vectorized conjugate-gradient solve against per-row exact solves, and the estimator contract."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st
from sklearn.exceptions import NotFittedError

from profiling.factors import ImplicitALS, recency_weighted_counts
from profiling.factors._als import _conjugate_gradient


def exact_row_solves(scaled_feedback, fixed, regularization):
    """Obviously correct: one dense solve per row of (FᵀF + Fᵀ(C−I)F + λI) x = Fᵀ C p."""
    dense = scaled_feedback.toarray().astype(np.float64)
    fixed = fixed.astype(np.float64)
    solutions = []
    for row in dense:
        confidence = 1.0 + row
        preference = (row > 0).astype(np.float64)
        matrix = fixed.T @ (confidence[:, None] * fixed) + regularization * np.eye(fixed.shape[1])
        solutions.append(np.linalg.solve(matrix, fixed.T @ (confidence * preference)))
    return np.array(solutions)


@given(st.integers(0, 2**32 - 1), st.integers(1, 12), st.integers(1, 25), st.integers(1, 5))
def test_conjugate_gradient_reaches_the_exact_solution(seed, persons, items, dims):
    rng = np.random.default_rng(seed)
    feedback = sp.random(persons, items, density=0.3, random_state=seed % 2**31, format="csr",
                         data_rvs=lambda n: rng.uniform(0.1, 3.0, n)).astype(np.float32)
    feedback = sp.csr_array(feedback)
    fixed = rng.standard_normal((items, dims)).astype(np.float32)
    start = np.zeros((persons, dims), dtype=np.float32)
    expected = exact_row_solves(feedback, fixed, 0.5)
    got = _conjugate_gradient(feedback, fixed, start, 0.5, steps=4 * dims, threads=1 + seed % 3)
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-3)


def two_communities(persons=60, items=40, seed=3):
    """Persons 0..29 buy only items 0..19, the others only items 20..39."""
    rng = np.random.default_rng(seed)
    half_persons, half_items = persons // 2, items // 2
    rows, cols = [], []
    for person in range(persons):
        base = 0 if person < half_persons else half_items
        for item in rng.choice(half_items, 6, replace=False):
            rows.append(person)
            cols.append(base + item)
    return recency_weighted_counts(rows, cols, rng.uniform(0, 200, len(rows)), persons=persons, items=items)


def test_factors_learn_who_buys_what():
    feedback = two_communities()
    model = ImplicitALS(factors=8, iterations=10, random_state=1).fit(feedback)
    scores = model.person_factors_ @ model.item_factors_.T
    own = np.r_[scores[:30, :20].mean(), scores[30:, 20:].mean()]
    other = np.r_[scores[:30, 20:].mean(), scores[30:, :20].mean()]
    assert own.min() > 0.5 and np.abs(other).max() < 0.2


def test_estimator_contract_determinism_and_dtype():
    feedback = two_communities()
    first = ImplicitALS(factors=4, iterations=3, random_state=7).fit(feedback)
    second = ImplicitALS(factors=4, iterations=3, random_state=7).fit(feedback)
    other = ImplicitALS(factors=4, iterations=3, random_state=8).fit(feedback)
    assert np.array_equal(first.person_factors_, second.person_factors_)
    assert not np.array_equal(first.person_factors_, other.person_factors_)
    for threads in (1, 3):  # each row is summed by one thread, in stored order
        threaded = ImplicitALS(factors=4, iterations=3, random_state=7, threads=threads).fit(feedback)
        assert np.array_equal(threaded.person_factors_, first.person_factors_)
        assert np.array_equal(threaded.item_factors_, first.item_factors_)
    assert first.item_factors_.shape == (40, 4) and first.item_factors_.dtype == np.float32
    assert first.get_params()["factors"] == 4 and first.n_iter_ == 3
    with pytest.raises(TypeError):
        ImplicitALS(4)  # keyword-only parameters


def test_save_and_load_round_trip_without_pickle(tmp_path):
    model = ImplicitALS(factors=3, iterations=2, alpha=10.0, random_state=None).fit(two_communities())
    model.save(tmp_path / "model.npz")
    loaded = ImplicitALS.load(tmp_path / "model.npz")
    assert loaded.get_params() == model.get_params()
    assert np.array_equal(loaded.person_factors_, model.person_factors_)
    assert np.array_equal(loaded.item_factors_, model.item_factors_)
    np.savez(tmp_path / "other.npz", something=np.zeros(2))
    with pytest.raises(ValueError, match="is not an ImplicitALS model file"):
        ImplicitALS.load(tmp_path / "other.npz")
    with pytest.raises(NotFittedError):
        ImplicitALS().save(tmp_path / "unfitted.npz")


@pytest.mark.parametrize(("params", "match"), [
    ({"factors": 0}, "factors must be a positive integer"),
    ({"iterations": 1.5}, "iterations must be a positive integer"),
    ({"alpha": float("nan")}, "alpha must be a positive finite number"),
    ({"alpha": 0.0}, "alpha must be a positive finite number"),
    ({"regularization": float("inf")}, "regularization must be a non-negative finite number"),
    ({"regularization": -1.0}, "regularization must be a non-negative finite number"),
    ({"threads": 0}, "threads must be a positive integer"),
])
def test_bad_parameters_are_rejected(params, match):
    with pytest.raises(ValueError, match=match):
        ImplicitALS(**params).fit(two_communities())


def test_bad_feedback_is_rejected():
    with pytest.raises(ValueError, match="must be a scipy.sparse"):
        ImplicitALS().fit(np.ones((2, 2)))
    with pytest.raises(ValueError, match="finite, non-negative"):
        ImplicitALS().fit(sp.csr_array(np.array([[1.0, -2.0]])))
    with pytest.raises(ValueError, match="half_life_days must be a positive finite"):
        recency_weighted_counts([0], [0], [1.0], persons=1, items=1, half_life_days=float("nan"))
    with pytest.raises(ValueError, match="not negative"):
        recency_weighted_counts([0], [0], [-1.0], persons=1, items=1)
    with pytest.raises(ValueError, match="item_index holds values outside 0..1"):
        recency_weighted_counts([0], [2], [1.0], persons=1, items=2)
