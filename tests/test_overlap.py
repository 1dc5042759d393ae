"""Overlapping boxes, found in O(S log S) however a tensor is cut (`format.overlap`), the slices
of an entry decoded all at once (`format.slices.boxes_from_wire`, `slice_keys`), and the
merge and the reader at a few hundred thousand slices (bounded by completing, not timed:
`python -m benchmarks --only micro` times a million)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

import remoteckpt
from remoteckpt import CorruptCheckpointError, Slice
from remoteckpt.format.bundle import (
    SLICES_TAG,
    BundleEntry,
    BundleIndex,
    data_filename,
    encode_index,
    entry_boxes,
    make_header,
    slices_wire,
)
from remoteckpt.format.coding import crc32c, mask_crc
from remoteckpt.format.merge import merge_indexes
from remoteckpt.format.overlap import find_overlap
from remoteckpt.format.slices import (
    Boxes,
    boxes_from_protos,
    boxes_from_wire,
    slice_key,
    slice_keys,
)


def brute_force(start: np.ndarray, stop: np.ndarray) -> bool:
    return any((np.maximum(start[i], start[j]) < np.minimum(stop[i], stop[j])).all()
               for i, j in itertools.combinations(range(len(start)), 2))


def guillotine(rng: np.random.Generator, rank: int, cuts: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """A box cut `cuts` times, each time one piece along one dimension: disjoint boxes."""
    pieces = [(np.zeros(rank, np.int64), rng.integers(1, 20, rank))]
    for _ in range(cuts):
        i, d = int(rng.integers(len(pieces))), int(rng.integers(rank))
        lo, hi = pieces[i]
        if hi[d] - lo[d] >= 2:
            at = rng.integers(lo[d] + 1, hi[d])
            left, right = (lo.copy(), hi.copy()), (lo.copy(), hi.copy())
            left[1][d] = right[0][d] = at
            pieces[i] = left
            pieces.append(right)
    return pieces


PINWHEEL = [((0, 0), (2, 1)), ((2, 0), (3, 2)), ((1, 2), (3, 3)), ((0, 1), (1, 3)), ((1, 1), (2, 2))]
"""Five boxes tiling a 3x3 square that no straight cut separates."""


def arrays(boxes: list[tuple[tuple[int, ...], tuple[int, ...]]]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([b[0] for b in boxes], np.int64), np.array([b[1] for b in boxes], np.int64)


# --- the check against brute force --------------------------------------------------------------


def test_random_layouts_agree_with_comparing_every_pair() -> None:
    rng = np.random.default_rng(14)
    overlapping = 0
    for _ in range(1500):
        rank = int(rng.integers(1, 4))
        boxes = guillotine(rng, rank, int(rng.integers(0, 30)))
        if rng.random() < 0.5:  # grow one box by a little: maybe into a neighbour
            i, d = int(rng.integers(len(boxes))), int(rng.integers(rank))
            lo, hi = boxes[i][0].copy(), boxes[i][1].copy()
            if rng.random() < 0.5:
                lo[d] = max(0, lo[d] - rng.integers(0, 3))
            else:
                hi[d] += rng.integers(0, 3)
            boxes[i] = (lo, hi)
        if rng.random() < 0.2:
            boxes.append((rng.integers(0, 10, rank), rng.integers(10, 20, rank)))
        if rng.random() < 0.1:
            boxes.append(boxes[int(rng.integers(len(boxes)))])
        if rng.random() < 0.1:  # an empty box overlaps nothing
            lo = rng.integers(0, 10, rank)
            hi = lo + rng.integers(0, 3, rank)
            hi[0] = lo[0]
            boxes.append((lo, hi))
        order = rng.permutation(len(boxes))
        start = np.array([boxes[i][0] for i in order]).reshape(len(boxes), rank)
        stop = np.array([boxes[i][1] for i in order]).reshape(len(boxes), rank)
        if rng.random() < 0.2:  # coordinates too large to pack beside a cell number: ranked first
            start, stop = start * 2**57, stop * 2**57
        found = find_overlap(start, stop)
        assert (found is not None) == brute_force(start, stop)
        if found is not None:
            overlapping += 1
            i, j = found
            assert (np.maximum(start[i], start[j]) < np.minimum(stop[i], stop[j])).all()
            assert tuple(start[i]) <= tuple(start[j])
    assert 200 < overlapping < 1300  # both outcomes well exercised


def test_boxes_no_cut_separates_are_compared_exactly() -> None:
    start, stop = arrays(PINWHEEL)
    assert find_overlap(start, stop) is None
    tiled = [(tuple(np.add(a, 3 * k)), tuple(np.add(b, 3 * k))) for k in range(4) for a, b in PINWHEEL]
    assert find_overlap(*arrays(tiled)) is None
    grown = PINWHEEL[:4] + [((1, 1), (2, 3))]  # the centre reaches into a blade
    assert find_overlap(*arrays(grown)) is not None


def test_pinwheel_slices_save_and_read_back(tmp_path: Path) -> None:
    full = np.arange(9, dtype=np.float32).reshape(3, 3)
    parts = [Slice(full[a[0]:b[0], a[1]:b[1]], (3, 3), a) for a, b in PINWHEEL]
    remoteckpt.save({"w": parts}, tmp_path / "ck")
    np.testing.assert_array_equal(remoteckpt.load(tmp_path / "ck")["w"], full)


def test_a_staircase_is_checked_exactly() -> None:
    """Cuts peel a staircase one box per round; what is left is compared pairwise."""
    n = 400
    boxes = []
    for k in range(n):
        boxes += [((k, k), (k + 1, n + 1)), ((k + 1, k), (n + 1, k + 1))]
    assert find_overlap(*arrays(boxes)) is None
    boxes[-1] = ((n - 1, n - 1), (n + 1, n))
    assert find_overlap(*arrays(boxes)) is not None


def test_scalars_and_empty_boxes() -> None:
    assert find_overlap(np.zeros((2, 0), np.int64), np.zeros((2, 0), np.int64)) == (0, 1)
    assert find_overlap(np.zeros((1, 0), np.int64), np.zeros((1, 0), np.int64)) is None
    start, stop = arrays([((0, 0), (4, 4)), ((1, 1), (1, 3)), ((2, 2), (2, 2))])
    assert find_overlap(start, stop) is None


# --- slices decoded from their bytes --------------------------------------------------------------


def random_entry(rng: np.random.Generator, rank: int, count: int) -> BundleEntry:
    entry = BundleEntry(dtype=1, shard_id=2, crc32c=5)
    shape = [int(d) for d in rng.choice([1, 7, 100, 2**33, 2**40], rank)]
    entry.shape.SetInParent()
    for d in shape:
        entry.shape.dim.add(size=d)
    for _ in range(count):
        extents = entry.slices.add().extent
        for d in shape:
            extent = extents.add()
            kind = rng.random()
            if kind < 0.3:
                continue  # full: no start, no length
            if kind < 0.35:
                extent.length = -1  # full, spelled out
                continue
            extent.start = int(rng.integers(0, d))
            extent.length = int(rng.integers(0, d - extent.start + 1))
    return entry


def same(a: Boxes, b: Boxes) -> bool:
    return bool((a.start == b.start).all() and (a.size == b.size).all() and (a.full == b.full).all())


def test_slices_decoded_whole_match_one_by_one() -> None:
    rng = np.random.default_rng(7)
    for trial in range(200):
        entry = random_entry(rng, int(rng.integers(0, 4)), int(rng.integers(32, 80)))
        if trial % 3 == 0:
            entry.chunk_size = 4096
            entry.chunk_crc32c.extend([1, 2, 3])
        shape = [d.size for d in entry.shape.dim]
        wire = slices_wire(entry)
        assert wire is not None
        decoded = boxes_from_wire(wire, SLICES_TAG, shape, len(entry.slices))
        assert decoded is not None and same(decoded, boxes_from_protos(entry.slices, shape))
        assert same(entry_boxes(entry), decoded)


def test_a_bad_slice_among_many_is_named_as_one_by_one() -> None:
    rng = np.random.default_rng(8)
    entry = random_entry(rng, 2, 64)
    shape = [d.size for d in entry.shape.dim]
    extent = entry.slices[40].extent[1]
    extent.start, extent.length = shape[1], 1
    with pytest.raises(CorruptCheckpointError, match=f"slice extent {shape[1]},1 outside dimension of size {shape[1]}"):
        entry_boxes(entry)
    entry.slices[40].extent.add()
    with pytest.raises(CorruptCheckpointError, match="slice has 3 extents for a rank-2 tensor"):
        entry_boxes(entry)


def test_fields_outside_their_extent_are_not_read_into_it() -> None:
    """A slice carrying an unknown varint field 1 after its extents: its bytes read like an
    extent's start, but lie outside every extent (its length says so)."""
    shape = (10, 10)
    wire = b""
    for i in range(40):
        inner = bytes([0x0A, 4, 0x08, i % 5, 0x10, 2]) + bytes([0x0A, 2, 0x10, 2])  # second: start 0
        if i == 39:
            inner += bytes([0x08, 5])
        wire += bytes([SLICES_TAG, len(inner)]) + inner
    entry = BundleEntry()
    for d in shape:
        entry.shape.dim.add(size=d)
    entry.MergeFromString(wire)
    assert boxes_from_wire(wire, SLICES_TAG, shape, 40) is None
    assert entry_boxes(entry).start[39].tolist() == [4, 0]  # field 1 of the slice is not the extent's start


