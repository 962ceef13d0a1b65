"""Implicit-feedback alternating least squares (Hu, Koren and Volinsky, 2008)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from numba import njit
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted
from tqdm.auto import tqdm

__all__ = ["ImplicitALS"]


@njit(nogil=True, cache=True, inline="always")
def _inner(left: np.ndarray, row: int, right: np.ndarray, other: int) -> np.float32:
    """left[row] · right[other] in float32, summed in eight interleaved lanes (a fixed order that the
    compiler can keep in SIMD registers; one running sum would be a chain of dependent adds)."""
    dims = left.shape[1]
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = np.float32(0.0)
    whole = dims - dims % 8
    for f in range(0, whole, 8):
        s0 += left[row, f] * right[other, f]
        s1 += left[row, f + 1] * right[other, f + 1]
        s2 += left[row, f + 2] * right[other, f + 2]
        s3 += left[row, f + 3] * right[other, f + 3]
        s4 += left[row, f + 4] * right[other, f + 4]
        s5 += left[row, f + 5] * right[other, f + 5]
        s6 += left[row, f + 6] * right[other, f + 6]
        s7 += left[row, f + 7] * right[other, f + 7]
    for f in range(whole, dims):
        s0 += left[row, f] * right[other, f]
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


@njit(nogil=True, cache=True, inline="always")
def _weight(value: np.float32, weigh_by_inner: bool, left: np.ndarray, row: int, right: np.ndarray,
            other: int) -> np.float32:
    """value · (left[row] · right[other]) or, without ``weigh_by_inner``, value + 1 (the confidence)."""
    if weigh_by_inner:
        return value * _inner(left, row, right, other)
    return value + np.float32(1.0)


@njit(nogil=True, cache=True)
def _sparse_rows_times(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, fixed: np.ndarray,
                       solving: np.ndarray, weigh_by_inner: bool, out: np.ndarray, start: int, stop: int) -> None:
    """For rows u in [start, stop): out[u] = sum over u's non-zeros j (column i) of w_j · fixed[i].

    w_j = data[j] · (fixed[i] · solving[u]) when ``weigh_by_inner``, else data[j] + 1. Each row is
    summed by one thread in stored order, so the result does not depend on the thread count.
    """
    dims = fixed.shape[1]
    for u in range(start, stop):
        for f in range(dims):
            out[u, f] = 0.0
        for j in range(indptr[u], indptr[u + 1]):
            i = indices[j]
            weight = _weight(data[j], weigh_by_inner, fixed, i, solving, u)
            for f in range(dims):
                out[u, f] += weight * fixed[i, f]


@njit(nogil=True, cache=True)
def _sparse_columns_times(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, fixed: np.ndarray,
                          solving: np.ndarray, weigh_by_inner: bool, out: np.ndarray, start: int, stop: int) -> None:
    """For rows u in [start, stop), add w_j · fixed[u] to out[i] for each of u's non-zeros j (column i).

    The transpose of ``_sparse_rows_times``: w_j = data[j] · (fixed[u] · solving[i]) or data[j] + 1.
    Reads ``fixed`` (the big side) in order instead of gathering its rows.
    """
    dims = fixed.shape[1]
    for u in range(start, stop):
        for j in range(indptr[u], indptr[u + 1]):
            i = indices[j]
            weight = _weight(data[j], weigh_by_inner, fixed, u, solving, i)
            for f in range(dims):
                out[i, f] += weight * fixed[u, f]


# The transposed product sums fixed runs of rows into their own buffers, added in run order, so the
# result does not depend on the thread count; it is used while those buffers stay this small.
_COLUMN_RUNS = 8
_COLUMN_BUFFER_BYTES = 256 << 20


def _product(feedback: sp.csr_array, fixed: np.ndarray, solving: np.ndarray | None, threads: int, *,
             by_column: bool) -> np.ndarray:
    """Sum over non-zeros of w · fixed-row, per row of ``feedback`` or, ``by_column``, per column
    (then ``feedback`` is fixed-rows x solving-rows); w as in ``_sparse_rows_times``."""
    runs = _COLUMN_RUNS if by_column else threads
    cuts = np.searchsorted(feedback.indptr, np.linspace(0, feedback.nnz, runs + 1)).clip(0, feedback.shape[0])
    cuts[0], cuts[-1] = 0, feedback.shape[0]
    rows = feedback.shape[1] if by_column else feedback.shape[0]
    out = np.zeros((runs if by_column else 1, rows, fixed.shape[1]), dtype=np.float32)
    kernel = _sparse_columns_times if by_column else _sparse_rows_times
    arguments = (feedback.indptr, feedback.indices, feedback.data, fixed,
                 fixed[:0] if solving is None else solving, solving is not None)

    def run(part: int) -> None:
        kernel(*arguments, out[part if by_column else 0], cuts[part], cuts[part + 1])

    with ThreadPoolExecutor(threads) as workers:
        list(workers.map(run, range(runs)))
    return out.sum(axis=0) if by_column else out[0]


def _conjugate_gradient(feedback: sp.csr_array, fixed: np.ndarray, solving: np.ndarray, regularization: float,
                        steps: int, threads: int = 1, *, by_column: bool = False) -> np.ndarray:
    """A few conjugate-gradient steps on every row's normal equations at once, warm-started.

    Row u solves (FᵀF + Fᵀ(C_u − I)F + λI) x_u = Fᵀ C_u 1, with confidence C_u = 1 + alpha·r_u on its
    non-zeros; ``feedback`` (float32 CSR, sorted) holds alpha·r (so C − I), one row per row of
    ``solving`` (or, ``by_column``, one column per row of ``solving`` and one row per row of
    ``fixed``), and F is ``fixed``.
    """
    gram = fixed.T @ fixed + np.float32(regularization) * np.eye(fixed.shape[1], dtype=np.float32)
    target = _product(feedback, fixed, None, threads, by_column=by_column)

    def apply(x: np.ndarray) -> np.ndarray:
        return x @ gram + _product(feedback, fixed, x, threads, by_column=by_column)

    x = solving.copy()
    residual = target - apply(x)
    direction = residual.copy()
    residual_norm = np.einsum("ij,ij->i", residual, residual)
    for _ in range(steps):
        applied = apply(direction)
        curvature = np.einsum("ij,ij->i", direction, applied)
        step = np.divide(residual_norm, curvature, out=np.zeros_like(residual_norm), where=curvature > 0)
        x += step[:, None] * direction
        residual -= step[:, None] * applied
        new_norm = np.einsum("ij,ij->i", residual, residual)
        ratio = np.divide(new_norm, residual_norm, out=np.zeros_like(new_norm), where=residual_norm > 0)
        direction = residual + ratio[:, None] * direction
        residual_norm = new_norm
    return x


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _non_negative(name: str, value: object, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not np.isfinite(value) or value < 0 \
            or (positive and value == 0):
        kind = "positive" if positive else "non-negative"
        raise ValueError(f"{name} must be a {kind} finite number, got {value!r}")
    return float(value)


class ImplicitALS(BaseEstimator):
    """Person and item factors from implicit feedback by alternating least squares.

    Fit on a sparse persons x items matrix ``R`` of recency-weighted purchase counts (see
    ``recency_weighted_counts``). Each observed pair gets preference 1 and confidence
    ``1 + alpha * R[u, i]``; unobserved pairs preference 0 and confidence 1. Each sweep solves the
    person factors with the item factors fixed and the other way round, a few conjugate-gradient
    steps per sweep for all rows at once (Takács et al., 2011), in float32, the sparse products in a
    compiled kernel on ``threads`` threads (default: the cores this process may use); ``verbose``
    shows a progress bar over the sweeps.

    Deterministic for a given ``random_state`` (and BLAS thread count), whatever ``threads``. No privacy mechanism is
    applied: the factors are per person and stay in the analytics zone; fit them only on rows of
    persons whose consent covers personalization.

    Fitted attributes: ``person_factors_`` (persons x factors), ``item_factors_`` (items x factors),
    ``n_iter_``.

    >>> import scipy.sparse as sp
    >>> counts = sp.csr_array([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    >>> model = ImplicitALS(factors=2, iterations=5, random_state=0).fit(counts)
    >>> model.person_factors_.shape, model.item_factors_.dtype.name
    ((3, 2), 'float32')
    """

    def __init__(self, *, factors: int = 64, regularization: float = 0.01, alpha: float = 40.0,
                 iterations: int = 15, cg_steps: int = 3, random_state: int | None = 0,
                 threads: int | None = None, verbose: bool = False) -> None:
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.cg_steps = cg_steps
        self.random_state = random_state
        self.threads = threads
        self.verbose = verbose

    def fit(self, feedback: object, y: object = None) -> ImplicitALS:
        """Learn factors from ``feedback``, a scipy.sparse persons x items matrix of non-negative weights."""
        factors = _positive_int("factors", self.factors)
        iterations = _positive_int("iterations", self.iterations)
        cg_steps = _positive_int("cg_steps", self.cg_steps)
        regularization = _non_negative("regularization", self.regularization)
        alpha = _non_negative("alpha", self.alpha, positive=True)
        if not sp.issparse(feedback):
            raise ValueError(f"feedback must be a scipy.sparse persons x items matrix, got {type(feedback).__name__}")
        by_person = sp.csr_array(feedback, dtype=np.float32, copy=True)
        by_person.sum_duplicates()
        if not np.all(np.isfinite(by_person.data)) or (by_person.nnz and by_person.data.min() < 0):
            raise ValueError("feedback must hold finite, non-negative weights (recency-weighted counts)")
        by_person.data *= np.float32(alpha)
        # the item side reads the person-major matrix by column while its buffers stay small
        by_column = _COLUMN_RUNS * by_person.shape[1] * factors * 4 <= _COLUMN_BUFFER_BYTES
        item_major = by_person if by_column else sp.csr_array(by_person.T)
        item_major.sort_indices()
        threads = _positive_int("threads", self.threads) if self.threads is not None else _cores()
        rng = np.random.default_rng(self.random_state)
        scale = np.float32(0.01)
        person_factors = (rng.standard_normal((by_person.shape[0], factors)) * scale).astype(np.float32)
        item_factors = (rng.standard_normal((by_person.shape[1], factors)) * scale).astype(np.float32)
        for _ in tqdm(range(iterations), desc="ALS sweeps", unit=" sweep", disable=not self.verbose):
            person_factors = _conjugate_gradient(by_person, item_factors, person_factors, regularization, cg_steps,
                                                 threads)
            item_factors = _conjugate_gradient(item_major, person_factors, item_factors, regularization, cg_steps,
                                               threads, by_column=by_column)
        self.person_factors_ = person_factors
        self.item_factors_ = item_factors
        self.n_iter_ = iterations
        return self

    def save(self, path: str | os.PathLike) -> None:
        """Write parameters and factors to an ``.npz`` file (no pickle)."""
        check_is_fitted(self)
        np.savez(Path(path), person_factors=self.person_factors_, item_factors=self.item_factors_,
                 n_iter=np.int64(self.n_iter_),
                 params=np.array([self.factors, self.regularization, self.alpha, self.iterations, self.cg_steps],
                                 dtype=np.float64),
                 random_state=np.array(-1 if self.random_state is None else self.random_state, dtype=np.int64))

    @classmethod
    def load(cls, path: str | os.PathLike) -> ImplicitALS:
        """Read a model written by ``save``; the file is read with ``allow_pickle=False``."""
        with np.load(Path(path), allow_pickle=False) as stored:
            try:
                factors, regularization, alpha, iterations, cg_steps = stored["params"].tolist()
                random_state = int(stored["random_state"])
                model = cls(factors=int(factors), regularization=regularization, alpha=alpha,
                            iterations=int(iterations), cg_steps=int(cg_steps),
                            random_state=None if random_state == -1 else random_state)
                model.person_factors_ = stored["person_factors"]
                model.item_factors_ = stored["item_factors"]
                model.n_iter_ = int(stored["n_iter"])
            except KeyError as missing:
                raise ValueError(f"{path} is not an ImplicitALS model file: {missing} is missing") from None
        return model
