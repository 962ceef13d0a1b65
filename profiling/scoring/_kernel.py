"""The compiled top-K kernel: one block of persons against the catalogue, item tile by item tile,
skipping the tiles that cannot hold a winner.

Items come sorted by norm, largest first, and cut into tiles; each tile carries its largest
norm. By Cauchy–Schwarz no item of tile ``t`` scores above ``‖u‖ · max‖v‖ over t`` for person
``u``, and that bound only falls from tile to tile. So a person whose current K-th best score
(after exclusions) is above the bound of tile ``t`` is done: no later tile can place an item in
the top-K. Each tile is multiplied (BLAS) only with the persons still open, gathered into a
compact block; a block of persons stops when all of them are done. Where norms are alike
(random factors) no person closes early and this is the dense scan, tile after tile.

Safe against float32 rounding: a d-term float32 inner product, summed in any order, is within
``γ_d · Σ|u_i v_i| ≤ γ_d · ‖u‖‖v‖`` of the exact one, ``γ_d = d·2⁻²⁴ / (1 − d·2⁻²⁴)`` (Higham,
*Accuracy and Stability of Numerical Algorithms*, §3.1). The bound used is
``‖u‖ · max‖v‖ · (1 + 4 · d · 2⁻²⁴) + d · 2⁻¹²⁶`` in float64 (``rounding_slack``: above
``2 γ_d`` while ``d < 2²²``; ``underflow_slack``: one smallest normal float32 per term, for
products that underflow or are flushed); a tile is skipped only when that bound is strictly
below the K-th best, so no computed score of a skipped item could have reached it, ties included.

Selection is exact: each row of the score tile is cut into groups of ``GROUP`` items; a group
none of whose scores reaches the person's current K-th best cannot hold a top-K item and is
skipped after one vectorized pass (an or of comparisons). Only the few groups that can hold a
winner are scanned item by item, and only their candidates are checked against the person's
exclusions (a binary search in their sorted bought items) and the eligibility table.

Order of the result: higher score first; equal scores by lower item index. Items are visited
in norm order, so a candidate enters when its (score, item) beats the K-th best's: a higher
score, or an equal score and a lower item index; the result does not depend on the tiling.
A block of one open person is multiplied as two rows (the second zero): BLAS computes a one-row
product through another kernel (gemv) whose sums round differently, and a person's scores must
not depend on who shares their block.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__: list[str] = []

# Items per group tested against the person's K-th best score in one vectorized pass.
GROUP = 64
# Within a group that may hold a winner, runs of SUBGROUP items are tested the same way.
SUBGROUP = 8


def rounding_slack(dims: int) -> float:
    """Relative slack added to a Cauchy–Schwarz bound so float32 rounding of a ``dims``-term sum stays under it."""
    return 4.0 * dims * 2.0 ** -24


def underflow_slack(dims: int) -> float:
    """Absolute slack: one smallest normal float32 per term, for products that underflow or are flushed."""
    return dims * 2.0 ** -126


@njit(nogil=True, cache=True, inline="always")
def _group_reaches(row, start, threshold):  # pragma: no cover - compiled
    # An or-reduction of comparisons over a fixed trip count, not a maximum: LLVM unrolls and
    # vectorizes it without any fast-math flag (compare and or are exact), about five times
    # faster than a loop of max(). Inlined in numba's IR: as a call, it is not vectorized.
    # ">=": an equal score with a lower item index also beats the K-th best.
    reaches = 0
    for j in range(start, start + GROUP):
        reaches |= row[j] >= threshold
    return reaches


@njit(nogil=True, cache=True, inline="always")
def _subgroup_reaches(row, start, threshold):  # pragma: no cover - compiled
    reaches = 0
    for j in range(start, start + SUBGROUP):
        reaches |= row[j] >= threshold
    return reaches


@njit(nogil=True, cache=True, inline="always")
def _bought(bought_indices, low, end, item):  # pragma: no cover - compiled
    """Whether ``item`` is in the sorted ``bought_indices[low:end]``."""
    high = end
    while low < high:
        middle = (low + high) >> 1
        if bought_indices[middle] < item:
            low = middle + 1
        else:
            high = middle
    return low < end and bought_indices[low] == item


@njit(nogil=True, cache=True)
def _select_rows(scores, rows, open_persons, used, tile_items, person_offset, person_group, allowed,
                 bought_indptr, bought_indices, top_scores, top_items, counts):  # pragma: no cover - compiled
    """Merge one score tile into the running top-K of its persons.

    Row ``r < rows`` of ``scores`` belongs to person ``open_persons[r]`` of the block; column
    ``j < used`` is item ``tile_items[j]``.
    """
    k = top_scores.shape[1]
    for r in range(rows):
        p = open_persons[r]
        person = person_offset + p
        group = person_group[person]
        bought_low = bought_indptr[person]
        bought_high = bought_indptr[person + 1]
        row = scores[r]
        best_scores = top_scores[p]
        best_items = top_items[p]
        filled = counts[p]
        for start in range(0, used, GROUP):
            stop = min(start + GROUP, used)
            if filled == k and stop - start == GROUP and not _group_reaches(row, start, best_scores[k - 1]):
                continue
            for run in range(start, stop, SUBGROUP):
                run_stop = min(run + SUBGROUP, stop)
                if filled == k and run_stop - run == SUBGROUP and not _subgroup_reaches(row, run, best_scores[k - 1]):
                    continue
                for j in range(run, run_stop):
                    score = row[j]
                    item = tile_items[j]
                    if filled == k and (score < best_scores[k - 1]
                                        or (score == best_scores[k - 1] and item > best_items[k - 1])):
                        continue
                    if not allowed[group, item] or _bought(bought_indices, bought_low, bought_high, item):
                        continue
                    position = filled if filled < k else k - 1
                    while position > 0 and (best_scores[position - 1] < score or (
                            best_scores[position - 1] == score and best_items[position - 1] > item)):
                        best_scores[position] = best_scores[position - 1]
                        best_items[position] = best_items[position - 1]
                        position -= 1
                    best_scores[position] = score
                    best_items[position] = item
                    if filled < k:
                        filled += 1
        counts[p] = filled


@njit(nogil=True, cache=True)
def _score_block(person_factors, person_bound, item_tiles, tile_bound, tile_items, items, absolute_slack,
                 person_offset, person_group, allowed, bought_indptr, bought_indices, scores, gathered,
                 top_scores, top_items, counts):  # pragma: no cover - compiled
    """Top-K of one block of persons over every item that may still matter; returns the products computed.

    ``item_tiles`` holds the item factors in norm order, transposed and cut into tiles (tiles x d
    x width, zero padded past ``items``), ``tile_items`` the item index of each column (tiles x
    width), ``tile_bound`` each tile's largest norm; ``person_bound`` is ``‖u‖ · (1 + slack)``.
    ``scores`` (rows x width) and ``gathered`` (rows x d) are scratch with at least two rows.
    """
    persons = person_factors.shape[0]
    width = item_tiles.shape[2]
    k = top_scores.shape[1]
    open_persons = np.arange(persons)
    still_open = persons
    computed = 0
    for t in range(item_tiles.shape[0]):
        # Close every person whose K-th best is above this tile's bound (and so every later tile's).
        kept = 0
        for r in range(still_open):
            p = open_persons[r]
            if counts[p] < k or person_bound[p] * tile_bound[t] + absolute_slack >= top_scores[p, k - 1]:
                open_persons[kept] = p
                kept += 1
        still_open = kept
        if still_open == 0:
            break
        used = min(width, items - t * width)
        if still_open == persons and persons >= 2:
            np.dot(person_factors, item_tiles[t], scores[:persons])
        else:
            for r in range(still_open):
                gathered[r] = person_factors[open_persons[r]]
            rows = max(still_open, 2)
            if still_open == 1:
                gathered[1] = 0.0
            np.dot(gathered[:rows], item_tiles[t], scores[:rows])
        computed += still_open * used
        _select_rows(scores, still_open, open_persons, used, tile_items[t], person_offset, person_group, allowed,
                     bought_indptr, bought_indices, top_scores, top_items, counts)
    return computed
