"""Streaming a planned data file to storage, checksumming as the bytes go.

Each numeric payload is walked once in `crc_chunk` steps: the chunk's CRC32C is computed while
the chunk is in cache, the running CRC of the whole payload is extended from it with
`crc32c_combine` (no second pass), and the bytes are handed to the store's writer in blocks of
up to `WRITE_BLOCK` straight from the caller's memory.  Payloads larger than one chunk also get
the per-chunk CRC extension (see protos/), which lets later partial reads be verified.
"""

from __future__ import annotations

from collections.abc import Callable

from ..faults import crash_point
from ..format.coding import crc32c, crc32c_combine, mask_crc
from ..options import IOOptions
from ..storage.base import ObjectWriter
from ..writer import BundlePlan, Payload

WRITE_BLOCK = 8 * 2**20
"""Bytes per write call: large enough that per-call overhead (a thread hop for local files)
vanishes, small enough to keep the next block's checksum work close behind the I/O."""


async def stream_plan(writer: ObjectWriter, plan: BundlePlan, options: IOOptions,
                      on_bytes: Callable[[int], None] | None = None) -> int:
    """Write every payload of `plan` to `writer` in order, filling in each numeric entry's
    CRC32C (and chunk CRCs); `on_bytes(n)` after each block handed over.  Returns the bytes
    written.  Does not commit."""
    written = 0
    halfway_passed = False
    for payload in plan.payloads:
        if not halfway_passed and written >= plan.size // 2:
            halfway_passed = True
            crash_point("mid-upload")
        if payload.checksummed:
            for chunk in payload.chunks:
                await writer.write(chunk)
            if on_bytes is not None:
                on_bytes(payload.size)
        else:
            await _stream_numeric(writer, payload, options.crc_chunk, on_bytes)
        written += payload.size
    return written


async def _stream_numeric(writer: ObjectWriter, payload: Payload, crc_chunk: int,
                          on_bytes: Callable[[int], None] | None) -> None:
    (view,) = payload.chunks
    view = memoryview(view).cast("B")
    size = len(view)
    step = crc_chunk if crc_chunk else WRITE_BLOCK
    block = max(step, WRITE_BLOCK // step * step)
    chunk_crcs: list[int] = []
    running = 0
    for start in range(0, size, block):
        piece = view[start : start + block]
        for offset in range(0, len(piece), step):
            chunk = piece[offset : offset + step]
            crc = crc32c(chunk)
            chunk_crcs.append(crc)
            # Full chunks share one length, whose combine operator is cached; the last
            # (shorter) chunk is cheaper to fold in directly than to build an operator for.
            running = crc32c_combine(running, crc, len(chunk)) if len(chunk) == step else crc32c(chunk, running)
        await writer.write(piece)
        if on_bytes is not None:
            on_bytes(len(piece))
    entry = payload.entry
    entry.crc32c = mask_crc(running)
    if crc_chunk and size > crc_chunk:
        entry.chunk_size = crc_chunk
        entry.chunk_crc32c.extend(mask_crc(c) for c in chunk_crcs)
