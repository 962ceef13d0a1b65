"""Exact top-K items per person by inner product, with exclusions, in bounded memory."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from profiling.checks import check_int
from profiling.scoring._eligibility import ItemEligibility
from profiling.scoring._kernel import _score_block, rounding_slack, underflow_slack

__all__ = ["TopK", "TOP_K_SCHEMA", "top_k_batches", "top_k_record_batches"]

TOP_K_SCHEMA = pa.schema([
    pa.field("person_id", pa.string(), nullable=False),
    pa.field("item_id", pa.string(), nullable=False),
    pa.field("score", pa.float32(), nullable=False),
    pa.field("rank", pa.int16(), nullable=False),
])

# Largest float32 score we allow; bounding |u|·|v| below it means no product overflows to inf.
_SCORE_LIMIT = float(np.finfo(np.float32).max) / 4


@dataclass(frozen=True)
class TopK:
    """The top-K of a run of consecutive persons.

    ``persons`` are row numbers of the person factor matrix; ``items[p, r]`` and
    ``scores[p, r]`` are the item (column of the catalogue) and inner product at rank
    ``r`` (0 = best) for ranks ``r < counts[p]``; later slots are padding (item -1).
    ``products`` counts the person-item inner products computed for these persons: persons x
    items when no item could be skipped, fewer where bounds showed items could not win.
    """

    persons: np.ndarray  # int64, n
    items: np.ndarray  # int32, n x k
    scores: np.ndarray  # float32, n x k
    counts: np.ndarray  # int64, n
    products: int = 0

    def to_record_batch(self, person_ids: np.ndarray | pa.Array, item_ids: np.ndarray | pa.Array) -> pa.RecordBatch:
        """Long rows ``(person_id, item_id, score, rank)``, rank counting from 1; padding dropped."""
        k = self.items.shape[1]
        keep = np.arange(k)[None, :] < self.counts[:, None]  # rows: persons x ranks
        rows_person = np.repeat(self.persons, self.counts)
        rank = np.broadcast_to(np.arange(1, k + 1, dtype=np.int16), self.items.shape)[keep]
        person_ids = pa.array(person_ids) if not isinstance(person_ids, pa.Array) else person_ids
        item_ids = pa.array(item_ids) if not isinstance(item_ids, pa.Array) else item_ids
        return pa.RecordBatch.from_arrays([
            person_ids.take(pa.array(rows_person)).cast(pa.string()),
            item_ids.take(pa.array(self.items[keep].astype(np.int64))).cast(pa.string()),
            pa.array(self.scores[keep], type=pa.float32()),
            pa.array(rank, type=pa.int16()),
        ], schema=TOP_K_SCHEMA)


def _factor_matrix(name: str, values: object) -> np.ndarray:
    matrix = np.asarray(values)
    if matrix.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (rows x factors), got {matrix.ndim} dimension(s)")
    if not np.issubdtype(matrix.dtype, np.number) or np.iscomplexobj(matrix):
        raise ValueError(f"{name} must hold real numbers, got {matrix.dtype}")
    if not np.all(np.isfinite(matrix)):
        row = int(np.argwhere(~np.isfinite(matrix))[0, 0])
        raise ValueError(f"{name} holds NaN or infinity (first in row {row}); refit or repair the factors")
    return np.ascontiguousarray(matrix, dtype=np.float32)


def _bought_csr(bought: object, persons: int, items: int) -> tuple[np.ndarray, np.ndarray]:
    if bought is None:
        return np.zeros(persons + 1, dtype=np.int64), np.zeros(0, dtype=np.int32)
    if not sp.issparse(bought):
        raise ValueError(f"bought must be a scipy.sparse matrix (persons x items), got {type(bought).__name__}")
    if bought.shape != (persons, items):
        raise ValueError(f"bought has shape {bought.shape} but there are {persons} persons and {items} items; "
                         f"it must be persons x items in the rows and columns of the factor matrices")
    csr = sp.csr_array(bought)
    if not csr.has_canonical_format:  # copied first: the caller's matrix is left as it was
        csr = csr.copy()
        csr.sum_duplicates()
    return csr.indptr.astype(np.int64, copy=False), csr.indices.astype(np.int32, copy=False)


def _largest_magnitude(matrix: np.ndarray) -> float:
    """``max |x|`` over the matrix, without a temporary copy of it."""
    return max(float(matrix.max()), -float(matrix.min()))


def _validate_k(k: object) -> int:
    k = check_int(k, "k")
    if k > np.iinfo(np.int16).max:
        raise ValueError(f"k must be at most {np.iinfo(np.int16).max}, got {k}")
    return int(k)


# Tiles per norm band: within a band, items are ordered along the items' principal direction.
_TILES_PER_BAND = 4


@dataclass(frozen=True)
class _NormTiles:
    """Item factors in tile order, transposed and cut into tiles of ``width`` items, with each tile's bounds.

    Items are sorted by norm (largest first) into bands of ``_TILES_PER_BAND`` tiles, and within a
    band by ``v·e``, greatest first, ``e`` the items' principal direction (the top eigenvector of
    the items' Gram matrix, signed so the items lean along it): a tile then spans a narrow range
    of ``v·e``. ``factors``: tiles x d x width float32, zero padded past the last item; ``items``:
    tiles x width int32, the item index of each column (-1: padding); ``bounds``: tiles x 5
    float64, see ``_score_block``; ``direction``: ``e``, float64.
    """

    factors: np.ndarray
    items: np.ndarray
    bounds: np.ndarray
    direction: np.ndarray

    @classmethod
    def of(cls, item_factors: np.ndarray, width: int) -> _NormTiles:
        items, dims = item_factors.shape
        # Any unit vector makes the bounds valid; the principal one makes them tight.
        gram = (item_factors.T @ item_factors).astype(np.float64)
        direction = np.linalg.eigh(gram)[1][:, -1]
        direction /= np.linalg.norm(direction)
        norms, along, across = _along_and_across(item_factors, direction)
        if along.sum() < 0:
            direction, along = -direction, -along
        order = np.argsort(-norms, kind="stable")  # equal norms: lower item first
        band = width * _TILES_PER_BAND
        for start in range(0, items, band):
            members = order[start: start + band]
            order[start: start + band] = members[np.argsort(-along[members], kind="stable")]
        tiles = -(-items // width)
        factors = np.zeros((tiles, dims, width), dtype=np.float32)
        for tile in range(tiles):
            members = order[tile * width: (tile + 1) * width]
            factors[tile, :, : len(members)] = item_factors[members].T
        columns = np.full(tiles * width, -1, dtype=np.int32)
        columns[:items] = order

        def per_tile(values: np.ndarray, pad: float) -> np.ndarray:
            full = np.full(tiles * width, pad)
            full[:items] = values[order]
            return full.reshape(tiles, width)

        tile_norm = per_tile(norms, 0.0).max(axis=1)
        rest_norm = np.maximum.accumulate(tile_norm[::-1])[::-1]
        bounds = np.stack([tile_norm, rest_norm, per_tile(along, np.inf).min(axis=1),
                           per_tile(along, -np.inf).max(axis=1), per_tile(across, 0.0).max(axis=1)], axis=1)
        return cls(factors, columns.reshape(tiles, width), np.ascontiguousarray(bounds), direction)

    def person_bounds(self, person_factors: np.ndarray) -> np.ndarray:
        """persons x 3 float64: ``‖u‖``, ``u·e``, ``‖u − (u·e)e‖``."""
        return np.ascontiguousarray(np.stack(_along_and_across(person_factors, self.direction), axis=1))


def _along_and_across(factors: np.ndarray, direction: np.ndarray,
                      rows_per_chunk: int = 4096) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row ``v``, in float64: ``‖v‖``, ``v·e`` and ``‖v − (v·e)e‖``; a chunk of rows at a time (bounded memory)."""
    norms, along, across = (np.empty(factors.shape[0]) for _ in range(3))
    for start in range(0, factors.shape[0], rows_per_chunk):
        exact = factors[start: start + rows_per_chunk].astype(np.float64)
        stop = start + exact.shape[0]
        norms[start:stop] = np.linalg.norm(exact, axis=1)
        along[start:stop] = exact @ direction
        across[start:stop] = np.linalg.norm(exact - along[start:stop, None] * direction[None, :], axis=1)
    return norms, along, across


