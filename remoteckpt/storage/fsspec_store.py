"""Any fsspec filesystem: the generic backend (S3 has its own, `storage.s3`).

Async filesystems (s3fs) are awaited directly on remoteckpt's loop; synchronous ones
(``memory://``, others) run in the default thread pool.  A generic filesystem offers no
conditional writes: create-only and ``if_match`` are checked by looking first, which narrows a
race without closing it, so `capabilities.conditional_writes` is False and saves that could
race are refused here (S3 has its own store, with real conditional requests).

A writer streams: its bytes go through the filesystem's own file object as they come (opened
with ``open_async`` where the filesystem has it, else ``open`` in a thread), at a temporary
name beside the key, ``<key>.tempstate<random>`` (the local store's, which ``gc`` clears), and
the commit moves that over the key: the key shows the whole object or nothing, as far as the
filesystem's move allows.  Writes are gathered up to `GATHER` bytes before they go down (one
thread hop per small tensor would cost more than the write); an object that never grows past
that, an index or a claim, is written at commit with one ``pipe_file`` and no temporary name.
So a writer holds at most `GATHER` bytes, whatever the size of the object.  Its `copy` is not
server-side (a generic filesystem has no such request): the bytes are read and written.
"""

from __future__ import annotations

import asyncio
import builtins
import datetime
import secrets
from collections.abc import Callable, Sequence
from typing import Any

import fsspec

from .. import faults
from ..errors import CheckpointChangedError, CheckpointExistsError, CheckpointNotFoundError, CorruptCheckpointError
from ..format.coding import crc32c
from .base import Buffer, ObjectInfo, ObjectWriter, ScatterResult, Store, StoreCapabilities, StoredObject, too_large
from .errors import translate


class FsspecStore(Store):
    """Objects under `root` on fsspec filesystem `fs`."""

    capabilities = StoreCapabilities(conditional_writes=False)

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, url: str) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.url = url.rstrip("/")

    def path(self, key: str) -> str:
        return f"{self.root}/{key}" if self.root else key

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self.fs.async_impl:
            return await getattr(self.fs, "_" + method)(*args, **kwargs)
        return await asyncio.to_thread(getattr(self.fs, method), *args, **kwargs)

    async def head(self, key: str) -> ObjectInfo | None:
        try:
            info = await self._call("info", self.path(key))
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise translate(exc, self.describe(key)) from exc
        if info.get("type") == "directory":
            return None
        return _info(key, info)

    async def get_object(self, key: str, *, max_size: int | None = None) -> StoredObject:
        head = await self.head(key)
        if head is None:
            raise CheckpointNotFoundError(f"{self.describe(key)}: no such file or object")
        if max_size is not None and head.size > max_size:
            raise too_large(self.describe(key), head.size, max_size)
        try:
            return StoredObject(bytes(await self._call("cat_file", self.path(key))), head.etag)
        except Exception as exc:
            raise translate(exc, self.describe(key)) from exc

    async def read_scatter(self, key: str, start: int, targets: Sequence[tuple[int, memoryview]], *,
                           etag: str | None = None) -> ScatterResult:
        """The object's version and size are its `head`'s, looked at before the bytes are
        read: a generic filesystem offers no ranged read pinned to a version, so this
        narrows a race with a replacement without closing it (`capabilities`)."""
        end = max((offset + len(view) for offset, view in targets), default=start)
        if end <= start:  # an empty range would fetch the whole object on S3
            return ScatterResult.nothing(targets)
        head = await self.head(key)
        if head is None:
            raise CheckpointNotFoundError(f"{self.describe(key)}: no such file or object")
        if etag is not None and head.etag != etag:
            raise CheckpointChangedError(f"{self.describe(key)} changed while it was being read")
        if start >= head.size:  # nothing there to read
            return ScatterResult(0, tuple(0 for _ in targets), head.etag, head.size)
        try:
            data = await self._call("cat_file", self.path(key), start=start, end=min(end, head.size))
        except Exception as exc:
            raise translate(exc, self.describe(key)) from exc
        found = _scatter(memoryview(data), start, targets)
        return ScatterResult(found.delivered, found.crcs, head.etag, head.size)

    def writer(self, key: str, *, exclusive: bool = False, if_match: str | None = None,
               size_hint: int | None = None) -> ObjectWriter:
        return _StreamingWriter(self, key, exclusive, if_match)

    async def delete(self, key: str, *, if_match: str | None = None) -> bool:
        if if_match is not None:
            head = await self.head(key)
            if head is None:
                return True
            if head.etag != if_match:
                return False
        try:
            await self._call("rm_file", self.path(key))
        except FileNotFoundError:
            pass
        except Exception as exc:
            raise translate(exc, self.describe(key)) from exc
        return True

    async def list(self, prefix: str = "") -> builtins.list[str]:
        return [info.key for info in await self.list_info(prefix)]

    async def list_info(self, prefix: str = "") -> builtins.list[ObjectInfo]:
        base = self.path("")
        try:
            found = await self._call("find", base.rstrip("/") or "/", withdirs=False, detail=True,
                                     **self._find_prefix(prefix))
        except FileNotFoundError:
            return []
        except Exception as exc:  # named by what was being listed for
            raise translate(exc, self.describe(prefix) + "*" if prefix else self.url) from exc
        infos = []
        strip = len(base)
        for path, info in found.items():
            if not path.startswith(base) or info.get("type") == "directory":
                # s3fs answers a listing that finds nothing with the root itself when the
                # server reports it as an object (SeaweedFS does, for an emptied directory)
                continue
            key = path[strip:]
            if key.startswith(prefix):
                infos.append(_info(key, info))
        return sorted(infos, key=lambda i: i.key)


    def _find_prefix(self, prefix: str) -> dict[str, str]:
        """Arguments that let the filesystem's ``find`` filter by `prefix` itself (none in
        general: the listing below the root is then filtered here)."""
        return {}

    async def close(self) -> None:
        """Nothing to release: fsspec filesystems other than S3 hold no per-store client."""


