"""Per-host tiers for a job whose workers meet through a process group (the DCP plugin's
`StorageWriter` with ``LocalTier(per_host=True)``): the files and the commit point of `hosts`,
the meeting done by the group's collectives instead of the store.

    every rank, write_data      its host tier readied (`hosts.ready_tier`), its data file
                                written there create-only with its table (`hosts.write_host_part`);
                                then `drain_when_committed` starts, in the background: the local
                                commit awaited, its index written on the tier, the data file
                                drained (`hosts.drain_on_host`)
    coordinator, finish         its extra data files (DCP's metadata) written on its own tier
                                and named in ``NAME.drains`` (`name_extra`: for a restarted
                                job, before the commit); every table merged and committed
                                create-only as REMOTE/.tiers/NAME.index (the local commit); the
                                index handed to its own waiter (`handover`), or the failure
                                (`abandon`)

The coordinator holds the claim of REMOTE/.tiers/NAME from its plan to its commit, as `hosts`
does through the save protocol, so the two kinds of jobs exclude each other.  A worker other
than the coordinator learns of the commit by reading REMOTE/.tiers/NAME.index, at times drawn
as the save protocol's waits are (jittered, growing, learned from the job's rhythm): DCP runs
no code of the storage after `finish`.  One worker of each host reads it (the first to take
the checkpoint's host lock: `hostlock`) and writes it on the tier; the others of the
host look for it there, and read it from the store themselves only for a last look (their
save settled by the next one, or their coordinator's failure).

A process's waiters drain in the order their saves were written, as the hosts' drains do (each
worker of a drain waits for the others: two workers taking two drains in opposite orders would
each wait for the other).  DCP's saves are collectives, one after another: when a rank writes a
save, every earlier save of the job has committed or failed, so each earlier waiter still
waiting looks once more, at once, and gives up if its commit is not there.  A waiter whose
commit never comes and that no later save settles gives up after ``commit_timeout``; `gc`
removes its data file.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from ..errors import CheckpointError, CheckpointNotFoundError, SaveFailedError
from ..format.bundle import decode_index_bytes, index_filename
from ..options import DEFAULT_OPTIONS, IOOptions
from ..protocol import poll
from ..protocol.worker import read_table
from ..storage import open_store, split_prefix
from ..storage.local import LocalStore
from . import drain, hosts
from .hostlock import HostLock
from .layout import DRAINS, LocalTier, local_prefix

log = logging.getLogger("remoteckpt")


@dataclass(eq=False)
class _Waiter:
    """One rank's wait for the local commit of one save, then its drain."""

    prefix: str
    nudge: asyncio.Event = field(default_factory=asyncio.Event)
    merged: bytes | None = None          # handed over by this process's coordinator
    error: BaseException | None = None   # the coordinator's failure (its commit may still have landed)
    turn: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    """Done once this waiter is queued at the drain lock, or has ended."""


_queue: list[_Waiter] = []
"""This process's waiters, in the order of their saves (on remoteckpt's loop)."""


def meeting(prefix: str) -> tuple[str, str]:
    """(remote directory, checkpoint name) of the local commit of remote `prefix`: the claim,
    and the index REMOTE/.tiers/NAME.index."""
    remote_dir, remote_name = split_prefix(prefix)
    return remote_dir, hosts.meeting_name(remote_name)


async def name_extra(tier: LocalTier, prefix: str, *, rank: int, extra: Sequence[int]) -> None:
    """The coordinator's record, before its commit, of the data files of remote `prefix` it
    drains beside its own (`layout.extra_shards` reads it after a restart)."""
    tier_dir, name = split_prefix(local_prefix(tier, prefix))
    here = LocalStore(tier_dir)
    try:
        await here.put(name + DRAINS, json.dumps({"rank": rank, "shards": list(extra)}).encode())
    finally:
        await here.close()


def _waiter(prefix: str) -> _Waiter | None:
    return next((w for w in reversed(_queue) if w.prefix == prefix), None)


def handover(prefix: str, merged: bytes) -> None:
    """This process's coordinator committed `merged` for `prefix`: its waiter drains at once."""
    waiter = _waiter(prefix)
    if waiter is not None:
        waiter.merged = merged
        waiter.nudge.set()


def abandon(prefix: str, error: BaseException) -> None:
    """This process's coordinator failed to commit `prefix`: its waiter ends with `error`."""
    waiter = _waiter(prefix)
    if waiter is not None and waiter.merged is None:
        waiter.error = error
        waiter.nudge.set()


