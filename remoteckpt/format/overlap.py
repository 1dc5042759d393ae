"""Do any two of a tensor's boxes share an element?  In O(S log S) for the layouts partitioning
produces (bands of rows or columns, grids, any nesting of cuts), over every dimension.

The boxes are rows of two ``[S, rank]`` arrays, `start` and `stop` (half-open, so boxes that
only touch are disjoint; an empty box shares nothing).  Sorting packs a cell number and a
coordinate into one int64 key; where coordinates are too large for that, they are first
replaced by their rank among the dimension's coordinates (which keeps every comparison).

    cut       cells start as one cell holding every box.  For one dimension at a time, the
              boxes of each cell are sorted by start and split wherever a box starts at or
              after the furthest stop before it: no box of one side can share an element
              with a box of the other.  A box alone in its cell is done.  A grid is done in
              one round (rows cut it into bands, columns cut the bands into boxes).
    repeat    rounds over every dimension while some cell still splits.  A cell no
              dimension splits goes to `pairs`, and so does what is left once the rounds
              have done their share of work (a staircase can be cut one box per round).
    pairs     in a cell that no cut separates, boxes are compared exactly, but only pairs
              whose projections intersect on the dimension where fewest do (vectorised, in
              blocks).  Overlapping boxes always end here, in one cell, so the first pair
              found there is the answer.  Arrangements no cut separates (a pinwheel) do not
              come from partitioning; they cost O(S + P), P those pairs.
"""

from __future__ import annotations

import numpy as np

ROUND_WORK = 8
"""Rounds of cuts stop once they have sorted this many times the boxes over every dimension
(S * rank each): a grid or bands take one or two rounds, and what cuts peel one box at a time
(a staircase) is left to the pairwise step instead of costing S rounds."""

SORT_KEY_LIMIT = 1 << 62
"""Sort keys pack a cell number and a coordinate into one int64; coordinates too large for
that are first replaced by their rank (`_compress`), which keeps every comparison."""

PAIR_BLOCK = 1 << 18
"""Candidate pairs checked per vectorised step (about 15 MB of temporaries at rank 2)."""


def find_overlap(start: np.ndarray, stop: np.ndarray) -> tuple[int, int] | None:
    """Rows ``(i, j)`` of two boxes that share an element (``i`` the one that starts first,
    comparing starts dimension by dimension), or None if the boxes are pairwise disjoint."""
    count, rank = start.shape
    if rank == 0:  # every box of a scalar is the whole scalar
        return (0, 1) if count >= 2 else None
    live = np.flatnonzero((stop > start).all(axis=1))
    if len(live) < 2:
        return None
    lo, hi = start[live], stop[live]
    if int(hi.max()) >= SORT_KEY_LIMIT // (2 * len(live) + 2):  # cell * span + coordinate could overflow
        lo, hi = _compress(lo, hi)
    found = _cut_then_compare(lo, hi, int(hi.max()) + 1)
    if found is None:
        return None
    i, j = int(live[found[0]]), int(live[found[1]])
    return (i, j) if tuple(start[i]) <= tuple(start[j]) else (j, i)


def _compress(start: np.ndarray, stop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each coordinate replaced by its rank among the dimension's starts and stops."""
    n, rank = start.shape
    lo = np.empty((n, rank), np.int64)
    hi = np.empty((n, rank), np.int64)
    for d in range(rank):
        _, inverse = np.unique(np.concatenate((start[:, d], stop[:, d])), return_inverse=True)
        lo[:, d] = inverse[:n]
        hi[:, d] = inverse[n:]
    return lo, hi


def _cut_then_compare(lo: np.ndarray, hi: np.ndarray, span: int) -> tuple[int, int] | None:
    """`span` is above every coordinate: ``cell * span + coordinate`` sorts by cell, then
    coordinate, for cell numbers below the number of boxes."""
    n, rank = lo.shape
    members = np.arange(n)  # boxes whose cell holds others
    cell = np.zeros(n, np.int64)
    stuck: list[tuple[np.ndarray, np.ndarray]] = []  # (boxes, their cells): cells no dimension splits
    budget = ROUND_WORK * n * rank
    origin = np.zeros(n, np.int64)  # a box's cell when the round began
    while len(members) and budget > 0:
        origin[members] = cell[members]
        origin_sizes = np.bincount(origin[members])
        for d in range(rank):
            budget -= len(members)
            members, groups = _cut(members, cell[members], lo[members, d], hi[members, d], span)
            cell[members] = groups
            if not len(members):
                break
        else:  # a cell that kept all its boxes through a whole round will not split
            kept = np.bincount(cell[members])[cell[members]] == origin_sizes[origin[members]]
            if kept.any():
                stuck.append((members[kept], cell[members[kept]]))
                members = members[~kept]
    if len(members):
        stuck.append((members, cell[members]))
    if not stuck:
        return None
    rest = np.concatenate([boxes for boxes, _ in stuck])
    # cell numbers restart with every cut: number the stuck cells afresh, batch by batch
    batch = np.concatenate([np.full(len(boxes), i, np.int64) for i, (boxes, _) in enumerate(stuck)])
    _, cells = np.unique(batch * n + np.concatenate([cells for _, cells in stuck]), return_inverse=True)
    return _compare_pairs(rest, cells.astype(np.int64), lo, hi, span)


def _cut(members: np.ndarray, cell: np.ndarray, lo: np.ndarray, hi: np.ndarray,
         span: int) -> tuple[np.ndarray, np.ndarray]:
    """Split every cell along one dimension; return the boxes left in cells of two or more
    and their new cell numbers."""
    order = np.argsort(cell * span + lo, kind="stable")
    members, cell, lo, hi = members[order], cell[order], lo[order], hi[order]
    base = cell * span
    reach = np.maximum.accumulate(base + hi) - base  # furthest stop so far within the cell
    new = np.empty(len(members), bool)
    new[0] = True
    new[1:] = (cell[1:] != cell[:-1]) | (lo[1:] >= reach[:-1])
    group = np.cumsum(new) - 1
    shared = np.bincount(group)[group] > 1
    return members[shared], group[shared]


def _compare_pairs(boxes: np.ndarray, cell: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                   span: int) -> tuple[int, int] | None:
    """The first pair of `boxes` in one cell that share an element, comparing only the pairs
    whose projections intersect on the dimension where the fewest do."""
    best: tuple[int, np.ndarray, np.ndarray] | None = None
    for d in range(lo.shape[1]):
        key = cell * span + lo[boxes, d]
        order = np.argsort(key, kind="stable")
        # boxes after position i in its cell that start before box i stops in dimension d
        reach = np.searchsorted(key[order], (cell * span + hi[boxes, d])[order], side="left")
        counts = reach - np.arange(len(order)) - 1
        total = int(counts.sum())
        if best is None or total < best[0]:
            best = (total, boxes[order], counts)
    assert best is not None
    _, ordered, counts = best
    ends = np.cumsum(counts)
    first = 0
    while first < len(ordered):
        last = max(first + 1, int(np.searchsorted(ends, ends[first] - counts[first] + PAIR_BLOCK, side="right")))
        block = counts[first:last]
        left = np.repeat(np.arange(first, last), block)
        right = left + 1 + np.arange(len(left)) - np.repeat(np.cumsum(block) - block, block)
        a, b = ordered[left], ordered[right]
        hit = (np.maximum(lo[a], lo[b]) < np.minimum(hi[a], hi[b])).all(axis=1)
        if hit.any():
            k = int(np.argmax(hit))
            return int(a[k]), int(b[k])
        first = last
    return None
