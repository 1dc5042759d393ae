"""Any fsspec filesystem, with S3 (s3fs, async) as the first-class case.

Async filesystems (s3fs) are awaited directly on remoteckpt's loop; synchronous ones
(``memory://``, others) run in the default thread pool.  On S3 a writer buffers up to one part
and uploads parts concurrently as a multipart upload (a single PUT for small objects); a commit
is the one request that makes the object visible, create-only (``If-None-Match: *``) when
exclusive.  Elsewhere a writer gathers its chunks and writes them with one ``pipe_file``.
"""

from __future__ import annotations

import asyncio
import datetime
import io
from collections.abc import Sequence
from typing import Any

import aiohttp

import fsspec

from ..errors import CheckpointExistsError, CheckpointNotFoundError
from ..format.coding import crc32c
from .base import Buffer, ObjectInfo, ObjectWriter, PendingUpload, ScatterResult, Store, StoreCapabilities
from .errors import translate

PART_SIZE = 16 * 2**20
"""S3 multipart part size: above S3's 5 MiB minimum, and large enough that per-request
overhead is small next to transfer time on loopback and in-region links."""

MIN_PART_SIZE = 5 * 2**20
"""S3 rejects smaller parts (all but the last) at CompleteMultipartUpload."""

MAX_PARTS_IN_FLIGHT = 4

STREAM_CHUNK = 1 * 2**20
"""Bytes taken from a GET's body at a time: large enough for few event-loop turns, small
enough to stay in cache while it is copied into place."""

READ_ATTEMPTS = 3
"""A GET whose body is cut is resumed from the first missing byte this many times in all."""
"""Parts uploading at once per writer: bounds a writer's buffers to 4 x PART_SIZE."""


class FsspecStore(Store):
    """Objects under `root` on fsspec filesystem `fs`."""

    capabilities = StoreCapabilities(atomic_rename=False, conditional_put=False)

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

    async def get(self, key: str) -> bytes:
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

    async def list(self, prefix: str = "") -> list[str]:
        return [info.key for info in await self.list_info(prefix)]

    async def list_info(self, prefix: str = "") -> list[ObjectInfo]:
        base = self.path("")
        try:
            found = await self._call("find", base.rstrip("/") or "/", withdirs=False, detail=True)
        except FileNotFoundError:
            return []
        except Exception as exc:
            raise translate(exc, self.url) from exc
        infos = []
        strip = len(base)
        for path, info in found.items():
            key = path[strip:] if path.startswith(base) else path
            if key.startswith(prefix):
                infos.append(ObjectInfo(key, int(info.get("size") or 0), _mtime(info)))
        return sorted(infos, key=lambda i: i.key)


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
        self._chunks: list[bytes] = []

    async def write(self, data: Buffer) -> None:
        self._chunks.append(bytes(data))

    async def commit(self) -> None:
        store, path = self._store, self._store.path(self.key)
        if self._exclusive and await store.exists(self.key):
            raise CheckpointExistsError(f"{store.describe(self.key)} already exists")
        try:
            await store._call("pipe_file", path, b"".join(self._chunks))
        except Exception as exc:
            raise translate(exc, store.describe(self.key)) from exc
        finally:
            self._chunks = []

    async def abort(self) -> None:
        self._chunks = []


