"""A replaced host: a per-host tier that lost what a local commit put on it.

A per-host checkpoint committed locally (REMOTE/.tiers/NAME.index) drains only once every
worker sends its own data file from its own host's tier.  A worker whose host was replaced
(a new node, a wiped disk) has nothing of it: no record, no table, no data file, so it
would not even know there is a drain to join, and the others' drain would wait for it for
``commit_timeout``, holding up the drains queued behind it.  So a restarted worker also
looks at the local commits pending in the remote directory (`lost`): for each one its tier
holds nothing of, it joins that drain at once and fails it (`fail_drain`), with an error
naming itself, the checkpoint and its tier, and every worker of the drain gets that error
within a verdict poll.  The checkpoint stays committed on the other hosts' tiers; a job that
cannot get it back drops it (``LocalTier(resume=False)``), and `gc` removes the rest.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import CheckpointNotFoundError
from ..format.bundle import decode_index_bytes, index_filename
from ..options import DEFAULT_OPTIONS, IOOptions
from ..protocol.layout import MEETING, SaveLayout
from ..protocol.records import DataIdentity
from ..protocol.save import save_worker
from ..storage import open_store, split_prefix
from . import drain
from .hosts import drain_id, table_key
from .layout import RECORD, LocalTier, local_prefix


async def lost(tier: LocalTier, remote_directory: str, *, rank: int, storage_options: dict[str, Any] | None = None,
               options: IOOptions = DEFAULT_OPTIONS) -> list[tuple[str, int, float]]:
    """The local commits pending in `remote_directory` (committed at ``.tiers/NAME.index``, not
    drained: no ``NAME.index`` there) that worker `rank` took part in and of which this host's
    tier holds nothing (no record, no table of this worker): (remote prefix, workers, time of
    the local commit), oldest first, the order in which every worker drains them."""
    store = open_store(remote_directory, storage_options, options)
    found = []
    try:
        for info in sorted(await store.list_info(f"{MEETING}/"), key=lambda i: (i.mtime, i.key)):
            if not info.key.endswith(".index"):
                continue
            name = info.key[len(MEETING) + 1: -len(".index")]
            remote = f"{remote_directory.rstrip('/')}/{name}"
            local = local_prefix(tier, remote)
            tier_dir, local_name = split_prefix(local)
            if os.path.exists(local + RECORD) or os.path.exists(os.path.join(tier_dir, table_key(local_name, rank))):
                continue  # this host holds it (its drain resumes), or held it (`gc` decides)
            if await store.exists(index_filename(name)):
                continue  # drained; its local commit not removed yet
            try:
                workers = decode_index_bytes(await store.get(info.key)).num_shards
            except CheckpointNotFoundError:
                continue  # drained and removed meanwhile
            if rank < workers:
                found.append((remote, workers, info.mtime))
    finally:
        await store.close()
    return found


async def fail_drain(tier: LocalTier, remote: str, *, rank: int, world_size: int, save_id: str | None,
                     storage_options: dict[str, Any] | None = None, options: IOOptions = DEFAULT_OPTIONS) -> str:
    """Join the drain of `remote` as worker `rank` and fail it at once: this worker's data file
    is not on its tier.  Raises that error (every worker of the drain raises it too)."""
    message = (f"worker {rank}'s data file of {remote} is not on its host's tier {tier.path} (a replaced host, or "
               "a lost disk): the checkpoint cannot be drained; the other hosts' tiers keep it until they drop it "
               "(LocalTier(resume=False)) or gc removes it")

    async def part(attempt: str) -> tuple[DataIdentity | None, bytes]:
        raise CheckpointNotFoundError(message)

    remote_dir, remote_name = split_prefix(remote)
    async with drain.drain_lock():
        store = open_store(remote_dir, storage_options, options)
        try:
            await save_worker(store, SaveLayout(remote_name, rank, world_size, drain_id(save_id)), {},
                              overwrite=False, options=options, prefix=remote, part=part)
        finally:
            await store.close()
    raise CheckpointNotFoundError(message)  # the save above raised it already
