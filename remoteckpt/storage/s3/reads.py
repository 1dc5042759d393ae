"""Ranged GETs of S3 objects into the caller's buffers, resumed when a body is cut.

    read_range(...)   one range of one object into a `ScatterSink`: on the store's own
                      connections (`direct`, the socket writes into the targets) where the
                      endpoint is plain HTTP(S) without a proxy, else through aiobotocore
                      (its body copied in as it comes)
    read_object(...)  a whole small object (records, worker tables, an index) on the direct
                      path: a coordinator fetches thousands of reports, and botocore's request
                      path costs about three times the CPU of a presigned GET on a kept socket

A body cut mid-transfer is resumed from its first missing byte with ``If-Match`` on the ETag
of the bytes already received, so a resumed read never mixes two versions of an object; a
caller that pins a version (`etag`) gets `CheckpointChangedError` if the object is no longer
it (a 412, or an answer naming another ETag: some servers ignore ``If-Match``).  An answer
must be the range asked for: a 206 whose Content-Range starts elsewhere, or a 200 carrying
more than the range (a server that ignored the Range header), is refused.

Every read reports the version it read (the answer's ETag) and the object's size (after the
slash of a 206's Content-Range, a 200's length, or a 416's ``bytes */N``): the caller pins its
later reads of the object to the first one's and refuses a range past the end by the size.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from typing import Any

import aiohttp
import botocore.exceptions

from ...errors import CheckpointChangedError, StorageError
from ...format.coding import crc32c
from ..base import ScatterResult, StoredObject, too_large
from ..errors import ResponseError, is_invalid_range, is_precondition_failed, translate
from .client import S3Client, quoted
from .direct import BadResponse, BodyCut, DirectGets, check_range

log = logging.getLogger("remoteckpt")

STREAM_CHUNK = 1 * 2**20
"""Bytes taken from an aiobotocore body at a time: large enough for few event-loop turns,
small enough to stay in cache while it is copied into place."""

INLINE_CRC = 1 * 2**20
"""Below this many bytes a GET's checksums are computed on the event loop: cheaper than the
hop to a worker thread (about 0.1 ms of CRC32C)."""

DISCARD_BUFFER = 64 * 1024
"""Scratch space for body bytes that no target wants (gaps of a coalesced range)."""

FIRST_GET = 256 * 1024
"""Bytes the first GET of a whole object asks for: a record or a worker's table (a few KiB)
takes one request; a bigger object takes a second GET for the rest, pinned to the first's
ETag (both read into one buffer, as large as the object)."""

READ_ATTEMPTS = 5
"""A GET whose body is cut is resumed from the first missing byte this many times in all
(on top of botocore's own retries of requests that fail before their body)."""

BODY_ERRORS = (OSError, asyncio.TimeoutError, aiohttp.ClientError, botocore.exceptions.BotoCoreError)
"""What reading a response body raises when the connection is cut or stalls (aiobotocore
wraps some aiohttp errors in botocore's `ResponseStreamingError`, `IncompleteReadError`)."""


async def pause(attempt: int) -> None:
    """Backoff before re-reading a cut body: 50 ms, 100 ms, ... at most 2 s, with jitter."""
    await asyncio.sleep(min(2.0, 0.05 * 2**attempt) * (0.5 + random.random() / 2))


class ScatterSink:
    """Consumes a byte stream that starts at `start`, copying the parts that targets want."""

    def __init__(self, start: int, targets: Sequence[tuple[int, memoryview]]) -> None:
        self.position = start
        self._targets = list(targets)
        self._filled = [0] * len(self._targets)
        self._next = 0
        self._discard: memoryview | None = None
        self.etag = ""
        """The version the bytes came from (unquoted), once an answer named it."""
        self.size: int | None = None
        """The whole object's length, once an answer stated it."""

    def answered(self, etag: str | None, size: int | None) -> None:
        """Record what an answer said of the object's version and size (what it left out
        keeps what an earlier answer said)."""
        if etag:
            self.etag = etag.strip('"')
        if size is not None:
            self.size = size

    async def finish(self) -> ScatterResult:
        """`result`, computed in a worker thread unless it is little work."""
        if sum(self._filled) < INLINE_CRC:
            return self.result()
        return await asyncio.to_thread(self.result)

    def result(self) -> ScatterResult:
        """Bytes delivered, and each target's CRC32C over what it received."""
        crcs = tuple(crc32c(view[:n]) if n else 0 for (_, view), n in zip(self._targets, self._filled))
        return ScatterResult(sum(self._filled), crcs, self.etag, self.size)

    def next_buffer(self, limit: int) -> memoryview:
        """Where the stream's next bytes (at most `limit`, at least 1) go: the target they
        belong to, or scratch space for bytes between targets and after the last one."""
        limit = max(1, limit)
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


async def read_range(client: S3Client, direct: DirectGets | None, bucket: str, key: str, what: str,
                     sink: ScatterSink, end: int, etag: str | None) -> ScatterResult:
    """Bytes ``[sink.position, end)`` of `key` into `sink`, pinned to version `etag` if given
    (`what` names the object in errors)."""
    if direct is not None:
        return await _read_direct(direct, bucket, key, what, sink, end, etag)
    pinned = etag
    for attempt in range(READ_ATTEMPTS):
        start = sink.position
        params: dict[str, Any] = {"IfMatch": quoted(pinned)} if pinned else {}
        try:
            response = await client.call("get_object", Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}",
                                         **params)
        except Exception as exc:
            if is_invalid_range(exc):  # starts at or past the end of the object
                sink.answered(None, _stated_size(416, _error_header(exc, "content-range"), 0))
                return await sink.finish()
            if pinned and is_precondition_failed(exc):
                raise _changed(what) from exc
            raise translate(exc, what) from exc
        body = response["Body"]
        status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        content_range = str(response.get("ContentRange") or "")
        length = int(response.get("ContentLength") or 0)
        try:
            check_range(status, content_range, length, start, end - start)
            answered = str(response.get("ETag") or "").strip('"')
            if pinned and answered and answered != pinned:  # a server that ignored If-Match
                raise _changed(what)
        except BadResponse as exc:
            body.close()
            raise StorageError(f"{what}: {exc}") from exc
        except CheckpointChangedError:
            body.close()
            raise
        sink.answered(answered, _stated_size(status, content_range, length))
        if answered:
            pinned = answered
        try:
            while sink.position < end:
                chunk = await body.read(STREAM_CHUNK)
                if not chunk:
                    break  # the object is shorter than asked
                sink.write(chunk)
            return await sink.finish()
        except BODY_ERRORS as exc:
            if attempt + 1 == READ_ATTEMPTS:
                raise translate(exc, what) from exc
            log.debug("GET %s: body cut at byte %d (%s), resuming", what, sink.position, type(exc).__name__)
            await pause(attempt)
        finally:
            body.close()
    return await sink.finish()


