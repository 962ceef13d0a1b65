"""Implicit-feedback alternating least squares (Hu, Koren and Volinsky, 2008)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from numbers import Real
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from numba import njit
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted
from tqdm.auto import tqdm

from profiling._threads import available_cores
from profiling.checks import check_int

__all__ = ["ImplicitALS"]


# Reductions may be reordered so that they run in SIMD lanes: the order is fixed when the kernel is
# compiled, so a fit stays deterministic on a machine whatever the thread count.
_SIMD = {"reassoc", "contract"}


@njit(nogil=True, cache=True, fastmath=_SIMD, inline="always")
def _dot(left: np.ndarray, right: np.ndarray) -> np.float32:
    total = np.float32(0.0)
    for f in range(left.shape[0]):
        total += left[f] * right[f]
    return total


@njit(nogil=True, cache=True, fastmath=_SIMD, inline="always")
def _gram_times(gram: np.ndarray, vector: np.ndarray, out: np.ndarray, sign: np.float32) -> None:
    """out = sign · gram @ vector (``gram`` symmetric, so its rows are summed as columns), four rows
    per pass over ``out`` (a quarter of the loads and stores of one row at a time)."""
    dims = vector.shape[0]
    for f in range(dims):
        out[f] = 0.0
    whole = dims - dims % 4
    for g in range(0, whole, 4):
        w0 = sign * vector[g]
        w1 = sign * vector[g + 1]
        w2 = sign * vector[g + 2]
        w3 = sign * vector[g + 3]
        for f in range(dims):
            out[f] += (w0 * gram[g, f] + w1 * gram[g + 1, f]) + (w2 * gram[g + 2, f] + w3 * gram[g + 3, f])
    for g in range(whole, dims):
        weight = sign * vector[g]
        for f in range(dims):
            out[f] += weight * gram[g, f]


@njit(nogil=True, cache=True, fastmath=_SIMD)
def _solve_rows(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, fixed: np.ndarray, gram: np.ndarray,
                solving: np.ndarray, steps: int, start: int, stop: int) -> None:
    """Conjugate-gradient steps on the normal equations of rows [start, stop) of ``solving``, in place.

    Row u solves (G + Fᵀ(C_u − I)F) x = Fᵀ C_u p_u with G = FᵀF + λI (``gram``), F = ``fixed``,
    C_u − I = ``data`` on u's non-zeros (alpha·r) and p_u = 1 there, starting from ``solving[u]``.
    A row without non-zeros gets 0, its exact solution. Each row is solved by one thread alone.
    """
    dims = fixed.shape[1]
    residual = np.empty(dims, dtype=np.float32)
    direction = np.empty(dims, dtype=np.float32)
    applied = np.empty(dims, dtype=np.float32)
    for u in range(start, stop):
        x = solving[u]
        begin, end = indptr[u], indptr[u + 1]
        if begin == end:
            x[:] = 0.0
            continue
        # residual = Fᵀ C_u p_u − (G + Fᵀ(C_u − I)F) x
        _gram_times(gram, x, residual, np.float32(-1.0))
        for j in range(begin, end):
            item = fixed[indices[j]]
            weight = (np.float32(1.0) + data[j]) - data[j] * _dot(item, x)
            for f in range(dims):
                residual[f] += weight * item[f]
        direction[:] = residual
        norm = _dot(residual, residual)
        if norm < 1e-20:
            continue
        for _ in range(steps):
            _gram_times(gram, direction, applied, np.float32(1.0))
            for j in range(begin, end):
                item = fixed[indices[j]]
                weight = data[j] * _dot(item, direction)
                for f in range(dims):
                    applied[f] += weight * item[f]
            curvature = _dot(direction, applied)
            if not curvature > 0:
                break
            step = norm / curvature
            for f in range(dims):
                x[f] += step * direction[f]
                residual[f] -= step * applied[f]
            new_norm = _dot(residual, residual)
            if new_norm < 1e-20:
                break
            ratio = new_norm / norm
            for f in range(dims):
                direction[f] = residual[f] + ratio * direction[f]
            norm = new_norm


# Rows are handed to the threads in this many chunks per thread, of about equal work each, so a
# thread slowed by other load takes fewer of them.
_CHUNKS_PER_THREAD = 8


def _conjugate_gradient(feedback: sp.csr_array, fixed: np.ndarray, solving: np.ndarray, regularization: float,
                        steps: int, threads: int = 1, *, in_place: bool = False) -> np.ndarray:
    """A few conjugate-gradient steps on every row's normal equations, warm-started from ``solving``.

    Row u solves (FᵀF + Fᵀ(C_u − I)F + λI) x_u = Fᵀ C_u 1, with confidence C_u = 1 + alpha·r_u on its
    non-zeros; ``feedback`` (float32 CSR, one row per row of ``solving``) holds alpha·r (so C − I),
    and F is ``fixed``. Returns a new array, or ``solving`` itself solved in place with ``in_place``
    (a C-ordered float32 array: each row's solution reads only that row's start, so the results are
    the same and the factors are not held twice); per row the same work as ``implicit``'s CG solver
    (Takács et al., 2011), in one compiled pass per row on ``threads`` threads.
    """
    dims = fixed.shape[1]
    gram = fixed.T @ fixed
    gram[np.diag_indices(dims)] += np.float32(regularization)
    if in_place and not (solving.dtype == np.float32 and solving.flags.c_contiguous and solving.flags.writeable):
        raise ValueError("solving in place needs a writeable C-ordered float32 array")
    x = solving if in_place else np.array(solving, dtype=np.float32, order="C", copy=True)
    rows = x.shape[0]
    # the work of a row grows with its non-zeros (two passes over dims each) plus one Gram product
    work = np.cumsum(np.diff(feedback.indptr) * 2 + dims, dtype=np.int64)
    chunks = max(1, min(rows, threads * _CHUNKS_PER_THREAD))
    cuts = np.searchsorted(work, np.linspace(0, work[-1] if rows else 0, chunks + 1)[1:-1])
    bounds = np.r_[0, cuts, rows]
    arguments = (feedback.indptr, feedback.indices, feedback.data, fixed, gram, x, steps)

    def run(part: int) -> None:
        if bounds[part] < bounds[part + 1]:
            _solve_rows(*arguments, bounds[part], bounds[part + 1])

    if threads == 1:
        for part in range(chunks):
            run(part)
    else:
        with ThreadPoolExecutor(threads) as workers:
            list(workers.map(run, range(chunks)))
    return x


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
    person factors with the item factors fixed and the other way round: ``cg_steps`` conjugate-gradient
    steps per row and sweep, warm-started from the previous factors (Takács et al., 2011; the work per
    row of ``implicit``'s CPU solver), in float32, each row solved whole by a compiled kernel, rows
    shared among ``threads`` threads in chunks of equal work (default: the cores this process may
    use); a person or item without feedback gets zero factors. ``verbose`` shows a progress bar over
    the sweeps.

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
        factors = check_int(self.factors, "factors")
        iterations = check_int(self.iterations, "iterations")
        cg_steps = check_int(self.cg_steps, "cg_steps")
        regularization = _non_negative("regularization", self.regularization)
        alpha = _non_negative("alpha", self.alpha, positive=True)
        if not sp.issparse(feedback):
            raise ValueError(f"feedback must be a scipy.sparse persons x items matrix, got {type(feedback).__name__}")
        by_person = sp.csr_array(feedback, dtype=np.float32, copy=True)
        by_person.sum_duplicates()
        if not np.all(np.isfinite(by_person.data)) or (by_person.nnz and by_person.data.min() < 0):
            raise ValueError("feedback must hold finite, non-negative weights (recency-weighted counts)")
        by_person.data *= np.float32(alpha)
        # the item side solves rows of the transpose: both layouts are built once per fit
        by_item = sp.csr_array(by_person.T)
        by_item.sort_indices()
        threads = check_int(self.threads, "threads") if self.threads is not None else available_cores()
        rng = np.random.default_rng(self.random_state)
        # small positive starting factors: every score starts positive and alike, which the first
        # sweeps then pull apart (faster to a low loss than signs drawn at random)
        person_factors = rng.random((by_person.shape[0], factors), dtype=np.float32) * np.float32(0.01)
        item_factors = rng.random((by_person.shape[1], factors), dtype=np.float32) * np.float32(0.01)
        for _ in tqdm(range(iterations), desc="ALS sweeps", unit=" sweep", disable=not self.verbose):
            _conjugate_gradient(by_person, item_factors, person_factors, regularization, cg_steps, threads,
                                in_place=True)
            _conjugate_gradient(by_item, person_factors, item_factors, regularization, cg_steps, threads,
                                in_place=True)
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
