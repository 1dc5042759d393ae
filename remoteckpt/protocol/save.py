"""The save protocol: what each worker does, and what the coordinator (rank 0) adds.

Every worker (rank r of n), the same steps whatever the store:
  0. (n > 1, or a store where create-only streamed writes can race, i.e. S3) rank 0 claims
     the prefix for this save, the others wait for that claim (`claim`: of two jobs racing
     for one prefix exactly one goes on)
  1. refuse if ``NAME.index`` exists (a committed checkpoint) unless overwriting
  2. stream its tensors into ``NAME.data-r-of-n`` (CRC32C as the bytes go), commit that file
  3. write its table ``staging/part-r-of-n.index``: its presence means "my data is durable"
  4. wait for ``staging/outcome`` naming its table's CRC, delete its table, return or raise
     (a failing worker writes ``staging/failed-r`` so nobody waits for it in vain)
The coordinator, between 3 and 4:
  a. poll the staging listing until all n tables are there (or a failure note, or timeout:
     the error names the missing ranks), read and merge them (`format.merge`)
  b. commit the merged index (`commit.CommitProtocol`): no data is copied or renamed, and
     release the claim
  c. write the outcome; once every worker has deleted its table, delete the outcome
No process group is needed: workers meet through the storage itself.  A single worker
(n = 1) skips staging: data, then the index, committed the same way.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import CheckpointBusyError, CheckpointError, CheckpointExistsError, CheckpointNotFoundError, \
    SaveFailedError
from ..format.bundle import BundleIndex, decode_index, encode_index, make_header
from ..format.coding import crc32c
from ..format.merge import merge_indexes
from ..options import IOOptions
from ..storage.base import Store
from ..writer import BundlePlan, plan_bundle
from ..engine.stream import stream_plan
from ..faults import crash_point
from ..progress import Reporter
from . import claim as claims
from .commit import DEFAULT_COMMIT, CommitProtocol
from .layout import SAVE_ID_ENV, SaveLayout
from .poll import backoff_polls

log = logging.getLogger("remoteckpt")

class UnnamedSaveWarning(UserWarning):
    """A multi-worker save without a save id (see `layout.SaveLayout.default_save_id`)."""


ACK_TIMEOUT = 30.0
"""How long the coordinator waits for workers to acknowledge the outcome before leaving the
outcome file for `gc` (the checkpoint is committed either way)."""


@dataclass
class SaveReport:
    """What one worker's save did, with timings in seconds."""

    prefix: str
    rank: int
    world_size: int
    bytes_written: int = 0
    write_seconds: float = 0.0
    wait_seconds: float = 0.0
    merge_seconds: float = 0.0
    commit_seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)


def _table_bytes(plan: BundlePlan) -> bytes:
    out = io.BytesIO()
    encode_index(make_header(1), plan.entries, out)
    return out.getvalue()


async def write_part(store: Store, layout: SaveLayout, tensors: Mapping[str, Any], *, overwrite: bool,
                     options: IOOptions, progress: Reporter | None = None,
                     report: SaveReport | None = None) -> bytes:
    """Phase one, for every worker: refuse an existing checkpoint (unless `overwrite`), stream
    `tensors` into ``layout.data(layout.rank)`` and commit that file.  Returns the worker's
    table (a one-shard TF index of its entries) for `commit_tables`.  Public for callers with
    a rendezvous of their own (e.g. the PyTorch DCP plugin): `save_worker` is this plus the
    storage rendezvous."""
    progress = progress or Reporter(None, layout.name)
    start = time.monotonic()
    if await store.exists(layout.index):
        if not overwrite:
            raise CheckpointExistsError.committed(store.describe(layout.index))
        # Un-commit the old checkpoint before touching any of its data files: a crash from here
        # on leaves no index that reads as committed but points at half-replaced data.
        await store.delete(layout.index)
    plan = plan_bundle(tensors)
    progress.emit("staged", plan.size, plan.size)
    crash_point("staged")
    data_key = layout.data(layout.rank)
    if not overwrite:
        await _clear_orphan(store, layout, data_key, options)
    try:
        async with store.writer(data_key, exclusive=not overwrite) as writer:
            written = await stream_plan(writer, plan, options, lambda n: progress.add("written", n, plan.size))
    except CheckpointExistsError:
        raise CheckpointExistsError(
            f"{store.describe(data_key)} appeared while this save was writing it: another save of "
            f"{store.describe(layout.index)} is running; this one gave up and left the other's files alone") from None
    crash_point("data-written")
    if report is not None:
        report.bytes_written = written
        report.write_seconds = time.monotonic() - start
    return _table_bytes(plan)


