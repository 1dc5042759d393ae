"""A host-local cache of verified checkpoint bytes, shared by the processes of one host.

Processes that restore the same checkpoint on one machine without a process group (data
parallel replicas launched separately, a pool of inference workers) share one download
through a directory (``IOOptions(host_cache=DIR)`` or ``$REMOTECKPT_HOST_CACHE``):

    file      one per piece a read fetches that is verifiable alone (a CRC chunk, or a
              whole entry up to `read_chunk`), named by a hash of the data file's URL, its
              version (ETag; else size and mtime, as listed when the checkpoint was opened),
              the offset and the length: a replaced checkpoint never hits an old file
    hit       the file read straight into the destination and its CRC32C checked against
              the index: a damaged or truncated file is deleted and the piece fetched again
    miss      the piece's lock taken (`fcntl.lockf` on one byte of DIR/.lock: one file of
              locks, released by the kernel if the process dies), the file looked for again,
              else the piece fetched from storage, verified, and published (written to a
              temporary name, renamed in); then unlocked.  A piece whose lock another process
              holds is left for later: that process is fetching it, and the file will be
              there once the lock is free.  Each process locks at most `max_concurrency`
              reads' worth at a time, starting at a different place, so processes starting
              together share the download instead of one taking it all
    bound     after a read that published, the files beyond `host_cache_bytes` are deleted,
              least recently used first (a hit touches its file)

Only bytes that matched their CRC are ever published, and every hit is checked again, so a
damaged cache costs a fetch, never a wrong byte.  Pieces that cannot be verified alone (a
part of a large entry without chunk CRCs, i.e. written by TensorFlow) bypass the cache.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import random
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from ..format.coding import crc32c
from .ranges import Piece

HOST_CACHE_ENV = "REMOTECKPT_HOST_CACHE"
"""A cache directory for every read of the process whose options name none."""

LOCK_FILE = ".lock"
TRIM_SLOT = 0
"""The byte of the lock file that serialises trimming; pieces lock bytes from 1 on."""

POLL_FIRST, POLL_MAX = 0.005, 0.2
"""Seconds between looks at pieces another process is fetching: a 1 MiB piece arrives in a
few milliseconds on a fast link; at most five looks a second while a slow one comes."""

PieceId = tuple[int, int]
Fetch = Callable[[list[Piece]], Awaitable[dict[PieceId, int]]]
Check = int | Callable[[memoryview], bool]
"""How a piece's bytes are verified: the CRC32C they must have, or a function saying whether
they are right (a string entry, whose CRC is not of its bytes)."""

_lock_fds: dict[str, int] = {}
"""One descriptor of each cache's lock file per process, never closed: POSIX record locks
belong to the process, and closing any descriptor of the file would drop them all."""


@dataclass(frozen=True)
class HostCache:
    """The cache at `directory`, at most `max_bytes` of files (see the module docstring)."""

    directory: str
    max_bytes: int

    def _lock_fd(self) -> int:
        fd = _lock_fds.get(self.directory)
        if fd is None:
            os.makedirs(self.directory, exist_ok=True)
            fd = _lock_fds[self.directory] = os.open(os.path.join(self.directory, LOCK_FILE),
                                                     os.O_RDWR | os.O_CREAT, 0o644)
        return fd

    def _try_lock(self, slot: int) -> bool:
        try:
            fcntl.lockf(self._lock_fd(), fcntl.LOCK_EX | fcntl.LOCK_NB, 1, slot)
        except (BlockingIOError, PermissionError):
            return False
        return True

    def _unlock(self, slot: int) -> None:
        fcntl.lockf(self._lock_fd(), fcntl.LOCK_UN, 1, slot)

    async def fetch(self, pieces: Sequence[Piece], views: Mapping[PieceId, memoryview],
                    expected: Mapping[PieceId, Check], version: Callable[[str], str], fetch: Fetch,
                    batch_bytes: int) -> dict[PieceId, int]:
        """Fill every piece's view: from the cache where `expected` has its check (a hit whose
        bytes pass it), else with `fetch` (which returns the CRC of each piece fetched);
        return every piece's CRC, as `engine.fetch.execute` does.  `version(key)` names the
        data file's version; `batch_bytes` bounds what this process locks at once."""
        crcs: dict[PieceId, int] = {}
        cacheable = [p for p in pieces if (p.task, p.index) in expected]
        other = [p for p in pieces if (p.task, p.index) not in expected]
        names = {(p.task, p.index): self._name(p, version(p.key)) for p in cacheable}
        direct = asyncio.ensure_future(fetch(other)) if other else None
        try:
            published = await self._through_cache(cacheable, views, expected, names, fetch, batch_bytes, crcs)
            if direct is not None:
                crcs.update(await direct)
        except BaseException:  # the direct fetch writes into the caller's views: never left running
            if direct is not None:
                direct.cancel()
                await asyncio.gather(direct, return_exceptions=True)
            raise
        if published:
            await asyncio.to_thread(self.trim)
        return crcs

    async def _through_cache(self, cacheable: Sequence[Piece], views: Mapping[PieceId, memoryview],
                             expected: Mapping[PieceId, Check], names: Mapping[PieceId, str], fetch: Fetch,
                             batch_bytes: int, crcs: dict[PieceId, int]) -> bool:
        """`fetch`'s cacheable pieces: hits read, misses fetched under their locks and published;
        their CRCs into `crcs`.  Returns whether anything was published."""
        hits = await asyncio.gather(*(asyncio.to_thread(self._read, names[p.task, p.index], views[p.task, p.index],
                                                        expected[p.task, p.index]) for p in cacheable))
        for p, hit in zip(cacheable, hits):
            if hit is not None:
                crcs[p.task, p.index] = hit
        pending = [p for p, hit in zip(cacheable, hits) if hit is None]
        if pending:
            turn = random.randrange(len(pending))
            pending = pending[turn:] + pending[:turn]
        published = False
        pause = POLL_FIRST
        while pending:
            mine: list[Piece] = []
            later: list[Piece] = []
            locked: list[Piece] = []
            for p in pending:
                (locked if self._try_lock(_slot(names[p.task, p.index])) else later).append(p)
            # Pieces whose lock was free: published meanwhile (read them), or to fetch.
            hits = await asyncio.gather(*(asyncio.to_thread(self._read, names[p.task, p.index],
                                                            views[p.task, p.index], expected[p.task, p.index])
                                          for p in locked))
            taken = 0
            for p, hit in zip(locked, hits):
                if hit is not None:
                    crcs[p.task, p.index] = hit
                elif taken < batch_bytes:
                    mine.append(p)
                    taken += p.length
                    continue
                else:
                    later.append(p)
                self._unlock(_slot(names[p.task, p.index]))
            progress = len(later) < len(pending)
            if mine:
                try:
                    fetched = await fetch(mine)
                    crcs.update(fetched)
                    good = [p for p in mine if _passes(views[p.task, p.index], fetched.get((p.task, p.index)),
                                                       expected[p.task, p.index])]
                    await asyncio.gather(*(asyncio.to_thread(self._publish, names[p.task, p.index],
                                                             views[p.task, p.index]) for p in good))
                    published = published or bool(good)
                finally:
                    for p in mine:
                        self._unlock(_slot(names[p.task, p.index]))
            if progress:
                pause = POLL_FIRST
            elif later:
                await asyncio.sleep(pause)  # all held by other processes: their files are coming
                pause = min(POLL_MAX, pause * 2)
            pending = later
        return published

    def _name(self, piece: Piece, version: str) -> str:
        digest = hashlib.sha256(f"{piece.key}\0{version}\0{piece.offset}\0{piece.length}".encode()).hexdigest()
        return os.path.join(self.directory, digest[:40])

    def _read(self, path: str, view: memoryview, check: Check) -> int | None:
        """The CRC32C of the piece if the file at `path` held it (read into `view`, passing
        `check`), else None; a damaged file is deleted."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            size = os.fstat(fd).st_size
            done = os.preadv(fd, [view], 0) if size == len(view) else -1
        finally:
            os.close(fd)
        crc = crc32c(view) if done == len(view) else None
        if crc is not None and _passes(view, crc, check):
            try:
                os.utime(path)
            except FileNotFoundError:
                pass
            return crc
        try:
            os.unlink(path)  # damaged or truncated: fetched again, and published again
        except FileNotFoundError:
            pass
        return None

    def _publish(self, path: str, view: memoryview) -> None:
        temp = os.path.join(self.directory, f".tmp-{uuid.uuid4().hex}")
        try:
            with open(temp, "wb") as f:
                f.write(view)
            os.replace(temp, path)
        except OSError:  # a full disk, a read-only cache: the read itself is done
            try:
                os.unlink(temp)
            except OSError:
                pass

    def trim(self) -> None:
        """Delete the least recently used files until at most `max_bytes` remain (skipped if
        another process is trimming)."""
        if not self._try_lock(TRIM_SLOT):
            return
        try:
            files = []
            with os.scandir(self.directory) as it:
                for entry in it:
                    if entry.name.startswith("."):
                        continue
                    try:
                        st = entry.stat()
                    except FileNotFoundError:
                        continue
                    files.append((st.st_mtime, st.st_size, entry.path))
            total = sum(size for _, size, _ in files)
            for _, size, path in sorted(files):
                if total <= self.max_bytes:
                    break
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
                total -= size
        finally:
            self._unlock(TRIM_SLOT)


def _passes(view: memoryview, crc: int | None, check: Check) -> bool:
    if crc is None:
        return False
    return crc == check if isinstance(check, int) else check(view)


def _slot(name: str) -> int:
    """The byte of the lock file a piece's lock is: from its file name's hash (a collision
    only makes two pieces wait for each other)."""
    return 1 + int(os.path.basename(name)[:12], 16)


def host_cache(directory: str | None, max_bytes: int) -> HostCache | None:
    """The cache the options name, else the one ``$REMOTECKPT_HOST_CACHE`` names, else None."""
    directory = directory or os.environ.get(HOST_CACHE_ENV) or None
    return HostCache(os.path.abspath(directory), max_bytes) if directory else None
