"""Per-host tiers: each host's tier holds the data files of its own workers only, and the
workers meet through the remote store (`LocalTier(per_host=True)`).

    TIER/NAME.data-RRRRR-of-NNNNN   the data files this host's workers wrote (no other)
    TIER/NAME.table-RRRRR           worker R's table: its entries, for its drain
    TIER/NAME.index, .tier, .durable   as on a shared tier (`layout`)
    REMOTE/.tiers/NAME.index        the local commit: the merged index, committed create-only
                                    in the remote directory once every worker's data file is
                                    on its own host's disk (one point all hosts agree on)

Per save, every worker (`save_on_host`), in this order:
  1. the save protocol (`protocol.save`) at remote ``.tiers/NAME``: claim, notices, reports,
     merge, commit, every worker's part being (2) on its own tier; its table travels in its
     report.  The protocol's commit of ``.tiers/NAME.index`` is the local commit
  2. a checkpoint committed at the remote prefix refused unless overwriting: rank 0 looks, once
     it holds the claim and before it invites anyone (the protocol's `check`: its refusal is
     every worker's verdict, and none writes anything); then each worker's part: a checkpoint
     committed on its tier likewise refused (each looks at its own; overwriting, the host's
     copy stops being committed and each worker removes its own files of it: `give_way`); room
     under the cap for its own part; the record; its data file written create-only to its tier
     (`worker.write_part` on the tier's directory) and its table beside it as ``NAME.table-R``
  3. the merged index written on its tier as ``NAME.index``, fetched once per host
     (`index_once_per_host`); the call returns
  4. the drain starts in the background (`drain_on_host`): the save protocol at the remote
     prefix itself, every worker's part its local data file streamed as it is
     (`tools.copy.copy_data_file`: CRC-checked; when the save was incremental, tensors
     unchanged since what the host sent of its newest durable checkpoint of the directory,
     `sent.sent_base`, else since the directory's latest, copied by the store).  The tables
     are the same, so the index committed is byte for byte the local one.  Then every worker
     marks its tier durable, adding what it sent; rank 0 removes ``.tiers/NAME.index`` and runs
     `after` (a Saver's state file and remote retention)

A kill at any point leaves the remote prefix with the previous checkpoint or the complete new
one (its index is committed last, after every data file is fenced), and the local commit with
either no ``.tiers/NAME.index`` (the save failed on every rank) or one (every worker's data file
was on its disk).  A checkpoint committed locally and not durable is restorable by workers
reading their own hosts' data files (the same partitioning); the others are read from the
remote prefix once it is durable.  A restarted job resumes its drains when every worker does
(`drain.resume` with the worker's rank: a `Saver` on every rank does it); a worker whose data
file is not on its tier any more (a replaced host) fails that drain on every rank, and the
checkpoint stays local.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

from ..engine.budget import process_budget
from ..engine.digest import digest_of
from ..engine.fetch import gather_or_cancel
from ..engine.incremental import BaseCheckpoint, Incremental, open_base
from ..errors import (
    CheckpointChangedError,
    CheckpointError,
    CheckpointExistsError,
    CheckpointNotFoundError,
    SaveFailedError,
)
from ..faults import crash_point
from ..format.bundle import data_filename, decode_index_bytes, index_filename
from ..management.state import previous_checkpoint
from ..options import DEFAULT_OPTIONS, IOOptions
from ..progress import ProgressCallback, Reporter
from ..protocol.layout import DATA_FILE, MEETING, SaveLayout
from ..protocol.records import DataIdentity
from ..protocol.save import SaveReport, save_worker
from ..protocol.worker import write_part
from ..storage import open_store, split_prefix
from ..storage.base import Store
from ..storage.local import LocalStore
from ..tools.copy import copy_data_file
from . import drain, retention
from .hostlock import host_locked
from .layout import DRAINS, DURABLE, RECORD, LocalTier, checkpoints, local_prefix, record_bytes
from .sent import mark_durable_with, sent_base

log = logging.getLogger("remoteckpt")

DRAIN_SUFFIX = ".drain"
"""Appended to the job's save id for its drains (a save of another prefix, the remote one)."""


def table_key(name: str, rank: int) -> str:
    return f"{name}.table-{rank:05d}"


def meeting_name(name: str) -> str:
    return f"{MEETING}/{name}"


def drain_id(save_id: str | None) -> str:
    """The save id of a job's drains: its own, marked (within the 64 characters allowed)."""
    job = SaveLayout.default_save_id() if save_id is None else save_id
    return job[: 64 - len(DRAIN_SUFFIX)] + DRAIN_SUFFIX


