"""The compiled top-K kernel: one block of persons against the whole catalogue, tile by tile.

For each person block the item factors are walked in tiles small enough that the block's
score tile stays in the core's L2 cache between the matrix product that writes it and the
selection that reads it. Selection is exact: each row of the tile is cut into groups of
``GROUP`` items; a group whose maximum does not beat the person's current K-th best score
cannot hold a top-K item and is skipped after one vectorized pass. Only the few groups
that can hold a winner are scanned item by item, and only their candidates are checked
against the exclusions.

Order of the result: higher score first; equal scores by lower item index. A candidate
replaces the K-th best only when strictly greater, and items are visited in increasing
index order, so among equal scores the lower index always wins, whatever the tiling.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__: list[str] = []

# Items per group whose maximum is taken in one vectorized pass. 64 float32 = four cache
# lines; LLVM unrolls and vectorizes this loop at 32 and 64 and no longer at 128.
GROUP = 64
# Within a group that may hold a winner, runs of SUBGROUP items are skipped by their maximum too.
SUBGROUP = 8


@njit(nogil=True, cache=True, fastmath={"nnan", "nsz", "reassoc"})
def _group_max(row, start):  # pragma: no cover - compiled
    # max is associative exactly, so reassociation changes nothing; scores are never NaN
    # (factors are checked finite and small enough that no product overflows).
    best = row[start]
    for j in range(start + 1, start + GROUP):
        best = max(best, row[j])
    return best


@njit(nogil=True, cache=True, fastmath={"nnan", "nsz", "reassoc"})
def _subgroup_max(row, start):  # pragma: no cover - compiled
    best = row[start]
    for j in range(start + 1, start + SUBGROUP):
        best = max(best, row[j])
    return best


@njit(nogil=True, cache=True)
def _is_bought(bought_indices, low, high, item):  # pragma: no cover - compiled
    if high == low:
        return False
    position = low + np.searchsorted(bought_indices[low:high], item)
    return position < high and bought_indices[position] == item


@njit(nogil=True, cache=True)
def _select_tile(scores, width, item_offset, person_offset, person_group, allowed,
                 bought_indptr, bought_indices, top_scores, top_items, counts):  # pragma: no cover - compiled
    """Merge one tile into the running top-K: ``scores[p, j]`` for ``j < width`` is item ``item_offset + j``."""
    persons = scores.shape[0]
    k = top_scores.shape[1]
    full_groups = width // GROUP
    for p in range(persons):
        person = person_offset + p
        group = person_group[person]
        low = bought_indptr[person]
        high = bought_indptr[person + 1]
        row = scores[p]
        best_scores = top_scores[p]
        best_items = top_items[p]
        filled = counts[p]
        for g in range(full_groups + 1):
            start = g * GROUP
            stop = min(start + GROUP, width)
            if start >= stop:
                break
            if filled == k and stop - start == GROUP and _group_max(row, start) <= best_scores[k - 1]:
                continue
            for run in range(start, stop, SUBGROUP):
                run_stop = min(run + SUBGROUP, stop)
                if filled == k and run_stop - run == SUBGROUP and _subgroup_max(row, run) <= best_scores[k - 1]:
                    continue
                for j in range(run, run_stop):
                    score = row[j]
                    if filled == k and score <= best_scores[k - 1]:
                        continue
                    item = item_offset + j
                    if not allowed[group, item] or _is_bought(bought_indices, low, high, item):
                        continue
                    position = filled if filled < k else k - 1
                    while position > 0 and best_scores[position - 1] < score:
                        best_scores[position] = best_scores[position - 1]
                        best_items[position] = best_items[position - 1]
                        position -= 1
                    best_scores[position] = score
                    best_items[position] = item
                    if filled < k:
                        filled += 1
        counts[p] = filled


@njit(nogil=True, cache=True)
def _score_block(person_factors, item_tiles, items, person_offset, person_group, allowed,
                 bought_indptr, bought_indices, scores, top_scores, top_items, counts):  # pragma: no cover - compiled
    """Top-K of one person block over every item: matrix product and selection, tile by tile.

    ``item_tiles`` holds the item factors transposed and cut into tiles (tiles x d x width, zero
    padded past ``items``); ``scores`` is a persons x width scratch buffer.
    """
    width = item_tiles.shape[2]
    for t in range(item_tiles.shape[0]):
        start = t * width
        np.dot(person_factors, item_tiles[t], scores)
        _select_tile(scores, min(width, items - start), start, person_offset, person_group, allowed,
                     bought_indptr, bought_indices, top_scores, top_items, counts)