def _scatter(data: memoryview, start: int, targets: Sequence[tuple[int, memoryview]]) -> ScatterResult:
    """`data` (the object's bytes from `start` on) copied into the targets (no version)."""
    delivered, crcs = 0, []
    for offset, view in targets:
        chunk = data[offset - start : offset - start + len(view)]
        view[: len(chunk)] = chunk
        delivered += len(chunk)
        crcs.append(crc32c(chunk))
    return ScatterResult(delivered, tuple(crcs), "", None)


def _info(key: str, info: dict[str, Any]) -> ObjectInfo:
    """An fsspec info dict as an `ObjectInfo`; the etag is whatever the filesystem offers
    that changes with each version (its ETag, else its time and size)."""
    size, mtime = int(info.get("size") or 0), _mtime(info)
    etag = str(info.get("ETag") or info.get("etag") or info.get("md5") or f"{mtime!r}.{size:x}").strip('"')
    return ObjectInfo(key, size, mtime, etag)


def _mtime(info: dict[str, Any]) -> float:
    for field in ("LastModified", "mtime", "created"):
        value = info.get(field)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, datetime.datetime):
            return value.timestamp()
    return 0.0


GATHER = 1 * 2**20
"""Bytes a writer gathers before handing them to the file object in one write."""


COPY_BLOCK = 8 * 2**20
"""Bytes a writer's `copy` reads at a time (it is not server-side here)."""


class _StreamingWriter(ObjectWriter):
    """Streams into ``<key>.tempstate<random>`` through the filesystem's file object; the
    commit closes it, checks the write's conditions, and moves it over the key."""

    def __init__(self, store: FsspecStore, key: str, exclusive: bool, if_match: str | None) -> None:
        self.key = key
        self._store = store
        self._exclusive = exclusive
        self._if_match = if_match
        self._temp = f"{key}.tempstate{secrets.randbits(64)}"
        self._gathered: builtins.list[bytes] = []
        self._gathered_size = 0
        self._file: Any = None
        self._async_file = False
        self._opened = False  # the temporary name may exist

    async def write(self, data: Buffer, release: Callable[[], None] | None = None) -> None:
        try:
            try:
                self._gathered.append(bytes(data))  # a copy: the caller's buffer is free at once
            finally:
                if release is not None:
                    release()
            self._gathered_size += len(self._gathered[-1])
            if self._gathered_size >= GATHER:
                await self._flush()
        except BaseException as exc:
            await asyncio.shield(self.abort())
            if not isinstance(exc, Exception):
                raise
            raise translate(exc, self._store.describe(self.key)) from exc

    async def copy(self, source: str, start: int, length: int, *, etag: str | None = None) -> None:
        """Not server-side (`server_side_copy` is False): the bytes are read from `source`, a
        block at a time, and written."""
        for at in range(start, start + length, COPY_BLOCK):
            block = bytearray(min(COPY_BLOCK, start + length - at))
            got = await self._store.read_scatter(source, at, [(at, memoryview(block))], etag=etag)
            if got.delivered != len(block):
                raise CorruptCheckpointError(f"{self._store.describe(source)} ended at byte {at + got.delivered}: "
                                             f"it has no bytes [{start}, {start + length}) to copy")
            await self.write(block)

    async def _flush(self) -> None:
        data = b"".join(self._gathered)
        self._gathered, self._gathered_size = [], 0
        fs = self._store.fs
        if self._file is None:
            path = self._store.path(self._temp)
            self._opened = True
            if fs.async_impl:
                try:
                    self._file = await fs.open_async(path, "wb")
                    self._async_file = True
                except NotImplementedError:
                    pass
            if self._file is None:
                self._file = await asyncio.to_thread(fs.open, path, "wb")
        if self._async_file:
            await self._file.write(data)
        else:
            await asyncio.to_thread(self._file.write, data)

    async def _close_file(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            if self._async_file:
                await file.close()
            else:
                await asyncio.to_thread(file.close)

    async def commit(self) -> None:
        store, path = self._store, self._store.path(self.key)
        try:
            streamed = self._file is not None
            if streamed:
                await self._flush()
                await self._close_file()
            if self._exclusive and await store.exists(self.key):
                raise CheckpointExistsError(f"{store.describe(self.key)} already exists")
            if self._if_match is not None:
                head = await store.head(self.key)
                if head is None or head.etag != self._if_match:
                    raise CheckpointChangedError(f"{store.describe(self.key)} is not the version this write expected")
            faults.publishing()
            if streamed:
                await self._move(store.path(self._temp), path)
            else:
                data, self._gathered = b"".join(self._gathered), []
                await store._call("pipe_file", path, data)
            head = await store.head(self.key)
            self.etag = head.etag if head is not None else ""
        except BaseException as exc:
            await asyncio.shield(self.abort())
            if not isinstance(exc, Exception):
                raise
            raise translate(exc, store.describe(self.key)) from exc

    async def _move(self, source: str, target: str) -> None:
        fs = self._store.fs
        if fs.async_impl and hasattr(fs, "_mv_file"):
            await fs._mv_file(source, target)
        else:
            await asyncio.to_thread(fs.mv, source, target)

    async def abort(self) -> None:
        self._gathered = []
        opened, self._opened = self._opened, False
        if not opened:
            return
        try:
            await self._close_file()
        except Exception:
            pass  # the temporary name is removed below all the same
        try:
            await self._store._call("rm_file", self._store.path(self._temp))
        except Exception:
            pass  # gone already, or left for gc like a local temp file after a crash
