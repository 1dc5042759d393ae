"""`copy_checkpoint`: one checkpoint from any store to any other, verified, committed like a save.

The source is any checkpoint id a reader takes (``PREFIX``, ``PREFIX.index``, a directory-style
``step-100/``, a directory's latest: `remoteckpt.locate`).  The destination follows ``aws s3 cp``
(`destination_prefix`): a destination ending in ``/``, a bucket's root or an existing folder
means "into this folder", the checkpoint keeping its name; anything else is the new prefix.

Every data file is streamed in `read_chunk` pieces (a few in flight, bounded by the memory
budget) from the source into a writer at the destination; as the bytes pass, each tensor's
CRC32C is recomputed and compared with the index, so a damaged source is never copied as if
it were sound.  At the destination the copy is a save like any other: the prefix is claimed
(a committed checkpoint refused, or retired first when overwriting), the data files are
written create-only, fenced, a ``PREFIX.meta`` (a TF1 Saver's MetaGraphDef) copied along, and
the index, byte for byte, is committed create-only: the copy appears whole or not at all.

With a `base` (a checkpoint of the destination's directory; a local tier's drain passes one),
a run of tensors unchanged since the base (`engine.incremental.unchanged_entry`: the source
was saved with digests) and adjacent in both data files is copied by the destination store
from the base's data file (S3 UploadPartCopy) instead of being sent.  A copy begins at a part
boundary and at a tensor's first byte: the run's first tensors are sent until the upload is at
one.  Every byte sent streams from the source and is checked as above; the copied tensors are
the base's (the same dtype, shape, CRC32C and digest, each base data file pinned to the
version seen while the base's index stood).  The copy is byte for byte the same either way.
A base replaced or deleted meanwhile makes that data file be sent whole.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import math
import os
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from ..dtypes import DT_STRING
from ..engine import loop
from ..engine.budget import MemoryBudget, process_budget
from ..engine.incremental import BaseCheckpoint, open_base, unchanged_entry
from ..errors import CheckpointChangedError, CheckpointError, CheckpointNotFoundError, CorruptCheckpointError
from ..faults import crash_point
from ..format.bundle import BundleEntry, BundleIndex, data_filename, decode_index, entry_shape, index_filename
from ..format.coding import crc32c, unmask_crc
from ..format.payload import decode_strings
from ..locate import for_reading, is_directory_id, name_to_keep
from ..management.state import previous_checkpoint
from ..options import DEFAULT_OPTIONS, IOOptions
from ..progress import ProgressCallback, Reporter
from ..protocol import claim as claims
from ..protocol import coordinator, fence
from ..protocol.commit import DEFAULT_COMMIT
from ..protocol.layout import SaveLayout
from ..protocol.records import DataIdentity
from ..storage import ObjectWriter, Store, open_store, split_prefix
from ..storage.errors import translate
from ..storage.s3 import S3Store

META_SUFFIX = ".meta"
"""``PREFIX.meta``: the MetaGraphDef `tf.compat.v1.train.Saver` writes beside a checkpoint."""

log = logging.getLogger("remoteckpt")

READ_AHEAD = 4
"""Chunks of one data file being fetched while earlier ones are written."""


@dataclass(frozen=True)
class CopyReport:
    """`source` and `destination` are the checkpoints' prefixes; `tensors_verified` counts
    tensors as `CheckpointReader` lists them (a partitioned tensor once, whatever its slices)."""

    source: str
    destination: str
    files: int
    bytes: int
    tensors_verified: int
    copied: int = 0
    """Bytes the destination store copied from the base instead of receiving them."""


async def _is_folder(destination: str, storage_options: dict[str, Any] | None, options: IOOptions) -> bool:
    """Whether something is stored under ``destination/`` (a folder of an object store)."""
    if "://" not in destination or destination.startswith("file://"):
        return os.path.isdir(destination.removeprefix("file://"))
    directory, name = split_prefix(destination)
    store = open_store(directory, storage_options, options)
    try:
        if isinstance(store, S3Store):  # one key is enough to know
            try:
                page = await store.client.call("list_objects_v2", Bucket=store.bucket,
                                               Prefix=store.object_key(f"{name}/"), MaxKeys=1)
            except Exception as exc:
                raise translate(exc, destination) from exc
            return bool(page.get("KeyCount") or page.get("Contents") or page.get("CommonPrefixes"))
        return bool(await store.list_info(f"{name}/"))
    finally:
        await store.close()


async def destination_prefix(source_prefix: str, destination: str, storage_options: dict[str, Any] | None = None,
                             options: IOOptions = DEFAULT_OPTIONS) -> str:
    """Where a copy of the checkpoint at `source_prefix` goes for `destination`, as ``aws s3
    cp`` decides: a destination ending in ``/``, a bucket's root or an existing folder (a
    local directory; an object store prefix with objects under it) means "into this folder",
    keeping the checkpoint's name (`name_to_keep`); anything else is the new checkpoint's
    prefix.  Never a silent rename into ``folder/.index``."""
    if is_directory_id(destination) or await _is_folder(destination, storage_options, options):
        return f"{destination.rstrip('/').rstrip(os.sep)}/{name_to_keep(source_prefix)}"
    return destination


class _Verifier:
    """Recomputes each entry's CRC as a data file's bytes stream past, in order."""

    def __init__(self, entries: list[tuple[bytes, BundleEntry]], describe: str) -> None:
        self._todo = sorted(((e.offset, k, e) for k, e in entries if e.size), key=lambda t: (t[0], t[1]))
        self._next = 0
        self._describe = describe
        self._active: list[list[Any]] = []  # [key, entry, crc or bytearray]
        self._copied: set[int] = set()
        self.verified = sum(1 for _, e in entries if not e.size)

    def copied(self, entries: list[BundleEntry]) -> None:
        """`entries` (not fed yet) are copied from a base holding them unchanged: not fed."""
        self._copied.update(id(e) for e in entries)

    def feed(self, start: int, chunk: memoryview) -> None:
        end = start + len(chunk)
        while self._next < len(self._todo) and self._todo[self._next][0] < end:
            _, key, entry = self._todo[self._next]
            self._next += 1
            if id(entry) in self._copied:
                self.verified += 1  # the base's, checked when it was written and pinned since
                continue
            self._active.append([key, entry, bytearray() if entry.dtype == DT_STRING else 0])
        still = []
        for item in self._active:
            key, entry, state = item
            lo, hi = max(start, entry.offset), min(end, entry.offset + entry.size)
            if lo < hi:
                piece = chunk[lo - start : hi - start]
                if isinstance(state, bytearray):
                    state += piece
                else:
                    item[2] = crc32c(piece, state)
            if entry.offset + entry.size <= end:
                self._finish(key, entry, item[2])
            else:
                still.append(item)
        self._active = still

    def _finish(self, key: bytes, entry: BundleEntry, state: Any) -> None:
        where = f"tensor {key.decode('utf-8', 'backslashreplace')!r} in {self._describe}"
        if isinstance(state, bytearray):
            _, crc = decode_strings(state, math.prod(entry_shape(entry)))
        else:
            crc = state
        if crc != unmask_crc(entry.crc32c):
            raise CorruptCheckpointError(f"{where}: checksum mismatch; the source is damaged, nothing was committed")
        self.verified += 1

    def close(self) -> None:
        while self._next < len(self._todo) and id(self._todo[self._next][2]) in self._copied:
            self._next += 1
            self.verified += 1
        if self._next < len(self._todo) or self._active:
            raise CorruptCheckpointError(f"{self._describe} ends before the tensors it should hold")


@dataclass(frozen=True)
class CopyRun:
    """Bytes ``[start, start + size)`` of a data file, equal to ``[base_start, base_start +
    size)`` of the base's data file `base_shard`: tensors unchanged, adjacent in both files."""

    start: int
    size: int
    base_shard: int
    base_start: int
    entries: tuple[BundleEntry, ...]


