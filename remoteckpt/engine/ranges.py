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