async def commit_tables(store: Store, layout: SaveLayout, tables: Sequence[bytes], *, overwrite: bool,
                        commit: CommitProtocol = DEFAULT_COMMIT, report: SaveReport | None = None) -> None:
    """Phase two, on the coordinator only, once every table is at hand (rank order): merge them
    into one index and commit it.  No data is read, copied or renamed."""
    start = time.monotonic()
    decoded: list[BundleIndex] = []
    for rank, data in enumerate(tables):
        view = memoryview(data)
        try:
            decoded.append(decode_index(lambda o, k: view[o : o + k], len(view)))
        except CheckpointError as exc:
            raise type(exc)(f"worker {rank}'s table for {store.describe(layout.index)}: {exc}") from None
    merged = merge_indexes(decoded)
    out = io.BytesIO()
    encode_index(merged.header, merged.entries, out)
    merged_at = time.monotonic()
    crash_point("merged")
    await commit.commit(store, layout.index, out.getvalue(), overwrite=overwrite)
    crash_point("committed")
    if report is not None:
        report.merge_seconds = merged_at - start
        report.commit_seconds = time.monotonic() - merged_at


async def save_worker(store: Store, layout: SaveLayout, tensors: Mapping[str, Any], *, overwrite: bool,
                      options: IOOptions, commit: CommitProtocol = DEFAULT_COMMIT, prefix: str = "",
                      progress: Reporter | None = None) -> SaveReport:
    """Run one worker's side of the protocol (and the coordinator's on rank 0) for `tensors`
    (as `remoteckpt.save` takes them).  Any failure, even a bad tensor, is published so that
    the other workers fail at once instead of waiting out the timeout."""
    report = SaveReport(prefix or layout.name, layout.rank, layout.world_size)
    progress = progress or Reporter(None, report.prefix)
    multi = layout.world_size > 1
    if multi and layout.rank == 0 and not layout.save_id:
        warnings.warn(
            f"a save of {layout.world_size} workers without a save id: another job racing for the same prefix "
            f"could not be told apart from this one (pass save_id=, set ${SAVE_ID_ENV}, or launch with torchrun "
            "or Slurm, whose run ids are used)", UnnamedSaveWarning, stacklevel=2)
    held: claims.ClaimRecord | None = None
    try:
        if layout.rank == 0 and (multi or not store.capabilities.atomic_streamed_create):
            held = await claims.acquire(store, layout, options)
        elif multi:
            await claims.await_claim(store, layout, options, overwrite=overwrite)
        if multi:
            await asyncio.gather(store.delete(layout.table(layout.rank)), store.delete(layout.failure(layout.rank)))
        table = await write_part(store, layout, tensors, overwrite=overwrite, options=options, progress=progress,
                                 report=report)
        if not multi:
            await commit_tables(store, layout, [table], overwrite=overwrite, commit=commit, report=report)
            await _release(store, layout, held)
            held = None
            progress.emit("committed", report.bytes_written, report.bytes_written)
            return report
        await store.put(layout.table(layout.rank), table)
        crash_point("table-written")
        log.debug("worker %d: data and table of %s written (%d bytes)", layout.rank,
                  store.describe(layout.index), report.bytes_written)
    except BaseException as exc:
        if multi and not await _partners_will_see(store, layout, exc):
            await _note_failure(store, layout, exc)
            if layout.rank == 0:  # nobody else will tell the workers
                await _put_outcome(store, layout, {"state": "failed", "tables": {},
                                                   "message": f"{type(exc).__name__}: {exc}"})
        await _release(store, layout, held)
        raise
    start = time.monotonic()
    if layout.rank == 0:
        await _coordinate(store, layout, table, overwrite=overwrite, options=options, commit=commit, report=report,
                          held=held)
    else:
        await _await_outcome(store, layout, crc32c(table), options)
    report.wait_seconds = time.monotonic() - start - report.merge_seconds - report.commit_seconds
    progress.emit("committed", report.bytes_written, report.bytes_written)
    return report