def test_entries_with_unknown_fields_are_decoded_one_by_one() -> None:
    entry = random_entry(np.random.default_rng(9), 2, 40)
    shape = [d.size for d in entry.shape.dim]
    other = BundleEntry()
    other.ParseFromString(entry.SerializeToString() + bytes([0x10, 0x05]))  # field 2 as a varint
    assert slices_wire(other) is None
    assert same(entry_boxes(other), boxes_from_protos(entry.slices, shape))


def test_slice_keys_at_once_match_one_by_one() -> None:
    values = [0, 1, 63, 64, 65, 127, 128, 2**13 - 1, 2**13, 2**20, 2**27, 2**33, 2**55, 2**62 - 1]
    start = np.array([[v, 0, 1] for v in values], np.int64)
    size = np.array([[3, 2**62 - 1 - v, 1] for v in values], np.int64)
    full = np.zeros(start.shape, bool)
    full[::3, 2] = True
    boxes = Boxes(start, size, full)
    for name in (b"p", b"a\x00\xff/b", b""):
        assert slice_keys(name, boxes) == [slice_key(name, boxes.box(i)) for i in range(len(boxes))]
    assert slice_keys(b"p", boxes.take(np.zeros(0, np.int64))) == []


# --- a few hundred thousand slices ----------------------------------------------------------------