async def give_way(here: LocalStore, name: str, rank: int, world_size: int) -> None:
    """An overwriting save's start on this host: the host's copy of checkpoint `name` stops
    being committed (its index goes first), and this worker's own files of it go (its data file
    and table, and data files of another number of workers, which no worker of this save
    writes).  The host's other workers replace theirs: a worker that deleted the whole copy
    could delete a data file another had already written anew."""
    await here.delete(index_filename(name))
    for key in await here.list(name + "."):
        m = DATA_FILE.match(key)
        if m and m.group("name") == name and (int(m.group("shards")) != world_size or int(m.group("shard")) == rank):
            await here.delete(key)
    await here.delete(table_key(name, rank))


async def ready_tier(here: LocalStore, tier: LocalTier, name: str, prefix: str, *, rank: int, world_size: int,
                     overwrite: bool, needed: int) -> None:
    """Step 2 on this worker's host tier (`here`, holding checkpoint `name` of remote `prefix`):
    a copy committed there refused unless overwriting (then `give_way`), room under the cap
    for `needed` bytes, the record."""
    if not overwrite and await here.exists(index_filename(name)):
        # Not `CheckpointExistsError.committed` (the remote prefix's case, which every worker
        # finds alike): reported, so that the whole attempt fails with it at once.
        raise CheckpointExistsError(f"{here.describe(index_filename(name))} already exists: this host's tier holds "
                                    f"a committed copy of {prefix} (pass overwrite=True to replace it)")
    await retention.settled(tier)
    if overwrite:
        await give_way(here, name, rank, world_size)
    await retention.make_room(tier, needed)
    await here.delete(name + DURABLE)  # of an older checkpoint of this name
    await here.delete(name + DRAINS)   # likewise (a DCP coordinator's, `collective`)
    await here.put(name + RECORD, record_bytes(prefix, overwrite=overwrite))


async def index_once_per_host(here: LocalStore, store: Store, name: str, key: str) -> bytes:
    """Step 3's index (the local commit, `key` in the remote `store`) on this host's tier as
    checkpoint `name`'s: fetched by the first worker of the host to come, under the
    checkpoint's host lock (`hostlock`), and found there by the others: one GET per host, not per
    worker.  An index on the tier is this save's: none of an older checkpoint of the name
    outlives the save's start on any of the host's workers (refused, or removed by `give_way`),
    and each of them starts before the commit."""
    async with host_locked(os.path.join(here.root, name)):
        try:
            return await here.get(index_filename(name))
        except CheckpointNotFoundError:
            merged = await store.get(key)
            await here.put(index_filename(name), merged)
            return merged


async def write_host_part(here: LocalStore, layout: SaveLayout, tensors: Mapping[str, Any], *, attempt: str,
                          options: IOOptions, progress: Reporter | None = None, report: SaveReport | None = None,
                          incremental: bool | str = False) -> bytes:
    """Worker ``layout.rank``'s data file written create-only on its host tier (`here`), and its
    table beside it (what its drain sends, and what `recover` needs); returns the table.  A
    data file of a dead attempt of this very save (never committed here: no local index) goes
    first: this host's tier is this job's.  `incremental`: with digests, its tensors unchanged
    since the host's latest checkpoint on the tier copied from it (a tensor whose data file is
    another host's makes it write them all) and laid after the changed ones, in runs the drain
    copies inside the remote store as whole parts."""
    name, rank, world_size = layout.name, layout.rank, layout.world_size
    if not await here.exists(index_filename(name)):
        await here.delete(data_filename(name, rank, world_size))
    since = (Incremental(base=await previous_checkpoint(here, here.url, name), unchanged_last=True)
             if incremental else None)
    _, table = await write_part(here, layout, tensors, options=options, attempt=attempt, progress=progress,
                                report=report, incremental=since)
    await here.put(table_key(name, rank), table)  # before the report: `recover` needs it
    return table


