"""Any fsspec filesystem, with S3 (s3fs, async) as the first-class case.

Async filesystems (s3fs) are awaited directly on remoteckpt's loop; synchronous ones
(``memory://``, others) run in the default thread pool.  On S3 a writer buffers up to one part
and uploads parts concurrently as a multipart upload (a single PUT for small objects); a commit
is the one request that makes the object visible, create-only (``If-None-Match: *``) when
exclusive.  Elsewhere a writer gathers its chunks and writes them with one ``pipe_file``.
"""

from __future__ import annotations

import builtins

import asyncio
import datetime
import hashlib
import logging
import random
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
import botocore.exceptions

import fsspec

from .. import faults
from ..errors import CheckpointExistsError, CheckpointNotFoundError, StorageError
from ..format.coding import crc32c
from .base import Buffer, ObjectInfo, ObjectWriter, PendingUpload, ScatterResult, Store, StoreCapabilities, too_large
from .errors import translate
from .s3_body import PartBody
from .s3_get import BadResponse, BodyCut, DirectGets, ResponseError, as_builtin

PART_SIZE = 16 * 2**20
"""S3 multipart part size: above S3's 5 MiB minimum, and large enough that per-request
overhead is small next to transfer time on loopback and in-region links."""

MIN_PART_SIZE = 5 * 2**20
"""S3 rejects smaller parts (all but the last) at CompleteMultipartUpload."""

MAX_PARTS_IN_FLIGHT = 4
"""Parts uploading at once per writer: bounds a writer's buffers to 4 x PART_SIZE."""

STREAM_CHUNK = 1 * 2**20
"""Bytes taken from a GET's body at a time: large enough for few event-loop turns, small
enough to stay in cache while it is copied into place."""

INLINE_CRC = 1 * 2**20
"""Below this many bytes a GET's checksums are computed on the event loop: cheaper than the
hop to a worker thread (about 0.1 ms of CRC32C)."""

DISCARD_BUFFER = 64 * 1024
"""Scratch space for body bytes that no target wants (gaps of a coalesced range)."""

READ_ATTEMPTS = 5
"""A GET whose body is cut is resumed from the first missing byte this many times in all
(on top of botocore's own retries of requests that fail before their body)."""

_BODY_ERRORS = (OSError, asyncio.TimeoutError, aiohttp.ClientError, botocore.exceptions.BotoCoreError)
"""What reading a response body raises when the connection is cut or stalls (aiobotocore
wraps some aiohttp errors in botocore's `ResponseStreamingError`, `IncompleteReadError`)."""

log = logging.getLogger("remoteckpt")


async def _pause(attempt: int) -> None:
    """Backoff before re-reading a cut body: 50 ms, 100 ms, ... at most 2 s, with jitter."""
    await asyncio.sleep(min(2.0, 0.05 * 2**attempt) * (0.5 + random.random() / 2))


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