class S3Store(FsspecStore):
    """S3 through s3fs's async API: multipart streaming writes, conditional creates."""

    capabilities = StoreCapabilities(atomic_rename=False, conditional_put=True)

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, url: str, *, part_size: int = PART_SIZE,
                 parts_in_flight: int = MAX_PARTS_IN_FLIGHT) -> None:
        super().__init__(fs, root, url)
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"S3 parts must be at least {MIN_PART_SIZE} bytes")
        self.part_size = part_size
        self.parts_in_flight = max(1, parts_in_flight)

    def writer(self, key: str, *, exclusive: bool = False) -> ObjectWriter:
        return _MultipartWriter(self, key, exclusive)

    async def get(self, key: str) -> bytes:
        """One GET (s3fs's `cat_file` would first ask for the size)."""
        bucket, path, _ = self.fs.split_path(self.path(key))
        try:
            response = await self.fs._call_s3("get_object", Bucket=bucket, Key=path)
            try:
                return bytes(await response["Body"].read())
            finally:
                response["Body"].close()
        except Exception as exc:
            raise translate(exc, self.describe(key)) from exc

    async def pending_uploads(self, prefix: str = "") -> list[PendingUpload]:
        bucket, path, _ = self.fs.split_path(self.path(prefix))
        strip = len(self.fs.split_path(self.path(""))[1])
        uploads: list[PendingUpload] = []
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": path}
        try:
            while True:
                page = await self.fs._call_s3("list_multipart_uploads", **kwargs)
                for u in page.get("Uploads", []):
                    initiated = u.get("Initiated")
                    uploads.append(PendingUpload(u["Key"][strip:], u["UploadId"],
                                                 initiated.timestamp() if initiated else 0.0))
                if not page.get("IsTruncated"):
                    return uploads
                kwargs.update(KeyMarker=page.get("NextKeyMarker"), UploadIdMarker=page.get("NextUploadIdMarker"))
        except Exception as exc:
            raise translate(exc, self.describe(prefix)) from exc

    async def abort_upload(self, upload: PendingUpload) -> None:
        bucket, path, _ = self.fs.split_path(self.path(upload.key))
        try:
            await self.fs._call_s3("abort_multipart_upload", Bucket=bucket, Key=path, UploadId=upload.upload_id)
        except Exception as exc:
            raise translate(exc, self.describe(upload.key)) from exc

    async def read_scatter(self, key: str, start: int, targets: Sequence[tuple[int, memoryview]]) -> ScatterResult:
        """One ranged GET, its body streamed straight into the targets (one copy, from the
        socket buffer, checksummed as it is copied); a connection cut mid-body resumes from
        the first missing byte."""
        end = max((offset + len(view) for offset, view in targets), default=start)
        if end <= start:
            return ScatterResult(0, tuple(0 for _ in targets))
        bucket, path, _ = self.fs.split_path(self.path(key))
        sink = _ScatterSink(start, targets)
        for attempt in range(READ_ATTEMPTS):
            try:
                response = await self.fs._call_s3(
                    "get_object", Bucket=bucket, Key=path, Range=f"bytes={sink.position}-{end - 1}")
            except Exception as exc:
                if _is_invalid_range(exc):  # starts at or past the end of the object
                    return sink.result()
                raise translate(exc, self.describe(key)) from exc
            body = response["Body"]
            try:
                while sink.position < end:
                    chunk = await body.read(STREAM_CHUNK)
                    if not chunk:
                        return sink.result()  # the object is shorter than asked
                    sink.write(chunk)
                return sink.result()
            except (OSError, asyncio.TimeoutError, aiohttp.ClientError) as exc:
                if attempt + 1 == READ_ATTEMPTS:
                    raise translate(exc, self.describe(key)) from exc
            finally:
                body.close()
        return sink.result()


class _ScatterSink:
    """Consumes a byte stream that starts at `start`, copying the parts that targets want."""

    def __init__(self, start: int, targets: Sequence[tuple[int, memoryview]]) -> None:
        self.position = start
        self.delivered = 0
        self._targets = list(targets)
        self._crcs = [0] * len(self._targets)
        self._next = 0

    def result(self) -> ScatterResult:
        return ScatterResult(self.delivered, tuple(self._crcs))

    def write(self, chunk: bytes) -> None:
        data = memoryview(chunk)
        while len(data) and self._next < len(self._targets):
            offset, view = self._targets[self._next]
            end = offset + len(view)
            if self.position < offset:  # a gap between targets: discard
                skip = min(len(data), offset - self.position)
                data, self.position = data[skip:], self.position + skip
                continue
            take = min(len(data), end - self.position)
            view[self.position - offset : self.position - offset + take] = data[:take]
            self._crcs[self._next] = crc32c(data[:take], self._crcs[self._next])
            data, self.position, self.delivered = data[take:], self.position + take, self.delivered + take
            if self.position == end:
                self._next += 1
        self.position += len(data)


def _is_invalid_range(exc: BaseException) -> bool:
    text = f"{exc} {getattr(exc, '__cause__', '')}"
    return "InvalidRange" in text or "416" in text


