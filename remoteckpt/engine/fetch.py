"""Executing a read plan: many ranged requests at once, bytes straight into their targets.

`execute` runs the `ReadOp`s of `engine.ranges` concurrently (at most `max_concurrency` in
flight), each as one `Store.read_scatter` into the views registered for its pieces, and
returns the CRC32C of every piece, computed as it landed.  Each request is pinned to the
version of its data file that `versions` holds, and each answer's version is recorded there
(`engine.versions`: the first answer for a file pins it).  It checks that every piece was
delivered whole; verification against the index is the caller's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..errors import CheckpointChangedError, CheckpointNotFoundError, CorruptCheckpointError
from ..storage.base import ScatterResult, Store
from .ranges import Piece, ReadOp
from .versions import Versions

PieceId = tuple[int, int]
"""(task, index) of a piece."""


async def execute(store: Store, ops: Sequence[ReadOp], views: Mapping[PieceId, memoryview], *,
                  max_concurrency: int, describe: Callable[[Piece], str],
                  on_bytes: Callable[[int], None] | None = None, versions: Versions | None = None,
                  extent: Callable[[Piece], tuple[int, int]] | None = None) -> dict[PieceId, int]:
    """Fetch every op (pinned to the version `versions` holds for its object, if any, and
    recording the version each answer names there); return {piece id: crc32c of its bytes}.

    Errors name the tensor (`describe` of a piece) and the file:
    `CorruptCheckpointError` where an object ends before a piece planned in it: ``bytes A..B
    lie outside FILE (N bytes)`` where the answer (or an earlier one) stated the object's
    size N (A..B: `extent` of the piece, the bytes of its entry; else the piece's own), ``FILE
    is truncated`` where none did; `CheckpointNotFoundError` ``data file missing: FILE`` for
    an object that is not there, `CheckpointChangedError` if `versions` had pinned it (it
    was deleted since) or an answer names another version than pinned."""
    slots = asyncio.Semaphore(max_concurrency)
    crcs: dict[PieceId, int] = {}

    async def run(op: ReadOp) -> None:
        file = store.describe(op.key)
        try:
            async with slots:
                result = await store.read_scatter(op.key, op.start,
                                                  [(p.offset, views[p.task, p.index]) for p in op.pieces],
                                                  etag=versions.etag(op.key) if versions is not None else None)
        except CheckpointChangedError:
            raise
        except CheckpointNotFoundError as exc:
            if versions is not None and versions.etag(op.key) is not None:
                raise CheckpointChangedError(f"{file} was deleted while it was being read") from exc
            raise CheckpointNotFoundError(f"{describe(op.pieces[0])}: data file missing: {file}") from exc
        if versions is not None:
            versions.observe(op.key, result, file)
        if result.delivered != sum(p.length for p in op.pieces):
            raise _short(op, result, versions.size(op.key) if versions is not None else result.size, file,
                         describe, extent)
        for piece, crc in zip(op.pieces, result.crcs):
            crcs[piece.task, piece.index] = crc
        if on_bytes is not None:
            on_bytes(result.delivered)

    await gather_or_cancel([asyncio.ensure_future(run(op)) for op in ops])
    return crcs


def _short(op: ReadOp, result: ScatterResult, size: int | None, file: str, describe: Callable[[Piece], str],
           extent: Callable[[Piece], tuple[int, int]] | None) -> CorruptCheckpointError:
    """The error for an answer that delivered fewer bytes than `op` planned."""
    if size is None:
        size = result.size
    short = next((p for p in op.pieces if p.end > op.start + result.delivered), op.pieces[-1])
    if size is not None and size < short.end:
        lo, hi = extent(short) if extent is not None else (short.offset, short.end)
        return CorruptCheckpointError(f"{describe(short)}: bytes {lo}..{hi} lie outside {file} ({size} bytes)")
    return CorruptCheckpointError(f"{describe(short)}: {file} is truncated "
                                  f"(bytes {op.start}..{op.end} requested, {result.delivered} delivered)")


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
