"""The save protocol: one checkpoint from one or many workers, each attempt on its own.

Coordinator (rank 0; the only worker when n = 1):
  1. claim the prefix for a fresh attempt (`claim.acquire`; a lease renewed in the
     background) and prepare it (`coordinator.prepare`: a committed index refused, or retired
     when overwriting; a dead attempt's leftovers cleared); the caller's `check`, if any (an
     error of it is published as the verdict at once: no worker writes)
  2. n > 1: invite the workers (the group notices name the attempt)
  3. write its own part (`worker.write_part`)
  4. n > 1: collect the workers' reports (`coordinator.collect`)
  5. merge the tables, renew the lease, fence the data files (`fence`), commit the index
     create-only (`commit.CommitProtocol`)
  6. n > 1: publish the verdict, wait (bounded) for the workers to read it, clean up;
     release the claim
Workers (ranks > 0): `worker.run_worker`.  No process group is needed: workers meet through
the storage itself; every rank of one attempt returns once the index is committed, or
raises the same error.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from ..engine.incremental import Incremental
from ..errors import CheckpointError, StorageError
from ..faults import crash_point
from ..format.bundle import BundleIndex, encode_index
from ..format.merge import merge_indexes
from ..options import IOOptions
from ..progress import Reporter
from ..storage.base import Store
from . import claim as claims
from . import coordinator, fence
from .commit import DEFAULT_COMMIT, CommitProtocol
from .layout import SaveLayout
from .lease import Lease
from .records import Failure, Notice
from .worker import Part, SaveReport, read_table, run_worker, write_part

__all__ = ["SaveReport", "UnnamedSaveWarning", "commit_tables", "save_worker", "write_part", "refuse_unsafe_store"]

log = logging.getLogger("remoteckpt")


class UnnamedSaveWarning(UserWarning):
    """A multi-worker save without a save id (see `layout.default_save_id`); warned by the
    public entry points, in the caller's thread (`remoteckpt.api.warn_if_unnamed`)."""


async def commit_tables(store: Store, layout: SaveLayout, tables: Sequence[bytes | BundleIndex], *,
                        commit: CommitProtocol = DEFAULT_COMMIT, report: SaveReport | None = None) -> bytes:
    """Merge the workers' tables (rank order; as written, or decoded already) into one index
    and commit it; returns the index committed.  No data is read, copied or renamed.  The
    caller has fenced the data files."""
    start = time.monotonic()
    decoded = [t if isinstance(t, BundleIndex) else read_table(t, rank, store.describe(layout.index))
               for rank, t in enumerate(tables)]
    merged = merge_indexes(decoded)
    out = io.BytesIO()
    encode_index(merged.header, merged.entries, out)
    merged_at = time.monotonic()
    crash_point("merged")
    index = out.getvalue()
    await commit.commit(store, layout.index, index)
    crash_point("committed")
    if report is not None:
        report.merge_seconds = merged_at - start
        report.commit_seconds = time.monotonic() - merged_at
    return index


async def refuse_unsafe_store(store: Store, layout: SaveLayout) -> None:
    """Saves of several workers stand on conditional writes: refuse them where the store does
    not enforce those (a generic fsspec filesystem; an S3-compatible server that ignores the
    headers, found by a probe at first use)."""
    try:
        await store.prepare_conditional_writes()
    except CheckpointError as exc:  # named by the checkpoint being saved, not the probe's scratch object
        raise type(exc)(f"{store.describe(layout.index)}: the store did not answer: {exc}") from exc
    if layout.world_size > 1 and not store.capabilities.conditional_writes:
        raise StorageError(
            f"{store.describe(layout.index)}: a save of {layout.world_size} workers needs a store that enforces "
            "conditional writes (create-only and If-Match), and this one does not: two saves of the prefix could "
            "mix their files. Save with one worker here, or use local disk or an S3 server that enforces them "
            "(storage_options={'conditional_writes': 'trust'} skips the check on S3).")


async def save_worker(store: Store, layout: SaveLayout, tensors: Mapping[str, Any], *, overwrite: bool,
                      options: IOOptions, commit: CommitProtocol = DEFAULT_COMMIT, prefix: str = "",
                      progress: Reporter | None = None, incremental: Incremental | None = None,
                      part: Part | None = None, check: Callable[[], Awaitable[None]] | None = None) -> SaveReport:
    """Run one worker's side of the protocol (and the coordinator's on rank 0) for `tensors`
    (as `remoteckpt.save` takes them); `incremental`: see `worker.write_part`.  `part` writes
    the worker's part instead (`worker.Part`: a local tier's data files, or a drain's), and
    `tensors` are then unused; data files outside the store are not fenced.  `check` (rank 0):
    a look of the coordinator's own once the prefix is claimed and prepared, before any worker
    is invited; an error it raises is every rank's, and no worker writes anything (a per-host
    tier's refusal of a committed remote checkpoint)."""
    report = SaveReport(prefix or layout.name, layout.rank, layout.world_size)
    progress = progress or Reporter(None, report.prefix)
    if layout.rank == 0:
        await _coordinate(store, layout, tensors, overwrite=overwrite, options=options, commit=commit,
                          progress=progress, report=report, incremental=incremental, part=part, check=check)
    else:
        await run_worker(store, layout, tensors, overwrite=overwrite, options=options, progress=progress,
                         report=report, incremental=incremental, part=part)
    progress.emit("committed", report.bytes_written, report.bytes_written)
    return report


