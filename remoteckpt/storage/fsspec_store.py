"""Any fsspec filesystem: the generic backend, and the base of S3 (s3_store.py).

Async filesystems (s3fs) are awaited directly on remoteckpt's loop; synchronous ones
(``memory://``, others) run in the default thread pool.  A writer gathers its chunks and writes
them with one ``pipe_file`` at commit (create-only by an existence check, which is all a
generic filesystem offers; S3 overrides the writer with real conditional requests).
"""

from __future__ import annotations

import builtins

import asyncio
import datetime
from collections.abc import Sequence
from typing import Any

import fsspec

from .. import faults
from ..errors import CheckpointExistsError, CheckpointNotFoundError
from ..format.coding import crc32c
from .base import Buffer, ObjectInfo, ObjectWriter, ScatterResult, Store, StoreCapabilities, too_large
from .errors import translate


class FsspecStore(Store):
    """Objects under `root` on fsspec filesystem `fs`."""

    capabilities = StoreCapabilities(atomic_rename=False, conditional_put=False, atomic_streamed_create=False)

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

    async def size(self, key: str) -> int:
        try:
            info = await self._call("info", self.path(key))
        except Exception as exc:
            raise translate(exc, self.describe(key)) from exc
        if info.get("type") == "directory":
            raise CheckpointNotFoundError(f"{self.describe(key)}: no such file or object")
        return int(info["size"])

    async def exists(self, key: str) -> bool:
        try:
            return bool(await self._call("exists", self.path(key)))
        except Exception as exc:
            raise translate(exc, self.describe(key)) from exc

    async def get(self, key: str, *, max_size: int | None = None) -> bytes:
        if max_size is not None and (size := await self.size(key)) > max_size:
            raise too_large(self.describe(key), size, max_size)
        try:
            return bytes(await self._call("cat_file", self.path(key)))
        except Exception as exc:
            raise translate(exc, self.describe(key)) from exc

    async def read_scatter(self, key: str, start: int, targets: Sequence[tuple[int, memoryview]]) -> ScatterResult:
        end = max((offset + len(view) for offset, view in targets), default=start)
        if end <= start:  # an empty range would fetch the whole object on S3
            return ScatterResult(0, tuple(0 for _ in targets))
        try:
            data = await self._call("cat_file", self.path(key), start=start, end=end)
        except Exception as exc:
            raise translate(exc, self.describe(key)) from exc
        return _scatter(memoryview(data), start, targets)

    def writer(self, key: str, *, exclusive: bool = False) -> ObjectWriter:
        return _BufferedWriter(self, key, exclusive)

    async def delete(self, key: str) -> None:
        try:
            await self._call("rm_file", self.path(key))
        except FileNotFoundError:
            pass
        except Exception as exc:
            raise translate(exc, self.describe(key)) from exc

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
                infos.append(ObjectInfo(key, int(info.get("size") or 0), _mtime(info)))
        return sorted(infos, key=lambda i: i.key)


    def _find_prefix(self, prefix: str) -> dict[str, str]:
        """Arguments that let the filesystem's ``find`` filter by `prefix` itself (none in
        general: the listing below the root is then filtered here)."""
        return {}

    async def close(self) -> None:
        creator = getattr(self.fs, "_s3creator", None)  # s3fs's client holder; others hold none
        if creator is not None:
            self.fs._s3creator = None
            await creator.__aexit__(None, None, None)


def _scatter(data: memoryview, start: int, targets: Sequence[tuple[int, memoryview]]) -> ScatterResult:
    delivered, crcs = 0, []
    for offset, view in targets:
        chunk = data[offset - start : offset - start + len(view)]
        view[: len(chunk)] = chunk
        delivered += len(chunk)
        crcs.append(crc32c(chunk))
    return ScatterResult(delivered, tuple(crcs))


def _mtime(info: dict[str, Any]) -> float:
    for field in ("LastModified", "mtime", "created"):
        value = info.get(field)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, datetime.datetime):
            return value.timestamp()
    return 0.0


class _BufferedWriter(ObjectWriter):
    """Gathers chunks, writes them with one pipe_file at commit (non-S3 filesystems)."""

    def __init__(self, store: FsspecStore, key: str, exclusive: bool) -> None:
        self.key = key
        self._store = store
        self._exclusive = exclusive
        self._chunks: builtins.list[bytes] = []

    async def write(self, data: Buffer) -> None:
        self._chunks.append(bytes(data))

    async def commit(self) -> None:
        store, path = self._store, self._store.path(self.key)
        if self._exclusive and await store.exists(self.key):
            raise CheckpointExistsError(f"{store.describe(self.key)} already exists")
        try:
            faults.publishing()
            await store._call("pipe_file", path, b"".join(self._chunks))
        except Exception as exc:
            raise translate(exc, store.describe(self.key)) from exc
        finally:
            self._chunks = []

    async def abort(self) -> None:
        self._chunks = []

