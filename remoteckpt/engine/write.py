"""Saving a planned data file: streaming it to storage, checksumming as the bytes go.

Each numeric payload is walked once in `crc_chunk` steps: the chunk's CRC32C is computed while
the chunk is in cache, the running CRC of the whole payload is extended from it with
`crc32c_combine` (no second pass), and the bytes are handed to the store's writer in blocks of
up to `WRITE_BLOCK` (`CHECKED_BLOCK` for a local file) straight from the caller's memory.
Payloads larger than one chunk also get the per-chunk CRC extension (see protos/), which lets
later partial reads be verified.

Checksumming and writing overlap: block k+1 is checksummed in a worker thread (CRC32C releases
the GIL) while block k's ``write`` is in flight (the network for S3), one write at a time so
the writer still sees the bytes in order.  The checksum must not run on the loop thread: the
write task would only start once it finished, and S3's sockets would wait on it.  A writer
whose write is a blocking call in a worker thread (a local file:
`ObjectWriter.checks_while_writing`) is instead handed each block with its check: the
thread checksums a chunk and writes it at once, from the cache the checksum just filled, so
the bytes cross memory once (two threads a block apart each pull the block from memory).
Not with a content digest: at a few times the CRC's cost it would hold the write back more
than the second pass costs, so it stays a block ahead with the CRC.

An array whose memory is not laid out as its payload (strided, transposed, big-endian; see
`engine.plan.Payload.source`) is converted here, a block at a time, in the same worker thread as
its checksum: each block is fresh memory drawn from the process's memory budget
(`engine.budget`) before it is made and given back once its write is done, so such a save
holds at most about two blocks beyond the caller's tensors, never a copy of a whole tensor.
(A writer may keep a block it was given until its upload part is sent: the block's budget
is then given back when the writer lets go of it, not when its `write` returns.)
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable

import numpy as np

from ..faults import crash_point
from ..format.coding import crc32c, crc32c_combine, mask_crc
from ..options import IOOptions
from ..storage.base import Buffer, ObjectWriter
from .budget import MemoryBudget, process_budget
from .digest import Digest, finish, new_digest, set_digest
from .plan import BundlePlan, Payload

WRITE_BLOCK = 8 * 2**20
"""Bytes per write call: large enough that per-call overhead (a thread hop for local files)
vanishes, small enough to keep the next block's checksum work close behind the I/O."""

CHECKED_BLOCK = 64 * 2**20
"""Bytes per `write_checked` call: each call is a hand-off to a worker thread and back, which
on a virtual machine with an idle core can cost as much as writing a MiB (waking that core);
64 MiB made such saves measurably faster on a RAM disk than 8 MiB (docs/benchmarks.md).  A
local save reports progress, and starts the writeback of what it wrote, once per block."""

CHECKED_CHUNK = 1 * 2**20
"""Bytes checked at a time in a `write_checked` call when there are no chunk CRCs
(``crc_chunk=0``): small enough to be in the cache still when they are written."""

OVERLAP_MIN = 1 * 2**20
"""Blocks from this size on are written while the next one is checksummed (or, for a local
file, checksummed and written in a worker thread); below it (small tensors, strings) a task
or a thread per write would cost more than it saves."""


