"""A save with a local tier: committed on local disk, then drained to its remote prefix.

Per save, every worker calls `save_tiered` (through `remoteckpt.save(..., local_tier=)`,
`save_async`, a `Saver` or a plugin); in this order:
  1. rank 0: the previous save's trim awaited if it still runs (`retention.settled`), then
     `retention.make_room` (the tier's size cap), then the record ``NAME.tier``
     naming the remote prefix (`layout`); a checkpoint committed on the tier at that name
     is refused unless overwriting
  2. every rank: the usual save protocol (`protocol.save`), on the tier's directory: each
     worker writes its data file there, rank 0 commits the index; every rank returns once
     that commit has happened
  3. rank 0: the drain starts in the background (`drain`), and so does `retention.trim`
     (`retention.trim_later`: deleting evicted files is not the caller's to wait for; the
     tier's next save waits for it first); ranks > 0 watch for the durable marker instead
The call returns after step 3's start: the training loop waits for local disk only.  The
drain and the trim are tasks of remoteckpt's I/O loop that yield once before their first
step, so the call's result is handed back before either does any work.  The durability
future (`drain.durability(prefix)`) resolves once the remote index is committed.

Workers of one save share the tier's directory (the processes of one host, or a path on a
filesystem every host sees): the save protocol meets through it, and rank 0 drains the
whole checkpoint from it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Future
from typing import Any

import numpy as np

from ..direct import save_checkpoint
from ..engine.plan import Slice
from ..errors import CheckpointExistsError, LocalTierFullError
from ..format.bundle import index_filename
from ..options import DEFAULT_OPTIONS, IOOptions
from ..progress import ProgressCallback
from ..protocol.commit import DEFAULT_COMMIT, CommitProtocol
from ..protocol.save import SaveReport
from ..storage import split_prefix
from ..storage.local import LocalStore
from . import drain, hosts, retention
from .layout import DURABLE, RECORD, LocalTier, checkpoint, delete_local, local_prefix, name_in_tier, record_bytes


def payload_bytes(tensors: Mapping[str, Any]) -> int:
    """About the bytes `tensors` take in a data file (numeric payloads; strings as held)."""
    total = 0
    for value in tensors.values():
        items = value if isinstance(value, (list, tuple)) and value and isinstance(value[0], Slice) else [value]
        for item in items:
            array = item.array if isinstance(item, Slice) else value
            total += int(getattr(array, "nbytes", np.asarray(array).nbytes))
    return total


async def begin(tier: LocalTier, prefix: str, *, overwrite: bool, needed: int) -> str:
    """Step 1 (rank 0, before the local save claims the tier's prefix): the previous save's
    trim finished, room under the cap, the record; returns the local prefix."""
    await retention.settled(tier)
    local = local_prefix(tier, prefix)
    directory, name = split_prefix(local)
    os.makedirs(directory, exist_ok=True)
    there = checkpoint(tier, name_in_tier(prefix))
    if there is not None and there.committed and there.remote != prefix:
        # Another remote prefix of the same name (another run's directory): the tier is its
        # cache once it is durable, and it may go; before, it is all there is of it.
        if not there.durable:
            raise LocalTierFullError(
                f"local tier {tier.path} holds {there.name} of {there.remote}, not yet durable, under the name "
                f"{prefix} needs; give this run a tier directory of its own")
        await delete_local(tier, there.name)
    if not overwrite and os.path.exists(index_filename(local)):
        raise CheckpointExistsError.committed(index_filename(local))
    await retention.make_room(tier, needed)
    store = LocalStore(directory)
    try:
        await store.delete(name + DURABLE)  # of an older checkpoint of this name
        await store.put(name + RECORD, record_bytes(prefix, overwrite=overwrite))
    finally:
        await store.close()
    return local


async def finish(tier: LocalTier, prefix: str, *, overwrite: bool, storage_options: dict[str, Any] | None,
                 options: IOOptions, durable: Future[str] | None = None,
                 after: Callable[[], Awaitable[None]] | None = None,
                 progress: ProgressCallback | None = None) -> Future[str]:
    """Step 3 (rank 0, once the local index is committed): the drain and the tier's trim
    started in the background; the durability future (`durable` if given).  `after` runs
    once durable."""
    async def then() -> None:
        await retention.trim(tier)
        if after is not None:
            await after()

    future = drain.start(local_prefix(tier, prefix), prefix, overwrite=overwrite, storage_options=storage_options,
                         options=options, after=then, future=durable, progress=progress)
    retention.trim_later(tier)
    return future


async def save_tiered(tensors: Mapping[str, Any], prefix: str, tier: LocalTier, *, rank: int = 0,
                      world_size: int = 1, overwrite: bool = False, save_id: str | None = None,
                      storage_options: dict[str, Any] | None = None, options: IOOptions = DEFAULT_OPTIONS,
                      commit: CommitProtocol = DEFAULT_COMMIT, progress: ProgressCallback | None = None,
                      durable: Future[str] | None = None, after: Callable[[], Awaitable[None]] | None = None,
                      **more: Any) -> tuple[SaveReport, Future[str]]:
    """The steps of the module docstring for remote `prefix`; the worker's report of the
    local save and the durability future (`durable`, if given, is the one resolved).
    `after` runs (rank 0) once the checkpoint is durable, in drain order.  `more`: further
    options of `direct.save_checkpoint` for the local save (``incremental``: its base is the
    tier's latest checkpoint, its unchanged tensors laid after the changed ones, as the drain
    copies them).  A per-host tier's save of several workers is `hosts.save_on_host`
    (with the default commit protocol)."""
    if tier.per_host and world_size > 1:
        return await hosts.save_on_host(tensors, prefix, tier, rank=rank, world_size=world_size, overwrite=overwrite,
                                        save_id=save_id, storage_options=storage_options, options=options,
                                        progress=progress, durable=durable, after=after,
                                        incremental=more.get("incremental", False), needed=payload_bytes(tensors))
    local = local_prefix(tier, prefix)
    future = durable if durable is not None else drain.promise(prefix)
    if rank != 0 and tier.max_bytes is not None:
        # Rank 0 may wait up to `full_timeout` for room on the tier before it invites the others.
        options = dataclasses.replace(options, commit_timeout=options.commit_timeout + tier.full_timeout)
    try:
        if rank == 0:
            await begin(tier, prefix, overwrite=overwrite, needed=payload_bytes(tensors) * world_size)
        report = await save_checkpoint(tensors, local, rank=rank, world_size=world_size, overwrite=overwrite,
                                       save_id=save_id, options=options, commit=commit, progress=progress,
                                       unchanged_last=True, **more)
    except BaseException as exc:
        if not future.done():
            future.set_exception(exc)
        raise
    if rank != 0:
        return report, drain.watch_marker(local, prefix, max(options.commit_timeout, tier.full_timeout), future,
                                          storage_options=storage_options)
    return report, await finish(tier, prefix, overwrite=overwrite, storage_options=storage_options, options=options,
                                durable=future, after=after, progress=progress)
