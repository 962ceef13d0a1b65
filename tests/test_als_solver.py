"""Implicit ALS against plain float64 references: one half-sweep of conjugate gradient, whole fits, the loss."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st
from threadpoolctl import threadpool_limits

from profiling.factors import ImplicitALS
from profiling.factors._als import _conjugate_gradient


def reference_cg(scaled_feedback, fixed, start, regularization, steps):
    """Obviously correct, float64, one row at a time: ``steps`` conjugate-gradient steps on
    (FᵀF + Fᵀ(C_u−I)F + λI) x = Fᵀ C_u p_u from ``start``, stopping as ``implicit`` does (residual
    below 1e-20); a row without non-zeros gets 0."""
    dense = scaled_feedback.toarray().astype(np.float64)
    fixed = fixed.astype(np.float64)
    solved = start.astype(np.float64).copy()
    for u, row in enumerate(dense):
        stored = scaled_feedback.indices[scaled_feedback.indptr[u]:scaled_feedback.indptr[u + 1]]
        if not len(stored):
            solved[u] = 0.0
            continue
        observed = np.zeros_like(row, dtype=bool)
        observed[stored] = True
        matrix = fixed.T @ ((1.0 + row)[:, None] * fixed) + regularization * np.eye(fixed.shape[1])
        target = fixed.T @ ((1.0 + row) * observed)
        x = solved[u]
        residual = target - matrix @ x
        direction = residual.copy()
        norm = residual @ residual
        if norm < 1e-20:
            continue
        for _ in range(steps):
            applied = matrix @ direction
            step = norm / (direction @ applied)
            x += step * direction
            residual -= step * applied
            new_norm = residual @ residual
            if new_norm < 1e-20:
                break
            direction = residual + new_norm / norm * direction
            norm = new_norm
    return solved


def dense_loss(feedback, alpha, regularization, person_factors, item_factors):
    """Σ over all cells of C (p − xᵀy)² + λ(‖X‖² + ‖Y‖²), over Σ C: ``implicit``'s ``calculate_loss``."""
    values = feedback.toarray().astype(np.float64)
    observed = np.zeros(values.shape, dtype=bool)
    coo = sp.coo_array(feedback)
    observed[coo.row, coo.col] = True
    confidence = 1.0 + alpha * values
    errors = observed - person_factors.astype(np.float64) @ item_factors.T.astype(np.float64)
    penalty = regularization * (np.sum(person_factors.astype(np.float64) ** 2)
                                + np.sum(item_factors.astype(np.float64) ** 2))
    return (np.sum(confidence * errors ** 2) + penalty) / confidence.sum()


def random_feedback(seed, persons, items, density):
    rng = np.random.default_rng(seed)
    feedback = sp.random(persons, items, density=density, random_state=seed % 2**31, format="csr",
                         data_rvs=lambda n: rng.uniform(0.05, 2.0, n))
    return sp.csr_array(feedback, dtype=np.float32)


def half_sweep_case(seed, persons, items, dims, density, *, fixed, solving):
    """(alpha·r as CSR, ``fixed`` x ``dims`` fixed factors, ``solving`` x ``dims`` starting factors) from ``seed``."""
    rng = np.random.default_rng(seed)
    feedback = random_feedback(seed, persons, items, density)
    feedback.data *= np.float32(4.0)  # alpha·r
    return (feedback, (rng.standard_normal((fixed, dims)) * 0.3).astype(np.float32),
            (rng.standard_normal((solving, dims)) * 0.3).astype(np.float32))


@given(st.integers(0, 2**32 - 1), st.integers(1, 30), st.integers(1, 30), st.integers(1, 12),
       st.integers(1, 4), st.sampled_from([0.0, 0.2, 0.6]))
def test_a_half_sweep_is_the_float64_conjugate_gradient(seed, persons, items, dims, steps, density):
    # well conditioned (λ = 1, confidences up to 9), so that float32 rounding stays small after the
    # last step; past min(items, dims) steps the Krylov space is spent and steps only stir rounding
    steps = min(steps, items, dims)
    feedback, fixed, start = half_sweep_case(seed, persons, items, dims, density, fixed=items, solving=persons)
    expected = reference_cg(feedback, fixed, start, 1.0, steps)
    got = _conjugate_gradient(feedback, fixed, start, 1.0, steps, threads=1 + seed % 3)
    assert got.dtype == np.float32 and got.shape == start.shape
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-3 * max(1.0, np.abs(expected).max()))
    assert not np.shares_memory(got, start)
    # in place: the same numbers in the array given (a row's solution reads only its own start)
    solved = start.copy()
    assert _conjugate_gradient(feedback, fixed, solved, 1.0, steps, threads=2 - seed % 2, in_place=True) is solved
    np.testing.assert_array_equal(solved, got)


