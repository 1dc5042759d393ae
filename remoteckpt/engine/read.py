"""Reading tensors out of an opened checkpoint: the read pipeline behind `CheckpointReader`.

    resolve   each requested (tensor, box) -> the stored boxes that intersect it (a tensor's
              stored boxes are decoded and checked for overlaps once per checkpoint opened,
              then searched as arrays: a million slices cost seconds once, not every read)
    check     every entry against the tensor's dtype and shape, and against its data file's
              size where it is known (listed when the checkpoint was opened, or stated by an
              earlier answer: `engine.versions`), before anything is allocated; where it is
              not, a claim that would fill memory (a string entry above `UNSIZED_CLAIM`, an
              output the process cannot allocate) waits for one ranged read of the claim's
              last byte, which states the size (a hostile index cannot make a reader fill
              memory for bytes its data file does not hold)
    plan      (`engine.ranges`) entries that fill a contiguous region of an output array are
              read straight into it, split into pieces and coalesced with their neighbours
              across tensors; any other part of an entry (a partial box, or a region of the
              output that is not contiguous) streams through temporary blocks of rows drawn
              from the process's memory budget, each copied out to the request and given back:
              just the chunks holding the box where the entry has remoteckpt's per-chunk CRCs,
              else the whole entry in order, through its one CRC (a row of a 4 GiB
              TensorFlow-written tensor costs 4 GiB of reads, never more memory than the budget)
    fetch     (`engine.fetch`) every read pinned to the data file's version: the first answer
              for a file pins it, later reads carry it (``If-Match``), every answer must name it
    verify    every byte returned against a CRC32C; a mismatch (or a data file missing, or
              one ending early) while the index is no longer the version read is reported as
              the checkpoint replaced (`CheckpointChangedError`: one HEAD of the index, on
              that error path only), never as damage

The same shape as the save path (`engine.plan` -> `engine.write`): a pure plan, then an
executor that moves bytes.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

import numpy as np

from .. import dtypes
from ..errors import (
    CheckpointChangedError,
    CheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    ShapeMismatchError,
    TensorNotFoundError,
)
from ..format.bundle import (
    BundleEntry,
    BundleIndex,
    check_shape,
    data_filename,
    entry_boxes,
    entry_shape,
    index_filename,
)
from ..format.coding import crc32c_combine, unmask_crc
from ..format.overlap import find_overlap
from ..format.payload import decode_strings
from ..format.slices import Box, Boxes, box_in, slice_keys
from ..options import IOOptions
from ..progress import ProgressCallback, Reporter
from ..storage import ObjectInfo, Store
from .budget import MemoryBudget, process_budget
from .fetch import PieceId, execute, gather_or_cancel
from .hostcache import Check, host_cache
from .ranges import Piece, ReadOp, RowBlock, box_byte_runs, chunk_spans, coalesce, row_blocks
from .versions import Versions

OnBytes = Callable[[int], None] | None

BoxLike = tuple[Sequence[int], Sequence[int]] | tuple[slice, ...] | Box
"""A box: ``(start, size)`` per dimension, a tuple of Python slices, or a `Box`."""


STREAM_BLOCKS = 4
"""A buffered read streams its entry in blocks of a quarter of the memory budget: up to four
in flight (fetched while earlier ones are copied out), within the budget."""

MIN_STREAM_BLOCK = 256 * 1024
"""Smallest block a buffered read streams with (a tiny budget would otherwise mean tiny reads)."""

UNSIZED_CLAIM = 64 * 2**20
"""Bytes a read fills for a string entry (its payload and its array of objects) whose data
file's size it does not know yet: above this, the size is learned first (one ranged read of
the entry's last byte).  Numeric outputs need no such step: their memory is only mapped until
bytes land in it, and an entry outside its file is refused by the first answer (S3's 416, a
short read); one the process cannot even allocate waits for the size the same way."""


class SizesNeeded(Exception):
    """`OpenCheckpoint.plan_boxes(learn=True)` needs these data files' sizes before it
    allocates: {data file key: (tensor name, the entry reaching furthest into it)}."""

    def __init__(self, entries: dict[str, tuple[str, BundleEntry]]) -> None:
        super().__init__(f"the sizes of {sorted(entries)} are needed")
        self.entries = entries


def _byteswap(array: np.ndarray) -> None:
    size = array.dtype.itemsize // (2 if array.dtype.kind == "c" else 1)
    if size > 1:
        array.view(f"u{size}").byteswap(inplace=True)


@dataclass
class _Part:
    """One stored entry's contribution to one request."""

    name: str
    entry: BundleEntry
    data_key: str
    stored: Box  # the box the entry holds
    part: Box  # its intersection with the request
    request: Box
    out: np.ndarray