async def save_on_host(tensors: Mapping[str, Any], prefix: str, tier: LocalTier, *, rank: int, world_size: int,
                       overwrite: bool = False, save_id: str | None = None,
                       storage_options: dict[str, Any] | None = None, options: IOOptions = DEFAULT_OPTIONS,
                       progress: ProgressCallback | None = None, durable: Future[str] | None = None,
                       after: Callable[[], Awaitable[None]] | None = None, incremental: bool | str = False,
                       needed: int = 0) -> tuple[SaveReport, Future[str]]:
    """The steps of the module docstring for remote `prefix`; this worker's report of the
    local commit and the durability future (`durable`, if given, is the one resolved).
    `after` runs on rank 0 once the checkpoint is durable.  `needed`: bytes of this worker's
    part, made room for under the tier's cap."""
    local = local_prefix(tier, prefix)
    tier_dir, name = split_prefix(local)
    remote_dir, remote_name = split_prefix(prefix)
    future = durable if durable is not None else drain.promise(prefix)
    sid = SaveLayout.default_save_id() if save_id is None else save_id
    try:
        os.makedirs(tier_dir, exist_ok=True)
        here, store = LocalStore(tier_dir), open_store(remote_dir, storage_options, options)
        try:
            async def refuse_committed() -> None:
                if await store.exists(index_filename(remote_name)):
                    raise CheckpointExistsError.committed(store.describe(index_filename(remote_name)))

            async def part(attempt: str) -> tuple[DataIdentity | None, bytes]:
                await ready_tier(here, tier, name, prefix, rank=rank, world_size=world_size, overwrite=overwrite,
                                 needed=needed)
                table = await write_host_part(here, SaveLayout(name, rank, world_size, sid), tensors,
                                              attempt=attempt, options=options, progress=reporter, report=written,
                                              incremental=incremental)
                return None, table

            reporter = Reporter(progress, prefix, rank, world_size)
            written = SaveReport(prefix, rank, world_size)  # what `part` wrote on the tier
            meeting = SaveLayout(meeting_name(remote_name), rank, world_size, sid)
            # Rank 0 alone looks at the remote prefix, before inviting anyone: its refusal is
            # every worker's verdict (a look by each would be a request per worker on one key).
            try:
                report = await save_worker(store, meeting, {}, overwrite=overwrite, options=options, prefix=prefix,
                                           progress=reporter, part=part,
                                           check=None if overwrite else refuse_committed)
            except SaveFailedError:
                if rank > 0 and not overwrite:  # came after rank 0's refusal was withdrawn: say what stopped it
                    await refuse_committed()
                raise
            report.bytes_written, report.write_seconds = written.bytes_written, written.write_seconds
            await index_once_per_host(here, store, name, meeting.index)
            crash_point("host-committed")
        finally:
            await here.close()
            await store.close()
    except BaseException as exc:
        if not future.done():
            future.set_exception(exc)
        raise
    work = lambda: drain_on_host(tier, prefix, rank=rank, world_size=world_size, save_id=sid,  # noqa: E731
                                 overwrite=overwrite, storage_options=storage_options, options=options,
                                 after=after if rank == 0 else None, progress=progress, fresh=True)
    future = drain.start_work(work, local, prefix, future)
    retention.trim_later(tier)
    return report, future


