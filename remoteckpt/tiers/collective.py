"""Per-host tiers for a job whose workers meet through a process group (the DCP plugin's
`StorageWriter` with ``LocalTier(per_host=True)``): the files and the commit point of `hosts`,
the meeting done by the group's collectives instead of the store.

    every rank, write_data      its host tier readied (`hosts.ready_tier`), its data file
                                written there create-only with its table (`hosts.write_host_part`);
                                then, in the background, `drain_when_committed`: the local
                                commit awaited, its index copied to the tier, the data file
                                drained (`hosts.drain_on_host`)
    coordinator, finish         its extra data files (DCP's metadata) written on its own tier,
                                every table merged and committed create-only as
                                REMOTE/.tiers/NAME.index (the local commit, `commit_on_host`);
                                its drain started at once, of its own data file and the extra
                                ones, which ``NAME.drains`` on its tier names for a restarted
                                job (`layout.extra_shards`)

The coordinator holds the claim of REMOTE/.tiers/NAME from its plan to its commit, as
`hosts` does through the save protocol, so the two kinds of jobs exclude each other.  A
worker learns of the commit by reading REMOTE/.tiers/NAME.index, at times drawn as the save
protocol's waits are (jittered, growing, learned from the job's rhythm): the collective that
ends the save tells it nothing, since DCP runs no code of the storage after `finish`.  A
worker whose commit never comes (the save failed on some rank) gives up after
``commit_timeout``; `gc` removes its data file.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import Future
from typing import Any

from ..errors import CheckpointNotFoundError, SaveFailedError
from ..format.bundle import index_filename
from ..options import DEFAULT_OPTIONS, IOOptions
from ..protocol import poll
from ..storage import open_store, split_prefix
from ..storage.local import LocalStore
from . import drain, hosts
from .layout import DRAINS, LocalTier, local_prefix

log = logging.getLogger("remoteckpt")

_waiting: dict[str, object] = {}
"""The newest save of each remote prefix whose local commit this process awaits: an earlier
waiter of the same prefix (a save that failed on another rank) stops at its next look."""


def meeting(prefix: str) -> tuple[str, str]:
    """(remote directory, checkpoint name) of the local commit of remote `prefix`: the claim,
    and the index REMOTE/.tiers/NAME.index."""
    remote_dir, remote_name = split_prefix(prefix)
    return remote_dir, hosts.meeting_name(remote_name)


async def commit_on_host(tier: LocalTier, prefix: str, merged: bytes, *, rank: int, extra: list[int]) -> None:
    """The coordinator's side after its commit of `merged` (REMOTE/.tiers/NAME.index): the index
    on its own host tier, and the extra data files it drains named there."""
    tier_dir, name = split_prefix(local_prefix(tier, prefix))
    here = LocalStore(tier_dir)
    try:
        await here.put(name + DRAINS, json.dumps({"rank": rank, "shards": extra}).encode())
        await here.put(index_filename(name), merged)
    finally:
        await here.close()


def drain_when_committed(tier: LocalTier, prefix: str, *, rank: int, world_size: int, save_id: str | None,
                         overwrite: bool, storage_options: dict[str, Any] | None = None,
                         options: IOOptions = DEFAULT_OPTIONS, future: Future[str] | None = None) -> Future[str]:
    """Start, in the background, worker `rank`'s wait for the local commit of remote `prefix`
    and then its drain; the durability future (`future`, or a fresh `drain.promise`)."""
    token = _waiting[prefix] = object()
    local = local_prefix(tier, prefix)

    async def work() -> str:
        await _await_commit(tier, prefix, token, world_size, options)
        return await hosts.drain_on_host(tier, prefix, rank=rank, world_size=world_size, save_id=save_id,
                                         overwrite=overwrite, storage_options=storage_options, options=options)

    async def _await_commit(tier: LocalTier, prefix: str, token: object, pollers: int, options: IOOptions) -> None:
        remote_dir, name = meeting(prefix)
        key = index_filename(name)
        tier_dir, local_name = split_prefix(local)
        store, here = open_store(remote_dir, storage_options, options), LocalStore(tier_dir)
        begun = poll.clock()
        kind = ("host-commit", prefix.rsplit("/", 1)[0], rank)
        try:
            async for _ in poll.backoff_polls(options.poll_interval, begun + options.commit_timeout,
                                              cap=poll.interval_cap(pollers), share=poll.WAIT_SHARE, at_once=False,
                                              not_before=poll.waits.not_before(kind, begun)):
                if _waiting.get(prefix) is not token:
                    raise SaveFailedError(f"{prefix}: a later save of it in this process replaced this one "
                                          "before its local commit")
                try:
                    merged = await store.get(key)
                except CheckpointNotFoundError:
                    continue
                poll.waits.learn(kind, poll.clock() - begun)
                await here.put(index_filename(local_name), merged)
                return
        finally:
            if _waiting.get(prefix) is token:
                del _waiting[prefix]
            await store.close()
            await here.close()
        raise SaveFailedError(
            f"{prefix} was not committed locally within {options.commit_timeout:g} s: "
            f"{store.describe(key)} never appeared (the save failed on some rank, or its coordinator died); "
            f"worker {rank}'s data file stays on {tier.path} until `gc`")

    return drain.start_work(work, local, prefix, future)


def drain_now(tier: LocalTier, prefix: str, *, rank: int, world_size: int, extra: list[int], save_id: str | None,
              overwrite: bool, storage_options: dict[str, Any] | None = None, options: IOOptions = DEFAULT_OPTIONS,
              future: Future[str] | None = None) -> Future[str]:
    """The coordinator's drain, started once it committed: its own data file and `extra`."""
    _waiting.pop(prefix, None)
    return drain.start_work(
        lambda: hosts.drain_on_host(tier, prefix, rank=rank, world_size=world_size, save_id=save_id,
                                    overwrite=overwrite, storage_options=storage_options, options=options,
                                    extra=extra),
        local_prefix(tier, prefix), prefix, future)

