"""Local POSIX disk: aiofiles for file I/O, the default thread pool for the rest.

A writer writes ``<key>.tempstate<random u64>`` beside the target (TF's temp naming), and on
commit flushes, fsyncs, renames over the key and fsyncs the directory, so a crash leaves the
old object or the new one, never a torn file.  Exclusive commits use ``link()``, which fails
if the target exists, then unlink the temp name: atomic create-only on POSIX.

Conditional replaces and deletes (``if_match``) lock the file they expect to find
(``flock``), check that the path still names it and that it is the expected version, then
rename over it or unlink it, still holding the lock: of two such writers, the second finds
the path naming another file and fails.  An etag is ``inode.mtime_ns.size`` in hex: a new
version is a new file.

A writer's `copy` is ``copy_file_range``: the kernel moves the bytes file to file (a reflink,
sharing the blocks, where the file system does that: Btrfs, XFS, bcachefs, NFS 4.2 servers),
falling back to reads and writes in a thread where the call is refused (across file
systems on older kernels).
"""

from __future__ import annotations

import asyncio
import builtins
import errno
import fcntl
import os
import secrets
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiofiles
import aiofiles.os

from .. import faults
from ..errors import CheckpointChangedError, CorruptCheckpointError
from ..format.coding import crc32c
from . import writeback
from .base import Buffer, ObjectInfo, ObjectWriter, ScatterResult, Store, StoreCapabilities, StoredObject, too_large
from .errors import translate


def etag_of(st: os.stat_result) -> str:
    """A local file version's identity: a replaced file is a new inode."""
    return f"{st.st_ino:x}.{st.st_mtime_ns:x}.{st.st_size:x}"


