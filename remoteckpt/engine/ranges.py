"""Which byte ranges to fetch: a pure planner, separate from the executor.

    requests  (file, offset, length, task)      one per stored entry (or chunk run) needed
        │ split: pieces of at most `chunk` bytes, so one big tensor is fetched in parallel
        ▼
    pieces    (file, offset, length, task, index)   index = order within the task (for CRCs)
        │ coalesce: neighbours in one file, at most `gap` bytes apart, up to `chunk` in all
        ▼
    ReadOp    (file, start, length, pieces)     one request to the store each
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class ReadRequest:
    """Bytes ``[offset, offset + length)`` of `key`, wanted by verification unit `task`."""

    key: str
    offset: int
    length: int
    task: int


@dataclass(frozen=True)
class Piece:
    """Part `index` (in order) of task `task`'s bytes."""

    key: str
    offset: int
    length: int
    task: int
    index: int

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass(frozen=True)
class ReadOp:
    """One ranged request: ``[start, start + length)`` of `key`, delivering `pieces`
    (sorted, disjoint; bytes between them are discarded)."""

    key: str
    start: int
    length: int
    pieces: tuple[Piece, ...]

    @property
    def end(self) -> int:
        return self.start + self.length


def split(requests: Iterable[ReadRequest], chunk: int) -> list[Piece]:
    """Cut every request into pieces of at most `chunk` bytes (zero-length requests vanish)."""
    pieces = []
    for r in requests:
        for index, start in enumerate(range(r.offset, r.offset + r.length, chunk)):
            pieces.append(Piece(r.key, start, min(chunk, r.offset + r.length - start), r.task, index))
    return pieces


def coalesce(pieces: Iterable[Piece], *, gap: int, max_length: int) -> list[ReadOp]:
    """Group pieces into requests: same file, sorted by offset, a new request whenever the
    hole to the previous piece exceeds `gap` or the request would exceed `max_length`."""
    ops: list[ReadOp] = []
    current: list[Piece] = []
    for piece in sorted(pieces, key=lambda p: (p.key, p.offset)):
        if current:
            first, last = current[0], current[-1]
            if (piece.key == first.key and piece.offset >= last.end and piece.offset - last.end <= gap
                    and piece.end - first.offset <= max_length):
                current.append(piece)
                continue
            ops.append(_op(current))
        current = [piece]
    if current:
        ops.append(_op(current))
    return ops


def _op(pieces: list[Piece]) -> ReadOp:
    start = pieces[0].offset
    return ReadOp(pieces[0].key, start, pieces[-1].end - start, tuple(pieces))


def plan_reads(requests: Iterable[ReadRequest], *, chunk: int, gap: int) -> list[ReadOp]:
    return coalesce(split(requests, chunk), gap=gap, max_length=chunk)


MAX_RUNS = 1 << 20
"""Beyond this many separate runs in one box, a planner reads the whole entry instead."""


def box_byte_runs(outer: tuple[int, ...], start: tuple[int, ...], size: tuple[int, ...],
                  itemsize: int) -> list[tuple[int, int]] | None:
    """Byte runs ``(offset, length)`` that the box (`start`, `size`, relative to the array)
    occupies in a C-ordered array of shape `outer`; None if there would be more than
    `MAX_RUNS` (read it all instead).  Trailing dimensions the box spans fully merge into
    longer runs."""
    rank = len(outer)
    if any(n == 0 for n in size):
        return []
    k = rank - 1
    while k >= 0 and start[k] == 0 and size[k] == outer[k]:
        k -= 1
    if k < 0:
        return [(0, itemsize * _prod(outer))]
    strides = [_prod(outer[d + 1 :]) for d in range(rank)]
    run = size[k] * strides[k] * itemsize
    count = _prod(size[:k])
    if count > MAX_RUNS:
        return None
    base = start[k] * strides[k]
    offsets = [base]
    for d in range(k - 1, -1, -1):  # expand the leading dimensions, innermost first
        step = strides[d]
        offsets = [(start[d] + i) * step + o for i in range(size[d]) for o in offsets]
    return [(o * itemsize, run) for o in sorted(offsets)]


def chunk_spans(runs: Iterable[tuple[int, int]], chunk: int, total: int) -> list[tuple[int, int]]:
    """The byte spans ``(offset, length)`` of whole `chunk`-sized chunks (of a `total`-byte
    payload) that the runs touch, adjacent chunks merged: what to read so every byte fetched
    can be verified against its chunk's CRC."""
    spans: list[tuple[int, int]] = []
    for offset, length in runs:
        if length <= 0:
            continue
        lo = offset // chunk * chunk
        hi = min(total, -(-(offset + length) // chunk) * chunk)
        if spans and lo <= spans[-1][0] + spans[-1][1]:
            prev_lo, prev_len = spans[-1]
            spans[-1] = (prev_lo, max(prev_lo + prev_len, hi) - prev_lo)
        else:
            spans.append((lo, hi - lo))
    return spans


@dataclass(frozen=True)
class RowBlock:
    """Rows ``[lo, hi)`` of dimension ``len(prefix)`` of a C-ordered array, at the indices
    `prefix` of the dimensions before it (all of every dimension after it): bytes
    ``[offset, offset + length)`` of the array, contiguous."""

    prefix: tuple[int, ...]
    lo: int
    hi: int
    offset: int
    length: int


def row_blocks(shape: tuple[int, ...], itemsize: int, max_bytes: int) -> list[RowBlock]:
    """The array of `shape` cut, in order, into contiguous blocks of whole rows of at most
    `max_bytes` each (a row larger than that is cut along the next dimension, and so on;
    a block is never less than one element).  A block maps to a numpy slice, so what it
    holds of a box is copied out with one assignment."""
    blocks: list[RowBlock] = []

    def cut(prefix: tuple[int, ...], offset: int) -> None:
        dim = len(prefix)
        row = itemsize * _prod(shape[dim + 1 :])
        if dim == len(shape) - 1 or row <= max_bytes:
            step = max(1, max_bytes // row) if row else shape[dim]
            for lo in range(0, shape[dim], step or 1):
                hi = min(shape[dim], lo + step)
                blocks.append(RowBlock(prefix, lo, hi, offset + lo * row, (hi - lo) * row))
            return
        for i in range(shape[dim]):
            cut((*prefix, i), offset + i * row)

    if not shape:
        return [RowBlock((), 0, 1, 0, itemsize)]
    cut((), 0)
    return blocks


def _prod(values: Iterable[int]) -> int:
    out = 1
    for v in values:
        out *= v
    return out