async def _partners_will_see(store: Store, layout: SaveLayout, exc: BaseException) -> bool:
    """Whether the other workers will run into the cause of `exc` by themselves, so that a
    failure note would only be litter: a save that lost the claim (they see the same claim,
    or the winner's index), or a committed checkpoint in the way (they check for it too,
    after this save's claim, which came after that index)."""
    if isinstance(exc, CheckpointBusyError):
        return True
    if isinstance(exc, CheckpointExistsError):
        try:
            return await store.exists(layout.index)
        except CheckpointError:
            return False
    return False


async def _release(store: Store, layout: SaveLayout, held: claims.ClaimRecord | None) -> None:
    if held is None:
        return
    try:
        await claims.release(store, layout, held)
    except Exception:  # left for the next save (it is ours) or for `gc`
        log.warning("could not release %s", store.describe(layout.claim), exc_info=True)


async def _clear_orphan(store: Store, layout: SaveLayout, data_key: str, options: IOOptions) -> None:
    """A data file with no index is a save that never committed.  Older than `commit_timeout`
    it is certainly dead (its coordinator gave up by then): remove it.  Younger, it may be a
    save still running: refuse rather than write over it."""
    found = [i for i in await store.list_info(data_key) if i.key == data_key]
    if not found:
        return
    if await store.exists(layout.index):
        return  # a committed checkpoint: step 1 already decided (only reached with overwrite)
    age = time.time() - found[0].mtime
    if age > options.commit_timeout:
        log.info("removing %s, left by a save that never committed", store.describe(data_key))
        await store.delete(data_key)
        return
    raise CheckpointExistsError(
        f"{store.describe(data_key)} exists but {store.describe(layout.index)} does not: another save of this "
        f"prefix may be running, or one crashed {age:.0f} s ago. Wait, run remoteckpt.gc, or pass overwrite=True.")


async def _note_failure(store: Store, layout: SaveLayout, exc: BaseException) -> None:
    try:
        await store.put(layout.failure(layout.rank), f"{type(exc).__name__}: {exc}".encode())
    except Exception:  # the original error matters more
        log.warning("could not record worker %d's failure under %s", layout.rank, store.describe(layout.staging))


async def _coordinate(store: Store, layout: SaveLayout, own_table: bytes, *, overwrite: bool,
                      options: IOOptions, commit: CommitProtocol, report: SaveReport,
                      held: claims.ClaimRecord | None) -> None:
    n = layout.world_size
    digests: dict[int, int] = {0: crc32c(own_table)}
    try:
        collected = await _collect_tables(store, layout, options, own_table)
        raw = [collected[r] for r in range(n)]
        digests = {r: crc32c(t) for r, t in enumerate(raw)}
        await commit_tables(store, layout, raw, overwrite=overwrite, commit=commit, report=report)
    except BaseException as exc:
        await _put_outcome(store, layout, {"state": "failed", "message": f"{type(exc).__name__}: {exc}",
                                           "tables": digests})
        await _release(store, layout, held)
        raise
    await _release(store, layout, held)
    await _put_outcome(store, layout, {"state": "committed", "tables": digests})
    await store.delete(layout.table(0))
    await _collect_acks(store, layout, options)


