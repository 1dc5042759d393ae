"""The drain: a checkpoint committed on the local tier, saved again to its remote prefix.

A drain is a save attempt at the remote prefix like any other, through `remoteckpt cp`'s
copy (`tools.copy.copy_async`): the remote prefix is claimed, each local data file is
streamed as it is (its bytes are the checkpoint's: no tensor is decoded or held whole in
memory; each tensor's CRC32C is checked as its bytes pass), written create-only, fenced, and
the local index is committed create-only, byte for byte, last.  Then ``NAME.durable`` is
written on the tier (`layout`).  A checkpoint saved with digests (``incremental=True``) drains
incrementally: its tensors unchanged since the remote directory's latest checkpoint are
copied there by the remote store (S3 UploadPartCopy) instead of being uploaded again
(`tools.copy`'s ``base``).  A crash at any point leaves the remote prefix without an
index (its leftovers are the next attempt's or `gc`'s) or with the complete checkpoint.

A drain that finds the remote index committed already (its earlier attempt died between the
commit and the marker) compares the bytes: equal, the checkpoint is durable (a drain that may
overwrite looks first, so it never replaces the very checkpoint it drains); different, the
remote prefix holds another checkpoint and the drain fails (`CheckpointExistsError`) unless
the save asked to overwrite.

Drains of one process run one at a time, in the order they were started (a remote tier
never has a newer checkpoint committed before an older one of the same job), on
remoteckpt's I/O loop.  Who drains: the coordinator of the save (rank 0), the whole
checkpoint; the other workers of a multi-worker save learn of durability from the marker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from ..engine import loop
from ..errors import CheckpointExistsError, CheckpointNotFoundError
from ..faults import crash_point
from ..format.bundle import index_filename
from ..options import DEFAULT_OPTIONS, IOOptions
from ..progress import ProgressCallback, Reporter
from ..storage import Store, open_store, split_prefix
from ..storage.local import LocalStore
from ..tools.copy import copy_async
from .layout import (
    DURABLE,
    RECORD,
    LocalTier,
    as_tier,
    local_prefix,
    record_bytes,
)

log = logging.getLogger("remoteckpt")

MARKER_POLL = 0.2
"""Seconds between looks at a durable marker by a worker that does not drain (a local stat)."""

_futures: dict[str, Future[str]] = {}
"""Durability futures of this process by remote prefix: the drains started here."""
_futures_lock = threading.Lock()
_order: dict[int, asyncio.Lock] = {}  # one per loop (a forked child has its own)


def drain_lock() -> asyncio.Lock:
    key = id(asyncio.get_running_loop())
    if key not in _order:
        _order[key] = asyncio.Lock()
    return _order[key]


async def mark_durable(local: str, remote: str) -> None:
    directory, name = split_prefix(local)
    store = LocalStore(directory)
    try:
        await store.put(name + DURABLE, record_bytes(remote))
    finally:
        await store.close()


async def committed_as(store: Store, key: str, index: bytes) -> bool:
    """Whether `store` holds `key` with exactly the bytes `index`: the index a drain commits,
    committed already (by an earlier drain of this very checkpoint, whose process died before
    its marker).  Every drain decides by this: `drain`'s, and each worker's of a per-host tier
    (`hosts.drain_on_host`)."""
    try:
        return bool(await store.get(key) == index)
    except CheckpointNotFoundError:
        return False


async def same_index(local: str, remote: str, storage_options: dict[str, Any] | None, options: IOOptions) -> bool:
    """`committed_as` for the index of the checkpoint at `local` and remote prefix `remote`."""
    l_dir, l_name = split_prefix(local)
    r_dir, r_name = split_prefix(remote)
    here, there = LocalStore(l_dir), open_store(r_dir, storage_options, options)
    try:
        return await committed_as(there, index_filename(r_name), await here.get(index_filename(l_name)))
    except CheckpointNotFoundError:
        return False
    finally:
        await here.close()
        await there.close()


async def drain(local: str, remote: str, *, overwrite: bool = False, storage_options: dict[str, Any] | None = None,
                options: IOOptions = DEFAULT_OPTIONS, after: Callable[[], Awaitable[None]] | None = None,
                progress: ProgressCallback | None = None) -> str:
    """Save the checkpoint committed at `local` to `remote` (see the module docstring), mark
    it durable, then run `after` (a Saver's state file and remote retention), all in the
    order drains were started.  Returns `remote`.  `progress` gets the copy's ``written`` and
    ``committed`` events (named by `remote`), then ``durable``."""
    async with drain_lock():
        start = time.monotonic()
        crash_point("draining")
        try:
            if overwrite and await same_index(local, remote, storage_options, options):
                # committed by an earlier drain of this very checkpoint: nothing to replace
                raise CheckpointExistsError.committed(remote)
            report = await copy_async(local, remote, overwrite=overwrite, destination_options=storage_options,
                                      options=options, progress=progress, base=True)
            size, copied = report.bytes, report.copied
        except CheckpointExistsError as exc:
            if not exc.index_committed or not await same_index(local, remote, storage_options, options):
                raise
            size = copied = 0
            log.info("%s was committed by an earlier drain; marking it durable", remote)
        crash_point("drained")
        await mark_durable(local, remote)
        Reporter(progress, remote).emit("durable", size, size)
        log.info("drained %s to %s: %d bytes (%d of them copied by the remote store) in %.3f s", local, remote, size,
                 copied, time.monotonic() - start)
        if after is not None:
            await after()
        return remote


def promise(remote: str) -> Future[str]:
    """A fresh durability future for `remote`, registered at once (before the local commit
    it waits for), so that `durability(remote)` finds it as soon as the save is asked for."""
    future: Future[str] = Future()
    future.set_running_or_notify_cancel()
    _remember(remote, future)
    return future


def start(local: str, remote: str, *, overwrite: bool = False, storage_options: dict[str, Any] | None = None,
          options: IOOptions = DEFAULT_OPTIONS, after: Callable[[], Awaitable[None]] | None = None,
          future: Future[str] | None = None, progress: ProgressCallback | None = None) -> Future[str]:
    """Start `drain` on remoteckpt's loop (callable from any thread, the loop's included);
    its future (`future`, or a fresh `promise`), also `durability(remote)`'s."""
    return start_work(lambda: drain(local, remote, overwrite=overwrite, storage_options=storage_options,
                                    options=options, after=after, progress=progress),
                      local, remote, future)