class _MultipartWriter(ObjectWriter):
    def __init__(self, store: S3Store, key: str, exclusive: bool) -> None:
        self.key = key
        self._store = store
        self._exclusive = exclusive
        self._bucket, self._key, _ = store.fs.split_path(store.path(key))
        self._pending: list[Buffer] = []
        self._pending_size = 0
        self._upload_id: str | None = None
        self._part_size = store.part_size
        self._next_part = 1
        self._written = 0
        self._parts: dict[int, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(store.parts_in_flight)
        self._closed = False

    async def write(self, data: Buffer) -> None:
        view = memoryview(data).cast("B")
        while len(view):
            take = min(len(view), self._part_size - self._pending_size)
            self._pending.append(view[:take])  # a view: copied only if a part spans buffers
            self._pending_size += take
            self._written += take
            view = view[take:]
            if self._pending_size == self._part_size:
                await self._upload_pending()

    async def _upload_pending(self) -> None:
        # A part inside one buffer is sent from it directly; only parts spanning buffers
        # (small tensors packed together) are joined, a copy charged to parts_in_flight.
        body: Any = _ViewFile(self._pending[0]) if len(self._pending) == 1 else b"".join(self._pending)
        self._pending, self._pending_size = [], 0
        try:
            if self._upload_id is None:
                mpu = await self._store.fs._call_s3("create_multipart_upload", Bucket=self._bucket, Key=self._key)
                self._upload_id = mpu["UploadId"]
        except Exception as exc:
            await self.abort()
            raise translate(exc, self._store.describe(self.key)) from exc
        number, self._next_part = self._next_part, self._next_part + 1
        await self._slots.acquire()
        self._raise_failed()
        task = asyncio.ensure_future(self._upload_part(number, body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _upload_part(self, number: int, body: Any) -> None:
        try:
            out = await self._store.fs._call_s3(
                "upload_part", Bucket=self._bucket, Key=self._key, UploadId=self._upload_id,
                PartNumber=number, Body=body)
            self._parts[number] = out["ETag"]
        finally:
            self._slots.release()

    def _raise_failed(self) -> None:
        for task in list(self._tasks):
            if task.done() and task.exception() is not None:
                raise translate(task.exception(), self._store.describe(self.key)) from task.exception()  # type: ignore[misc]

    async def commit(self) -> None:
        match = {"IfNoneMatch": "*"} if self._exclusive else {}
        fs = self._store.fs
        try:
            if self._upload_id is None:
                body = b"".join(self._pending)  # one small object: a single PUT
                self._pending = []
                await fs._call_s3("put_object", Bucket=self._bucket, Key=self._key, Body=body, **match)
            else:
                if self._pending_size:
                    await self._upload_pending()
                await asyncio.gather(*self._tasks)
                parts = [{"PartNumber": n, "ETag": self._parts[n]} for n in sorted(self._parts)]
                if len(parts) != self._next_part - 1:
                    raise RuntimeError(f"{self._next_part - 1 - len(parts)} uploaded parts are missing")
                await fs._call_s3(
                    "complete_multipart_upload", Bucket=self._bucket, Key=self._key,
                    UploadId=self._upload_id, MultipartUpload={"Parts": parts}, **match)
                # CompleteMultipartUpload can answer 200 with an error body: check what landed.
                head = await fs._call_s3("head_object", Bucket=self._bucket, Key=self._key)
                if head["ContentLength"] != self._written:
                    raise RuntimeError(
                        f"multipart upload stored {head['ContentLength']} bytes, {self._written} were written")
            self._closed = True
        except Exception as exc:
            await self.abort()
            if self._exclusive and _is_precondition_failure(exc):
                raise CheckpointExistsError(f"{self._store.describe(self.key)} already exists") from exc
            raise translate(exc, self._store.describe(self.key)) from exc
        finally:
            fs.invalidate_cache(self._store.path(self.key))

    async def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._pending = []
        if self._upload_id is not None:
            try:
                await self._store.fs._call_s3(
                    "abort_multipart_upload", Bucket=self._bucket, Key=self._key, UploadId=self._upload_id)
            except Exception:
                pass  # `remoteckpt.gc` lists and aborts stale uploads


class _ViewFile(io.RawIOBase):
    """A seekable read-only file over a memoryview: botocore takes bytes or files, not views,
    and a file lets it stream (and rewind for a retry) without copying the buffer first."""

    def __init__(self, view: Buffer) -> None:
        super().__init__()
        self._view = memoryview(view).cast("B")
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = max(0, min(len(buffer), len(self._view) - self._pos))
        buffer[:n] = self._view[self._pos : self._pos + n]
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos


def _is_precondition_failure(exc: BaseException) -> bool:
    if isinstance(exc, FileExistsError):
        return True
    text = f"{exc} {getattr(exc, '__cause__', '')}"
    return "PreconditionFailed" in text or "412" in text or "At least one of the pre-conditions" in text
