"""Implicit feedback: person x item purchase counts, each purchase weighted by its recency."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["recency_weighted_counts"]


def recency_weighted_counts(person_index: object, item_index: object, age_days: object, *, persons: int,
                            items: int, half_life_days: float = 90.0) -> sp.csr_array:
    """Sparse persons x items matrix: the sum over purchases of ``0.5 ** (age_days / half_life_days)``.

    A purchase made now counts 1, one ``half_life_days`` old counts 0.5 (ages in days, negative
    ages, i.e. purchases after the as-of moment, are the caller's to drop and are rejected here).

    >>> m = recency_weighted_counts([0, 0, 1], [2, 2, 0], [0.0, 90.0, 180.0], persons=2, items=3)
    >>> m.toarray().tolist()
    [[0.0, 0.0, 1.5], [0.25, 0.0, 0.0]]
    """
    if not (np.isfinite(half_life_days) and half_life_days > 0):
        raise ValueError(f"half_life_days must be a positive finite number of days, got {half_life_days!r}")
    person_index = np.asarray(person_index, dtype=np.int64)
    item_index = np.asarray(item_index, dtype=np.int64)
    age_days = np.asarray(age_days, dtype=np.float64)
    if not person_index.shape == item_index.shape == age_days.shape or person_index.ndim != 1:
        raise ValueError(f"person_index, item_index and age_days must be 1-D of one length, got shapes "
                         f"{person_index.shape}, {item_index.shape}, {age_days.shape}")
    if not np.all(np.isfinite(age_days)) or (age_days.size and age_days.min() < 0):
        raise ValueError("age_days must be finite and not negative; drop purchases after the as-of moment first")
    for name, index, bound in (("person_index", person_index, persons), ("item_index", item_index, items)):
        if index.size and (index.min() < 0 or index.max() >= bound):
            raise ValueError(f"{name} holds values outside 0..{bound - 1}")
    weights = np.power(0.5, age_days / half_life_days)
    matrix = sp.csr_array((weights, (person_index, item_index)), shape=(persons, items), dtype=np.float64)
    matrix.sum_duplicates()
    return matrix