def test_persons_without_purchases_get_zero_factors():
    feedback = random_feedback(5, 20, 15, 0.3).tolil()
    feedback[[3, 11]] = 0.0
    feedback = sp.csr_array(feedback)
    feedback.eliminate_zeros()
    model = ImplicitALS(factors=4, iterations=3, random_state=0).fit(feedback)
    assert not model.person_factors_[[3, 11]].any()
    assert np.abs(np.delete(model.person_factors_, [3, 11], axis=0)).sum(axis=1).min() > 0


def reference_fit(feedback, alpha, regularization, factors, iterations, steps, random_state):
    """The estimator's algorithm in float64 with plain numpy: its initial factors, then alternating
    ``reference_cg`` half-sweeps over persons and items."""
    rng = np.random.default_rng(random_state)
    persons = rng.random((feedback.shape[0], factors), dtype=np.float32) * np.float32(0.01)
    items = rng.random((feedback.shape[1], factors), dtype=np.float32) * np.float32(0.01)
    scaled = sp.csr_array(feedback * alpha)
    transposed = sp.csr_array(scaled.T)
    for _ in range(iterations):
        persons = reference_cg(scaled, items, persons, regularization, steps)
        items = reference_cg(transposed, persons, items, regularization, steps)
    return persons, items


def test_a_fit_matches_the_float64_reference_and_each_sweep_lowers_the_loss():
    feedback = random_feedback(11, 40, 25, 0.15)
    settings = {"alpha": 10.0, "regularization": 0.1, "factors": 5, "cg_steps": 3, "random_state": 4}
    losses = []
    for iterations in range(1, 7):
        model = ImplicitALS(iterations=iterations, **settings).fit(feedback)
        persons, items = reference_fit(feedback, 10.0, 0.1, 5, iterations, 3, 4)
        losses.append(dense_loss(feedback, 10.0, 0.1, model.person_factors_, model.item_factors_))
        assert losses[-1] == pytest.approx(dense_loss(feedback, 10.0, 0.1, persons, items), rel=1e-3)
        if iterations <= 3:  # later, float32 rounding grows in the directions three steps leave unsolved
            np.testing.assert_allclose(model.person_factors_ @ model.item_factors_.T, persons @ items.T, atol=5e-3)
    assert all(later < earlier for earlier, later in zip(losses, losses[1:], strict=False)), losses


def test_the_loss_is_no_worse_than_implicits():
    implicit_als = pytest.importorskip("implicit.cpu.als")
    rng = np.random.default_rng(2)
    persons, items = 600, 120
    popularity = 1.0 / np.arange(1, items + 1)
    rows = rng.integers(0, persons, 6000)
    cols = rng.choice(items, 6000, p=popularity / popularity.sum())
    feedback = sp.csr_array((rng.uniform(0.1, 1.0, 6000), (rows, cols)), shape=(persons, items), dtype=np.float32)
    feedback.sum_duplicates()
    ours = ImplicitALS(factors=16, iterations=10, alpha=40.0, regularization=0.01, threads=2).fit(feedback)
    confidence = sp.csr_matrix(feedback, copy=True)
    confidence.data = 1.0 + 40.0 * confidence.data  # implicit's confidence is the matrix value
    with threadpool_limits(1, "blas"):  # as implicit asks, or it warns
        theirs = implicit_als.AlternatingLeastSquares(factors=16, iterations=10, alpha=1.0, regularization=0.01,
                                                      num_threads=2, random_state=0)
        theirs.fit(confidence, show_progress=False)
    our_loss = dense_loss(feedback, 40.0, 0.01, ours.person_factors_, ours.item_factors_)
    their_loss = dense_loss(feedback, 40.0, 0.01, theirs.user_factors, theirs.item_factors)
    assert our_loss <= 1.02 * their_loss