MANY = 250_000
PER_WORKER = 1000


def layout(kind: str, count: int) -> tuple[tuple[int, int], Boxes]:
    """Single columns of an [8, count] tensor, or 2x2 boxes of a square grid."""
    i = np.arange(count, dtype=np.int64)
    if kind == "columns":
        shape = (8, count)
        start, size = np.stack([0 * i, i], 1), np.stack([0 * i + 8, 0 * i + 1], 1)
    else:
        n = int(np.sqrt(count))
        i = i[: n * n]
        shape = (2 * n, 2 * n)
        start, size = np.stack([2 * (i // n), 2 * (i % n)], 1), np.full((n * n, 2), 2, np.int64)
    return shape, Boxes(start, size, (start == 0) & (size == np.asarray(shape)))


def tables(kind: str, count: int, crc: int = 0) -> list[BundleIndex]:
    """Worker tables of `PER_WORKER` boxes each, as workers write them (built directly)."""
    shape, boxes = layout(kind, count)
    keys = slice_keys(b"embedding", boxes)
    out = []
    for first in range(0, len(boxes), PER_WORKER):
        full = BundleEntry(dtype=1)
        for d in shape:
            full.shape.dim.add(size=d)
        table = BundleIndex(make_header(1), {b"embedding": full})
        for n, i in enumerate(range(first, min(first + PER_WORKER, len(boxes)))):
            extents = full.slices.add().extent
            for s, length, whole in zip(boxes.start[i].tolist(), boxes.size[i].tolist(), boxes.full[i].tolist()):
                extent = extents.add()
                if not whole:
                    extent.start, extent.length = s, length
            entry = BundleEntry(dtype=1, size=4 * int(boxes.size[i].prod()), crc32c=crc)
            entry.offset = n * entry.size
            for length in boxes.size[i].tolist():
                entry.shape.dim.add(size=length)
            table.entries[keys[i]] = entry
        out.append(table)
    return out


def test_a_quarter_million_column_slices_merge_and_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shape, boxes = layout("columns", MANY)
    size = 4 * 8  # every box one column of 8 float32: one CRC for all
    parts = tables("columns", MANY, crc=mask_crc(crc32c(bytes(size))))
    merged = merge_indexes(parts)
    assert len(merged.entries[b"embedding"].slices) == len(boxes)
    with open(tmp_path / "ck.index", "wb") as out:
        encode_index(merged.header, merged.entries, out)
    for shard in range(merged.num_shards):
        with open(tmp_path / data_filename("ck", shard, merged.num_shards), "wb") as out:
            out.truncate(size * PER_WORKER)

    checks = []
    import remoteckpt.engine.read

    real = remoteckpt.engine.read.find_overlap
    monkeypatch.setattr(remoteckpt.engine.read, "find_overlap", lambda *a: checks.append(1) or real(*a))
    reader = remoteckpt.CheckpointReader(tmp_path / "ck")
    assert reader.get_variable_to_shape_map() == {"embedding": list(shape)}  # slice entries hidden
    np.testing.assert_array_equal(reader.get_slice("embedding", ((0, MANY - 3), (8, 3))), np.zeros((8, 3), np.float32))
    np.testing.assert_array_equal(reader.get_slice("embedding", ((2, 7), (1, 1))), np.zeros((1, 1), np.float32))
    assert checks == [1]  # checked once, on the first read


@pytest.mark.parametrize("kind", ["columns", "grid"])
def test_a_quarter_million_boxes_and_one_overlap(kind: str) -> None:
    _, boxes = layout(kind, MANY)
    order = np.random.default_rng(3).permutation(len(boxes))
    start, stop = boxes.start[order], boxes.stop[order]
    assert find_overlap(start, stop) is None
    grown = int(np.flatnonzero(order == len(boxes) // 2)[0])  # a box in the middle reaches one further
    stop[grown, 1] += 1
    found = find_overlap(start, stop)
    assert found is not None and grown in found
    other = found[0] + found[1] - grown
    assert start[other, 1] == stop[grown, 1] - 1 and start[other, 0] == start[grown, 0]
