"""The compiled top-K kernel: one block of persons against the catalogue, item tile by item tile,
skipping the tiles that cannot hold a winner.

Items come sorted by norm, largest first, in bands of a few tiles; within a band they are
ordered along the items' principal direction ``e`` (``_top_k._NormTiles``: norm buckets as in
LEMP, Teflioudi et al., SIGMOD 2015, and a rotated leading coordinate bounded exactly as in
FEXIPRO, Li et al., SIGMOD 2017). Each tile carries two upper bounds on ``u·v`` over its items:
Cauchy–Schwarz, ``‖u‖ · max‖v‖``, and ``max((u·e) · min v·e, (u·e) · max v·e) + ‖u⊥‖ · max‖v⊥‖``
(``⊥``: the part orthogonal to ``e``), tight where persons and items lean along one direction,
as fitted factors of a catalogue with popular items do. A tile is multiplied only with the
persons for whom the smaller bound reaches their current K-th best score (after exclusions). A
person whose K-th best is above ``‖u‖`` times the largest norm of all remaining tiles is done for
good (early exit); a block stops when all its persons are.
Where norms and directions are spread (random factors) no bound falls below a K-th best and
this is the dense scan, tile after tile.

Safe against float32 rounding: a d-term float32 inner product, summed in any order, is within
``γ_d · Σ|u_i v_i| ≤ γ_d · ‖u‖‖v‖`` of the exact one, ``γ_d = d·2⁻²⁴ / (1 − d·2⁻²⁴)`` (Higham,
*Accuracy and Stability of Numerical Algorithms*, §3.1). Bounds are computed in float64 from
the float32 factors, and ``4 · d · 2⁻²⁴ · ‖u‖ · max‖v‖ + d · 2⁻¹²⁶`` is added to them
(``rounding_slack``: above ``2 γ_d`` while ``d < 2²²``, which also covers the float64 rounding
of the bounds themselves; ``underflow_slack``: one smallest normal float32 per term, for
products that underflow or are flushed); a tile is skipped only when its bound is strictly
below the K-th best, so no computed score of a skipped item could have reached it, ties included.

Selection is exact: each row of the score tile is cut into groups of ``GROUP`` items; a group
none of whose scores reaches the person's current K-th best cannot hold a top-K item and is
skipped after one vectorized pass (its maximum, compared once). Only the few groups that can hold a
winner are scanned item by item, and only their candidates are checked against the person's
exclusions (a binary search in their sorted bought items) and the eligibility table.

Order of the result: higher score first; equal scores by lower item index. Items are visited
in tile order, not by index, so a candidate enters when its (score, item) beats the K-th best's: a higher
score, or an equal score and a lower item index; the result does not depend on the tiling.
A person's scores must not depend on who shares their block (an engine's partitions decide that),
so products are not left to BLAS, whose kernels sum a row's terms in an order that depends on the
row's place and the block's size (OpenBLAS's Haswell kernels, on AMD EPYC without AVX-512, round
a person alone, or one of 16 or 512, differently). ``_products`` sums each score's terms in the
factors' order, one multiplication and one addition at a time (no fused multiply-add), four
persons at once sharing each row of the tile, four of the tile's rows per pass.
"""

from __future__ import annotations

import numpy as np
from numba import njit, uint64

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


