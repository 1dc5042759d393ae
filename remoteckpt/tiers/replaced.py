"""A replaced host: a per-host tier that lost what a local commit put on it.

A per-host checkpoint committed locally (REMOTE/.tiers/NAME.index) drains only once every
worker sends its own data file from its own host's tier.  A worker whose host was replaced
(a new node, a wiped disk) has nothing of it: no record, no table, no data file, so it
would not even know there is a drain to join, and the others' drain would wait for it for
``commit_timeout``, holding up the drains queued behind it.  So a restarted worker also
looks at the local commits pending in the remote directory (`pending_commits`, `lost`): for
each one its tier holds no table of, it joins that drain at once and fails it (`fail_drain`),
with an error naming itself, the checkpoint and its tier, and every worker of the drain gets
that error within a verdict poll.  The checkpoint stays committed on the other hosts' tiers; a
job that cannot get it back drops it (``LocalTier(resume=False)``), and `gc` removes the rest.

Every worker of a restarted job takes its per-host drains in one order, the listing's (the
local commit's time at the store, then its key: `pending_commits`), whether it holds them or
lost them: two workers taking two drains in opposite orders would each wait for the other.

A local commit is pending while the remote checkpoint is not its copy: no ``NAME.index``, or
one of other bytes (a checkpoint being saved again over an older one).  One older than the
latest checkpoint of the remote directory's state file is not: drains go in order, so it was
drained or failed before (its ``.tiers`` index a leftover of a worker that died before it
removed it).  A worker's look costs a listing of ``.tiers/``, the state file, one HEAD, and two
GETs per local commit pending, whatever the directory holds.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from ..errors import CheckpointError, CheckpointNotFoundError
from ..format.bundle import decode_index_bytes, index_filename
from ..management.state import read_state
from ..options import DEFAULT_OPTIONS, IOOptions
from ..protocol.layout import MEETING, SaveLayout
from ..protocol.records import DataIdentity
from ..protocol.save import save_worker
from ..storage import open_store, split_prefix
from . import drain
from .hosts import drain_id, table_key
from .layout import LocalTier, local_prefix

log = logging.getLogger("remoteckpt")


@dataclass(frozen=True)
class PendingCommit:
    """A local commit in a remote directory whose drain has not committed."""

    remote: str
    """The remote prefix it drains to."""
    order: tuple[float, str]
    """(its time at the store, its key): every worker's order of drains."""
    workers: int
    over: bool
    """Whether a remote checkpoint of other bytes is there (the drain replaces it)."""


async def pending_commits(remote_directory: str, *, storage_options: dict[str, Any] | None = None,
                          options: IOOptions = DEFAULT_OPTIONS) -> list[PendingCommit]:
    """The local commits pending in `remote_directory` (see the module docstring), in the order
    every worker drains them; an unreadable one is left out (logged)."""
    store = open_store(remote_directory, storage_options, options)
    found = []
    try:
        commits = [i for i in await store.list_info(f"{MEETING}/") if i.key.endswith(".index")]
        newest = await _newest_committed(store, remote_directory) if commits else float("-inf")
        for info in sorted(commits, key=lambda i: (i.mtime, i.key)):
            if info.mtime < newest:
                continue  # drained or failed before a newer checkpoint was drained
            name = info.key[len(MEETING) + 1: -len(".index")]
            try:
                raw = await store.get(info.key)
                workers = decode_index_bytes(raw).num_shards
                if await drain.committed_as(store, index_filename(name), raw):
                    continue  # drained; its local commit not removed yet
                over = await store.exists(index_filename(name))
            except CheckpointNotFoundError:
                continue  # drained and removed meanwhile
            except CheckpointError as exc:
                log.warning("%s: not a local commit this job can drain (%s)", store.describe(info.key), exc)
                continue
            found.append(PendingCommit(f"{remote_directory.rstrip('/')}/{name}", (info.mtime, info.key), workers,
                                       over))
    finally:
        await store.close()
    return found


async def _newest_committed(store: Any, directory: str) -> float:
    """The time of the index of the latest checkpoint the directory's state file names (one
    GET and one HEAD, whatever the directory holds; -inf without one)."""
    try:
        state = await read_state(store, directory)
    except CheckpointError:
        return float("-inf")
    if state is None or not state.model_checkpoint_path:
        return float("-inf")
    info = await store.head(index_filename(state.model_checkpoint_path))
    return info.mtime if info is not None else float("-inf")


def holds(tier: LocalTier, remote: str, rank: int) -> bool:
    """Whether this host's tier holds worker `rank`'s table of the checkpoint of `remote`."""
    tier_dir, name = split_prefix(local_prefix(tier, remote))
    return os.path.exists(os.path.join(tier_dir, table_key(name, rank)))


def lost(commits: list[PendingCommit], tier: LocalTier, rank: int) -> list[PendingCommit]:
    """Of `commits`, those worker `rank` took part in and of which its tier holds no table."""
    return [c for c in commits if rank < c.workers and not holds(tier, c.remote, rank)]


async def fail_drain(tier: LocalTier, commit: PendingCommit, *, rank: int, save_id: str | None,
                     storage_options: dict[str, Any] | None = None, options: IOOptions = DEFAULT_OPTIONS) -> str:
    """Join the drain of `commit` as worker `rank` and fail it at once: this worker's data file
    is not on its tier.  Raises that error (every worker of the drain raises it too)."""
    message = (f"worker {rank}'s data file of {commit.remote} is not on its host's tier {tier.path} (a replaced "
               "host, or a lost disk): the checkpoint cannot be drained; the other hosts' tiers keep it until they "
               "drop it (LocalTier(resume=False)) or gc removes it")

    async def part(attempt: str) -> tuple[DataIdentity | None, bytes]:
        raise CheckpointNotFoundError(message)

    remote_dir, remote_name = split_prefix(commit.remote)
    async with drain.drain_lock():
        store = open_store(remote_dir, storage_options, options)
        try:
            await save_worker(store, SaveLayout(remote_name, rank, commit.workers, drain_id(save_id)), {},
                              overwrite=commit.over, options=options, prefix=commit.remote, part=part)
        finally:
            await store.close()
    raise CheckpointNotFoundError(message)  # the save above raised it already