def copy_runs(entries: list[tuple[bytes, BundleEntry]], base: BaseCheckpoint) -> list[CopyRun]:
    """The runs of one data file's `entries` that `base` holds unchanged (PURE), by offset."""
    runs: list[CopyRun] = []
    for key, entry in sorted(entries, key=lambda item: item[1].offset):
        old = base.entries.get(key)
        if old is None or not unchanged_entry(entry, old) or not 0 <= old.shard_id < base.num_shards:
            continue
        last = runs[-1] if runs else None
        if (last is not None and last.base_shard == old.shard_id and last.start + last.size == entry.offset
                and last.base_start + last.size == old.offset):
            runs[-1] = CopyRun(last.start, last.size + entry.size, last.base_shard, last.base_start,
                               (*last.entries, entry))
        else:
            runs.append(CopyRun(entry.offset, entry.size, old.shard_id, old.offset, (entry,)))
    return runs


async def copy_data_file(src: Store, dst: Store, src_key: str, dst_key: str, entries: list[tuple[bytes, BundleEntry]],
                     *, options: IOOptions, budget: MemoryBudget, reporter: Reporter, total: int,
                     base: BaseCheckpoint | None = None) -> tuple[int, int, DataIdentity | None, int]:
    """Stream one data file (its runs unchanged since `base` copied by the destination store);
    its size, tensors verified, identity at the destination and bytes copied."""
    try:
        size = await src.size(src_key)
    except CheckpointNotFoundError:
        if entries:
            raise
        return 0, 0, None, 0  # TF opens data files lazily: an unreferenced missing shard is no loss
    runs = copy_runs(entries, base) if base is not None else []
    verifier = _Verifier(entries, src.describe(src_key))
    chunk = options.read_chunk
    copied = 0
    first = True

    async def fetch(start: int, n: int) -> bytearray:
        await budget.acquire(n)
        try:
            buf = bytearray(n)
            got = await src.read_into(src_key, start, memoryview(buf))
            if got != len(buf):
                raise CorruptCheckpointError(f"{src.describe(src_key)} is shorter than it was a moment ago")
            return buf
        except BaseException:
            budget.release_now(n)  # the budget is the process's: nothing may keep it
            raise

    async def stream(writer: ObjectWriter, lo: int, hi: int) -> None:
        """Bytes ``[lo, hi)`` from the source into `writer`, READ_AHEAD chunks in flight."""
        nonlocal first
        starts = list(range(lo, hi, chunk))
        # Fetches not yet taken, oldest first: a taken one leaves the queue at once, so that
        # no finished task keeps its buffer alive after the writer lets go of it.
        pending = collections.deque(asyncio.ensure_future(fetch(s, min(chunk, hi - s)))
                                    for s in starts[:READ_AHEAD])
        try:
            for i, start in enumerate(starts):
                buf = await pending[0]
                pending.popleft()
                if i + READ_AHEAD < len(starts):
                    at = starts[i + READ_AHEAD]
                    pending.append(asyncio.ensure_future(fetch(at, min(chunk, hi - at))))
                try:
                    verifier.feed(start, memoryview(buf))
                except BaseException:
                    budget.release_now(len(buf))
                    raise
                # its budget held until the writer lets go of it (S3: once its part is sent)
                await writer.write(buf, functools.partial(budget.release_now, len(buf)))
                if first:
                    crash_point("mid-copy")
                    first = False
                reporter.add("written", len(buf), total)
                del buf
        finally:
            for task in pending:
                task.cancel()
            for left in await asyncio.gather(*pending, return_exceptions=True):
                if isinstance(left, bytearray):  # fetched, never taken
                    budget.release_now(len(left))

    async with dst.writer(dst_key, exclusive=True, size_hint=size) as writer:
        at = 0
        for run in runs if writer.server_side_copy else []:
            assert base is not None  # runs come from one
            await stream(writer, at, run.start)
            # A copy begins at a part boundary and at a tensor's first byte: whole tensors of
            # the run are sent (and checked) until the writer is at such a boundary.
            at, sent = run.start, 0
            while sent < len(run.entries) and writer.bytes_before_copy():
                await stream(writer, at, at + run.entries[sent].size)
                at += run.entries[sent].size
                sent += 1
            rest = run.start + run.size - at
            if sent < len(run.entries) and rest >= max(writer.copy_granule, 1):
                verifier.copied(list(run.entries[sent:]))
                await writer.copy(base.data_key(run.base_shard), run.base_start + at - run.start, rest,
                                  etag=await base.etag(run.base_shard))
                copied += rest
                reporter.add("written", rest, total)
            else:
                await stream(writer, at, at + rest)  # too short to copy
            at = run.start + run.size
        await stream(writer, at, size)
        verifier.close()
    return size, verifier.verified, DataIdentity(key=dst_key, size=size, etag=writer.etag), copied


