"""Implicit-feedback ALS over rows split among partitions that sum their column-side terms together.

Each partition holds some rows whole (a person's stored pairs all in one partition) and their
factors, which never leave it; every partition holds all the column factors. The row half-step
is ``ImplicitALS``'s (conjugate gradient per row against the column factors). The column
half-step runs the same conjugate-gradient steps for every column at once, each needing sums
over all rows: every partition adds up its own rows' terms and ``allreduce`` sums those partial
sums across partitions (on Spark, a barrier stage's ``allGather``), so the partitions exchange
column-sized arrays (columns x factors float32) only, ``cg_steps + 1`` times a sweep, and end
with the same column factors.

No privacy mechanism is applied: fit only rows of persons whose consent covers the purpose.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
from numba import njit

from profiling.factors._als import _SIMD, _conjugate_gradient, _dot

__all__ = ["fit_partition"]

# Below this squared residual norm a column is solved (as in ``ImplicitALS``'s row kernel).
_SOLVED = np.float32(1e-20)


@njit(nogil=True, cache=True, fastmath=_SIMD)
def _column_sums(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, rows: np.ndarray, columns: np.ndarray,
                 constant: np.float32, sign: np.float32, out: np.ndarray) -> None:
    """out[i] += Σ_u (constant·(1 + c_ui) + sign·c_ui·(x_u·v_i)) x_u over this partition's stored pairs.

    ``indptr``/``indices``/``data``: the rows' CSR with c = alpha·weight; x = ``rows``, v = ``columns``.
    """
    dims = rows.shape[1]
    for u in range(rows.shape[0]):
        x = rows[u]
        for j in range(indptr[u], indptr[u + 1]):
            confidence = data[j]
            weight = constant * (np.float32(1.0) + confidence) + sign * confidence * _dot(x, columns[indices[j]])
            target = out[indices[j]]
            for f in range(dims):
                target[f] += weight * x[f]


def _rowwise_dot(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", left, right)


def _column_half_step(by_row: sp.csr_array, rows: np.ndarray, columns: np.ndarray, regularization: float, steps: int,
                      allreduce: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``steps`` conjugate-gradient steps on every column's normal equations, warm-started from ``columns``.

    Column i solves (XᵀX + Xᵀ(C_i − I)X + λI) y_i = Xᵀ C_i 1 over all partitions' rows X: the
    per-row terms are summed here over this partition's rows, then across partitions by
    ``allreduce``. A column without stored pairs anywhere gets 0, its exact solution.
    """
    count, dims = columns.shape
    arguments = (by_row.indptr, by_row.indices, by_row.data, rows)
    sums = np.zeros((count, dims), dtype=np.float32)
    _column_sums(*arguments, columns, np.float32(1.0), np.float32(-1.0), sums)
    # each column's residual terms, the Gram matrix XᵀX and each column's stored pairs, summed in one exchange
    total = allreduce(np.concatenate([sums.reshape(-1), (rows.T @ rows).reshape(-1),
                                      np.bincount(by_row.indices, minlength=count).astype(np.float32)]))
    gram = total[count * dims:(count + dims) * dims].reshape(dims, dims).copy()
    gram[np.diag_indices(dims)] += np.float32(regularization)
    empty = total[(count + dims) * dims:] == 0
    solving = np.array(columns, dtype=np.float32, copy=True)
    residual = total[:count * dims].reshape(count, dims) - solving @ gram
    direction = residual.copy()
    norm = _rowwise_dot(residual, residual)
    active = norm >= _SOLVED
    for _ in range(steps):
        applied = np.zeros_like(solving)
        _column_sums(*arguments, direction, np.float32(0.0), np.float32(1.0), applied)
        applied = allreduce(applied) + direction @ gram
        curvature = _rowwise_dot(direction, applied)
        active &= curvature > 0
        step = np.where(active, norm / np.where(active, curvature, 1), 0).astype(np.float32)
        solving += step[:, None] * direction
        residual -= step[:, None] * applied
        new_norm = _rowwise_dot(residual, residual)
        ratio = np.where(active, new_norm / np.where(active, norm, 1), 0).astype(np.float32)
        direction = residual + ratio[:, None] * direction
        norm = new_norm
        active &= new_norm >= _SOLVED
    solving[empty] = 0.0
    return solving


def fit_partition(by_row: sp.csr_array, *, factors: int, iterations: int, regularization: float, alpha: float,
                  cg_steps: int, seed: int, part: int, allreduce: Callable[[np.ndarray], np.ndarray],
                  threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``(row factors, column factors)`` of this partition's rows, fitted together with every other partition's.

    ``by_row``: this partition's rows x all columns (the same columns, in the same order, in every
    partition), non-negative recency-weighted counts, repeats added up. ``allreduce(array)`` must
    return the element-wise sum of the same-shaped float32 arrays passed by every partition, in
    the same order on all of them (so all end with the same column factors); every partition must
    call ``fit_partition`` with the same settings and column count. Starting factors: the columns'
    from ``seed`` (the same everywhere), the rows' from ``(seed, part)``, small and positive as in
    ``ImplicitALS``. Deterministic for a seed and a partitioning.
    """
    matrix = sp.csr_array(by_row, dtype=np.float32, copy=True)
    matrix.sum_duplicates()
    matrix.data *= np.float32(alpha)
    columns = np.random.default_rng(seed).random((matrix.shape[1], factors), dtype=np.float32) * np.float32(0.01)
    rows = np.random.default_rng([seed, part]).random((matrix.shape[0], factors), dtype=np.float32) \
        * np.float32(0.01)
    for _ in range(iterations):
        _conjugate_gradient(matrix, columns, rows, regularization, cg_steps, threads, in_place=True)
        columns = _column_half_step(matrix, rows, columns, regularization, cg_steps, allreduce)
    return rows, columns