def top_k_batches(person_factors: object, item_factors: object, k: int, *, bought: object = None,
                  eligibility: ItemEligibility | None = None, persons_per_batch: int = 16_384,
                  threads: int = 2, persons_per_block: int = 512, items_per_tile: int = 256) -> Iterator[TopK]:
    """For every person (row of ``person_factors``), the ``k`` items with the largest inner product.

    Scores are float32 inner products ``person_factors[p] @ item_factors[i]`` (unitless).
    Excluded are the items in row ``p`` of ``bought`` (a scipy.sparse persons x items matrix:
    any stored entry excludes) and items ``eligibility`` does not allow for the person. Exact:
    ranks follow the score, higher first, equal scores by lower item index; a person with fewer
    than ``k`` allowed items gets fewer, one with none gets none, and an empty catalogue gives
    nobody anything.

    Batches of ``persons_per_batch`` consecutive persons are yielded in order, so memory is
    bounded by the batch and the item factors, not by the number of persons. Within a batch,
    ``threads`` workers each score ``persons_per_block`` persons at a time, walking the items in
    tiles of ``items_per_tile``, largest norms first (the score tile stays in cache; each score
    summed in the factors' order, so a person's scores do not depend on who shares their block). A
    tile is skipped for a person when its upper bound on their scores (Cauchy–Schwarz, or the exact
    part along the items' principal direction plus Cauchy–Schwarz across it; with a slack for
    float32 rounding) is below their K-th best score, and a person stops when no remaining tile
    could place an item, so the result is the dense scan's. Fitted factors of a catalogue with
    popular items (very unequal norms, one leading direction) skip most products; where norms and
    directions are spread the scan is dense. ``products`` of each batch counts what was computed.

    No privacy mechanism is applied here: the output is per person and stays in the analytics zone.

    >>> import numpy as np
    >>> persons = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> items = np.array([[3.0, 0.0], [2.0, 5.0], [0.0, 1.0]])
    >>> [b.items.tolist() for b in top_k_batches(persons, items, 2)]
    [[[0, 1], [1, 2]]]
    """
    k = _validate_k(k)
    person_factors = _factor_matrix("person_factors", person_factors)
    item_factors = _factor_matrix("item_factors", item_factors)
    persons, dims = person_factors.shape
    items = item_factors.shape[0]
    if item_factors.shape[1] != dims:
        raise ValueError(f"person_factors has {dims} factors per row but item_factors has {item_factors.shape[1]}; "
                         f"both must come from the same model")
    for name, value in (("persons_per_batch", persons_per_batch), ("threads", threads),
                        ("persons_per_block", persons_per_block), ("items_per_tile", items_per_tile)):
        check_int(value, name)
    if persons and items:
        # |u·v| <= d · max|u| · max|v|, computed in float64 so the check itself cannot overflow.
        largest = dims * _largest_magnitude(person_factors) * _largest_magnitude(item_factors)
        if not largest < _SCORE_LIMIT:
            raise ValueError(f"factors are too large: inner products could overflow float32 (bound "
                             f"{largest:.3g}); rescale the factors")
    indptr, indices = _bought_csr(bought, persons, items)
    if eligibility is None:
        eligibility = ItemEligibility.everything(persons, items)
    if eligibility.allowed.shape[1] != items or eligibility.person_group.shape[0] != persons:
        raise ValueError(f"eligibility covers {eligibility.person_group.shape[0]} persons x "
                         f"{eligibility.allowed.shape[1]} items but the factors have {persons} x {items}")
    tile_width = max(64, -(-min(items_per_tile, max(items, 1)) // 64) * 64)
    tiles = _NormTiles.of(item_factors, tile_width) if items else None
    scratch = threading.local()

    def score_block(start: int, stop: int, top_scores, top_items, counts, offset: int) -> int:
        if getattr(scratch, "scores", None) is None:
            scratch.scores = np.empty((persons_per_block, tile_width), dtype=np.float32)
        return _score_block(person_factors[start:stop], tiles.person_bounds(person_factors[start:stop]),
                            tiles.factors, tiles.bounds, tiles.items, items, rounding_slack(dims),
                            underflow_slack(dims), start, eligibility.person_group,
                            eligibility.allowed, indptr, indices, scratch.scores,
                            top_scores[start - offset: stop - offset], top_items[start - offset: stop - offset],
                            counts[start - offset: stop - offset])

    with threadpool_limits(1), ThreadPoolExecutor(threads) as workers:
        for first in range(0, persons, persons_per_batch):
            last = min(first + persons_per_batch, persons)
            top_scores = np.zeros((last - first, k), dtype=np.float32)
            top_items = np.full((last - first, k), -1, dtype=np.int32)
            counts = np.zeros(last - first, dtype=np.int64)
            products = 0
            if items:
                blocks = [(s, min(s + persons_per_block, last)) for s in range(first, last, persons_per_block)]
                products = sum(workers.map(lambda b: score_block(*b, top_scores, top_items, counts, first), blocks))
            yield TopK(np.arange(first, last, dtype=np.int64), top_items, top_scores, counts, int(products))


def top_k_record_batches(person_ids: object, item_ids: object, person_factors: object, item_factors: object,
                         k: int, **options: object) -> Iterator[pa.RecordBatch]:
    """``top_k_batches`` as Arrow record batches ``(person_id, item_id, score, rank)``, rank from 1.

    ``person_ids`` and ``item_ids`` name the rows of ``person_factors`` and ``item_factors``.

    >>> import numpy as np
    >>> batches = top_k_record_batches(["p1"], ["a", "b"], np.ones((1, 2)), np.array([[1.0, 0], [2, 2]]), 5)
    >>> [b.to_pylist() for b in batches]
    [[{'person_id': 'p1', 'item_id': 'b', 'score': 4.0, 'rank': 1}, {'person_id': 'p1', 'item_id': 'a', 'score': 1.0, 'rank': 2}]]
    """
    person_ids = pa.array(person_ids, type=pa.string()) if not isinstance(person_ids, pa.Array) else person_ids
    item_ids = pa.array(item_ids, type=pa.string()) if not isinstance(item_ids, pa.Array) else item_ids
    if len(person_ids) != np.shape(person_factors)[0] or len(item_ids) != np.shape(item_factors)[0]:
        raise ValueError(f"{len(person_ids)} person ids and {len(item_ids)} item ids do not match factor matrices "
                         f"of {np.shape(person_factors)[0]} persons and {np.shape(item_factors)[0]} items")
    for batch in top_k_batches(person_factors, item_factors, k, **options):
        yield batch.to_record_batch(person_ids, item_ids)