class S3Store(FsspecStore):
    """S3 through s3fs's async API: multipart streaming writes, conditional creates."""

    # A conditional CompleteMultipartUpload is not atomic everywhere: SeaweedFS 4.48 let both
    # of two racing ones succeed in 24 of 40 trials (its plain conditional PUT never did).
    capabilities = StoreCapabilities(atomic_rename=False, conditional_put=True, atomic_streamed_create=False)

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, url: str, *, part_size: int = PART_SIZE,
                 parts_in_flight: int = MAX_PARTS_IN_FLIGHT) -> None:
        super().__init__(fs, root, url)
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"S3 parts must be at least {MIN_PART_SIZE} bytes")
        self.part_size = part_size
        self.parts_in_flight = max(1, parts_in_flight)
        self._direct: DirectGets | None = None
        self._direct_checked = False

    def _find_prefix(self, prefix: str) -> dict[str, str]:
        # ListObjectsV2 filters by key prefix on the server: a save's check for its own claim
        # or data file costs one short listing, however many checkpoints share the directory.
        return {"prefix": prefix} if prefix else {}

    def writer(self, key: str, *, exclusive: bool = False) -> ObjectWriter:
        return _MultipartWriter(self, key, exclusive)

    async def get(self, key: str, *, max_size: int | None = None) -> bytes:
        """One GET (s3fs's `cat_file` would first ask for the size); a body cut short is
        fetched again (the whole object: `get` is for small ones).  `max_size` is checked
        against the answer's Content-Length before the body is read."""
        bucket, path, _ = self.fs.split_path(self.path(key))
        for attempt in range(READ_ATTEMPTS):
            try:
                response = await self.fs._call_s3("get_object", Bucket=bucket, Key=path)
            except Exception as exc:
                raise translate(exc, self.describe(key)) from exc
            body = response["Body"]
            if max_size is not None and int(response.get("ContentLength") or 0) > max_size:
                body.close()
                raise too_large(self.describe(key), int(response["ContentLength"]), max_size)
            try:
                data = bytes(await body.read())  # checks the length against Content-Length
            except _BODY_ERRORS as exc:
                if attempt + 1 == READ_ATTEMPTS:
                    raise translate(exc, self.describe(key)) from exc
                log.debug("GET %s: body cut (%s), fetching again", self.describe(key), type(exc).__name__)
                await _pause(attempt)
                continue
            finally:
                body.close()
            return data
        raise AssertionError("unreachable")

    def __reduce__(self) -> Any:
        # fsspec filesystems pickle their constructor arguments, credentials included.
        raise TypeError(f"{type(self).__name__} cannot be pickled: it holds connections and credentials "
                        "(pickle the prefix and open the store again)")

    async def pending_uploads(self, prefix: str = "") -> builtins.list[PendingUpload]:
        bucket, path, _ = self.fs.split_path(self.path(prefix))
        strip = len(self.fs.split_path(self.path(""))[1])
        uploads: builtins.list[PendingUpload] = []
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
        """One ranged GET into the targets: through `s3_get` where the client allows (the
        socket reads into the targets), else aiobotocore's body copied in as it comes.  A
        connection cut mid-body resumes from the first missing byte.  The targets are
        checksummed once the body is in, in a worker thread (CRC32C releases the GIL), so that
        the event loop, which receives every stream, does only the receiving."""
        end = max((offset + len(view) for offset, view in targets), default=start)
        if end <= start:
            return ScatterResult(0, tuple(0 for _ in targets))
        bucket, path, _ = self.fs.split_path(self.path(key))
        sink = _ScatterSink(start, targets)
        if direct := await self._direct_gets():
            return await self._read_direct(direct, key, bucket, path, sink, end)
        pinned: dict[str, str] = {}  # resumed GETs must read the same version of the object
        for attempt in range(READ_ATTEMPTS):
            try:
                response = await self.fs._call_s3(
                    "get_object", Bucket=bucket, Key=path, Range=f"bytes={sink.position}-{end - 1}", **pinned)
            except Exception as exc:
                if _is_invalid_range(exc):  # starts at or past the end of the object
                    return await sink.finish()
                if pinned and _is_precondition_failure(exc):
                    raise StorageError(f"{self.describe(key)} changed while it was being read") from exc
                raise translate(exc, self.describe(key)) from exc
            if response.get("ETag"):
                pinned = {"IfMatch": response["ETag"]}
            body = response["Body"]
            try:
                while sink.position < end:
                    chunk = await body.read(STREAM_CHUNK)
                    if not chunk:
                        break  # the object is shorter than asked
                    sink.write(chunk)
                return await sink.finish()
            except _BODY_ERRORS as exc:
                if attempt + 1 == READ_ATTEMPTS:
                    raise translate(exc, self.describe(key)) from exc
                log.debug("GET %s: body cut at byte %d (%s), resuming", self.describe(key), sink.position,
                          type(exc).__name__)
                await _pause(attempt)
            finally:
                body.close()
        return await sink.finish()


    async def _direct_gets(self) -> DirectGets | None:
        """The socket-to-buffer reader (`s3_get`), where this store's client allows it."""
        if not self._direct_checked:
            client = await self.fs.set_session()
            self._direct_checked = True
            if DirectGets.usable(client):
                self._direct = DirectGets(client, verify=self.fs.client_kwargs.get("verify"),
                                          max_idle=4 * self.parts_in_flight + 16)
        return self._direct

    async def _read_direct(self, direct: DirectGets, key: str, bucket: str, path: str, sink: _ScatterSink,
                           end: int) -> ScatterResult:
        etag: str | None = None  # resumed GETs must read the same version of the object
        for attempt in range(READ_ATTEMPTS):
            try:
                await direct.get(bucket, path, sink, end, if_match=etag, pause=_pause)
            except BodyCut as exc:
                if attempt + 1 == READ_ATTEMPTS:
                    raise translate(exc, self.describe(key)) from exc
                log.debug("GET %s: body cut at byte %d, resuming", self.describe(key), sink.position)
                etag = exc.etag
                await _pause(attempt)
                continue
            except ResponseError as exc:
                if etag and exc.status == 412:
                    raise StorageError(f"{self.describe(key)} changed while it was being read") from exc
                raise translate(as_builtin(exc), self.describe(key)) from exc
            except (OSError, asyncio.TimeoutError, BadResponse) as exc:
                raise translate(exc, self.describe(key)) from exc
            return await sink.finish()  # 416 or a short body: the object ends before `end`
        raise AssertionError("unreachable")

    async def close(self) -> None:
        if self._direct is not None:
            await self._direct.close()
        await super().close()