def _when_version(path: Path, expected: str, action: Any) -> bool:
    """Run ``action()`` while holding an exclusive lock on the file at `path`, if it is the
    version `expected`; False (nothing done) if it is missing or another version."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        held = os.fstat(fd)
        try:
            current = os.stat(path)
        except FileNotFoundError:
            return False
        if (current.st_ino, current.st_dev) != (held.st_ino, held.st_dev) or etag_of(current) != expected:
            return False
        action()
        return True
    finally:
        os.close(fd)  # releases the lock


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _may_hold(directory_key: str, prefix: str) -> bool:
    """Whether keys under `directory_key` (a directory, relative to the root) can start with `prefix`."""
    below = directory_key + "/"
    return below.startswith(prefix) or prefix.startswith(below)


def _pread_all(fd: int, start: int, out: memoryview) -> int:
    done = 0
    while done < len(out):
        n = os.preadv(fd, [out[done:]], start + done)
        if n == 0:
            break
        done += n
    return done


def _pread_scatter(path: str, targets: Sequence[tuple[int, memoryview]], etag: str | None) -> ScatterResult:
    """Straight into the caller's buffers (no intermediate copy), each checksummed right
    after it lands, in this worker thread, while it is in cache.  The version is the open
    file's (``fstat``): a file replaced meanwhile is another inode, and this one is read."""
    fd = os.open(path, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        if etag is not None and etag_of(st) != etag:
            raise CheckpointChangedError(f"{path} changed while it was being read (replaced or deleted: "
                                         "open the checkpoint again)")
        total, crcs = 0, []
        for offset, view in targets:
            n = _pread_all(fd, offset, view)
            total += n
            crcs.append(crc32c(view[:n]))
        return ScatterResult(total, tuple(crcs), etag_of(st), st.st_size)
    finally:
        os.close(fd)


COPY_FALLBACK_BLOCK = 8 * 2**20
"""Bytes per read and write where ``copy_file_range`` is refused: as `engine.write`'s blocks."""


def _copy_range(source: Path, out_fd: int, start: int, length: int, at: int, etag: str | None,
                stop: threading.Event | None = None) -> None:
    """Bytes ``[start, start + length)`` of `source` into `out_fd` at `at`, inside the kernel
    where it can; returns early once `stop` is set."""
    fd = os.open(source, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        if etag is not None and etag_of(st) != etag:
            raise CheckpointChangedError(f"{source} is not the version expected (replaced or deleted)")
        if st.st_size < start + length:
            raise CorruptCheckpointError(f"{source} is {st.st_size} bytes: it has no bytes "
                                         f"[{start}, {start + length}) to copy")
        done = 0
        while done < length and not (stop is not None and stop.is_set()):
            try:
                n = os.copy_file_range(fd, out_fd, length - done, start + done, at + done)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                n = 0
            if n == 0:  # refused (or a file system that copies nothing): read and write
                block = os.pread(fd, min(COPY_FALLBACK_BLOCK, length - done), start + done)
                if not block:
                    raise CorruptCheckpointError(f"{source} ended while it was being copied")
                n = os.pwrite(out_fd, block, at + done)
            done += n
    finally:
        os.close(fd)


WRITE_MIN = 1 * 2**20
"""Bytes per write system call of `_write_checked` at least (where there are that many): a
small CRC chunk (4 KiB at least) is checked alone, but checked chunks are written together,
one call per MiB rather than one per chunk."""


def _write_checked(fd: int, view: memoryview, check: Callable[[memoryview], None], step: int,
                   stop: threading.Event) -> None:
    """Each `step`-byte piece of `view` checked, then written to `fd` (with the pieces checked
    just before it, `WRITE_MIN` bytes at a time): the write copies bytes the check just brought
    into the cache.  Returns early once `stop` is set."""
    begin = 0  # checked, not yet written: view[begin:at]
    for at in range(0, len(view), step):
        if stop.is_set():
            return
        check(view[at : at + step])
        end = min(len(view), at + step)
        if end - begin >= WRITE_MIN or end == len(view):
            pending = view[begin:end]
            while len(pending):
                pending = pending[os.write(fd, pending):]
            begin = end


async def _in_thread_to_the_end(work: Callable[[threading.Event], None]) -> None:
    """``work(stop)`` in a worker thread.  Cancelled, this sets `stop` and waits for `work`
    to return before it raises: the caller then closes the file `work` writes to, and a
    descriptor closed under a running write may already name another file."""
    stop = threading.Event()
    running = asyncio.ensure_future(asyncio.to_thread(work, stop))
    try:
        await asyncio.shield(running)
    except asyncio.CancelledError:
        stop.set()
        while not running.done():  # a bounded wait: `work` stops at its next piece
            try:
                await asyncio.wait({running})
            except asyncio.CancelledError:
                pass
        if not running.cancelled():
            running.exception()  # retrieved: the cancellation is what the caller sees
        raise


class LocalWriter(ObjectWriter):
    server_side_copy = True
    checks_while_writing = True

    def __init__(self, store: "LocalStore", key: str, exclusive: bool, if_match: str | None) -> None:
        self.key = key
        self._store = store
        self._path = store.path(key)
        self._temp = self._path.with_name(f"{self._path.name}.tempstate{secrets.randbits(64)}")
        self._exclusive = exclusive
        self._if_match = if_match
        self._file: Any = None
        self._offset = 0
        self._buffered = False  # bytes may wait in the buffered file
        self._done = False

    async def write(self, data: Buffer, release: Callable[[], None] | None = None) -> None:
        try:
            try:
                if self._file is None:
                    self._file = await self._open_temp()
                await self._file.write(data)
                self._buffered = True
            finally:  # in the file, or failed: the buffer is the caller's again
                if release is not None:
                    release()
            size = memoryview(data).nbytes
            if writeback.wanted(size):  # the commit's fsync then waits for the tail only
                await asyncio.to_thread(writeback.start, self._file.fileno(), self._offset, size)
            self._offset += size
        except BaseException as exc:
            await asyncio.shield(self.abort())
            if not isinstance(exc, Exception):
                raise
            raise translate(exc, str(self._path)) from exc

    async def write_checked(self, data: Buffer, check: Callable[[memoryview], None], step: int) -> None:
        """One worker thread checks each piece and writes it straight to the file descriptor,
        the buffered file flushed first; the descriptor's offset moves past these bytes, and
        the buffered file's next bytes go there."""
        try:
            if self._file is None:
                self._file = await self._open_temp()
            if self._buffered:  # what was written lies before these bytes
                await self._file.flush()
                self._buffered = False
            view = memoryview(data).cast("B")
            fd, offset, size = self._file.fileno(), self._offset, len(view)

            def write(stop: threading.Event) -> None:
                _write_checked(fd, view, check, step, stop)
                if writeback.wanted(size) and not stop.is_set():  # the commit's fsync then waits for the tail only
                    writeback.start(fd, offset, size)

            await _in_thread_to_the_end(write)
            self._offset += size
        except BaseException as exc:
            await asyncio.shield(self.abort())
            if not isinstance(exc, OSError):  # cancelled, or the caller's check failed: its own error
                raise
            raise translate(exc, str(self._path)) from exc

    async def copy(self, source: str, start: int, length: int, *, etag: str | None = None) -> None:
        try:
            if self._file is None:
                self._file = await self._open_temp()
            await self._file.flush()  # what was written lies before the copy
            path, fd, at = self._store.path(source), self._file.fileno(), self._offset
            await _in_thread_to_the_end(lambda stop: _copy_range(path, fd, start, length, at, etag, stop))
            self._offset += length
            await self._file.seek(self._offset)  # the next write follows the copy
            faults.crash_point("part-copied")
        except BaseException as exc:
            await asyncio.shield(self.abort())
            if not isinstance(exc, Exception):
                raise
            raise translate(exc, f"{self._path} (a copy from {self._store.path(source)})") from exc

    async def _open_temp(self) -> Any:
        """Create the directory and the temp file; another task's `delete` may prune the
        directory between the two (it removes directories it empties), so retry."""
        for attempt in range(5):
            await aiofiles.os.makedirs(self._path.parent, exist_ok=True)
            try:
                return await aiofiles.open(self._temp, "wb")
            except FileNotFoundError:
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")

    async def commit(self) -> None:
        if self._done:
            return
        try:
            if self._file is None:  # an empty object
                await self.write(b"")
            await self._file.flush()
            await asyncio.to_thread(os.fsync, self._file.fileno())
            etag = etag_of(os.fstat(self._file.fileno()))  # link and rename keep inode and mtime
            await self._file.close()
            faults.publishing()
            if self._exclusive:
                await asyncio.to_thread(os.link, self._temp, self._path)
                await aiofiles.os.remove(self._temp)
            elif self._if_match is not None:
                replaced = await asyncio.to_thread(_when_version, self._path, self._if_match,
                                                   lambda: os.replace(self._temp, self._path))
                if not replaced:
                    raise CheckpointChangedError(f"{self._path} is not the version this write expected "
                                                 f"(another writer replaced or removed it)")
            else:
                await aiofiles.os.replace(self._temp, self._path)
            await asyncio.to_thread(_fsync_dir, self._path.parent)
            self.etag = etag
            self._done = True
        except BaseException as exc:
            await asyncio.shield(self.abort())  # cancelled or failed: no temp file is left
            if not isinstance(exc, Exception):
                raise
            raise translate(exc, str(self._path)) from exc

    async def abort(self) -> None:
        if self._done:
            return
        self._done = True
        if self._file is not None:
            try:
                await self._file.close()
            except OSError:
                pass
        try:
            await aiofiles.os.remove(self._temp)
        except FileNotFoundError:
            pass


class LocalStore(Store):
    """Files under a local directory."""

    capabilities = StoreCapabilities(conditional_writes=True)

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.url = str(self.root)

    def path(self, key: str) -> Path:
        return self.root / key

    def describe(self, key: str) -> str:
        return str(self.path(key))

    async def head(self, key: str) -> ObjectInfo | None:
        try:
            st = await aiofiles.os.stat(self.path(key))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except Exception as exc:
            raise translate(exc, self.describe(key)) from exc
        if not os.path.isfile(self.path(key)):
            return None
        return ObjectInfo(key, st.st_size, st.st_mtime, etag_of(st))

    async def get_object(self, key: str, *, max_size: int | None = None) -> StoredObject:
        try:
            async with aiofiles.open(self.path(key), "rb") as f:
                st = os.fstat(f.fileno())
                if max_size is not None and st.st_size > max_size:
                    raise too_large(self.describe(key), st.st_size, max_size)
                return StoredObject(await f.read(), etag_of(st))
        except Exception as exc:
            raise translate(exc, self.describe(key)) from exc

    async def read_scatter(self, key: str, start: int, targets: Sequence[tuple[int, memoryview]], *,
                           etag: str | None = None) -> ScatterResult:
        if max((offset + len(view) for offset, view in targets), default=start) <= start:
            return ScatterResult.nothing(targets)
        try:
            return await asyncio.to_thread(_pread_scatter, str(self.path(key)), targets, etag)
        except Exception as exc:
            raise translate(exc, self.describe(key)) from exc

    def writer(self, key: str, *, exclusive: bool = False, if_match: str | None = None,
               size_hint: int | None = None) -> ObjectWriter:
        return LocalWriter(self, key, exclusive, if_match)

    async def delete(self, key: str, *, if_match: str | None = None) -> bool:
        """Remove `key` (only version `if_match`, if given), then any directories it leaves
        empty (up to the root)."""
        path = self.path(key)
        try:
            if if_match is None:
                await aiofiles.os.remove(path)
            elif not await asyncio.to_thread(_when_version, path, if_match, lambda: os.remove(path)):
                return not await aiofiles.os.path.exists(path)
        except FileNotFoundError:
            return True  # nothing removed: leave the directories to whoever may be filling them
        except Exception as exc:
            raise translate(exc, self.describe(key)) from exc
        parent = self.path(key).parent
        while parent != self.root and self.root in parent.parents:
            try:
                await aiofiles.os.rmdir(parent)
            except OSError:
                break
            parent = parent.parent
        return True

    async def list(self, prefix: str = "") -> builtins.list[str]:
        return [info.key for info in await self.list_info(prefix)]

    async def list_info(self, prefix: str = "") -> builtins.list[ObjectInfo]:
        def walk() -> builtins.list[ObjectInfo]:
            top = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
            if not top.is_dir():
                return []
            keys = []
            for dirpath, dirs, files in os.walk(top):
                rel = os.path.relpath(dirpath, self.root)
                # Descend only where keys can start with `prefix` (a save checks for its own
                # files in a directory that may hold anything else, deep trees included).
                dirs[:] = [d for d in dirs if _may_hold(d if rel == "." else f"{rel}/{d}".replace(os.sep, "/"), prefix)]
                for name in files:
                    key = name if rel == "." else f"{rel}/{name}".replace(os.sep, "/")
                    if key.startswith(prefix):
                        try:
                            st = os.stat(os.path.join(dirpath, name))
                        except FileNotFoundError:
                            continue  # removed while listing
                        keys.append(ObjectInfo(key, st.st_size, st.st_mtime, etag_of(st)))
            return sorted(keys, key=lambda i: i.key)

        return await asyncio.to_thread(walk)
