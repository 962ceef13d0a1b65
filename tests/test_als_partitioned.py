"""ALS over rows split among partitions (``fit_partition``) against the plain float64 algorithm.

The partitions run in threads that sum their column-side terms through a barrier, as a Spark
barrier stage's tasks do through ``allGather``; the float64 reference solves every column from all
rows at once, so a wrong partial sum, a missed exchange or a partition out of step shows.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st
from test_als_solver import dense_loss, half_sweep_case, random_feedback, reference_cg

from profiling.factors._partitioned import _column_half_step, fit_partition

SETTINGS = {"factors": 5, "regularization": 0.1, "alpha": 10.0, "cg_steps": 3, "seed": 4}


def across(parts: int, work):
    """``work(part, allreduce)`` for each partition, each in its own thread; the results in partition order."""
    barrier, sent, results, failures = threading.Barrier(parts), [None] * parts, [None] * parts, []

    def run(part: int) -> None:
        def allreduce(array: np.ndarray) -> np.ndarray:
            sent[part] = array.copy()
            barrier.wait()
            total = np.sum([piece.astype(np.float64) for piece in sent], axis=0).astype(np.float32)
            barrier.wait()  # everyone has read before anyone sends again
            return total

        try:
            results[part] = work(part, allreduce)
        except BaseException as error:  # pragma: no cover - shown by the assertion below
            failures.append(error)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(part,)) for part in range(parts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures
    return results


def in_parts(feedback: sp.csr_array, bounds: list[int], iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows [bounds[p], bounds[p + 1]) fitted by partition p; (their rows stacked, the columns)."""
    results = across(len(bounds) - 1, lambda part, allreduce: fit_partition(
        feedback[bounds[part]:bounds[part + 1]], iterations=iterations, part=part, allreduce=allreduce, **SETTINGS))
    for _, columns in results[1:]:
        np.testing.assert_array_equal(columns, results[0][1])  # every partition ends with the same columns
    return np.concatenate([rows for rows, _ in results]), results[0][1]


def reference(feedback: sp.csr_array, bounds: list[int], iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """The algorithm in float64, all rows at once: the partitions' starting factors, then alternating
    ``reference_cg`` half-sweeps over rows and columns."""
    factors, seed = SETTINGS["factors"], SETTINGS["seed"]
    columns = np.random.default_rng(seed).random((feedback.shape[1], factors), dtype=np.float32) * np.float32(0.01)
    rows = np.concatenate([np.random.default_rng([seed, part]).random((stop - start, factors), dtype=np.float32)
                           for part, (start, stop) in enumerate(zip(bounds, bounds[1:], strict=False))]) \
        * np.float32(0.01)
    scaled = sp.csr_array(feedback * SETTINGS["alpha"])
    transposed = sp.csr_array(scaled.T)
    for _ in range(iterations):
        rows = reference_cg(scaled, columns, rows, SETTINGS["regularization"], SETTINGS["cg_steps"])
        columns = reference_cg(transposed, rows, columns, SETTINGS["regularization"], SETTINGS["cg_steps"])
    return rows, columns


@given(st.integers(0, 2**32 - 1), st.integers(1, 30), st.integers(1, 30), st.integers(1, 12), st.integers(1, 4),
       st.sampled_from([0.0, 0.2, 0.6]), st.lists(st.integers(0, 30), max_size=4))
def test_a_column_half_sweep_over_partitions_is_the_float64_conjugate_gradient(seed, rows, columns, dims, steps,
                                                                                density, cuts):
    # as the row half-sweep's test: well conditioned, at most min(rows, dims) steps
    steps = min(steps, rows, dims)
    feedback, fixed, start = half_sweep_case(seed, rows, columns, dims, density, fixed=rows, solving=columns)
    bounds = [0, *sorted(min(cut, rows) for cut in cuts), rows]
    expected = reference_cg(sp.csr_array(feedback.T), fixed, start, 1.0, steps)
    got = across(len(bounds) - 1, lambda part, allreduce: _column_half_step(
        feedback[bounds[part]:bounds[part + 1]], fixed[bounds[part]:bounds[part + 1]], start, 1.0, steps, allreduce))
    for solved in got:
        assert solved.dtype == np.float32 and solved.shape == start.shape
        np.testing.assert_allclose(solved, expected, rtol=2e-3, atol=2e-3 * max(1.0, np.abs(expected).max()))


@pytest.mark.parametrize("bounds", [[0, 40], [0, 13, 27, 40], [0, 0, 25, 40, 40]],
                         ids=["one partition", "three", "empty partitions"])
def test_partitions_fit_what_all_rows_at_once_fit(bounds):
    feedback = random_feedback(11, 40, 25, 0.15)
    losses = []
    for iterations in (1, 3, 6):
        rows, columns = in_parts(feedback, bounds, iterations)
        expected_rows, expected_columns = reference(feedback, bounds, iterations)
        # the factors themselves drift apart by float32 rounding in the first, ill-conditioned sweeps (the
        # small, alike starting factors), as ImplicitALS's do from its float64 reference; the loss does not
        losses.append(dense_loss(feedback, SETTINGS["alpha"], SETTINGS["regularization"], rows, columns))
        assert losses[-1] == pytest.approx(dense_loss(feedback, SETTINGS["alpha"], SETTINGS["regularization"],
                                                      expected_rows, expected_columns), rel=5e-3)
    assert losses[0] > losses[1] > losses[2], losses


def test_a_column_nobody_stored_and_a_row_without_pairs_get_zero_factors():
    feedback = random_feedback(5, 30, 12, 0.3).tolil()
    feedback[:, 4] = 0.0
    feedback[7] = 0.0
    feedback = sp.csr_array(feedback)
    feedback.eliminate_zeros()
    rows, columns = in_parts(feedback, [0, 10, 30], iterations=3)
    assert not columns[4].any() and not rows[7].any()
    assert np.abs(np.delete(columns, 4, axis=0)).sum(axis=1).min() > 0


def test_repeated_pairs_add_up():
    single = sp.csr_array(np.array([[2.0, 0.0, 1.0], [0.0, 1.5, 0.0]], dtype=np.float32))
    # row 0 holds column 0 twice: (data, indices, indptr) keeps the repeat as given
    repeated = sp.csr_array((np.array([1.0, 1.0, 1.0, 1.5], dtype=np.float32), np.array([0, 0, 2, 1]),
                             np.array([0, 3, 4])), shape=(2, 3))
    assert repeated.nnz == 4
    np.testing.assert_array_equal(in_parts(single, [0, 1, 2], 2)[0], in_parts(repeated, [0, 1, 2], 2)[0])
