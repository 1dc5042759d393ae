"""A restarted job's drains: what a tier holds committed locally and not durable, drained again
(oldest first) or, with ``LocalTier(resume=False)``, deleted.

A shared tier's checkpoint is drained by the process that finds it (`drain.start`).  A
per-host tier's checkpoint of several workers is drained by all of them together, each its own
data file (`hosts.drain_on_host`): every worker of the restarted job resumes, with its rank (a
`Saver` on every rank does this when it first touches its directory; a DCP job calls
`resume_drains` on every rank, and its coordinator's worker also drains DCP's metadata file,
as its tier's ``NAME.drains`` says).  A worker whose host tier lost a checkpoint pending in the
remote directory (a replaced host) fails that drain at once (`replaced`), so that the others
do not wait for it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any

from ..engine import loop
from ..errors import CheckpointError
from ..format.bundle import decode_index_bytes, index_filename
from ..options import DEFAULT_OPTIONS, IOOptions
from ..storage import split_prefix
from . import drain, hosts, replaced
from .layout import (
    LocalTier,
    TierCheckpoint,
    TierLike,
    as_tier,
    checkpoints,
    delete_local,
    extra_shards,
    name_in_tier,
)

log = logging.getLogger("remoteckpt")


def pending(tier: LocalTier) -> list[TierCheckpoint]:
    """The tier's checkpoints committed locally and not durable, oldest first."""
    return [c for c in checkpoints(tier) if c.committed and not c.durable]


def _shards(c: TierCheckpoint) -> int:
    """The number of data files of `c` (its workers, on a per-host tier), from its local index."""
    with open(index_filename(c.local), "rb") as f:
        return decode_index_bytes(f.read()).num_shards


async def resume(tier: LocalTier, *, storage_options: dict[str, Any] | None = None,
                 options: IOOptions = DEFAULT_OPTIONS, remote_directory: str | None = None,
                 after_for: Callable[[str], Callable[[], Awaitable[None]]] | None = None, rank: int = 0,
                 save_id: str | None = None) -> list[tuple[TierCheckpoint, Future[str]]]:
    """After a restart: drain every checkpoint the tier holds committed but not durable
    (oldest first; only those of `remote_directory` if given), or with ``resume=False``
    delete them from the tier.  Drains in flight in this process are left alone.  Returns
    the checkpoints whose drains started, with their futures; ``after_for(remote)`` is the
    `after` of each drain (rank 0's, on a per-host tier).  `rank` and `save_id`: this
    worker's, for the drains of a per-host tier."""
    started = []
    commits: list[replaced.PendingCommit] = []
    if tier.per_host:
        await hosts.recover(tier, storage_options=storage_options, options=options)
        if remote_directory is not None and tier.resume:
            try:
                commits = await replaced.pending_commits(remote_directory, storage_options=storage_options,
                                                         options=options)
            except CheckpointError as exc:
                log.warning("could not list the local commits pending in %s (%s); resuming what this host holds",
                            remote_directory, exc)
    order = {c.remote: c.order for c in commits}
    gone = {c.remote: c for c in replaced.lost(commits, tier, rank)}
    held = [c for c in pending(tier) if c.remote not in gone
            and (remote_directory is None or split_prefix(c.remote)[0] == remote_directory.rstrip("/"))]
    lost = [TierCheckpoint(tier, name_in_tier(remote), remote, c.order[0], c.over, True, False, 0)
            for remote, c in gone.items()]
    # Every worker of a per-host job in one order (the listing's): each drain waits for all.
    for c in sorted(held + lost, key=lambda c: order.get(c.remote, (c.time, c.name))):
        if drain.running(c.remote):
            continue
        if c.remote in gone:
            log.warning("%s: committed locally, and worker %d's host tier %s holds nothing of it; failing its "
                        "drain", c.remote, rank, tier.path)
            future = drain.start_work(
                lambda c=c: replaced.fail_drain(  # type: ignore[misc]
                    tier, gone[c.remote], rank=rank, save_id=save_id, storage_options=storage_options,
                    options=options),
                c.local, c.remote)
            started.append((c, future))
            continue
        if not tier.resume:
            log.info("dropping %s: committed locally, never drained (resume=False)", c.local)
            await delete_local(tier, c.name)
            continue
        log.info("resuming the drain of %s to %s", c.local, c.remote)
        after = after_for(c.remote) if after_for else None
        shards = _shards(c) if tier.per_host else 1
        if shards > 1:
            future = drain.start_work(
                lambda c=c, after=after: hosts.drain_on_host(  # type: ignore[misc]
                    tier, c.remote, rank=rank, world_size=shards, save_id=save_id, overwrite=c.overwrite,
                    storage_options=storage_options, options=options, after=after if rank == 0 else None,
                    extra=extra_shards(c.local, rank)),
                c.local, c.remote)
        else:
            future = drain.start(c.local, c.remote, overwrite=c.overwrite, storage_options=storage_options,
                                 options=options, after=after)
        started.append((c, future))
    return started


def resume_drains(local_tier: TierLike | str | os.PathLike[str], *, storage_options: dict[str, Any] | None = None,
                  options: IOOptions = DEFAULT_OPTIONS, remote_directory: str | None = None, rank: int = 0,
                  save_id: str | None = None) -> list[Future[str]]:
    """`resume` for a job's restart, from any thread but remoteckpt's loop: the futures of
    the drains started (`wait_durable` waits for them too).  On a per-host tier every worker
    of the job calls it, with its `rank` (and the job's `save_id`)."""
    tier = as_tier(local_tier)
    assert tier is not None
    return [f for _, f in loop.run(resume(tier, storage_options=storage_options, options=options,
                                          remote_directory=remote_directory, rank=rank, save_id=save_id))]
