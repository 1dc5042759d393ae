"""Micro-benchmark: merging and validating a tensor stored as a million slices.

A multi-worker save of a tensor cut into S boxes merges the workers' tables into one index and
checks that no two boxes overlap (`format.merge`); every reader checks the same once per
tensor before it reads (`format.bundle.entry_boxes` + `format.overlap`).  Both must stay
O(S log S) however the tensor is cut, so three layouts are timed:

    rows      a [S, 8] tensor, one row per slice
    columns   an [8, S] tensor, one column per slice (every box spans all rows)
    grid      a [2n, 2n] tensor, n*n boxes of 2x2 (n = sqrt(S))

The tables (one per worker, `SLICES_PER_WORKER` slices each) are built directly as entries,
not through a save: only the merge and the validation are timed.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from remoteckpt.format.bundle import BundleEntry, BundleIndex, entry_boxes, make_header
from remoteckpt.format.merge import merge_indexes
from remoteckpt.format.overlap import find_overlap
from remoteckpt.format.slices import Boxes, slice_keys

SLICES_PER_WORKER = 1000
"""Boxes each worker's table holds (so a million slices come from a thousand workers)."""

LAYOUTS = ("rows", "columns", "grid")


def layout(kind: str, count: int) -> tuple[tuple[int, int], Boxes]:
    """The full shape and the boxes of one layout of about `count` slices."""
    i = np.arange(count, dtype=np.int64)
    if kind == "rows":
        shape = (count, 8)
        start, size = np.stack([i, 0 * i], 1), np.stack([0 * i + 1, 0 * i + 8], 1)
    elif kind == "columns":
        shape = (8, count)
        start, size = np.stack([0 * i, i], 1), np.stack([0 * i + 8, 0 * i + 1], 1)
    elif kind == "grid":
        n = math.isqrt(count)
        i = i[: n * n]
        shape = (2 * n, 2 * n)
        start, size = np.stack([2 * (i // n), 2 * (i % n)], 1), np.full((n * n, 2), 2, np.int64)
    else:
        raise ValueError(kind)
    full = (start == 0) & (size == np.asarray(shape))
    return shape, Boxes(start, size, full)


def tables(kind: str, count: int) -> list[BundleIndex]:
    """One table per worker, as each would write it: the full entry listing its boxes, and
    an entry per box under its slice key."""
    shape, boxes = layout(kind, count)
    keys = slice_keys(b"embedding", boxes)
    out = []
    for first in range(0, len(boxes), SLICES_PER_WORKER):
        full = BundleEntry(dtype=1)
        full.shape.SetInParent()
        for d in shape:
            full.shape.dim.add(size=d)
        index = BundleIndex(make_header(1), {b"embedding": full})
        offset = 0
        for i in range(first, min(first + SLICES_PER_WORKER, len(boxes))):
            extents = full.slices.add().extent
            for s, n, whole in zip(boxes.start[i].tolist(), boxes.size[i].tolist(), boxes.full[i].tolist()):
                extent = extents.add()
                if not whole:
                    extent.start, extent.length = s, n
            entry = BundleEntry(dtype=1, offset=offset, size=4 * int(boxes.size[i].prod()), crc32c=0x12345678)
            for n in boxes.size[i].tolist():
                entry.shape.dim.add(size=n)
            offset += entry.size
            index.entries[keys[i]] = entry
        out.append(index)
    return out


def run_slices(count: int = 1_000_000, repeat: int = 2) -> list[dict[str, Any]]:
    """Rows of {name, value, unit, detail}: merge, validate and both, per layout (best of
    `repeat`; the tables are built afresh for each run, since a merge consumes them)."""
    rows: list[dict[str, Any]] = []
    for kind in LAYOUTS:
        best: dict[str, float] = {}
        for _ in range(repeat):
            parts = tables(kind, count)
            start = time.perf_counter()
            merged = merge_indexes(parts)
            merge = time.perf_counter() - start
            start = time.perf_counter()
            boxes = entry_boxes(merged.entries[b"embedding"])
            assert find_overlap(boxes.start, boxes.stop) is None
            validate = time.perf_counter() - start
            for name, value in (("merge", merge), ("validate", validate), ("merge+validate", merge + validate)):
                best[name] = min(best.get(name, math.inf), value)
            del parts, merged, boxes
        detail = f"{len(layout(kind, count)[1])} slices of one tensor by {kind}, {SLICES_PER_WORKER} per worker table"
        for name, value in best.items():
            rows.append({"name": f"slices {name} ({kind})", "value": value, "unit": "s", "detail": detail})
    return rows
