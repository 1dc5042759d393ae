"""Retention of the local tier: the newest `LocalTier.keep` checkpoints, under `max_bytes`.

The remote tier's retention is the Saver's (``max_to_keep``, ``keep_checkpoint_every_n_hours``);
the local tier's is a cache's: it only ever evicts a checkpoint that is durable remotely (its
``NAME.durable`` marker, `layout`), so the tiers together always hold every checkpoint the
job saved and did not retire.  Eviction deletes the index first (the checkpoint stops
existing at once), then the data files, the marker, and the record last.

    trim(tier)              after each drain: durable checkpoints older than the newest
                            `keep` are evicted
    trim_later(tier)        the same after a local commit, in the background: a save
                            returns at its local commit, not after deleting old files
                            (freeing an evicted checkpoint's blocks takes time: 0.1 to
                            0.5 s per 512 MiB measured on ext4 mounted with ``discard``
                            and on tmpfs); the tier's next save waits for it first
                            (`settled`)
    make_room(tier, bytes)  before a local save: durable checkpoints are evicted, oldest
                            first, until the new one fits under `max_bytes`; if none is left
                            to evict, the save waits for this process's drains (up to
                            `full_timeout`), then raises `LocalTierFullError`
A checkpoint a `CheckpointReader` of this process has open is not evicted.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ..errors import LocalTierFullError
from ..reader import being_read
from ..storage import split_prefix
from . import drain
from .layout import LocalTier, TierCheckpoint, checkpoints, delete_local

log = logging.getLogger("remoteckpt")


def _evictable(c: TierCheckpoint) -> bool:
    """Durable, and not open in a `CheckpointReader` of this process: by its tier path, or by
    its remote prefix (a reader with ``local_tier=`` is registered under the remote one)."""
    directory, _, base = c.local.rpartition("/")
    return c.durable and not being_read(directory, base) and not being_read(*split_prefix(c.remote))


async def trim(tier: LocalTier) -> list[str]:
    """Evict the durable checkpoints older than the newest `keep`; their names."""
    found = [c for c in checkpoints(tier) if c.committed]
    evicted = []
    for c in found[: max(0, len(found) - tier.keep)]:
        if _evictable(c):
            await delete_local(tier, c.name)
            evicted.append(c.name)
    if evicted:
        log.info("local tier %s: evicted %s (durable remotely)", tier.path, ", ".join(evicted))
    return evicted


_later: dict[tuple[int, str], "asyncio.Task[None]"] = {}
"""Background trims by (loop, tier path): one at a time per tier; the newest kept."""


def trim_later(tier: LocalTier) -> None:
    """`trim` in the background on the running loop (after a local commit: the save returns
    first); its errors are logged, not raised (the next trim tries again)."""
    running = asyncio.get_running_loop()
    key = (id(running), tier.path)
    before = _later.get(key)
    if before is not None and before.get_loop() is not running:
        before = None  # another loop's (a forked child's parent)

    async def run() -> None:
        await asyncio.sleep(0)  # the save that started it resolves its caller first
        if before is not None:
            await asyncio.wait([before])
        try:
            await trim(tier)
        except Exception:
            log.warning("local tier %s: trimming after a save failed", tier.path, exc_info=True)

    task = running.create_task(run())
    _later[key] = task
    task.add_done_callback(lambda t: _later.pop(key, None) if _later.get(key) is t else None)


async def settled(tier: LocalTier) -> None:
    """Wait for the tier's background trim in this process, if one runs (before a save
    looks at the tier or evicts from it)."""
    running = asyncio.get_running_loop()
    task = _later.get((id(running), tier.path))
    if task is not None and task.get_loop() is running:
        await asyncio.wait([task])


async def make_room(tier: LocalTier, needed: int) -> None:
    """Make `needed` more bytes fit under `tier.max_bytes` (see the module docstring)."""
    if tier.max_bytes is None:
        return
    if needed > tier.max_bytes:
        raise LocalTierFullError(f"local tier {tier.path}: a checkpoint of {needed} bytes cannot fit under its cap "
                                 f"of {tier.max_bytes} bytes")
    deadline = time.monotonic() + tier.full_timeout
    while True:
        found = checkpoints(tier)
        used = sum(c.size for c in found)
        if used + needed <= tier.max_bytes:
            return
        victims = [c for c in found if c.committed and _evictable(c)]
        if victims:
            log.info("local tier %s: evicting %s to make room", tier.path, victims[0].name)
            await delete_local(tier, victims[0].name)
            continue
        waiting = []
        for c in found:
            try:
                future = drain.durability(c.remote)
            except FileNotFoundError:
                continue
            if not future.done():
                waiting.append(future)
        left = deadline - time.monotonic()
        if not waiting or left <= 0:
            raise LocalTierFullError(
                f"local tier {tier.path}: {used} bytes used, {needed} more needed, cap {tier.max_bytes}; "
                f"no checkpoint there is durable remotely yet ({len(waiting)} drain(s) in flight here"
                + (f", waited {tier.full_timeout:g} s" if waiting else "") + ")")
        log.info("local tier %s is full: waiting for a drain to finish", tier.path)
        await asyncio.wait([asyncio.wrap_future(f) for f in waiting], timeout=left,
                           return_when=asyncio.FIRST_COMPLETED)