async def drain_on_host(tier: LocalTier, remote: str, *, rank: int, world_size: int, save_id: str | None,
                        overwrite: bool = False, storage_options: dict[str, Any] | None = None,
                        options: IOOptions = DEFAULT_OPTIONS, after: Callable[[], Awaitable[None]] | None = None,
                        progress: ProgressCallback | None = None, extra: Sequence[int] = (),
                        fresh: bool = False) -> str:
    """This worker's side of the drain of the per-host checkpoint of remote prefix `remote` on
    `tier` (step 4 of the module docstring), in the order drains were started; then the tier's
    retention.  `extra`: further data files of this host that this process drains as workers
    of the same drain, alongside its own (the DCP coordinator's metadata file).  `fresh`: the
    drain's first start, right after the local commit in this process (not a resumed one): no
    earlier drain of this checkpoint can have committed it, since a commit needs every
    worker's report, this one's included, and the look for one is skipped (a GET per worker
    of one key).  Returns `remote`."""
    local = local_prefix(tier, remote)
    tier_dir, name = split_prefix(local)
    remote_dir, remote_name = split_prefix(remote)
    async with drain.drain_lock():
        start = time.monotonic()
        crash_point("draining")
        here, store = LocalStore(tier_dir), open_store(remote_dir, storage_options, options)
        try:
            raw = await here.get(index_filename(name))
            index = decode_index_bytes(raw)
            if index.num_shards != world_size:
                raise CheckpointError(f"{here.describe(index_filename(name))} has {index.num_shards} data files; "
                                      f"a drain of {world_size} workers cannot send it")
            shards = (rank, *extra)
            base = None  # what unchanged entries are copied from, if any entry may be
            if any(digest_of(e) is not None for e in index.entries.values() if e.shard_id in shards and not e.slices):
                # what this host sent of its latest durable checkpoint, else the remote
                # directory's latest (each worker reading the state file and the base's index)
                base = await asyncio.to_thread(sent_base, tier, store, name, remote_dir, shards)  # reads an index
                if base is None:
                    found = await previous_checkpoint(store, remote_dir, remote_name)
                    base = await open_base(store, found) if found is not None else None
            remote_index = index_filename(remote_name)
            sent: list[DataIdentity] = []

            async def one(shard: int) -> None:
                table = await here.get(table_key(name, shard))
                mine = [(k, e) for k, e in index.entries.items() if e.shard_id == shard and not e.slices]
                key = data_filename(remote_name, shard, world_size)
                reporter = Reporter(progress, remote, shard, world_size)
                total = sum(e.size for _, e in mine)

                async def part(attempt: str) -> tuple[DataIdentity | None, bytes]:
                    if await store.exists(key):  # a dead attempt's (the protocol cleared the rest)
                        await store.delete(key)

                    def copy(with_base: BaseCheckpoint | None) -> Awaitable[tuple[int, int, DataIdentity | None, int]]:
                        return copy_data_file(here, store, data_filename(name, shard, world_size), key, mine,
                                              options=options, budget=process_budget(options.memory_budget),
                                              reporter=reporter, total=total, base=with_base)
                    try:
                        _, _, identity, _ = await copy(base)
                    except (CheckpointChangedError, CheckpointNotFoundError) as exc:
                        if base is None:
                            raise
                        log.warning("draining %s: the base %s changed or vanished (%s); sending it whole",
                                    here.describe(data_filename(name, shard, world_size)),
                                    store.describe(base.name), exc)
                        _, _, identity, _ = await copy(None)
                    if identity is None:
                        raise CheckpointNotFoundError(f"{here.describe(data_filename(name, shard, world_size))} "
                                                      "is gone")
                    sent.append(identity)
                    return identity, table

                try:
                    await save_worker(store, SaveLayout(remote_name, shard, world_size, drain_id(save_id)), {},
                                      overwrite=overwrite, options=options, prefix=remote, part=part)
                except CheckpointExistsError as exc:
                    if not exc.index_committed or not await drain.committed_as(store, remote_index, raw):
                        raise
                    log.info("%s was committed by an earlier drain; marking it durable", remote)

            # Committed by an earlier drain of this very checkpoint (whose worker died before its
            # marker): durable, and never replaced, even by a drain that may overwrite.
            total = sum(e.size for e in index.entries.values() if e.shard_id in shards and not e.slices)
            if not fresh and await drain.committed_as(store, remote_index, raw):
                log.info("%s was committed by an earlier drain; marking it durable", remote)
            else:
                tasks = [asyncio.ensure_future(one(shard)) for shard in shards]
                await gather_or_cancel(tasks)
            crash_point("drained")
            await mark_durable_with(local, remote, sent)
            meeting_index = index_filename(meeting_name(remote_name))
            if 0 in shards and await drain.committed_as(store, meeting_index, raw):  # not a newer save's
                try:
                    await store.delete(meeting_index)
                except CheckpointError:
                    log.warning("could not remove %s", store.describe(meeting_index))
        finally:
            await here.close()
            await store.close()
        await retention.trim(tier)
        Reporter(progress, remote).emit("durable", total, total)
        log.info("drained worker %d's part of %s to %s in %.3f s", rank, local, remote, time.monotonic() - start)
        if after is not None:
            await after()
        return remote


async def recover(tier: LocalTier, *, storage_options: dict[str, Any] | None = None,
                  options: IOOptions = DEFAULT_OPTIONS) -> list[str]:
    """After a restart: a checkpoint of the tier whose local commit happened
    (``.tiers/NAME.index`` in its remote directory) but whose index never reached this host's
    tier (its worker died between the two) gets that index, so that its drain can resume.
    Only where this host holds a worker's data file and table.  The names recovered."""
    recovered = []
    for c in checkpoints(tier):
        tier_dir, name = split_prefix(c.local)
        if c.committed or not [f for f in os.listdir(tier_dir) if f.startswith(f"{name}.table-")]:
            continue
        remote_dir, remote_name = split_prefix(c.remote)
        store = open_store(remote_dir, storage_options, options)
        try:
            merged = await store.get(index_filename(meeting_name(remote_name)))
        except CheckpointNotFoundError:
            continue  # never committed locally: `gc` removes what is left
        finally:
            await store.close()
        here = LocalStore(tier_dir)
        try:
            await here.put(index_filename(name), merged)
        finally:
            await here.close()
        log.info("%s: committed locally before this host's worker died; its index restored from %s", c.local,
                 c.remote)
        recovered.append(c.name)
    return recovered
