"""The compiled top-K kernel: one block of persons against the whole catalogue, tile by tile.

For each person block the item factors are walked in tiles small enough that the block's
score tile stays in cache between the matrix product that writes it and the selection that
reads it. Selection is exact: each row of the tile is cut into groups of ``GROUP`` items; a
group none of whose scores beats the person's current K-th best cannot hold a top-K item and
is skipped after one vectorized pass (an or of comparisons). Only the few groups that can
hold a winner are scanned item by item, and only their candidates are checked against the
eligibility table. Excluded (bought) items are set to -inf in the tile first, walking each
person's sorted exclusions once over the whole catalogue.

Order of the result: higher score first; equal scores by lower item index. A candidate
replaces the K-th best only when strictly greater, and items are visited in increasing
index order, so among equal scores the lower index always wins, whatever the tiling.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__: list[str] = []

# Items per group tested against the person's K-th best score in one vectorized pass.
GROUP = 64
# Within a group that may hold a winner, runs of SUBGROUP items are tested the same way.
SUBGROUP = 8


@njit(nogil=True, cache=True, inline="always")
def _group_above(row, start, threshold):  # pragma: no cover - compiled
    # An or-reduction of comparisons over a fixed trip count, not a maximum: LLVM unrolls and
    # vectorizes it without any fast-math flag (compare and or are exact), about five times
    # faster than a loop of max(). Inlined in numba's IR: as a call, it is not vectorized.
    above = 0
    for j in range(start, start + GROUP):
        above |= row[j] > threshold
    return above


@njit(nogil=True, cache=True, inline="always")
def _subgroup_above(row, start, threshold):  # pragma: no cover - compiled
    above = 0
    for j in range(start, start + SUBGROUP):
        above |= row[j] > threshold
    return above


@njit(nogil=True, cache=True)
def _mask_bought(scores, width, item_offset, bought_indptr, bought_indices, person_offset,
                 cursor):  # pragma: no cover - compiled
    """Set the scores of excluded items in this tile to -inf; ``cursor[p]`` walks person p's sorted exclusions.

    Real scores are finite (the factors are checked), so -inf marks an excluded item and nothing else.
    """
    stop = item_offset + width
    for p in range(scores.shape[0]):
        high = bought_indptr[person_offset + p + 1]
        position = cursor[p]
        while position < high and bought_indices[position] < stop:
            scores[p, bought_indices[position] - item_offset] = -np.inf
            position += 1
        cursor[p] = position


@njit(nogil=True, cache=True)
def _select_tile(scores, width, item_offset, person_offset, person_group, allowed,
                 top_scores, top_items, counts):  # pragma: no cover - compiled
    """Merge one tile into the running top-K: ``scores[p, j]`` for ``j < width`` is item ``item_offset + j``.

    Excluded items already hold -inf (``_mask_bought``).
    """
    persons = scores.shape[0]
    k = top_scores.shape[1]
    for p in range(persons):
        person = person_offset + p
        group = person_group[person]
        row = scores[p]
        best_scores = top_scores[p]
        best_items = top_items[p]
        filled = counts[p]
        for start in range(0, width, GROUP):
            stop = min(start + GROUP, width)
            if filled == k and stop - start == GROUP and not _group_above(row, start, best_scores[k - 1]):
                continue
            for run in range(start, stop, SUBGROUP):
                run_stop = min(run + SUBGROUP, stop)
                if filled == k and run_stop - run == SUBGROUP and not _subgroup_above(row, run, best_scores[k - 1]):
                    continue
                for j in range(run, run_stop):
                    score = row[j]
                    if filled == k and score <= best_scores[k - 1]:
                        continue
                    item = item_offset + j
                    if score == -np.inf or not allowed[group, item]:
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
    cursor = bought_indptr[person_offset: person_offset + scores.shape[0]].copy()
    for t in range(item_tiles.shape[0]):
        start = t * width
        np.dot(person_factors, item_tiles[t], scores)
        used = min(width, items - start)
        _mask_bought(scores, used, start, bought_indptr, bought_indices, person_offset, cursor)
        _select_tile(scores, used, start, person_offset, person_group, allowed, top_scores, top_items, counts)