async def _coordinate(store: Store, layout: SaveLayout, tensors: Mapping[str, Any], *, overwrite: bool,
                      options: IOOptions, commit: CommitProtocol, progress: Reporter, report: SaveReport,
                      incremental: Incremental | None, part: Part | None,
                      check: Callable[[], Awaitable[None]] | None = None) -> None:
    await refuse_unsafe_store(store, layout)
    lease = await claims.acquire(store, layout, options)
    attempt = report.attempt = lease.attempt
    multi = layout.world_size > 1
    notices: dict[str, str] = {}

    def notice(state: str, error: Failure | None = None) -> Notice:
        return Notice(save_id=layout.save_id, world_size=layout.world_size, attempt=attempt, state=state, error=error)

    checking = False  # an error now is the verdict of workers not invited yet
    try:
        await coordinator.prepare(store, layout, lease, overwrite=overwrite)
        if check is not None:
            checking = True
            await check()
            checking = False
        if multi:
            notices = await coordinator.notify(store, layout, notice("writing"))
        if part is not None:
            identity, table = await part(attempt)
        else:
            identity, table = await write_part(store, layout, tensors, options=options, attempt=attempt,
                                               progress=progress, report=report, incremental=incremental)
        if multi:
            crash_point("table-written")  # as the workers after their reports: the wait begins
        start = time.monotonic()
        decoded: dict[int, BundleIndex] = {}  # the workers' tables, decoded as they come in
        workers = await coordinator.collect(store, layout, attempt, options, lease, decoded) if multi else []
        report.wait_seconds = time.monotonic() - start
        await lease.fresh()  # the commit follows well within a lease timeout of this renewal
        await fence.check_data_files(store, layout.data_prefix,
                                     [i for i in [identity, *(w.data for w in workers)] if i is not None])
        lease.check()
        await commit_tables(store, layout, [table, *(decoded[w.rank] for w in workers)], commit=commit,
                            report=report)
    except BaseException as exc:
        # Invited workers get the verdict, but only while the claim is still this attempt's: a
        # newer attempt that took it over writes its own notices, which must not be overwritten.
        # (Workers not invited see what stopped this save themselves: the index, or the claim;
        # but for `check`'s error, which they could not see, the verdict is published.)
        if (not notices and not (checking and multi)) or not await _still_held(lease):
            await _release(lease)
            raise
        failure = exc.failure if isinstance(exc, coordinator.WorkerFailed) else Failure.of(exc, rank=0)
        notices = await coordinator.publish(store, layout, notice("failed", failure))
        if notices:
            await _finish(store, layout, lease, attempt, notices, options, None)
        else:  # not published: no acknowledgement can come (the workers judge alone)
            await _release(lease)
        if isinstance(exc, Exception):  # every rank raises the same error
            raise failure.error() from (exc.__cause__ if isinstance(exc, coordinator.WorkerFailed) else exc)
        raise
    if multi:
        notices = await coordinator.publish(store, layout, notice("committed"))
        await _finish(store, layout, lease, attempt, notices, options, range(1, layout.world_size))
    else:
        await _release(lease)


async def _finish(store: Store, layout: SaveLayout, lease: Lease, attempt: str, notices: dict[str, str],
                  options: IOOptions, reported: Sequence[int] | None) -> None:
    try:
        await coordinator.finish(store, layout, attempt, notices, options, reported)
    except CheckpointError:  # the verdict is out: what is left is for `gc`
        log.warning("could not clean up after %s", store.describe(layout.index), exc_info=True)
    await _release(lease)


async def _still_held(lease: Lease) -> bool:
    """Whether the claim is still this attempt's, renewed within a quarter lease if need be:
    no other attempt can then take it over before what follows (the failed verdict) is written."""
    try:
        await lease.fresh()
    except CheckpointError:
        return False
    return True


async def _release(lease: Lease) -> None:
    try:
        await claims.release(lease)
    except CheckpointError:  # left for the next save (it is judged dead) or for `gc`
        log.warning("could not release %s", lease.store.describe(lease.key), exc_info=True)