class _ScatterSink:
    """Consumes a byte stream that starts at `start`, copying the parts that targets want."""

    def __init__(self, start: int, targets: Sequence[tuple[int, memoryview]]) -> None:
        self.position = start
        self._targets = list(targets)
        self._filled = [0] * len(self._targets)
        self._next = 0
        self._discard: memoryview | None = None

    async def finish(self) -> ScatterResult:
        """`result`, computed in a worker thread unless it is little work."""
        if sum(self._filled) < INLINE_CRC:
            return self.result()
        return await asyncio.to_thread(self.result)

    def result(self) -> ScatterResult:
        """Bytes delivered, and each target's CRC32C over what it received."""
        crcs = tuple(crc32c(view[:n]) if n else 0 for (_, view), n in zip(self._targets, self._filled))
        return ScatterResult(sum(self._filled), crcs)

    def next_buffer(self, limit: int) -> memoryview:
        """Where the stream's next bytes (at most `limit`) go: the target they belong to, or
        scratch space for bytes between targets and after the last one."""
        while self._next < len(self._targets):
            offset, view = self._targets[self._next]
            if self.position >= offset + len(view):
                self._next += 1
                continue
            if self.position >= offset:
                return view[self.position - offset : self.position - offset + limit]
            return self._scratch()[: min(limit, offset - self.position)]
        return self._scratch()[:limit]

    def advance(self, count: int) -> None:
        """`count` bytes were written into the view `next_buffer` gave."""
        if self._next < len(self._targets):
            offset, view = self._targets[self._next]
            if offset <= self.position:
                self._filled[self._next] += count
                if self.position + count == offset + len(view):
                    self._next += 1
        self.position += count

    def _scratch(self) -> memoryview:
        if self._discard is None:
            self._discard = memoryview(bytearray(DISCARD_BUFFER))
        return self._discard

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
            data, self.position = data[take:], self.position + take
            self._filled[self._next] += take
            if self.position == end:
                self._next += 1
        self.position += len(data)


def _is_invalid_range(exc: BaseException) -> bool:
    text = f"{exc} {getattr(exc, '__cause__', '')}"
    return "InvalidRange" in text or "416" in text


