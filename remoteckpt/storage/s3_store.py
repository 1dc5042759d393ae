"""S3 through s3fs's async API: the store, its ranged reads, and what settles a cut body.

Reads go out as ranged GETs, straight into the caller's buffers: on our own connections
(s3_get.py) where the endpoint is plain HTTP(S) without a proxy, else through aiobotocore.  A
body cut mid-transfer is resumed from its first missing byte with ``If-Match`` on the ETag, so
a resumed read never mixes two versions of an object.  Writes are s3_upload.py's.
"""

from __future__ import annotations

import builtins

import asyncio
import logging
import random
from collections.abc import Sequence
from typing import Any

import aiohttp
import botocore.exceptions
import fsspec

from ..errors import StorageError
from ..format.coding import crc32c
from .base import ObjectWriter, PendingUpload, ScatterResult, StoreCapabilities, too_large
from .errors import translate
from .fsspec_store import FsspecStore
from .s3_get import BadResponse, BodyCut, DirectGets, ResponseError, as_builtin
from .s3_upload import MAX_PARTS_IN_FLIGHT, MIN_PART_SIZE, PART_SIZE, S3Writer, is_precondition_failure

log = logging.getLogger("remoteckpt")

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


async def _pause(attempt: int) -> None:
    """Backoff before re-reading a cut body: 50 ms, 100 ms, ... at most 2 s, with jitter."""
    await asyncio.sleep(min(2.0, 0.05 * 2**attempt) * (0.5 + random.random() / 2))



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
        return S3Writer(self, key, exclusive)

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
                if pinned and is_precondition_failure(exc):
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