def start_work(work: Callable[[], Awaitable[str]], local: str, remote: str,
               future: Future[str] | None = None) -> Future[str]:
    """Run a drain (`work`, resolving to `remote`) on remoteckpt's loop; its future (`future`,
    or a fresh `promise`), also `durability(remote)`'s."""
    future = future if future is not None else promise(remote)

    async def run() -> None:
        await asyncio.sleep(0)  # the save that started it resolves its caller first
        try:
            result = await work()
        except BaseException as exc:  # the caller's, through the future
            log.warning("draining %s to %s failed: %s", local, remote, exc)
            future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            future.set_result(result)

    _spawn(run())
    return future


_tasks: set[asyncio.Task[None]] = set()  # drains running: referenced until done


def _spawn(coro: Coroutine[Any, Any, None]) -> None:
    """Run `coro` on remoteckpt's loop, from its thread or any other."""
    running = loop.get_loop()
    try:
        here = asyncio.get_running_loop() is running
    except RuntimeError:
        here = False
    if here:
        task = running.create_task(coro)
        _tasks.add(task)
        task.add_done_callback(_tasks.discard)
    else:
        asyncio.run_coroutine_threadsafe(coro, running)


def _remember(remote: str, future: Future[str]) -> None:
    with _futures_lock:
        _futures[remote] = future


def watch_marker(local: str, remote: str, timeout: float, future: Future[str] | None = None, *,
                 storage_options: dict[str, Any] | None = None) -> Future[str]:
    """A future (`future`, or a fresh `promise`) that resolves once `local`'s durable marker
    appears (a worker that does not drain: the coordinator drains and writes it on the shared
    tier).  Should the checkpoint leave the tier first (retention evicts it as soon as it is
    durable, so the marker may come and go between two looks), or `timeout` seconds pass, the
    remote index decides, as in `wait_durable`: there, durable; else the future fails."""
    future = future if future is not None else promise(remote)

    async def look() -> None:
        deadline = time.monotonic() + timeout
        while not os.path.exists(local + DURABLE):
            gone = not os.path.exists(local + RECORD)
            if gone or time.monotonic() > deadline:
                if await _remote_index_exists(remote, storage_options):
                    break
                future.set_exception(CheckpointNotFoundError(
                    f"{remote} did not become durable"
                    + (f": it left the local tier ({local + RECORD} is gone) and has no remote index" if gone else
                       f" within {timeout:g} s: {local + DURABLE} never appeared and it has no remote index")
                    + " (the coordinator's drain failed, or its process died)"))
                return
            await asyncio.sleep(MARKER_POLL)
        future.set_result(remote)

    _spawn(look())
    return future


async def _remote_index_exists(remote: str, storage_options: dict[str, Any] | None) -> bool:
    directory, name = split_prefix(remote)
    store = open_store(directory, storage_options)
    try:
        return await store.exists(index_filename(name))
    finally:
        await store.close()


def durability(prefix: str | os.PathLike[str]) -> Future[str]:
    """The future of the drain of remote `prefix` started in this process: its result is
    the prefix once the checkpoint is committed remotely (and marked durable locally)."""
    text = os.fspath(prefix)
    with _futures_lock:
        future = _futures.get(text)
    if future is None:
        raise CheckpointNotFoundError(f"no drain of {text} was started in this process")
    return future


def wait_durable(prefix: str | os.PathLike[str], *, local_tier: LocalTier | str | os.PathLike[str] | None = None,
                 storage_options: dict[str, Any] | None = None, timeout: float | None = None) -> str:
    """Block until the checkpoint at remote `prefix` is durable: its drain in this process has
    committed it (its error re-raised if it failed), or, with no drain here, its local tier
    marks it durable or its remote index exists.  `CheckpointNotFoundError` if it is neither
    and no drain of it runs here; `TimeoutError` after `timeout` seconds."""
    text = os.fspath(prefix)
    with _futures_lock:
        future = _futures.get(text)
    if future is not None:
        try:
            return future.result(timeout)
        except FutureTimeout:
            raise TimeoutError(f"{text} is not durable yet after {timeout:g} s") from None
    tier = as_tier(local_tier)
    if tier is not None and os.path.exists(local_prefix(tier, text) + DURABLE):
        return text
    if loop.run(_remote_index_exists(text, storage_options)):
        return text
    raise CheckpointNotFoundError(f"{text} is not durable: no remote index, and no drain of it in this process")


def running(remote: str) -> bool:
    """Whether a drain of `remote` started in this process is still running."""
    with _futures_lock:
        return remote in _futures and not _futures[remote].done()


def forget(prefix: str) -> None:
    with _futures_lock:
        _futures.pop(prefix, None)


__all__ = ["drain", "durability", "start", "wait_durable", "watch_marker"]