async def _read_direct(direct: DirectGets, bucket: str, key: str, what: str, sink: ScatterSink, end: int,
                       etag: str | None) -> ScatterResult:
    pinned = quoted(etag) if etag else None
    for attempt in range(READ_ATTEMPTS):
        try:
            status, headers = await direct.get(bucket, key, sink, end, if_match=pinned, pause=pause)
        except BodyCut as exc:
            if attempt + 1 == READ_ATTEMPTS:
                raise translate(exc, what) from exc
            log.debug("GET %s: body cut at byte %d, resuming", what, sink.position)
            pinned = exc.etag
            await pause(attempt)
            continue
        except ResponseError as exc:
            if pinned and exc.status == 412:
                raise _changed(what) from exc
            raise translate(exc, what) from exc
        except (OSError, asyncio.TimeoutError, BadResponse) as exc:
            raise translate(exc, what) from exc
        answered = headers.get("etag", "").strip('"')
        if pinned and answered and answered != pinned.strip('"'):  # a server that ignored If-Match
            raise _changed(what)
        sink.answered(answered, _stated_size(status, headers.get("content-range", ""),
                                             int(headers.get("content-length") or 0)))
        return await sink.finish()  # 416 or a short body: the object ends before `end`
    raise AssertionError("unreachable")


