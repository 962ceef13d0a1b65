"""Implicit-feedback alternating least squares (Hu, Koren and Volinsky, 2008)."""

from __future__ import annotations

import os
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

__all__ = ["ImplicitALS"]

# Non-zeros handled at once when forming per-purchase inner products (bounds scratch memory).
_CHUNK = 1 << 20


def _weighted_gram_product(feedback: sp.csr_array, rows: np.ndarray, fixed: np.ndarray,
                           solving: np.ndarray) -> np.ndarray:
    """For every row u: sum over its non-zeros i of w_ui · (fixed_i · solving_u) · fixed_i."""
    inner = np.empty(feedback.nnz, dtype=np.float32)
    for start in range(0, feedback.nnz, _CHUNK):
        stop = min(start + _CHUNK, feedback.nnz)
        inner[start:stop] = np.einsum("ij,ij->i", fixed[feedback.indices[start:stop]],
                                      solving[rows[start:stop]])
    weighted = sp.csr_array((feedback.data * inner, feedback.indices, feedback.indptr), shape=feedback.shape)
    return np.asarray(weighted @ fixed, dtype=np.float32)


def _conjugate_gradient(feedback: sp.csr_array, rows: np.ndarray, fixed: np.ndarray, solving: np.ndarray,
                        regularization: float, steps: int) -> np.ndarray:
    """A few conjugate-gradient steps on every row's normal equations at once, warm-started.

    Row u solves (FᵀF + Fᵀ(C_u − I)F + λI) x_u = Fᵀ C_u 1, with confidence C_u = 1 + alpha·r_u on its
    non-zeros; ``feedback`` holds alpha·r (so C − I) and F is ``fixed``.
    """
    gram = fixed.T @ fixed + np.float32(regularization) * np.eye(fixed.shape[1], dtype=np.float32)
    confidence = sp.csr_array((feedback.data + 1, feedback.indices, feedback.indptr), shape=feedback.shape)
    target = np.asarray(confidence @ fixed, dtype=np.float32)

    def apply(x: np.ndarray) -> np.ndarray:
        return x @ gram + _weighted_gram_product(feedback, rows, fixed, x)

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
    steps per sweep for all rows at once (Takács et al., 2011), in float32.

    Deterministic for a given ``random_state`` (and BLAS thread count). No privacy mechanism is
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
                 iterations: int = 15, cg_steps: int = 3, random_state: int | None = 0) -> None:
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.cg_steps = cg_steps
        self.random_state = random_state

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
        by_item = sp.csr_array(by_person.T)
        person_rows = np.repeat(np.arange(by_person.shape[0]), np.diff(by_person.indptr))
        item_rows = np.repeat(np.arange(by_item.shape[0]), np.diff(by_item.indptr))
        rng = np.random.default_rng(self.random_state)
        scale = np.float32(0.01)
        person_factors = (rng.standard_normal((by_person.shape[0], factors)) * scale).astype(np.float32)
        item_factors = (rng.standard_normal((by_person.shape[1], factors)) * scale).astype(np.float32)
        for _ in range(iterations):
            person_factors = _conjugate_gradient(by_person, person_rows, item_factors, person_factors,
                                                 regularization, cg_steps)
            item_factors = _conjugate_gradient(by_item, item_rows, person_factors, item_factors,
                                               regularization, cg_steps)
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
