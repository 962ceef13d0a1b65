"""The scoring benchmark's workload, made the same way in every process from a seed.

Factors are float32: persons ~ N(0, 1/d) per coordinate; items ~ N(0, 1) scaled by a
log-normal popularity, so a few items score high for many persons, as with fitted factors.
Every person has exactly ``excluded`` distinct already-bought items, stored as a CSR matrix
(persons x items) with sorted column indices.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def make_factors(persons: int, items: int, dims: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(person_factors, item_factors)``, float32, C-contiguous."""
    rng = np.random.default_rng(seed)
    person_factors = (rng.standard_normal((persons, dims), dtype=np.float32) / np.float32(np.sqrt(dims)))
    popularity = rng.lognormal(0.0, 0.35, items).astype(np.float32)
    item_factors = rng.standard_normal((items, dims), dtype=np.float32) * popularity[:, None]
    return np.ascontiguousarray(person_factors), np.ascontiguousarray(item_factors)


def make_bought(persons: int, items: int, excluded: int, seed: int) -> sp.csr_matrix:
    """``excluded`` distinct items per person (fewer only when the catalogue is smaller)."""
    rng = np.random.default_rng(seed + 1)
    per_person = min(excluded, items)
    # Sorted draws from 0..items-per_person, shifted by 0..per_person-1: strictly increasing, distinct.
    draws = np.sort(rng.integers(0, items - per_person + 1, (persons, per_person)), axis=1)
    columns = (draws + np.arange(per_person)).astype(np.int32).ravel()
    indptr = np.arange(0, persons * per_person + 1, per_person, dtype=np.int64)
    data = np.ones(columns.size, dtype=np.float32)
    return sp.csr_matrix((data, columns, indptr), shape=(persons, items))