async def read_object(direct: DirectGets, bucket: str, key: str, what: str, max_size: int | None
                      ) -> StoredObject | None:
    """The whole of `key` and its ETag by direct GETs (see `FIRST_GET`); None for an object that
    answers a range with 416 (an empty one), which the caller reads through aiobotocore.  An
    object replaced between the two GETs of a large one, or a body cut short, is read again
    from the start; more than `max_size` bytes raise before the rest is fetched."""
    first = FIRST_GET if max_size is None else min(FIRST_GET, max_size + 1)
    for attempt in range(READ_ATTEMPTS):
        buffer = bytearray(first)
        sink = ScatterSink(0, [(0, memoryview(buffer))])
        try:
            status, headers = await direct.get(bucket, key, sink, first, if_match=None, pause=pause)
            if status == 416:
                return None
            etag = headers.get("etag", "")
            total = _object_size(status, headers, sink.position)
            if max_size is not None and total > max_size:
                raise too_large(what, total, max_size)
            if total > sink.position:
                whole = bytearray(total)
                whole[: sink.position] = buffer[: sink.position]
                buffer, sink = whole, ScatterSink(sink.position, [(0, memoryview(whole))])
                await direct.get(bucket, key, sink, total, if_match=quoted(etag) if etag else None, pause=pause)
            if sink.position != total:
                raise BodyCut(etag, ConnectionResetError(f"{sink.position} of {total} bytes"))
        except (BodyCut, BadResponse) as exc:
            if attempt + 1 == READ_ATTEMPTS:
                raise translate(exc, what) from exc
            log.debug("GET %s: %s, reading it again", what, exc)
            await pause(attempt)
            continue
        except ResponseError as exc:
            if exc.status == 412 and attempt + 1 < READ_ATTEMPTS:  # replaced between the two GETs
                continue
            raise translate(exc, what) from exc
        except (OSError, asyncio.TimeoutError) as exc:
            raise translate(exc, what) from exc
        return StoredObject(bytes(memoryview(buffer)[:total]), etag.strip('"'))
    raise AssertionError("unreachable")


def _object_size(status: int, headers: dict[str, str], received: int) -> int:
    """The object's size: a 206 states it after the slash of Content-Range, a 200 is all of it."""
    if status == 200:
        return received
    total = headers.get("content-range", "").rpartition("/")[2]
    if not total.isdigit():
        raise BadResponse(f"HTTP {status} without the object's size (Content-Range {headers.get('content-range')!r})")
    return int(total)


def _stated_size(status: int, content_range: str, length: int) -> int | None:
    """The whole object's size as an answer to a ranged GET states it: after the slash of
    Content-Range (a 206's ``bytes A-B/N``, a 416's ``bytes */N``), or a 200's length (the
    whole object); None where it is not stated (``/*``, or no Content-Range)."""
    if status == 200:
        return length
    total = content_range.rpartition("/")[2].strip()
    return int(total) if total.isdigit() else None


def _error_header(exc: BaseException, name: str) -> str:
    """Header `name` of the error answer behind `exc` (botocore keeps them in its
    ``ClientError``, which s3fs chains under an ``OSError``), or ""."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        response = getattr(current, "response", None)
        if isinstance(response, dict):
            headers = (response.get("ResponseMetadata") or {}).get("HTTPHeaders") or {}
            return str(headers.get(name, ""))
        current = current.__cause__ or current.__context__
    return ""


def _changed(what: str) -> CheckpointChangedError:
    return CheckpointChangedError(f"{what} changed while it was being read (replaced or deleted: "
                                  "open the checkpoint again)")