# Whether any of the ``count`` scores from ``start`` reaches ``threshold``, as their maximum compared
# once. With unsigned indices (no negative-index wraparound) and a constant ``count`` (GROUP or
# SUBGROUP, once inlined in numba's IR) LLVM unrolls it into a branch-free chain of maxima: in the
# selection this took the random-factor workload from 0.77x to 0.87x the bare GEMM's throughput
# against an or of comparisons, whose boolean mask it widened lane by lane. The flags let LLVM
# reorder the maximum where it vectorizes it; they hold because every score is a finite float32
# (the overflow check in ``top_k_batches``), and the sign of a zero cannot change ``>=``, so the
# result is exact.
# ">=": an equal score with a lower item index also beats the K-th best.
@njit(nogil=True, cache=True, inline="always", fastmath={"nnan", "ninf", "nsz", "reassoc"})
def _reaches(row, start, count, threshold):  # pragma: no cover - compiled
    first = uint64(start)
    largest = row[first]
    for j in range(uint64(1), uint64(count)):
        score = row[first + j]
        largest = score if score > largest else largest
    return largest >= threshold


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
            if filled == k and stop - start == GROUP and not _reaches(row, start, GROUP, best_scores[k - 1]):
                continue
            for run in range(start, stop, SUBGROUP):
                run_stop = min(run + SUBGROUP, stop)
                if filled == k and run_stop - run == SUBGROUP and not _reaches(row, run, SUBGROUP, best_scores[k - 1]):
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
def _products(person_factors, scored, rows, tile, used, scores):  # pragma: no cover - compiled
    """``scores[r, :used] = person_factors[scored[r]] @ tile[:, :used]`` for ``r < rows`` (float32).

    Each score is ``((u₀v₀ + u₁v₁) + u₂v₂) + …``, rounded after each multiplication and addition,
    whichever rows are computed with it: four rows at a time share each row of the tile and take
    four of its rows per pass over a score row (a quarter of the loads and stores of the scores),
    the rest one row at a time, the same operations in the same order.
    """
    dims = tile.shape[0]
    first = tile[0]
    r = 0
    while r + 4 <= rows:
        a0 = person_factors[scored[r]]
        a1 = person_factors[scored[r + 1]]
        a2 = person_factors[scored[r + 2]]
        a3 = person_factors[scored[r + 3]]
        s0, s1, s2, s3 = scores[r], scores[r + 1], scores[r + 2], scores[r + 3]
        for j in range(used):
            s0[j] = a0[0] * first[j]
            s1[j] = a1[0] * first[j]
            s2[j] = a2[0] * first[j]
            s3[j] = a3[0] * first[j]
        d = 1
        while d + 4 <= dims:
            t0, t1, t2, t3 = tile[d], tile[d + 1], tile[d + 2], tile[d + 3]
            b00, b01, b02, b03 = a0[d], a0[d + 1], a0[d + 2], a0[d + 3]
            b10, b11, b12, b13 = a1[d], a1[d + 1], a1[d + 2], a1[d + 3]
            b20, b21, b22, b23 = a2[d], a2[d + 1], a2[d + 2], a2[d + 3]
            b30, b31, b32, b33 = a3[d], a3[d + 1], a3[d + 2], a3[d + 3]
            for j in range(used):
                v0, v1, v2, v3 = t0[j], t1[j], t2[j], t3[j]
                s0[j] = (((s0[j] + b00 * v0) + b01 * v1) + b02 * v2) + b03 * v3
                s1[j] = (((s1[j] + b10 * v0) + b11 * v1) + b12 * v2) + b13 * v3
                s2[j] = (((s2[j] + b20 * v0) + b21 * v1) + b22 * v2) + b23 * v3
                s3[j] = (((s3[j] + b30 * v0) + b31 * v1) + b32 * v2) + b33 * v3
            d += 4
        while d < dims:
            line = tile[d]
            b0, b1, b2, b3 = a0[d], a1[d], a2[d], a3[d]
            for j in range(used):
                v = line[j]
                s0[j] += b0 * v
                s1[j] += b1 * v
                s2[j] += b2 * v
                s3[j] += b3 * v
            d += 1
        r += 4
    while r < rows:
        a = person_factors[scored[r]]
        s = scores[r]
        for j in range(used):
            s[j] = a[0] * first[j]
        for d in range(1, dims):
            line = tile[d]
            b = a[d]
            for j in range(used):
                s[j] += b * line[j]
        r += 1


@njit(nogil=True, cache=True)
def _score_block(person_factors, person_bounds, item_tiles, tile_bounds, tile_items, items, slack, absolute_slack,
                 person_offset, person_group, allowed, bought_indptr, bought_indices, scores, top_scores,
                 top_items, counts):  # pragma: no cover - compiled
    """Top-K of one block of persons over every item that may still matter; returns the products computed.

    ``item_tiles`` holds the item factors in tile order, transposed and cut into tiles (tiles x d
    x width, zero padded past ``items``), ``tile_items`` the item index of each column (tiles x
    width). ``person_bounds`` (persons x 3, float64): ``‖u‖``, ``u·e`` and ``‖u − (u·e)e‖`` for
    the items' principal direction ``e``; ``tile_bounds`` (tiles x 5, float64): the tile's
    largest norm, the largest norm of this and every later tile, the least and greatest ``v·e``
    and the largest ``‖v − (v·e)e‖``. ``scores`` (persons x width) is scratch.
    """
    persons = person_factors.shape[0]
    width = item_tiles.shape[2]
    k = top_scores.shape[1]
    open_persons = np.arange(persons)
    scored = np.empty(persons, dtype=np.int64)
    still_open = persons
    computed = 0
    for t in range(item_tiles.shape[0]):
        tile_norm, rest_norm, low, high, across = tile_bounds[t]
        kept = 0
        rows = 0
        for r in range(still_open):
            p = open_persons[r]
            norm, along, person_across = person_bounds[p]
            full = counts[p] == k
            kth = top_scores[p, k - 1]
            # Closed for good: no item of this or any later tile can reach the K-th best.
            if full and norm * rest_norm * (1.0 + slack) + absolute_slack < kth:
                continue
            open_persons[kept] = p
            kept += 1
            # This tile: Cauchy-Schwarz, or the exact part along e plus Cauchy-Schwarz across it.
            bound = min(norm * tile_norm, max(along * low, along * high) + person_across * across)
            if not full or bound + slack * norm * tile_norm + absolute_slack >= kth:
                scored[rows] = p
                rows += 1
        still_open = kept
        if still_open == 0:
            break
        if rows == 0:
            continue
        used = min(width, items - t * width)
        _products(person_factors, scored, rows, item_tiles[t], used, scores)
        computed += rows * used
        _select_rows(scores, rows, scored, used, tile_items[t], person_offset, person_group, allowed,
                     bought_indptr, bought_indices, top_scores, top_items, counts)
    return computed