async def _copy_meta(src: Store, dst: Store, src_name: str, dst_name: str) -> int:
    """``PREFIX.meta`` (a TF1 Saver's MetaGraphDef) goes with its checkpoint, before the index
    is committed; its size, 0 when the source has none.  It has no checksum to verify."""
    try:
        data = await src.get(f"{src_name}{META_SUFFIX}")
    except CheckpointNotFoundError:
        return 0
    await dst.put(f"{dst_name}{META_SUFFIX}", data)
    return len(data)


async def copy_async(source: str, destination: str, *, overwrite: bool = False,
                     source_options: dict[str, Any] | None = None, destination_options: dict[str, Any] | None = None,
                     options: IOOptions = DEFAULT_OPTIONS, progress: ProgressCallback | None = None,
                     base: str | bool | None = None) -> CopyReport:
    """`copy_checkpoint`'s coroutine.  `base`: a checkpoint of the destination's directory
    (its name there) whose unchanged tensors the destination store copies instead of
    receiving them (see the module docstring), or True for the directory's latest (as an
    incremental save finds its base: `management.state.previous_checkpoint`)."""
    source = await for_reading(source, source_options, options)
    destination = await destination_prefix(source, destination, destination_options, options)
    src_dir, src_name = split_prefix(source)
    dst_dir, dst_name = split_prefix(destination)
    src = open_store(src_dir, source_options, options)
    dst = open_store(dst_dir, destination_options, options)
    try:
        raw = await src.get(index_filename(src_name))
        view = memoryview(raw)
        try:
            index: BundleIndex = decode_index(lambda o, n: view[o : o + n], len(view))
        except CorruptCheckpointError as exc:
            raise CorruptCheckpointError(f"{src.describe(index_filename(src_name))}: {exc}") from None
        by_shard: dict[int, list[tuple[bytes, BundleEntry]]] = {s: [] for s in range(index.num_shards)}
        for key, entry in index.entries.items():
            if not entry.slices:
                by_shard[entry.shard_id].append((key, entry))
        total = sum(e.size for items in by_shard.values() for _, e in items)
        reporter = Reporter(progress, destination)
        budget = process_budget(options.memory_budget)
        slots = asyncio.Semaphore(max(1, options.max_concurrency // READ_AHEAD))
        n = index.num_shards
        layout = SaveLayout(dst_name, 0, n, save_id="copy")
        lease = await claims.acquire(dst, layout, options)
        try:
            await coordinator.prepare(dst, layout, lease, overwrite=overwrite)
            if isinstance(base, str):
                base_name: str | None = base
            else:
                base_name = await previous_checkpoint(dst, dst_dir, dst_name) if base else None
            opened = await open_base(dst, base_name) if base_name not in (None, dst_name) else None

            async def one(shard: int) -> tuple[int, int, DataIdentity | None, int]:
                src_key, dst_key = data_filename(src_name, shard, n), data_filename(dst_name, shard, n)

                def attempt(with_base: BaseCheckpoint | None) -> Awaitable[tuple[int, int, DataIdentity | None, int]]:
                    return copy_data_file(src, dst, src_key, dst_key, by_shard[shard], options=options, budget=budget,
                                      reporter=reporter, total=total, base=with_base)

                async with slots:
                    try:
                        return await attempt(opened)
                    except (CheckpointChangedError, CheckpointNotFoundError) as exc:
                        if opened is None:
                            raise
                        log.warning("copying %s: the base %s changed or vanished (%s); sending it whole",
                                    src.describe(src_key), dst.describe(opened.name), exc)
                        return await attempt(None)

            results = await asyncio.gather(*(one(s) for s in range(n)))
            meta = await _copy_meta(src, dst, src_name, dst_name)
            await lease.fresh()
            await fence.check_data_files(dst, layout.data_prefix, [i for _, _, i, _ in results if i is not None])
            lease.check()
            await DEFAULT_COMMIT.commit(dst, index_filename(dst_name), bytes(raw))
        finally:
            try:
                await claims.release(lease)
            except CheckpointError:  # left for gc, or for the next save (judged dead)
                pass
        reporter.emit("committed", total, total)
        return CopyReport(source, destination, sum(1 for b, _, _, _ in results if b) + 1 + (meta > 0),
                          sum(b for b, _, _, _ in results) + len(raw) + meta, sum(1 for _ in index.tensor_keys()),
                          copied=sum(c for _, _, _, c in results))
    finally:
        await src.close()
        await dst.close()


def copy_checkpoint(source: str | os.PathLike[str], destination: str | os.PathLike[str], **kwargs: Any) -> CopyReport:
    """Copy the checkpoint at `source` to `destination` (any two stores), verified, committed
    at the destination like a save.  Keyword arguments as `copy_async`."""
    return loop.run(copy_async(os.fspath(source), os.fspath(destination), **kwargs))
