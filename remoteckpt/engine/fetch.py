"""Executing a read plan: many ranged requests at once, bytes straight into their targets.

`execute` runs the `ReadOp`s of `engine.ranges` concurrently (at most `max_concurrency` in
flight), each as one `Store.read_scatter` into the views registered for its pieces, and
returns the CRC32C of every piece, computed as it landed.  It checks that every piece was
delivered whole; verification against the index is the caller's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..errors import CorruptCheckpointError
from ..storage.base import Store
from .ranges import Piece, ReadOp

PieceId = tuple[int, int]
"""(task, index) of a piece."""


async def execute(store: Store, ops: Sequence[ReadOp], views: Mapping[PieceId, memoryview], *,
                  max_concurrency: int, describe: Callable[[Piece], str],
                  on_bytes: Callable[[int], None] | None = None,
                  etags: Mapping[str, str] | None = None) -> dict[PieceId, int]:
    """Fetch every op (from the version `etags` names for its object, if any); return
    {piece id: crc32c of its bytes}.  Raises `CorruptCheckpointError` (naming the tensor via
    `describe` and the file) if an object is shorter than planned."""
    slots = asyncio.Semaphore(max_concurrency)
    crcs: dict[PieceId, int] = {}

    async def run(op: ReadOp) -> None:
        async with slots:
            result = await store.read_scatter(op.key, op.start, [(p.offset, views[p.task, p.index]) for p in op.pieces],
                                              etag=(etags or {}).get(op.key))
        if result.delivered != sum(p.length for p in op.pieces):
            short = next((p for p in op.pieces if p.end > op.start + result.delivered), op.pieces[-1])
            raise CorruptCheckpointError(
                f"{describe(short)}: {store.describe(op.key)} is truncated "
                f"(bytes {op.start}..{op.end} requested, {result.delivered} delivered)")
        for piece, crc in zip(op.pieces, result.crcs):
            crcs[piece.task, piece.index] = crc
        if on_bytes is not None:
            on_bytes(result.delivered)

    await gather_or_cancel([asyncio.ensure_future(run(op)) for op in ops])
    return crcs


async def gather_or_cancel(tasks: Sequence[asyncio.Future[Any]]) -> None:
    """Wait for every task; if one fails (or this wait is cancelled), cancel the others and
    wait for them to end before raising, so that no read still writes into a target."""
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