class _MultipartWriter(ObjectWriter):
    """One S3 object: a single PUT when it fits in one part, else a multipart upload.

    Requests are retried by botocore (see `url._s3_options`); what a retry cannot settle by
    itself is settled here:
      - a commit whose acknowledgement was lost (the retried PUT or CompleteMultipartUpload
        answers PreconditionFailed or NoSuchUpload, because the first one DID land) is
        recognised by the object's ETag, which S3 derives from our bytes (MD5, or MD5 of the
        parts' MD5s): ours is a success, anything else is the other writer's;
      - a CreateMultipartUpload that was retried may have created an upload whose id we
        never heard of: after the commit or abort, uploads of this key begun by this writer
        (since it started) other than ours are aborted;
      - a failed writer aborts its upload, so no parts are left to pay for.
    """

    def __init__(self, store: S3Store, key: str, exclusive: bool) -> None:
        self.key = key
        self._store = store
        self._exclusive = exclusive
        self._bucket, self._key, _ = store.fs.split_path(store.path(key))
        self._pending: builtins.list[Buffer] = []
        self._pending_size = 0
        self._upload_id: str | None = None
        self._part_size = store.part_size
        self._next_part = 1
        self._written = 0
        self._parts: dict[int, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(store.parts_in_flight)
        self._closed = False
        self._started = time.time()
        self._stray_uploads = False
        self._expected_etag: str | None = None

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
        # Sent from the caller's buffers as they are: no part is ever copied (see s3_body).
        body = PartBody(self._pending)
        self._pending, self._pending_size = [], 0
        try:
            if self._upload_id is None:
                mpu = await self._store.fs._call_s3("create_multipart_upload", Bucket=self._bucket, Key=self._key)
                self._upload_id = mpu["UploadId"]
                if mpu.get("ResponseMetadata", {}).get("RetryAttempts"):
                    self._stray_uploads = True  # an earlier attempt may have created one too
        except Exception as exc:
            if self._upload_id is None:
                self._stray_uploads = True  # an attempt whose answer was lost may have created one
            await self.abort()
            raise translate(exc, self._store.describe(self.key)) from exc
        number, self._next_part = self._next_part, self._next_part + 1
        await self._slots.acquire()
        self._raise_failed()
        task = asyncio.ensure_future(self._upload_part(number, body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _upload_part(self, number: int, body: PartBody) -> None:
        try:
            body.seek(0)
            out = await self._store.fs._call_s3(
                "upload_part", Bucket=self._bucket, Key=self._key, UploadId=self._upload_id,
                PartNumber=number, Body=body)
            self._parts[number] = out["ETag"]
        finally:
            self._slots.release()

    def _raise_failed(self) -> None:
        for task in list(self._tasks):
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise translate(task.exception(), self._store.describe(self.key)) from task.exception()  # type: ignore[misc]

    async def commit(self) -> None:
        match = {"IfNoneMatch": "*"} if self._exclusive else {}
        fs = self._store.fs
        try:
            try:
                if self._upload_id is None:
                    body = PartBody(self._pending)  # one small object: a single PUT
                    self._pending = []
                    digest = hashlib.md5(usedforsecurity=False)
                    for view in body.views:
                        digest.update(view)
                    self._expected_etag = digest.hexdigest()
                    faults.publishing()
                    await fs._call_s3("put_object", Bucket=self._bucket, Key=self._key, Body=body if len(body) else b"",
                                      **match)
                else:
                    if self._pending_size:
                        await self._upload_pending()
                    await asyncio.gather(*self._tasks)
                    parts = [{"PartNumber": n, "ETag": self._parts[n]} for n in sorted(self._parts)]
                    if len(parts) != self._next_part - 1:
                        raise RuntimeError(f"{self._next_part - 1 - len(parts)} uploaded parts are missing")
                    self._expected_etag = _multipart_etag([p["ETag"] for p in parts])
                    faults.publishing()
                    await fs._call_s3(
                        "complete_multipart_upload", Bucket=self._bucket, Key=self._key,
                        UploadId=self._upload_id, MultipartUpload={"Parts": parts}, **match)
                    # CompleteMultipartUpload can answer 200 with an error body: check what landed.
                    head = await fs._call_s3("head_object", Bucket=self._bucket, Key=self._key)
                    if head["ContentLength"] != self._written:
                        raise RuntimeError(
                            f"multipart upload stored {head['ContentLength']} bytes, {self._written} were written")
            except Exception as exc:
                if (_is_precondition_failure(exc) or _is_no_such_upload(exc)) and await self._landed():
                    log.info("%s: the commit's acknowledgement was lost, but the object holds our bytes",
                             self._store.describe(self.key))
                else:
                    raise
            self._closed = True
        except Exception as exc:
            await self.abort()
            if self._exclusive and _is_precondition_failure(exc):
                raise CheckpointExistsError(f"{self._store.describe(self.key)} already exists") from exc
            raise translate(exc, self._store.describe(self.key)) from exc
        finally:
            fs.invalidate_cache(self._store.path(self.key))
            await self._abort_strays()

    async def _landed(self) -> bool:
        """Whether the object at our key is the one this writer committed (its ETag, and
        size, are those of our bytes)."""
        if self._expected_etag is None:
            return False
        try:
            head = await self._store.fs._call_s3("head_object", Bucket=self._bucket, Key=self._key)
        except Exception:
            return False
        return head.get("ETag", "").strip('"') == self._expected_etag and head.get("ContentLength") == self._written

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
            except Exception as exc:
                if not _is_no_such_upload(exc):  # gone already: completed, or aborted by a retry
                    log.warning("could not abort the upload of %s (remoteckpt.gc will): %s",
                                self._store.describe(self.key), type(exc).__name__)
        await self._abort_strays()

    async def _abort_strays(self) -> None:
        """Abort uploads of our key that a retried CreateMultipartUpload may have begun."""
        if not self._stray_uploads:
            return
        self._stray_uploads = False
        try:
            page = await self._store.fs._call_s3("list_multipart_uploads", Bucket=self._bucket, Prefix=self._key)
            for upload in page.get("Uploads", []):
                initiated = upload.get("Initiated")
                began = initiated.timestamp() if initiated else 0.0
                if (upload["Key"] == self._key and upload["UploadId"] != self._upload_id
                        and began >= self._started - 5.0):  # 5 s: clocks of client and server
                    await self._store.fs._call_s3("abort_multipart_upload", Bucket=self._bucket, Key=self._key,
                                                  UploadId=upload["UploadId"])
        except Exception as exc:
            log.warning("could not clear stray uploads of %s (remoteckpt.gc will): %s",
                        self._store.describe(self.key), type(exc).__name__)


def _multipart_etag(part_etags: builtins.list[str]) -> str:
    """S3's ETag of a completed multipart upload: MD5 of the parts' binary MD5s, "-" count."""
    digest = hashlib.md5(b"".join(bytes.fromhex(e.strip('"')) for e in part_etags), usedforsecurity=False)
    return f"{digest.hexdigest()}-{len(part_etags)}"


def _is_no_such_upload(exc: BaseException) -> bool:
    text = f"{exc} {getattr(exc, '__cause__', '')}"
    return "NoSuchUpload" in text


def _is_precondition_failure(exc: BaseException) -> bool:
    if isinstance(exc, FileExistsError):
        return True
    text = f"{exc} {getattr(exc, '__cause__', '')}"
    return "PreconditionFailed" in text or "412" in text or "At least one of the pre-conditions" in text