@dataclass
class ReadPlan:
    """What one `read_boxes` call reads: the output arrays (in request order), the parts
    read straight into them, the parts streamed through blocks (with each block's spans of
    the entry), and the bytes to fetch in all."""

    results: list[np.ndarray]
    direct: list[_Part]
    buffered: list[tuple[_Part, list[tuple[RowBlock, list[tuple[int, int]]]]]]
    total: int


def decode_name(key: bytes) -> str:
    return key.decode("utf-8", "surrogateescape")


@dataclass
class OpenCheckpoint:
    """A checkpoint as opened: its store, its decoded index (and the etag of the index's
    version, "" where unknown), its data files as listed (sizes and versions) or None where
    they were not listed, with what the reads learn about its tensors' layout and its data
    files' versions (`versions`).  `read_boxes` runs the pipeline of the module docstring."""

    _store: Store
    _index: BundleIndex
    _prefix: str
    _name: str
    _data_files: dict[str, ObjectInfo] | None
    _options: IOOptions
    _index_etag: str = ""
    _stored_boxes: dict[bytes, Boxes] = field(default_factory=dict)
    _layouts: dict[bytes, tuple[tuple[int, ...], np.dtype, Boxes | None]] = field(default_factory=dict)
    _names: dict[str, bytes] = field(default_factory=dict)
    versions: Versions = field(init=False)

    def __post_init__(self) -> None:
        self._names = {decode_name(k): k for k in self._index.tensor_keys(self._boxes)}
        self.versions = Versions(self._data_files)

    def relisted(self, data_files: dict[str, ObjectInfo]) -> None:
        """The data files were listed again (a local tier's reader falling back to the remote
        prefix): read those versions from now on."""
        self._data_files = data_files
        self.versions.reset(data_files)

    def entry(self, name: str) -> tuple[bytes, BundleEntry]:
        key = self._names.get(name)
        if key is None:
            raise TensorNotFoundError(f"tensor {name!r} not found in checkpoint {self._prefix}")
        return key, self._index.entries[key]

    async def read_boxes(self, requests: Sequence[tuple[str, BoxLike | None]],
                         outs: Sequence[np.ndarray | None] | None = None,
                         progress: ProgressCallback | None = None) -> list[np.ndarray]:
        """Read every (name, box or None for all) request; `outs` are optional caller-owned
        destination arrays (shape and dtype must match); `progress` gets ``read`` events."""
        try:
            try:
                plan = self.plan_boxes(requests, outs, learn=True)
            except SizesNeeded as needed:
                await self.learn_sizes(needed.entries)
                plan = self.plan_boxes(requests, outs)
            reporter = Reporter(progress, self._prefix)
            on_bytes = (lambda n: reporter.add("read", n, plan.total)) if reporter else None
            budget = process_budget(self._options.memory_budget)
            await asyncio.gather(self._read_direct(plan.direct, on_bytes),
                                 *(self._read_buffered(p, blocks, budget, on_bytes) for p, blocks in plan.buffered))
        except (CorruptCheckpointError, CheckpointNotFoundError) as exc:
            changed = await self.replaced(exc)
            if changed is None:
                raise
            raise changed from exc
        return plan.results

    async def replaced(self, exc: CheckpointError) -> CheckpointChangedError | None:
        """`CheckpointChangedError` for `exc` (damage, a data file missing or ending early,
        found reading) if the index is no longer the version this reader read: then the
        checkpoint was replaced or deleted meanwhile, and the data files met are the new
        one's.  One HEAD of the index, on this error path only; None if it is unchanged (or
        its version unknown, or `exc` is about a name, not the bytes)."""
        if not self._index_etag or isinstance(exc, TensorNotFoundError):
            return None
        try:
            info = await self._store.head(index_filename(self._name))
        except CheckpointError:
            return None  # the error found stands; the index cannot be looked at
        if info is not None and info.etag == self._index_etag:
            return None
        now = "deleted" if info is None else "replaced"
        return CheckpointChangedError(f"checkpoint {self._prefix} was replaced or deleted while it was being read "
                                      f"(its index was {now}; {exc}); open it again")

    def plan_boxes(self, requests: Sequence[tuple[str, BoxLike | None]],
                   outs: Sequence[np.ndarray | None] | None = None, *, learn: bool = False) -> ReadPlan:
        """Resolve and check every request and allocate its output (the caller's where given):
        the parts `read_boxes` then fetches, nothing read yet.  With `learn`, `SizesNeeded`
        is raised before allocating for entries whose data files' sizes must be known first
        (see `UNSIZED_CLAIM`): `learn_sizes`, then plan again (without `learn`)."""
        outs = list(outs) if outs is not None else [None] * len(requests)
        resolved = [self._resolve(name, box) for name, box in requests]
        checked = [[(self._checked_entry(name, k, b, e, dtype), b, p) for b, k, e, p in stored]
                   for name, dtype, _, stored in resolved]
        if learn:
            claims = {}
            for (name, dtype, _, _), mine in zip(resolved, checked):
                if dtype.kind == "O":
                    claims.update(self._unsized(name, [e for (e, _), _, _ in mine],
                                                lambda e: e.size + 8 * math.prod(entry_shape(e)) > UNSIZED_CLAIM))
            if claims:
                raise SizesNeeded(claims)
        results = []
        parts: list[_Part] = []
        for (name, dtype, request, _), mine, out in zip(resolved, checked, outs):
            if out is None:
                try:
                    out = np.empty(request.size, dtype=dtype)
                except (MemoryError, ValueError) as exc:  # ValueError: beyond the address space
                    unsized = self._unsized(name, [e for (e, _), _, _ in mine], lambda e: True) if learn else {}
                    if unsized:  # perhaps a hostile claim: is the entry inside its file at all?
                        raise SizesNeeded(unsized) from None
                    if isinstance(exc, MemoryError):
                        raise
                    raise CorruptCheckpointError(f"tensor {name!r} in {self._prefix}: {request.num_elements} "
                                                 f"elements of {dtype} cannot be allocated ({exc})") from None
            elif out.shape != tuple(request.size) or out.dtype != dtype:
                raise ShapeMismatchError(
                    f"tensor {name!r} in {self._prefix}: the output array is {out.dtype}{list(out.shape)}, "
                    f"the checkpoint holds {dtype}{list(request.size)}")
            results.append(out)
            parts += [_Part(name, e, data_key, b, p, request, out) for (e, data_key), b, p in mine]
        direct = [p for p in parts if self._is_direct(p)]
        buffered = [(p, self._blocks(p)) for p in parts if not self._is_direct(p)]
        total = sum(p.entry.size for p in direct)
        total += sum(hi - lo for _, blocks in buffered for _, spans in blocks for lo, hi in spans)
        return ReadPlan(results, direct, buffered, total)

    def _unsized(self, name: str, entries: Sequence[BundleEntry], claims: Callable[[BundleEntry], bool]
                 ) -> dict[str, tuple[str, BundleEntry]]:
        """Of tensor `name`'s `entries`, those that `claims` picks, in data files whose size is
        not known: {data file key: (name, the entry reaching furthest into it)}."""
        out: dict[str, tuple[str, BundleEntry]] = {}
        for entry in entries:
            key = data_filename(self._name, entry.shard_id, self._index.num_shards)
            if entry.size <= 0 or self.versions.size(key) is not None or not claims(entry):
                continue
            other = out.get(key)
            if other is None or other[1].offset + other[1].size < entry.offset + entry.size:
                out[key] = (name, entry)
        return out

    async def learn_sizes(self, entries: Mapping[str, tuple[str, BundleEntry]]) -> None:
        """The size of each data file of `entries` (key -> (tensor name, entry)), from one
        ranged read of the entry's last byte, pinned and recorded as any read (`versions`):
        an entry reaching past the end of its file is refused here, before anything is
        allocated for it."""
        pieces: list[Piece] = []
        views: dict[PieceId, memoryview] = {}
        named = sorted(entries.items())
        for task, (key, (_, entry)) in enumerate(named):
            pieces.append(Piece(key, entry.offset + entry.size - 1, 1, task, 0))
            views[task, 0] = memoryview(bytearray(1))

        def extent(piece: Piece) -> tuple[int, int]:
            entry = named[piece.task][1][1]
            return entry.offset, entry.offset + entry.size

        await self.fetch(coalesce(pieces, gap=0, max_length=1), views,
                         lambda piece: f"tensor {named[piece.task][1][0]!r} in {self._prefix}", extent=extent)

    def _resolve(self, name: str, box: BoxLike | None
                 ) -> tuple[str, np.dtype, Box, list[tuple[Box, bytes, BundleEntry, Box]]]:
        key, entry = self.entry(name)
        shape, dtype, boxes = self._layout(name, key, entry)
        request = Box.whole(shape) if box is None else self._resolve_box(name, shape, box)
        if boxes is None:
            stored = [(Box.whole(shape), key)]
        else:  # just the stored boxes that intersect the request
            picked = boxes.take(boxes.intersecting(request))
            stored = [(picked.box(i), k) for i, k in enumerate(slice_keys(key, picked))]
        chosen = []
        covered = 0
        for stored_box, stored_key in stored:
            part = stored_box.intersect(request) if request.num_elements else None
            if part is None:
                continue
            covered += part.num_elements
            stored_entry = self._index.entries.get(stored_key)
            if stored_entry is None:
                raise CorruptCheckpointError(
                    f"tensor {name!r} in {self._prefix}: slice {stored_box.spec()} has no entry")
            chosen.append((stored_box, stored_key, stored_entry, part))
        if covered != request.num_elements:
            raise CorruptCheckpointError(
                f"tensor {name!r} in {self._prefix}: the stored slices do not cover box {request.spec() or 'scalar'}")
        return name, dtype, request, chosen

    def _layout(self, name: str, key: bytes, entry: BundleEntry) -> tuple[tuple[int, ...], np.dtype, Boxes | None]:
        """The tensor's shape, dtype and stored boxes (None: one entry holds it all), checked
        once per reader (the shape, every box inside it, no two boxes overlapping)."""
        layout = self._layouts.get(key)
        if layout is None:
            try:
                shape = check_shape(key, entry)
                dtype = dtypes.to_numpy(entry.dtype)
                boxes = self._boxes(key) if entry.slices else None
            except CheckpointError as exc:
                raise type(exc)(f"tensor {name!r} in {self._prefix}: {exc}") from None
            if boxes is not None and (found := find_overlap(boxes.start, boxes.stop)) is not None:
                a, b = (boxes.box(i) for i in found)
                raise CorruptCheckpointError(f"tensor {name!r}: stored slices overlap: {a.spec()} and {b.spec()}")
            layout = self._layouts[key] = (shape, dtype, boxes)
        return layout

    def _boxes(self, key: bytes) -> Boxes:
        boxes = self._stored_boxes.get(key)
        if boxes is None:
            boxes = self._stored_boxes[key] = entry_boxes(self._index.entries[key])
        return boxes

    def _resolve_box(self, name: str, shape: tuple[int, ...], box: BoxLike) -> Box:
        start: list[int]
        size: list[int]
        if isinstance(box, Box):
            start, size = list(box.start), list(box.size)
        elif isinstance(box, tuple) and len(box) == 0:  # `()`: the whole tensor (a scalar's only box)
            start, size = [0] * len(shape), list(shape)
        elif all(isinstance(s, slice) for s in box):
            slices = [s for s in box if isinstance(s, slice)]
            if len(slices) > len(shape):
                raise ShapeMismatchError(f"tensor {name!r} has rank {len(shape)}, got {len(slices)} slices")
            ranges = [s.indices(d) for s, d in zip(slices, shape)]
            if any(step != 1 for _, _, step in ranges):
                raise ShapeMismatchError(f"tensor {name!r}: only slices with step 1 are supported")
            start = [a for a, _, _ in ranges] + [0] * (len(shape) - len(slices))
            size = [max(0, b - a) for a, b, _ in ranges] + list(shape[len(slices):])
        else:
            first, second = cast("tuple[Sequence[int], Sequence[int]]", box)
            start, size = [int(v) for v in first], [int(v) for v in second]
        try:
            return box_in(shape, start, size)
        except ShapeMismatchError as exc:
            raise ShapeMismatchError(f"tensor {name!r}: {exc}") from None

    def _checked_entry(self, name: str, key: bytes, box: Box, entry: BundleEntry,
                       dtype: np.dtype) -> tuple[BundleEntry, str]:
        """The entry and its data file's key, after checking that it agrees with the tensor
        and lies inside its data file where its size is known (listed when the reader
        opened, or stated by an earlier answer)."""
        where = f"tensor {name!r} in {self._prefix}"
        tensor_dtype = self._index.entries[self._names[name]].dtype
        if entry.slices or entry.dtype != tensor_dtype or entry_shape(entry) != tuple(box.size):
            raise CorruptCheckpointError(f"{where}: slice entry {box.spec()} disagrees with the tensor")
        data_key = data_filename(self._name, entry.shard_id, self._index.num_shards)
        file = self._store.describe(data_key)
        pin = self.versions.pin(data_key)
        if pin is None and self.versions.complete:
            raise CheckpointNotFoundError(f"{where}: data file missing: {file}")
        file_size = None if pin is None else pin.size
        if file_size is not None and entry.offset + entry.size > file_size:
            raise CorruptCheckpointError(
                f"{where}: bytes {entry.offset}..{entry.offset + entry.size} lie outside {file} ({file_size} bytes)")
        count = box.num_elements
        if dtype.kind == "O":
            if entry.size < count + 4:  # a varint and the length checksum at the least
                raise CorruptCheckpointError(f"{where}: {entry.size} bytes cannot hold {count} strings ({file})")
        elif entry.size != count * dtype.itemsize:
            raise CorruptCheckpointError(
                f"{where}: entry size {entry.size} does not match {count} x {dtype.itemsize}-byte elements ({file})")
        chunks = -(-entry.size // entry.chunk_size) if entry.chunk_size > 0 else -1
        if entry.chunk_crc32c and (entry.chunk_size <= 0 or len(entry.chunk_crc32c) != chunks):
            raise CorruptCheckpointError(f"{where}: chunk checksums do not match the entry's size ({file})")
        return entry, data_key

    def _is_direct(self, p: _Part) -> bool:
        if p.out.dtype.kind == "O" or p.part != p.stored:
            return False
        return bool(p.out[p.part.relative_to(p.request)].flags.c_contiguous)

    def _pieces(self, p: _Part, task: int, offset: int, length: int, first_index: int = 0) -> list[Piece]:
        """Pieces of the entry's bytes [offset, offset+length) (relative to the entry): one
        per CRC chunk where the entry has chunk CRCs, else at most `read_chunk` each."""
        step = p.entry.chunk_size if p.entry.chunk_crc32c else self._options.read_chunk
        base = p.entry.offset
        return [Piece(p.data_key, base + o, min(step, offset + length - o), task, first_index + i)
                for i, o in enumerate(range(offset, offset + length, step))]

    def _verify(self, p: _Part, pieces: list[Piece], crcs: Mapping[tuple[int, int], int]) -> None:
        entry = p.entry
        file = self._store.describe(p.data_key)
        where = f"tensor {p.name!r} in {self._prefix}"
        if entry.chunk_crc32c:
            for piece in pieces:
                chunk = (piece.offset - entry.offset) // entry.chunk_size
                if crcs[piece.task, piece.index] != unmask_crc(entry.chunk_crc32c[chunk]):
                    raise CorruptCheckpointError(
                        f"{where}: checksum mismatch in {file} (chunk {chunk} at byte {piece.offset})")
            return
        crc = 0
        for piece in pieces:
            crc = crc32c_combine(crc, crcs[piece.task, piece.index], piece.length)
        if crc != unmask_crc(entry.crc32c):
            raise CorruptCheckpointError(
                f"{where}: checksum mismatch in {file} (bytes {entry.offset}..{entry.offset + entry.size}): "
                f"stored {unmask_crc(entry.crc32c):#010x}, computed {crc:#010x}")

    async def _fetch(self, pieces: list[Piece], views: dict[tuple[int, int], memoryview],
                     parts: Mapping[int, _Part], on_bytes: OnBytes) -> dict[tuple[int, int], int]:
        cache = host_cache(self._options.host_cache, self._options.host_cache_bytes)
        if cache is None or self._data_files is None:  # a cache names its files by listed versions
            return await self._fetch_store(pieces, views, parts, on_bytes)
        data_files = self._data_files
        expected = {(q.task, q.index): check for q in pieces
                    if (check := self._piece_check(parts[q.task], q)) is not None}

        def version(key: str) -> str:
            info = data_files[key]
            return f"{self._store.describe(key)}\0{info.etag or f'{info.size}:{info.mtime}'}"

        crcs = await cache.fetch(pieces, views, expected, version,
                                 lambda mine: self._fetch_store(mine, views, parts, None),
                                 self._options.max_concurrency * self._options.read_chunk)
        if on_bytes is not None:
            on_bytes(sum(q.length for q in pieces))
        return crcs

    def _piece_check(self, p: _Part, piece: Piece) -> Check | None:
        """How the piece's bytes alone are verified (its CRC chunk's CRC, the whole entry's,
        or decoding a whole string entry), or None if only with the rest of its entry."""
        entry = p.entry
        at = piece.offset - entry.offset
        if entry.chunk_crc32c and at % entry.chunk_size == 0 and piece.length == min(entry.chunk_size,
                                                                                       entry.size - at):
            return unmask_crc(entry.chunk_crc32c[at // entry.chunk_size])
        if at != 0 or piece.length != entry.size:
            return None
        if p.out.dtype.kind != "O":
            return unmask_crc(entry.crc32c)

        def strings(view: memoryview) -> bool:
            try:
                _, crc = decode_strings(bytes(view), p.stored.num_elements, big_endian=self._index.big_endian)
            except CorruptCheckpointError:
                return False
            return crc == unmask_crc(entry.crc32c)

        return strings

    async def _fetch_store(self, pieces: list[Piece], views: dict[tuple[int, int], memoryview],
                           parts: Mapping[int, _Part], on_bytes: OnBytes) -> dict[tuple[int, int], int]:
        ops = coalesce(pieces, gap=self._options.coalesce_gap, max_length=self._options.read_chunk)

        def extent(piece: Piece) -> tuple[int, int]:
            entry = parts[piece.task].entry
            return entry.offset, entry.offset + entry.size

        return await self.fetch(ops, views, lambda piece: f"tensor {parts[piece.task].name!r} in {self._prefix}",
                                on_bytes, extent)

    async def fetch(self, ops: Sequence[ReadOp], views: Mapping[PieceId, memoryview],
                    describe: Callable[[Piece], str], on_bytes: OnBytes = None,
                    extent: Callable[[Piece], tuple[int, int]] | None = None) -> dict[PieceId, int]:
        """`engine.fetch.execute` on this checkpoint's store, every request pinned to its data
        file's version (`versions`); a version that changed is reported as the checkpoint
        replaced or deleted while it was being read."""
        try:
            return await execute(self._store, ops, views, max_concurrency=self._options.max_concurrency,
                                 describe=describe, on_bytes=on_bytes, versions=self.versions, extent=extent)
        except CheckpointChangedError as exc:
            raise CheckpointChangedError(f"checkpoint {self._prefix} was replaced or deleted while it was being read "
                                         f"({exc}); open it again") from exc

    async def _read_direct(self, parts: list[_Part], on_bytes: OnBytes) -> None:
        """Whole entries straight into their regions of the output arrays, in one plan."""
        pieces: list[Piece] = []
        views: dict[tuple[int, int], memoryview] = {}
        per_part: list[list[Piece]] = []
        for task, p in enumerate(parts):
            region = memoryview(p.out[p.part.relative_to(p.request)].reshape(-1).view(np.uint8))
            mine = self._pieces(p, task, 0, p.entry.size)
            for piece in mine:
                start = piece.offset - p.entry.offset
                views[task, piece.index] = region[start : start + piece.length]
            pieces += mine
            per_part.append(mine)
        if not pieces:
            return
        crcs = await self._fetch(pieces, views, dict(enumerate(parts)), on_bytes)
        for p, mine in zip(parts, per_part):
            self._verify(p, mine, crcs)
            if self._index.big_endian:
                _byteswap(p.out[p.part.relative_to(p.request)])

    def _blocks(self, p: _Part) -> list[tuple[RowBlock, list[tuple[int, int]]]]:
        """What a buffered part reads, a block of the stored box's rows at a time: (the rows,
        the byte spans of the entry to fetch for them, ``(start, stop)``).  Without chunk
        CRCs (every TF-written entry) that is every block, whole and in order, since one CRC
        covers the whole entry; with them, only the chunks holding some of the box, block by
        block, so that every byte fetched is verified and no other chunk is read.  A string
        entry is one block, read whole."""
        entry = p.entry
        if p.out.dtype.kind == "O" or not p.stored.rank:
            return [(RowBlock((), 0, 1, 0, entry.size), [(0, entry.size)])]
        chunk = entry.chunk_size if entry.chunk_crc32c else 0
        limit = max(chunk, MIN_STREAM_BLOCK, self._options.memory_budget // STREAM_BLOCKS)
        itemsize = p.out.dtype.itemsize
        start = [a - b for a, b in zip(p.part.start, p.stored.start)]
        out = []
        for block in row_blocks(tuple(p.stored.size), itemsize, limit):
            if not chunk:
                out.append((block, [(block.offset, block.offset + block.length)]))
                continue
            held = _held(block, start, p.part.size)
            if held is None:
                continue
            runs = box_byte_runs(tuple(p.stored.size), *held, itemsize)
            if runs is None:  # too many runs to list: all of the block's rows
                runs = [(block.offset, block.length)]
            out.append((block, [(lo, lo + n) for lo, n in chunk_spans(runs, chunk, entry.size)]))
        return out

    async def _read_buffered(self, p: _Part, blocks: list[tuple[RowBlock, list[tuple[int, int]]]],
                             budget: MemoryBudget, on_bytes: OnBytes) -> None:
        """A partial box of an entry, an entry whose region of the output is not contiguous,
        or a string entry: the entry streams through temporary blocks, each drawn from the
        memory budget and given back once its rows are copied out, and every byte fetched
        goes through a CRC (per chunk as it lands, or combined over the whole entry)."""
        if p.out.dtype.kind == "O":
            await self._read_strings(p, budget, on_bytes)
            return
        pieces: list[Piece] = []
        crcs: dict[tuple[int, int], int] = {}
        tasks: list[asyncio.Future[None]] = []
        for block, spans in blocks:  # started in order, so they take their budget in order
            mine: list[Piece] = []
            for lo, hi in spans:
                mine += self._pieces(p, 0, lo, hi - lo, len(pieces) + len(mine))
            pieces += mine
            tasks.append(asyncio.ensure_future(self._read_block(p, block, spans, mine, crcs, budget, on_bytes)))
        await gather_or_cancel(tasks)
        if not p.entry.chunk_crc32c:
            self._verify(p, pieces, crcs)  # the whole entry's CRC, from every block's pieces in order

    async def _read_block(self, p: _Part, block: RowBlock, spans: list[tuple[int, int]], pieces: list[Piece],
                          crcs: dict[tuple[int, int], int], budget: MemoryBudget, on_bytes: OnBytes) -> None:
        """The spans of the entry into a temporary buffer drawn from the budget (given back
        once done), verified, and what the rows of `block` hold of the part copied out."""
        lo, hi = spans[0][0], spans[-1][1]
        await budget.acquire(hi - lo)
        try:
            # Bytes of the buffer between spans are never written, so never resident.
            buffer = np.empty(max(hi, block.offset + block.length) - min(lo, block.offset), np.uint8)
            base = min(lo, block.offset)
            raw = buffer.data
            views = {(0, piece.index): raw[piece.offset - p.entry.offset - base :
                                           piece.offset - p.entry.offset - base + piece.length]
                     for piece in pieces}
            landed = await self._fetch(pieces, views, {0: p}, on_bytes)
            if p.entry.chunk_crc32c:
                self._verify(p, pieces, landed)
            else:
                crcs.update(landed)
            self._copy_out(p, block, buffer[block.offset - base : block.offset - base + block.length])
            del buffer, raw, views
        finally:
            budget.release_now(hi - lo)

    def _copy_out(self, p: _Part, block: RowBlock, data: np.ndarray) -> None:
        """Copy what `block` (rows of the stored box, as bytes) holds of the part to its place
        in the output, in one numpy assignment."""
        shape = tuple(p.stored.size)
        dim = len(block.prefix)
        start = [a - b for a, b in zip(p.part.start, p.stored.start)]
        size = p.part.size
        rows = data.view(p.out.dtype).reshape((block.hi - block.lo, *shape[dim + 1 :]))
        lo, hi = max(block.lo, start[dim]), min(block.hi, start[dim] + size[dim])
        if hi <= lo or any(not 0 <= i - s < n for i, s, n in zip(block.prefix, start, size)):
            return  # rows read only for the CRC
        inner = tuple(slice(s, s + n) for s, n in zip(start[dim + 1 :], size[dim + 1 :]))
        source = rows[(slice(lo - block.lo, hi - block.lo),) + inner]
        if self._index.big_endian:
            source = source.byteswap()
        target = p.out[p.part.relative_to(p.request)]
        outer = tuple(i - s for i, s in zip(block.prefix, start))
        target[outer + (slice(lo - start[dim], hi - start[dim]),)] = source

    async def _read_strings(self, p: _Part, budget: MemoryBudget, on_bytes: OnBytes) -> None:
        entry = p.entry
        async with budget.hold(entry.size):
            payload = bytearray(entry.size)
            pieces = self._pieces(p, 0, 0, entry.size)
            raw = memoryview(payload)
            views = {(0, piece.index): raw[piece.offset - entry.offset : piece.offset - entry.offset + piece.length]
                     for piece in pieces}
            await self._fetch(pieces, views, {0: p}, on_bytes)
            self.decode_strings(p, payload)

    def decode_strings(self, p: _Part, payload: bytes | bytearray) -> None:
        """A string entry's payload, checked against its CRC and copied out to the request."""
        entry = p.entry
        file = self._store.describe(p.data_key)
        where = f"tensor {p.name!r} in {self._prefix}"
        try:
            values, crc = decode_strings(payload, p.stored.num_elements, big_endian=self._index.big_endian)
        except CorruptCheckpointError as exc:
            raise CorruptCheckpointError(f"{where}, {file}: {exc}") from None
        if crc != unmask_crc(entry.crc32c):
            raise CorruptCheckpointError(
                f"{where}: checksum mismatch in {file} (bytes {entry.offset}..{entry.offset + entry.size})")
        stored = np.empty(p.stored.num_elements, dtype=object)
        stored[:] = values
        p.out[p.part.relative_to(p.request)] = stored.reshape(p.stored.size)[p.part.relative_to(p.stored)]


def _held(block: RowBlock, start: Sequence[int], size: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """The part of the box (`start`, `size`, in the stored box) that the rows of `block`
    hold, as (start, size); None if they hold none of it."""
    dim = len(block.prefix)
    if not all(s <= i < s + n for i, s, n in zip(block.prefix, start, size)):
        return None
    lo, hi = max(block.lo, start[dim]), min(block.hi, start[dim] + size[dim])
    if hi <= lo:
        return None
    return ((*block.prefix, lo, *start[dim + 1 :]), (*(1 for _ in block.prefix), hi - lo, *size[dim + 1 :]))
