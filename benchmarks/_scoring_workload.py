"""The scoring benchmark's workloads, made the same way in every process.

``random``: float32 factors from a seed: persons ~ N(0, 1/d) per coordinate; items ~ N(0, 1)
scaled by a log-normal popularity, so a few items score high for many persons. Every person has
exactly ``excluded`` distinct already-bought items.

``als``: implicit-ALS factors as the recommendation stage fits them (``profiling.factors``:
``ImplicitALS`` with ``factors = d``, 15 sweeps, on recency-weighted purchase counts with a
90-day half-life) from the orders of a ``portrait synth`` data set (``pipelines.synthetic``,
``items`` catalogue items, Zipf popularity); the persons are the first ``persons`` accounts with
an order, and each person's excluded items are the items they bought (about 20, heavy-tailed).
Fitted once and cached as ``.npz`` (no pickle) in ``$PORTRAIT_BENCH_CACHE`` (default
``~/.cache/portrait/bench-scoring``), keyed by persons, items, d and seed; remove the file to
refit (after a change of the ALS code, say).

Exclusions are a CSR matrix (persons x items) with sorted column indices.
"""

from __future__ import annotations

import os
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import scipy.sparse as sp

FACTOR_KINDS = ("random", "als")
SYNTH_UNTIL = datetime(2026, 11, 1, tzinfo=UTC)  # the synthetic data's as-of moment
ACCOUNTS_PER_PERSON = 1.3  # about 80% of synthetic accounts have an order


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


def workload(factors: str, persons: int, items: int, dims: int, excluded: int,
             seed: int) -> tuple[np.ndarray, np.ndarray, sp.csr_matrix]:
    """``(person_factors, item_factors, bought)`` of the ``factors`` workload (``excluded``: random only)."""
    if factors == "random":
        person_factors, item_factors = make_factors(persons, items, dims, seed)
        return person_factors, item_factors, make_bought(persons, items, excluded, seed)
    if factors == "als":
        return als_factors(persons, items, dims, seed)
    raise ValueError(f"factors must be one of {', '.join(FACTOR_KINDS)}, got {factors!r}")


def cache_folder() -> Path:
    return Path(os.environ.get("PORTRAIT_BENCH_CACHE", Path.home() / ".cache" / "portrait" / "bench-scoring"))


def als_factors(persons: int, items: int, dims: int, seed: int) -> tuple[np.ndarray, np.ndarray, sp.csr_matrix]:
    """ALS factors and purchases of synthetic orders, from the cache or fitted (and cached) now."""
    path = cache_folder() / f"als-{persons}x{items}-d{dims}-seed{seed}.npz"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fitted = _fit_als(persons, items, dims, seed)
        partial = path.with_name(f".{path.name}.{os.getpid()}.npz")
        np.savez(partial, **fitted)
        partial.replace(path)
    with np.load(path, allow_pickle=False) as stored:
        bought = sp.csr_matrix((np.ones(stored["indices"].size, dtype=np.float32), stored["indices"], stored["indptr"]),
                               shape=(stored["person_factors"].shape[0], stored["item_factors"].shape[0]))
        return (np.ascontiguousarray(stored["person_factors"]), np.ascontiguousarray(stored["item_factors"]), bought)


def _fit_als(persons: int, items: int, dims: int, seed: int) -> dict[str, np.ndarray]:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    from pipelines.synthetic import generate
    from profiling.factors import ImplicitALS, recency_weighted_counts

    accounts = int(persons * ACCOUNTS_PER_PERSON) + 200
    print(f"ALS workload: synthetic data for {accounts} accounts, {items} items; fitting d = {dims} "
          f"(cached in {cache_folder()})", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="portrait-bench-synth-") as scratch:
        raw = Path(scratch) / "raw"
        generate(raw, accounts, seed, catalogue_items=items, until=SYNTH_UNTIL, progress=False)
        item_ids = ds.dataset(raw / "catalogue").to_table(columns=["item_id"])["item_id"]
        account_ids = ds.dataset(raw / "accounts").to_table(columns=["account_id"])["account_id"]
        orders = ds.dataset(raw / "orders").to_table(columns=["account_id", "placed_at", "items"])
    # rows: (account_id, placed_at, items) per order
    lengths = pc.list_value_length(orders["items"]).fill_null(0).to_numpy()
    item = pd.Index(item_ids.to_numpy(zero_copy_only=False)).get_indexer(
        pc.list_flatten(orders["items"]).to_numpy(zero_copy_only=False))
    buyer = np.repeat(pd.Index(account_ids.to_numpy(zero_copy_only=False)).get_indexer(
        orders["account_id"].to_numpy(zero_copy_only=False)), lengths)
    placed_us = np.repeat(orders["placed_at"].cast(pa.int64()).to_numpy(), lengths)
    # rows: (buyer, item, placed_us) per purchased item
    age_days = (SYNTH_UNTIL.timestamp() * 1e6 - placed_us) / 1e6 / 86_400
    feedback = recency_weighted_counts(buyer, item, np.maximum(age_days, 0.0), persons=len(account_ids),
                                       items=len(item_ids))
    buyers = np.flatnonzero(np.diff(feedback.indptr) > 0)[:persons]
    feedback = sp.csr_array(feedback[buyers])
    model = ImplicitALS(factors=dims, iterations=15, random_state=seed).fit(feedback)
    feedback.sort_indices()
    return {"person_factors": model.person_factors_, "item_factors": model.item_factors_,
            "indptr": feedback.indptr.astype(np.int64), "indices": feedback.indices.astype(np.int32)}