def drain_when_committed(tier: LocalTier, prefix: str, table: bytes, *, rank: int, world_size: int,
                         extra: Sequence[int] = (), save_id: str | None, overwrite: bool,
                         storage_options: dict[str, Any] | None = None, options: IOOptions = DEFAULT_OPTIONS,
                         future: Future[str] | None = None) -> Future[str]:
    """On remoteckpt's loop, once worker `rank` wrote its data file (whose table is `table`):
    settle every earlier waiter of this process, then start this one (the module docstring);
    the durability future (`future`, or a fresh `drain.promise`)."""
    for earlier in _queue:  # a later save began: each looks once more, then gives up
        if earlier.merged is None:
            earlier.nudge.set()
    before = _queue[-1].turn if _queue else None
    waiter = _Waiter(prefix)
    _queue.append(waiter)

    async def work() -> str:
        try:
            merged = await _await_commit(tier, waiter, table, rank, world_size, storage_options, options)
            if not os.path.exists(index_filename(local_prefix(tier, prefix))):  # handed over, or found late
                await _put_local(local_prefix(tier, prefix), merged)
            if before is not None:
                await asyncio.shield(before)
            waiter.turn.set_result(None)  # the drain below queues at the drain lock before any other runs
            return await hosts.drain_on_host(tier, prefix, rank=rank, world_size=world_size, save_id=save_id,
                                             overwrite=overwrite, storage_options=storage_options, options=options,
                                             extra=extra, fresh=True)
        finally:
            if not waiter.turn.done():
                waiter.turn.set_result(None)
            _queue.remove(waiter)

    return drain.start_work(work, local_prefix(tier, prefix), prefix, future)


async def _await_commit(tier: LocalTier, waiter: _Waiter, table: bytes, rank: int, world_size: int,
                        storage_options: dict[str, Any] | None, options: IOOptions) -> bytes:
    """The index of `waiter`'s local commit, once it is there (checked to hold this worker's
    table); raises once it cannot come."""
    remote_dir, name = meeting(waiter.prefix)
    key = index_filename(name)
    local = local_prefix(tier, waiter.prefix)
    store = open_store(remote_dir, storage_options, options)
    try:
        host = HostLock(local)  # the host's looker holds it
    except OSError:
        await store.close()
        raise
    begun = poll.clock()
    kind = ("host-commit", remote_dir, rank)

    async def look(last: bool = False) -> bytes | None:
        """The local commit's index: on the tier, if a worker of this host found it; else
        from the store, if this worker is the host's looker (the first to take the lock;
        another takes over once it lets go) or this is its `last` look; the looker writes
        it on the tier."""
        try:
            with open(index_filename(local), "rb") as f:
                return f.read()
        except FileNotFoundError:
            pass
        if not host.try_take() and not last:
            return None
        try:
            found = await store.get(key)
        except CheckpointNotFoundError:
            return None
        _check_holds(found, table, rank, waiter.prefix, store.describe(key))
        if host.held:
            await _put_local(local, found)
        return found

    async def polls() -> bytes:
        async for _ in poll.backoff_polls(options.poll_interval, begun + options.commit_timeout,
                                          cap=poll.interval_cap(world_size), share=poll.WAIT_SHARE, at_once=False,
                                          not_before=poll.waits.not_before(kind, begun)):
            found = await look()
            if found is not None:
                poll.waits.learn(kind, poll.clock() - begun)
                return found
        raise SaveFailedError(
            f"{waiter.prefix} was not committed locally within {options.commit_timeout:g} s: "
            f"{store.describe(key)} never appeared (the save failed on some rank, or its coordinator died); "
            f"worker {rank}'s data file stays on {tier.path} until gc")

    try:
        poller = asyncio.ensure_future(polls())
        nudged = asyncio.ensure_future(waiter.nudge.wait())
        try:
            await asyncio.wait({poller, nudged}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (poller, nudged):
                if not task.done():
                    task.cancel()
            await asyncio.gather(poller, nudged, return_exceptions=True)
        if poller.done() and not poller.cancelled():
            merged = poller.result()
        elif waiter.merged is not None:
            merged = waiter.merged
        else:  # the coordinator failed, or a later save began: committed by now, or never
            found = await look(last=True)
            if found is None and waiter.error is not None:
                raise waiter.error
            if found is None:
                raise SaveFailedError(f"{waiter.prefix} was not committed locally ({store.describe(key)} is not "
                                      f"there) and the job has moved on to its next save; worker {rank}'s data "
                                      f"file stays on {tier.path} until gc")
            merged = found
    finally:
        host.close()
        await store.close()
    _check_holds(merged, table, rank, waiter.prefix, store.describe(key))
    return merged


async def _put_local(local: str, index: bytes) -> None:
    tier_dir, name = split_prefix(local)
    here = LocalStore(tier_dir)
    try:
        await here.put(index_filename(name), index)  # this host's copy of the local commit
    finally:
        await here.close()


def _check_holds(merged: bytes, table: bytes, rank: int, prefix: str, where: str) -> None:
    """Refuse a local commit that is not of this save: its entries of data file `rank` must be
    exactly the ones this worker wrote."""
    index = decode_index_bytes(merged)
    mine = {k: e for k, e in read_table(table, rank, where).entries.items() if not e.slices}
    theirs = {k: e for k, e in index.entries.items() if e.shard_id == rank and not e.slices}
    def placed(entries: dict[bytes, Any]) -> dict[bytes, tuple[int, int, int]]:
        return {k: (e.offset, e.size, e.crc32c) for k, e in entries.items()}

    if placed(mine) != placed(theirs):
        raise CheckpointError(f"{where} is not the local commit of the save worker {rank} wrote for {prefix} "
                              "(another save committed it): its drain is not started")
