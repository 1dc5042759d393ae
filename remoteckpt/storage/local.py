"""Local POSIX disk: aiofiles for file I/O, the default thread pool for the rest.

A writer writes ``<key>.tempstate<random u64>`` beside the target (TF's temp naming), and on
commit flushes, fsyncs, renames over the key and fsyncs the directory, so a crash leaves the
old object or the new one, never a torn file.  Exclusive commits use ``link()``, which fails
if the target exists, then unlink the temp name: atomic create-only on POSIX.
"""

from __future__ import annotations

import builtins

import asyncio
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiofiles
import aiofiles.os

from .. import faults
from ..format.coding import crc32c
from . import writeback
from .base import Buffer, ObjectInfo, ObjectWriter, ScatterResult, Store, StoreCapabilities, too_large
from .errors import translate


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


def _pread_scatter(path: str, targets: Sequence[tuple[int, memoryview]]) -> ScatterResult:
    """Straight into the caller's buffers (no intermediate copy), each checksummed right
    after it lands, in this worker thread, while it is in cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        total, crcs = 0, []
        for offset, view in targets:
            n = _pread_all(fd, offset, view)
            total += n
            crcs.append(crc32c(view[:n]))
        return ScatterResult(total, tuple(crcs))
    finally:
        os.close(fd)


class LocalWriter(ObjectWriter):
    def __init__(self, store: "LocalStore", key: str, exclusive: bool) -> None:
        self.key = key
        self._store = store
        self._path = store.path(key)
        self._temp = self._path.with_name(f"{self._path.name}.tempstate{secrets.randbits(64)}")
        self._exclusive = exclusive
        self._file: Any = None
        self._offset = 0
        self._done = False

    async def write(self, data: Buffer) -> None:
        try:
            if self._file is None:
                self._file = await self._open_temp()
            await self._file.write(data)
            size = memoryview(data).nbytes
            if writeback.wanted(size):  # the commit's fsync then waits for the tail only
                await asyncio.to_thread(writeback.start, self._file.fileno(), self._offset, size)
            self._offset += size
        except Exception as exc:
            await self.abort()
            raise translate(exc, str(self._path)) from exc

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
            await self._file.close()
            faults.publishing()
            if self._exclusive:
                await asyncio.to_thread(os.link, self._temp, self._path)
                await aiofiles.os.remove(self._temp)
            else:
                await aiofiles.os.replace(self._temp, self._path)
            await asyncio.to_thread(_fsync_dir, self._path.parent)
            self._done = True
        except Exception as exc:
            await self.abort()
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

    capabilities = StoreCapabilities(atomic_rename=True, conditional_put=True)

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.url = str(self.root)

    def path(self, key: str) -> Path:
        return self.root / key

    def describe(self, key: str) -> str:
        return str(self.path(key))

    async def size(self, key: str) -> int:
        try:
            return (await aiofiles.os.stat(self.path(key))).st_size
        except Exception as exc:
            raise translate(exc, self.describe(key)) from exc

    async def exists(self, key: str) -> bool:
        return await aiofiles.os.path.exists(self.path(key))

    async def get(self, key: str, *, max_size: int | None = None) -> bytes:
        try:
            async with aiofiles.open(self.path(key), "rb") as f:
                if max_size is not None and (size := os.fstat(f.fileno()).st_size) > max_size:
                    raise too_large(self.describe(key), size, max_size)
                return await f.read()
        except Exception as exc:
            raise translate(exc, self.describe(key)) from exc

    async def read_scatter(self, key: str, start: int, targets: Sequence[tuple[int, memoryview]]) -> ScatterResult:
        try:
            return await asyncio.to_thread(_pread_scatter, str(self.path(key)), targets)
        except Exception as exc:
            raise translate(exc, self.describe(key)) from exc

    def writer(self, key: str, *, exclusive: bool = False) -> ObjectWriter:
        return LocalWriter(self, key, exclusive)

    async def delete(self, key: str) -> None:
        """Remove `key`, then any directories it leaves empty (up to the root)."""
        try:
            await aiofiles.os.remove(self.path(key))
        except FileNotFoundError:
            return  # nothing removed: leave the directories to whoever may be filling them
        except Exception as exc:
            raise translate(exc, self.describe(key)) from exc
        parent = self.path(key).parent
        while parent != self.root and self.root in parent.parents:
            try:
                await aiofiles.os.rmdir(parent)
            except OSError:
                break
            parent = parent.parent

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
                        keys.append(ObjectInfo(key, st.st_size, st.st_mtime))
            return sorted(keys, key=lambda i: i.key)

        return await asyncio.to_thread(walk)