async def _put_outcome(store: Store, layout: SaveLayout, outcome: dict[str, object]) -> None:
    body = json.dumps(outcome, sort_keys=True).encode()
    try:
        await store.put(layout.outcome, body)
    except Exception:
        log.warning("could not publish the outcome under %s", store.describe(layout.staging))
        if outcome["state"] == "committed":
            raise


async def _collect_tables(store: Store, layout: SaveLayout, options: IOOptions, own: bytes) -> dict[int, bytes]:
    """Every worker's table, read as soon as it is listed.  A listed table that cannot be read
    yet (some S3-compatible stores list a new key a moment before serving it) is retried."""
    deadline = time.monotonic() + options.commit_timeout
    tables: dict[int, bytes] = {0: own}

    async def fetch(rank: int) -> None:
        try:
            tables[rank] = await store.get(layout.table(rank))
        except CheckpointNotFoundError as exc:
            log.debug("coordinator: table %d listed but not readable yet: %r (cause %r)", rank, exc, exc.__cause__)

    missing = set(range(layout.world_size)) - set(tables)
    async for _ in backoff_polls(options, deadline):
        present, failed = set(), {}
        for key in await store.list(layout.staging):
            kind_rank = layout.rank_of(key)
            if kind_rank is None:
                continue
            kind, rank = kind_rank
            if kind == "table":
                present.add(rank)
            else:
                failed[rank] = key
        if failed:
            notes = []
            for rank, key in sorted(failed.items()):
                try:
                    notes.append(f"worker {rank}: {(await store.get(key)).decode(errors='replace')}")
                except CheckpointNotFoundError:
                    notes.append(f"worker {rank} failed")
            raise SaveFailedError("save failed on other workers: " + "; ".join(notes))
        log.debug("coordinator: tables listed %s, failed %s", sorted(present), sorted(failed))
        await asyncio.gather(*(fetch(r) for r in present - set(tables)))
        missing = set(range(layout.world_size)) - set(tables)
        if not missing:
            return tables
    raise SaveFailedError(
        f"timed out after {options.commit_timeout:g} s waiting for the tables of worker(s) "
        f"{sorted(missing)} under {store.describe(layout.staging)}")


async def _await_outcome(store: Store, layout: SaveLayout, digest: int, options: IOOptions) -> None:
    deadline = time.monotonic() + options.commit_timeout
    async for _ in backoff_polls(options, deadline):
        try:
            outcome = json.loads(await store.get(layout.outcome))
        except CheckpointNotFoundError:
            continue
        except (ValueError, CheckpointError):
            continue  # half-visible or unreadable: poll again
        tables = {int(k): v for k, v in outcome.get("tables", {}).items()}
        if outcome.get("state") == "committed":
            if tables.get(layout.rank) != digest:
                continue  # a stale outcome from an earlier save of this prefix
            await store.delete(layout.table(layout.rank))
            return
        if outcome.get("state") == "failed" and tables.get(layout.rank, digest) == digest:
            await store.delete(layout.table(layout.rank))
            raise SaveFailedError(f"the coordinator (worker 0) failed: {outcome.get('message')}")
    raise SaveFailedError(
        f"timed out after {options.commit_timeout:g} s waiting for the coordinator (worker 0) "
        f"to commit {store.describe(layout.index)}")


async def _collect_acks(store: Store, layout: SaveLayout, options: IOOptions) -> None:
    deadline = time.monotonic() + min(ACK_TIMEOUT, options.commit_timeout)
    async for _ in backoff_polls(options, deadline):
        if not any((k := layout.rank_of(key)) and k[0] == "table" for key in await store.list(layout.staging)):
            await store.delete(layout.outcome)
            return
    log.info("workers did not acknowledge the commit of %s in time; `gc` will remove %s",
             store.describe(layout.index), store.describe(layout.staging))