class OneAhead:
    """Hands blocks to `writer` one at a time, returning before the write is done so that
    the caller can prepare the next block meanwhile."""

    def __init__(self, writer: ObjectWriter, on_bytes: Callable[[int], None] | None) -> None:
        self._writer = writer
        self._on_bytes = on_bytes
        self._pending: asyncio.Future[None] | None = None
        self._pending_size = 0

    async def write(self, block: Buffer, *, release: Callable[[], None] | None = None) -> None:
        """Hand `block` on; `release()` once the writer keeps no reference to it (its write,
        or the upload parts sending it, done, failed or cancelled: `ObjectWriter.write`),
        whatever the caller is waiting for meanwhile."""
        try:
            await self.drain()
        except BaseException:
            if release is not None:
                release()
            raise
        size = memoryview(block).nbytes

        def write() -> Awaitable[None]:  # a writer's `release` only where there is one to call
            return self._writer.write(block) if release is None else self._writer.write(block, release)

        if size < OVERLAP_MIN:  # not worth a task: nothing to prepare meanwhile
            await write()
            if self._on_bytes is not None:
                self._on_bytes(size)
            return
        began = False

        async def writing() -> None:
            nonlocal began
            began = True
            await write()

        self._pending = asyncio.ensure_future(writing())
        if release is not None:  # a write cancelled before it began never saw `release`
            self._pending.add_done_callback(lambda _: None if began else release())
        self._pending_size = size

    @property
    def checks_while_writing(self) -> bool:
        """Whether blocks are better checksummed by the writer as it writes them
        (`ObjectWriter.checks_while_writing`) than a block ahead."""
        return self._writer.checks_while_writing

    async def write_checked(self, block: memoryview, check: Callable[[memoryview], None], step: int) -> None:
        """`block` (the caller's memory) to the writer, ``check`` run on each `step`-byte piece
        right before it is written (`ObjectWriter.write_checked`); returns once it is written."""
        await self.drain()
        await self._writer.write_checked(block, check, step)
        if self._on_bytes is not None:
            self._on_bytes(len(block))

    async def drain(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            await pending
            if self._on_bytes is not None:
                self._on_bytes(self._pending_size)

    async def cancel(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            await asyncio.gather(self._pending, return_exceptions=True)
            self._pending = None




async def stream_plan(writer: ObjectWriter, plan: BundlePlan, options: IOOptions,
                      on_bytes: Callable[[int], None] | None = None, *, digests: bool = False) -> int:
    """Write every payload of `plan` to `writer` in order, filling in each numeric entry's
    CRC32C (and chunk CRCs), and with `digests` every entry's content digest (computed in the
    same pass, in the same worker thread); `on_bytes(n)` after each block written.  Returns
    the bytes written.  Does not commit."""
    written = 0
    halfway_passed = False
    out = OneAhead(writer, on_bytes)
    budget = process_budget(options.memory_budget)
    try:
        for payload in plan.payloads:
            if not halfway_passed and written >= plan.size // 2:
                halfway_passed = True
                await out.drain()
                crash_point("mid-upload")
            await stream_payload(out, payload, options.crc_chunk, budget, digests)
            written += payload.size
        await out.drain()
    except BaseException:
        await out.cancel()
        raise
    return written


async def stream_payload(out: "OneAhead", payload: Payload, crc_chunk: int, budget: MemoryBudget,
                         digests: bool) -> None:
    """One payload's bytes to `out`, its entry's checksums (and digest) filled in."""
    digest = new_digest() if digests else None
    if payload.checksummed and payload.source is None:
        for chunk in payload.chunks:
            if digest is not None:
                digest.update(chunk)
            await out.write(chunk)
    else:
        await _stream_numeric(out, payload, crc_chunk, budget, digest)
    if digest is not None:
        set_digest(payload.entry, finish(digest))


def _chunk_crcs(piece: memoryview, step: int) -> list[int]:
    return [crc32c(piece[offset : offset + step]) for offset in range(0, len(piece), step)]


def _check(crcs: list[int], chunk: memoryview) -> None:
    """One chunk's CRC32C appended to `crcs`."""
    crcs.append(crc32c(chunk))


def _make(payload: Payload, start: int, stop: int, step: int, buffer: np.ndarray | None,
          digest: Digest | None) -> tuple[memoryview, list[int]]:
    piece = payload.piece(start, stop, buffer)
    if digest is None:
        return piece, _chunk_crcs(piece, step)
    crcs = []
    for offset in range(0, len(piece), step):  # digest and CRC of a chunk while it is in cache
        chunk = piece[offset : offset + step]
        digest.update(chunk)  # blocks come in order: one block is made at a time
        crcs.append(crc32c(chunk))
    return piece, crcs


def block_size(payload: Payload, crc_chunk: int, budget: MemoryBudget) -> int:
    """Bytes of `payload` made (converted, checksummed) at a time: `WRITE_BLOCK` in whole CRC
    chunks, and for a converted payload at most half the budget, so that two of its blocks
    (one written, one made) fit in it together (a CRC chunk larger than that is one block:
    the budget admits it alone)."""
    step = crc_chunk if crc_chunk else WRITE_BLOCK
    block = max(step, WRITE_BLOCK // step * step)
    if payload.source is not None:
        half = budget.capacity // 2
        # whole CRC chunks where there are chunk CRCs; any length where one CRC covers it all
        block = max(step, min(block, half // step * step)) if crc_chunk else min(block, half)
    return block


async def _stream_numeric(out: OneAhead, payload: Payload, crc_chunk: int, budget: MemoryBudget,
                          digest: Digest | None = None) -> None:
    size = payload.size
    step = crc_chunk if crc_chunk else WRITE_BLOCK
    block = block_size(payload, crc_chunk, budget)
    converted = payload.source is not None  # fresh blocks, two at most at once: within the budget
    chunk_crcs: list[int] = []
    running = 0
    # A content digest (BLAKE3, about half the CRC's speed) would hold the writing thread back
    # more than the second pass over memory costs: it stays a block ahead, with the CRC.
    fused = not converted and digest is None and out.checks_while_writing
    if fused:
        step = crc_chunk or CHECKED_CHUNK  # chunk CRCs, or only for the cache: none are kept
        block = max(step, CHECKED_BLOCK // step * step)
    for start in range(0, size, block):
        stop = min(size, start + block)
        if fused and stop - start >= OVERLAP_MIN:
            piece = payload.piece(start, stop)
            crcs: list[int] = []
            await out.write_checked(piece, functools.partial(_check, crcs), step)
            running = _fold(running, piece, crcs, step)
            chunk_crcs.extend(crcs)
            continue
        release = None
        if converted:
            await budget.acquire(stop - start)
            release = functools.partial(budget.release_now, stop - start)
        try:
            # In a worker thread (crc32c and numpy's copies release the GIL) from
            # OVERLAP_MIN on: the previous block's write proceeds meanwhile, and the loop
            # stays free for network I/O.
            buffer = payload.piece_buffer(start, stop)  # here, on the loop's thread
            if stop - start >= OVERLAP_MIN:
                piece, crcs = await asyncio.to_thread(_make, payload, start, stop, step, buffer, digest)
            else:
                piece, crcs = _make(payload, start, stop, step, buffer, digest)
        except BaseException:
            if release is not None:
                release()
            raise
        running = _fold(running, piece, crcs, step)
        chunk_crcs.extend(crcs)
        await out.write(piece, release=release)
    set_checksums(payload, crc_chunk, running, chunk_crcs)


async def write_range(out: OneAhead, payload: Payload, start: int, stop: int, budget: MemoryBudget) -> None:
    """Bytes ``[start, stop)`` of a numeric payload whose checksums are known to `out`, in
    blocks of up to `WRITE_BLOCK`: views of the caller's array, or for a converted payload
    fresh blocks drawn from `budget` (at most half of it each, as `stream_payload` makes
    them), each given back once its write is done."""
    if payload.source is None:
        for at in range(start, stop, WRITE_BLOCK):
            await out.write(payload.piece(at, min(stop, at + WRITE_BLOCK)))
        return
    block = min(WRITE_BLOCK, max(1, budget.capacity // 2))
    for at in range(start, stop, block):
        end = min(stop, at + block)
        await budget.acquire(end - at)
        release = functools.partial(budget.release_now, end - at)
        try:
            buffer = payload.piece_buffer(at, end)
            if end - at >= OVERLAP_MIN:
                piece = await asyncio.to_thread(payload.piece, at, end, buffer)
            else:
                piece = payload.piece(at, end, buffer)
        except BaseException:
            release()
            raise
        await out.write(piece, release=release)


def _fold(running: int, piece: memoryview, crcs: list[int], step: int) -> int:
    """`running` (the CRC32C of the bytes before `piece`) extended over `piece`, whose chunks
    of `step` bytes have the CRCs `crcs`."""
    for offset, crc in zip(range(0, len(piece), step), crcs):
        chunk_len = min(step, len(piece) - offset)
        # Full chunks share one length, whose combine operator is cached; the last
        # (shorter) chunk is cheaper to fold in directly than to build an operator for.
        running = (crc32c_combine(running, crc, chunk_len) if chunk_len == step
                   else crc32c(piece[offset:], running))
    return running


def set_checksums(payload: Payload, crc_chunk: int, crc: int, chunk_crcs: list[int]) -> None:
    """Fill in a numeric entry's CRC32C (unmasked `crc`) and, past one chunk, its chunk CRCs."""
    entry, size = payload.entry, payload.size
    entry.crc32c = mask_crc(crc)
    del entry.chunk_crc32c[:]
    entry.chunk_size = 0
    if crc_chunk and size > crc_chunk:
        entry.chunk_size = crc_chunk
        entry.chunk_crc32c.extend(mask_crc(c) for c in chunk_crcs)


async def checksum_payload(payload: Payload, crc_chunk: int, budget: MemoryBudget) -> tuple[int, list[int], bytes]:
    """(CRC32C, chunk CRCs, content digest) of a numeric payload in one pass over its bytes,
    without writing them, in worker threads.  A converted payload is made a block at a time
    (`block_size`), each block drawn from `budget` before it is made and given back once it
    is hashed."""
    step = crc_chunk if crc_chunk else WRITE_BLOCK
    block = block_size(payload, crc_chunk, budget)
    digest = new_digest()
    if payload.source is None:  # views of the caller's memory: nothing to draw
        running, chunk_crcs = await asyncio.to_thread(_checksum_range, payload, 0, payload.size, block, step,
                                                      None, digest)
        return running, chunk_crcs, finish(digest)
    running, chunk_crcs = 0, []
    for start in range(0, payload.size, block):
        stop = min(payload.size, start + block)
        async with budget.hold(stop - start):
            buffer = payload.piece_buffer(start, stop)  # on the loop's thread (see `piece_buffer`)
            running, crcs = await asyncio.to_thread(_checksum_range, payload, start, stop, block, step, buffer,
                                                    digest, running)
            del buffer  # freed before its bytes are given back
        chunk_crcs.extend(crcs)
    return running, chunk_crcs, finish(digest)


def _checksum_range(payload: Payload, start: int, stop: int, block: int, step: int, buffer: np.ndarray | None,
                    digest: Digest, running: int = 0) -> tuple[int, list[int]]:
    """`running` extended over bytes ``[start, stop)`` of `payload` (made `block` bytes at a
    time, in `buffer` if given: then one block), and their chunk CRCs; `digest` updated."""
    chunk_crcs: list[int] = []
    for at in range(start, stop, block):
        piece, crcs = _make(payload, at, min(stop, at + block), step, buffer, digest)
        running = _fold(running, piece, crcs, step)
        chunk_crcs.extend(crcs)
    return running, chunk_crcs
