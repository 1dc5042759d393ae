"""Incremental saves: a tensor unchanged since the base checkpoint is copied inside the store.

The base is an earlier committed checkpoint of the same store (`remoteckpt.save(...,
incremental=True)` takes the latest one its directory's ``checkpoint`` state file names, or
without one the checkpoint whose index was committed last).  Its
index carries every entry's content digest (`BundleEntry.content_blake3`, field 1003: the
payload's 16-byte BLAKE3, `engine.digest`; TensorFlow ignores the field as it ignores the CRC
chunk fields).  A
payload of this save is *unchanged* when the base has an entry of the same key (name, or slice
key for a box of a partitioned tensor) with the same dtype, shape and size, and this save's
bytes have the same CRC32C **and** digest; anything else, or any doubt, is written.

The new data file is a complete file of its own: unchanged payloads get their bytes by a copy
from the base's data file made by the store (S3 UploadPartCopy, ``copy_file_range`` on local
disk; see `storage.base.ObjectWriter.copy`), changed ones are written as usual.  Deleting the
base afterwards changes nothing in the new checkpoint.

Layout.  Offsets are assigned as bytes are placed, not in the plan's order.  Unchanged
payloads wait in a queue; before the next changed payload is written, if the writer is at a
point where a copy may begin (S3: at a part boundary, which it is once 5 MiB are pending), the
queue goes out as *runs*: payloads adjacent in one base data file, copied with one `copy`
each (S3 cuts it into parts of about `part_size`, all at least 5 MiB).  Runs shorter than
the writer's `copy_granule` are written instead (they could only be the object's last part).
What is still queued at the end follows the last changed payload; if the writer is not at a
boundary then, the first run's first bytes are written to reach it:

    base file   [ A | B | c | D | E ]             A B D E unchanged, c and f changed
    new file    [ f (written) | A B (copy) | D E (copy) ]
                                               or, with f < 5 MiB on S3:
                [ f | A's first 5 MiB - |f| (written) | rest of A, B (copy) | D E (copy) ]

Hashing runs ahead of the writer: one task computes the CRC32C, chunk CRCs and digest of
every payload that has a counterpart in the base, in a worker thread (blake3 and crc32c
release the GIL), while the writer sends what is already decided, so a save in which nothing
is unchanged costs a full save plus the digest's CPU time, overlapped with the network.
Every byte of a payload with a counterpart is read once to hash it and once more only if it
is written; payloads without one are digested while they stream (`engine.write`).

An array whose memory is not laid out as its payload (see `engine.plan.Payload.source`) is
converted a block at a time to be hashed, and again to be written if it changed (or sits in
a run too short to copy).  Every such block is fresh memory drawn from the process's memory
budget (`engine.budget`) before it is made and given back once it is hashed or its write is
done: blocks of at most half the budget (and 8 MiB), or one CRC chunk where that is larger
(admitted alone, as `engine.budget` admits any request larger than the whole budget).  The
hasher and the writer draw on the one budget together, so together they stay within it.
They cannot deadlock on it: the hasher gives its block back before it hands on the sums the
writer waits for, and the writer's blocks are given back as their writes finish, whatever
the writer waits for meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import CheckpointChangedError, CheckpointError, CheckpointNotFoundError
from ..format.bundle import BundleEntry, data_filename, decode_index, index_filename
from ..options import IOOptions
from ..storage.base import ObjectWriter, Store
from .budget import MemoryBudget, process_budget
from .digest import digest_of, set_digest
from .plan import BundlePlan, Payload
from .write import OneAhead, checksum_payload, set_checksums, stream_payload, write_range

log = logging.getLogger("remoteckpt")

MAX_BASE_INDEX_BYTES = 2**30
"""Largest base index read (as `reader.MAX_INDEX_BYTES`)."""


@dataclass(frozen=True, kw_only=True)
class Incremental:
    """How a save is incremental: `base` names the checkpoint (in the save's store) whose
    unchanged bytes it copies, or is None (the first save of a series: every tensor is
    written, with the digests the next save compares against).  `unchanged_last`: every
    unchanged payload goes after every changed one (a local tier's copy: its drain then sends
    the changed bytes first and copies the unchanged ones inside the remote store in whole
    parts, as an incremental save to S3 lays them out); else each run goes out as soon as the
    writer may copy."""

    base: str | None = None
    unchanged_last: bool = False


@dataclass
class BaseCheckpoint:
    """The committed checkpoint an incremental save copies from: its name in the store, its
    entries, the version of its index as read, and the versions of its data files (looked up
    once each, on first use, and pinned: a copy from a replaced file fails instead of copying
    other bytes).

    A data file's version is taken only while the index read is still there: its HEAD, then
    a HEAD of the index, which must be the version read.  An overwrite of the base retires
    its index before it touches a data file (docs/protocol.md), so a data file seen while the
    index read still stands is that index's; otherwise the base is refused
    (`CheckpointChangedError`: the save writes every tensor instead)."""

    store: Store
    name: str
    entries: dict[bytes, BundleEntry]
    num_shards: int
    index_etag: str = ""
    _etags: dict[int, str] = field(default_factory=dict)

    def data_key(self, shard: int) -> str:
        return data_filename(self.name, shard, self.num_shards)

    def counterpart(self, key: bytes, payload: Payload) -> BundleEntry | None:
        """The base's entry that `payload` (stored under `key`) may equal, or None."""
        old = self.entries.get(key)
        entry = payload.entry
        if (old is None or payload.size == 0 or payload.checksummed or old.slices
                or digest_of(old) is None or old.dtype != entry.dtype
                or old.size != payload.size or not 0 <= old.shard_id < self.num_shards
                or [d.size for d in old.shape.dim] != [d.size for d in entry.shape.dim]):
            return None
        return old

    def pin(self, shard: int, etag: str) -> None:
        """Data file `shard`'s version, known already (the host that sent it kept it): taken
        without a look, the copy naming it as the version its source must be."""
        self._etags[shard] = etag

    def pinned(self, shard: int) -> bool:
        return shard in self._etags

    async def etag(self, shard: int) -> str:
        if shard not in self._etags:
            info = await self.store.head(self.data_key(shard))
            if info is None:
                raise CheckpointNotFoundError(f"{self.store.describe(self.data_key(shard))}: the data file of the "
                                              "base checkpoint is gone")
            index = await self.store.head(index_filename(self.name))
            if index is None or not self.index_etag or index.etag != self.index_etag:
                raise CheckpointChangedError(f"{self.store.describe(index_filename(self.name))}: the base checkpoint "
                                             "was replaced or deleted after its index was read")
            self._etags[shard] = info.etag
        return self._etags[shard]


def unchanged_entry(new: BundleEntry, old: BundleEntry | None) -> bool:
    """Whether `new`, an entry of a checkpoint written with digests, holds the same bytes as
    `old`, the base's entry of the same key: dtype, shape, size, CRC32C and digest all equal."""
    return (old is not None and not old.slices and not new.slices and digest_of(new) is not None
            and digest_of(new) == digest_of(old) and new.crc32c == old.crc32c and new.size == old.size
            and new.size > 0 and new.dtype == old.dtype
            and [d.size for d in old.shape.dim] == [d.size for d in new.shape.dim])


async def open_base(store: Store, name: str) -> BaseCheckpoint | None:
    """Checkpoint `name` of `store` as a base, or None (logged) if it cannot serve as one: gone,
    unreadable, or saved without digests (not incrementally)."""
    try:
        stored = await store.get_object(index_filename(name), max_size=MAX_BASE_INDEX_BYTES)
        view = memoryview(stored.data)
        index = decode_index(lambda o, k: view[o : o + k], len(view))
    except CheckpointError as exc:
        log.warning("incremental save: %s cannot serve as a base (%s); writing every tensor",
                    store.describe(index_filename(name)), exc)
        return None
    if not any(digest_of(e) is not None for e in index.entries.values()):
        log.info("incremental save: %s has no content digests (saved without incremental=True); "
                 "writing every tensor", store.describe(index_filename(name)))
        return None
    return BaseCheckpoint(store, name, index.entries, index.header.num_shards, index_etag=stored.etag)


@dataclass
class CopyReport:
    """What an incremental save did with its bytes."""

    written: int = 0
    """Bytes sent by this process."""
    copied: int = 0
    """Bytes copied by the store from the base."""
    unchanged: int = 0
    """Payloads found unchanged (copied, or written where a run was too short to copy)."""


@dataclass
class _Unchanged:
    payload: Payload
    old: BundleEntry


async def stream_incremental(writer: ObjectWriter, plan: BundlePlan, base: BaseCheckpoint, options: IOOptions,
                             on_bytes: Callable[[int], None] | None = None, *,
                             unchanged_last: bool = False) -> CopyReport:
    """Write `plan` to `writer`, copying unchanged payloads from `base` (see the module
    docstring; `unchanged_last`: see `Incremental`); fills in every entry's offset, checksums
    and digest.  Does not commit."""
    report = CopyReport()
    budget = process_budget(options.memory_budget)
    keys = {id(entry): key for key, entry in plan.entries.items()}
    olds = {id(p): base.counterpart(keys[id(p.entry)], p) for p in plan.payloads}
    sums: dict[int, asyncio.Future[tuple[int, list[int], bytes]]] = {
        id(p): asyncio.get_running_loop().create_future() for p in plan.payloads if olds[id(p)] is not None}

    async def hash_ahead() -> None:
        for p in plan.payloads:
            if id(p) in sums:
                try:
                    sums[id(p)].set_result(await checksum_payload(p, options.crc_chunk, budget))
                except Exception as exc:
                    sums[id(p)].set_exception(exc)
                    return

    def counted(n: int) -> None:
        report.written += n
        if on_bytes is not None:
            on_bytes(n)

    out = OneAhead(writer, counted)
    hasher = asyncio.ensure_future(hash_ahead())
    placed = 0
    queue: list[_Unchanged] = []
    try:
        for p in plan.payloads:
            old = olds[id(p)]
            if old is not None:
                crc, chunk_crcs, digest = await sums[id(p)]
                set_checksums(p, options.crc_chunk, crc, chunk_crcs)
                set_digest(p.entry, digest)
                if digest == digest_of(old) and p.entry.crc32c == old.crc32c:
                    queue.append(_Unchanged(p, old))
                    report.unchanged += 1
                    continue
            if queue and not unchanged_last:
                await out.drain()
                if writer.bytes_before_copy() == 0:
                    placed = await _place(writer, out, base, queue, placed, report, on_bytes, budget, final=False)
                    queue = []
            p.entry.offset = placed
            if old is not None:  # checksummed ahead: only the bytes to send
                await write_range(out, p, 0, p.size, budget)
            else:
                await stream_payload(out, p, options.crc_chunk, budget, True)
            placed += p.size
        await out.drain()
        if queue:
            placed = await _place(writer, out, base, queue, placed, report, on_bytes, budget, final=True)
        await out.drain()
    except BaseException:
        hasher.cancel()
        await out.cancel()
        await asyncio.gather(hasher, return_exceptions=True)
        raise
    await hasher
    assert placed == plan.size, (placed, plan.size)
    return report


@dataclass
class _Run:
    """Payloads adjacent in one base data file: bytes ``[start, start + size)`` of it."""

    shard: int
    start: int
    size: int
    items: list[_Unchanged]


def _runs(queue: list[_Unchanged]) -> list[_Run]:
    runs: list[_Run] = []
    for item in sorted(queue, key=lambda u: (u.old.shard_id, u.old.offset)):
        last = runs[-1] if runs else None
        if last is not None and last.shard == item.old.shard_id and last.start + last.size == item.old.offset:
            last.size += item.payload.size
            last.items.append(item)
        else:
            runs.append(_Run(item.old.shard_id, item.old.offset, item.payload.size, [item]))
    return runs


async def _place(writer: ObjectWriter, out: OneAhead, base: BaseCheckpoint, queue: list[_Unchanged], placed: int,
                 report: CopyReport, on_bytes: Callable[[int], None] | None, budget: MemoryBudget, *,
                 final: bool) -> int:
    """Put the queued unchanged payloads at `placed` (see the module docstring); returns the
    new end.  The writer is at a copy boundary unless `final`."""
    granule = writer.copy_granule
    runs = _runs(queue)
    copies = [r for r in runs if r.size >= granule]
    short = [r for r in runs if r.size < granule]
    if final:  # written first: they may bring the writer to a boundary
        for run in short:
            placed = await _write_run(out, run, placed, 0, run.size, budget)
        await out.drain()
    for i, run in enumerate(copies):
        for item in run.items:
            item.payload.entry.offset = placed + item.old.offset - run.start
        skip = writer.bytes_before_copy()
        last = final and i == len(copies) - 1
        if skip and (skip >= run.size or (run.size - skip < granule and not last)):
            await _write_run(out, run, placed, 0, run.size, budget)
        else:
            if skip:
                await _write_run(out, run, placed, 0, skip, budget)
                await out.drain()
            await writer.copy(base.data_key(run.shard), run.start + skip, run.size - skip,
                              etag=await base.etag(run.shard))
            report.copied += run.size - skip
            if on_bytes is not None:
                on_bytes(run.size - skip)
        placed += run.size
    if not final:
        for run in short:
            placed = await _write_run(out, run, placed, 0, run.size, budget)
    return placed


async def _write_run(out: OneAhead, run: _Run, placed: int, start: int, stop: int, budget: MemoryBudget) -> int:
    """Write bytes ``[start, stop)`` of `run` (offsets in the run) from memory, the run's
    payloads placed from `placed` (converted ones made in blocks drawn from `budget`);
    returns where the run ends."""
    for item in run.items:
        at = item.old.offset - run.start
        item.payload.entry.offset = placed + at
        lo, hi = max(start, at), min(stop, at + item.payload.size)
        if lo < hi:
            await write_range(out, item.payload, lo - at, hi - at, budget)
    return placed + run.size
