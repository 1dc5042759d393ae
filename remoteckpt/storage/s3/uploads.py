"""S3 writes: one object as a single PUT or a multipart upload, committed create-only or
conditionally.

A writer buffers up to one part and uploads parts concurrently, at most `parts_in_flight` at a
time (each sent from the caller's buffers, see body.py; a buffer the caller counts in its memory
budget is handed back once the parts sending it are done, and what of it would wait in the part
being filled is copied); its commit is the one request that
makes the object visible: the PUT, or CompleteMultipartUpload, with ``If-None-Match: *`` when
exclusive or ``If-Match: ETAG`` when replacing one version.  Nothing is visible before it, and
a failed writer aborts its upload.

A writer's `copy` makes parts of another object's bytes without them leaving the server
(UploadPartCopy with ``x-amz-copy-source-range``, and ``x-amz-copy-source-if-match`` pinning
the source's version).  Parts are at least 5 MiB but the last, so a copy begins at a part
boundary: the bytes written before it are sent as one part first, which they can be once
there are 5 MiB of them (`bytes_before_copy` says how many are missing).  Copied and written
parts of one object look alike once it is complete:

    object   | part 1 (written) | part 2 (copy) | part 3 (copy) | part 4 (written) |
    source            ... |<-- bytes [a, b) of the source -->| ...
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from ... import faults
from ...errors import CheckpointChangedError, CorruptCheckpointError
from ..base import Buffer, ObjectWriter
from ..errors import answer_of, is_no_such_upload, is_precondition_failed, translate
from .body import PartBody
from .client import S3Client, quoted

PART_SIZE = 16 * 2**20
"""S3 multipart part size: above S3's 5 MiB minimum, and large enough that per-request
overhead is small next to transfer time on loopback and in-region links."""

MIN_PART_SIZE = 5 * 2**20
"""S3 rejects smaller parts (all but the last) at CompleteMultipartUpload."""

MAX_WRITTEN_PARTS = 9_000
"""Parts of written bytes an object of known size is cut into at most (`parts_for`): S3 allows
10,000 parts per object; the rest is room for the parts of copies (`S3Writer.copy`)."""

MAX_PARTS_IN_FLIGHT = 4
"""Parts uploading at once per writer: bounds a writer's buffers to 4 x PART_SIZE."""

COPIES_IN_FLIGHT = 8
"""Copied parts in flight at once per writer: they hold no memory here, and the server does
the work, so more than the written parts; bounded so one writer does not monopolise it."""

MAX_COPY_PIECES = 64
"""Parts one `copy` is cut into at most (unless they would exceed `MAX_COPY_PART`): enough to
keep `COPIES_IN_FLIGHT` busy, few enough that copies never bring an object near S3's limit of
10,000 parts (a 64 GiB run is 64 parts of 1 GiB)."""

MAX_COPY_PART = 5 * 2**30
"""S3's largest part; a copy is cut into parts of at most this size (and of `PART_SIZE`'s
order, see `S3Writer.copy`)."""

def parts_for(size_hint: int | None, part_size: int, in_flight: int) -> tuple[int, int]:
    """Part size and parts in flight for an object of about `size_hint` bytes: the configured
    ones, unless that many bytes would take more than `MAX_WRITTEN_PARTS` parts (16 MiB parts
    reach S3's 10,000 at 156 GiB); then parts just large enough (whole MiB, at most
    `MAX_COPY_PART`) and fewer of them in flight, so the memory parts in flight may hold stays
    about what was configured."""
    if size_hint is None or size_hint <= part_size * MAX_WRITTEN_PARTS:
        return part_size, in_flight
    mib = 2**20
    larger = min(MAX_COPY_PART, -(-size_hint // (MAX_WRITTEN_PARTS * mib)) * mib)
    return larger, max(1, in_flight * part_size // larger)


WRITE_TOKEN = "remoteckpt-write"
"""User metadata naming the writer of an object (a fresh UUID per writer): how a commit whose
acknowledgement was lost recognises its own object.  An ETag cannot: with SSE-KMS or SSE-C it
is not the MD5 of the bytes."""

log = logging.getLogger("remoteckpt")


@dataclass(frozen=True)
class UploadTarget:
    """Where a writer puts its object, and how: the client, the bucket and object name, how
    errors name it, the part size and the parts kept in flight."""

    client: S3Client
    bucket: str
    name: str
    what: str
    part_size: int
    parts_in_flight: int
    base: str = ""
    """The object name prefix of the store's root: copies name their source by store key."""


class _Hold:
    """A caller's buffer kept by a writer: its `release` runs when the last of the parts
    sending it and the `write` placing it lets go."""

    __slots__ = ("count", "release")

    def __init__(self, release: Callable[[], None]) -> None:
        self.count = 1  # the write placing it
        self.release = release

    def take(self) -> None:
        self.count += 1

    def drop(self) -> None:
        self.count -= 1
        if self.count == 0:
            self.release()


class S3Writer(ObjectWriter):
    """One S3 object: a single PUT when it fits in one part, else a multipart upload.

    Requests are retried by botocore (see `client`); what a retry cannot settle by itself is
    settled here:
      - a commit whose acknowledgement was lost (the retried PUT or CompleteMultipartUpload
        answers PreconditionFailed or NoSuchUpload, because the first one DID land) is
        recognised by the object's `WRITE_TOKEN` metadata: ours is a success, anything else
        is another writer's;
      - a failed part fails the writer at once, with that part's own error (the next `write`
        or the commit raises it; parts in flight are cancelled);
      - a CreateMultipartUpload that was retried may have created an upload whose id we
        never heard of: after the commit or abort, other uploads of this key are aborted;
      - a failed writer aborts its upload, so no parts are left to pay for.
    """

    server_side_copy = True
    copy_granule = MIN_PART_SIZE

    def __init__(self, target: UploadTarget, key: str, exclusive: bool, if_match: str | None) -> None:
        self.key = key
        self._target = target
        self._exclusive = exclusive
        self._if_match = if_match
        self._bucket, self._key, self._what = target.bucket, target.name, target.what
        self._token = uuid.uuid4().hex
        self._pending: builtins.list[Buffer] = []
        self._pending_size = 0
        self._upload_id: str | None = None
        self._part_size = target.part_size
        self._next_part = 1
        self._written = 0
        self._parts: dict[int, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._failure: BaseException | None = None
        self._slots = asyncio.Semaphore(target.parts_in_flight)
        self._closed = False
        self._stray_uploads = False
        self._copy_slots = asyncio.Semaphore(COPIES_IN_FLIGHT)
        self._holding: _Hold | None = None  # the buffer `write` is placing, if its caller counts it
        self._ended_short = False  # a copy shorter than a part was made: it must be the last part

    def bytes_before_copy(self) -> int:
        return 0 if self._pending_size == 0 or self._pending_size >= MIN_PART_SIZE else (
            MIN_PART_SIZE - self._pending_size)

    async def write(self, data: Buffer, release: Callable[[], None] | None = None) -> None:
        hold = None if release is None else _Hold(release)
        try:
            self._raise_failed()
            if self._ended_short and memoryview(data).nbytes:
                raise ValueError(f"{self._what}: nothing may follow a copy shorter than {MIN_PART_SIZE} bytes")
            view = memoryview(data).cast("B")
            self._holding = hold
            waiting = False  # whether the last view taken of `data` waits in the part being filled
            while len(view):
                take = min(len(view), self._part_size - self._pending_size)
                self._pending.append(view[:take])  # a view: copied only if a part spans buffers
                self._pending_size += take
                self._written += take
                view = view[take:]
                waiting = True
                if self._pending_size == self._part_size:
                    waiting = False
                    await self._upload_pending()
            if hold is not None and waiting:
                # Its tail waits in the part being filled, for bytes the caller may first need
                # its budget back to make: copied (at most a part per writer), the buffer freed.
                self._pending[-1] = memoryview(bytes(self._pending[-1]))
        finally:
            self._holding = None
            if hold is not None:
                hold.drop()

    def _conditions(self) -> dict[str, str]:
        if self._exclusive:
            return {"IfNoneMatch": "*"}
        if self._if_match is not None:
            return {"IfMatch": quoted(self._if_match)}
        return {}

    async def _start_upload(self) -> None:
        if self._upload_id is not None:
            return
        try:
            mpu = await self._target.client.call("create_multipart_upload", Bucket=self._bucket, Key=self._key,
                                                 Metadata={WRITE_TOKEN: self._token})
            self._upload_id = mpu["UploadId"]
            if mpu.get("ResponseMetadata", {}).get("RetryAttempts"):
                self._stray_uploads = True  # an earlier attempt may have created one too
        except Exception as exc:
            if self._upload_id is None:
                self._stray_uploads = True  # an attempt whose answer was lost may have created one
            await self.abort()
            raise translate(exc, self._what) from exc

    async def _upload_pending(self) -> None:
        # Sent from the caller's buffers as they are: no part is ever copied (see body.py).
        body = PartBody(self._pending)
        self._pending, self._pending_size = [], 0
        hold = self._holding  # the buffer being written, if its caller counts it: this part keeps it
        if hold is not None:
            hold.take()
        try:
            await self._start_upload()
            number, self._next_part = self._next_part, self._next_part + 1
            await self._slots.acquire()
            self._raise_failed()
        except BaseException:
            if hold is not None:
                hold.drop()
            raise
        task = asyncio.ensure_future(self._upload_part(number, body))
        self._tasks.add(task)
        task.add_done_callback(self._part_done)
        if hold is not None:
            task.add_done_callback(lambda _: hold.drop())  # sent, failed or cancelled, even unstarted

    async def copy(self, source: str, start: int, length: int, *, etag: str | None = None) -> None:
        """Parts made on the server from bytes ``[start, start + length)`` of `source` (see the
        module docstring), cut into parts of about `part_size` (at least `MIN_PART_SIZE` each,
        so a copy that is not the last fits the rule; larger for long runs, see
        `MAX_COPY_PIECES`) that are copied concurrently."""
        self._raise_failed()
        if self._ended_short:
            raise ValueError(f"{self._what}: nothing may follow a copy shorter than {MIN_PART_SIZE} bytes")
        if self.bytes_before_copy():
            raise ValueError(f"{self._what}: a copy must begin at a part boundary; "
                             f"{self.bytes_before_copy()} more bytes must be written first")
        if length <= 0:
            return
        await self._start_upload()
        if self._pending_size:
            await self._upload_pending()
        pieces = max(min(-(-length // max(self._part_size, 2 * MIN_PART_SIZE)), MAX_COPY_PIECES),
                     -(-length // MAX_COPY_PART))
        source_name = self._target.base + source
        for i in range(pieces):
            begin, end = start + length * i // pieces, start + length * (i + 1) // pieces
            number, self._next_part = self._next_part, self._next_part + 1
            await self._copy_slots.acquire()
            if self._failure is not None:
                self._copy_slots.release()
                self._raise_failed()
            task = asyncio.ensure_future(self._copy_part(number, source_name, begin, end, etag))
            self._tasks.add(task)
            task.add_done_callback(self._part_done)
        self._written += length
        self._ended_short = length < MIN_PART_SIZE

    async def _copy_part(self, number: int, source_name: str, begin: int, end: int, etag: str | None) -> None:
        try:
            conditions = {"CopySourceIfMatch": quoted(etag)} if etag is not None else {}
            try:
                out = await self._target.client.call(
                    "upload_part_copy", Bucket=self._bucket, Key=self._key, UploadId=self._upload_id,
                    PartNumber=number, CopySource={"Bucket": self._bucket, "Key": source_name},
                    CopySourceRange=f"bytes={begin}-{end - 1}", **conditions)
            except Exception as exc:
                what = f"{self._what} (a copy of bytes [{begin}, {end}) of {source_name})"
                if is_precondition_failed(exc):
                    raise CheckpointChangedError(f"{what}: the source is not the version expected "
                                                 "(replaced or deleted)") from exc
                if answer_of(exc).status == 416:
                    raise CorruptCheckpointError(f"{what}: the source has no such bytes") from exc
                raise translate(exc, what) from exc
            self._parts[number] = out["CopyPartResult"]["ETag"]
            faults.crash_point("part-copied")
        finally:
            self._copy_slots.release()

    def _part_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and self._failure is None:
            self._failure = task.exception()
            for other in self._tasks:  # the upload is lost: stop sending the rest
                other.cancel()

    async def _upload_part(self, number: int, body: PartBody) -> None:
        try:
            body.seek(0)
            out = await self._target.client.call(
                "upload_part", Bucket=self._bucket, Key=self._key, UploadId=self._upload_id,
                PartNumber=number, Body=body)
            self._parts[number] = out["ETag"]
        finally:
            self._slots.release()

    def _raise_failed(self) -> None:
        failure = self._failure
        if failure is not None:
            raise translate(failure, f"{self._what} (a part upload)") from failure

    async def commit(self) -> None:
        client = self._target.client
        try:
            try:
                if self._upload_id is None:
                    body = PartBody(self._pending)  # one small object: a single PUT
                    self._pending = []
                    faults.publishing()
                    out = await client.call("put_object", Bucket=self._bucket, Key=self._key,
                                            Body=body if len(body) else b"", Metadata={WRITE_TOKEN: self._token},
                                            **self._conditions())
                else:
                    if self._pending_size:
                        await self._upload_pending()
                    await asyncio.gather(*list(self._tasks), return_exceptions=True)
                    self._raise_failed()
                    parts = [{"PartNumber": n, "ETag": self._parts[n]} for n in sorted(self._parts)]
                    if len(parts) != self._next_part - 1:
                        raise RuntimeError(f"{self._next_part - 1 - len(parts)} uploaded parts are missing")
                    faults.publishing()
                    out = await client.call(
                        "complete_multipart_upload", Bucket=self._bucket, Key=self._key,
                        UploadId=self._upload_id, MultipartUpload={"Parts": parts}, **self._conditions())
                self.etag = str(out.get("ETag") or "").strip('"')
            except Exception as exc:
                if not (is_precondition_failed(exc) or is_no_such_upload(exc)):
                    raise
                landed = await self._landed()
                if landed is None:
                    raise
                log.info("%s: the commit's acknowledgement was lost, but the object is ours",
                         self._what)
                self.etag = landed
            self._closed = True
        except Exception as exc:
            await self.abort()
            if is_precondition_failed(exc) and self._if_match is not None:
                raise CheckpointChangedError(f"{self._what} is not the version this "
                                             "write expected (another writer replaced or removed it)") from exc
            raise translate(exc, self._what) from exc  # a 412 of a create-only write: CheckpointExistsError
        finally:
            await self._abort_strays()

    async def _landed(self) -> str | None:
        """The etag of the object at our key if this writer put it there (its `WRITE_TOKEN`,
        and its size, are ours), else None."""
        try:
            head = await self._target.client.call("head_object", Bucket=self._bucket, Key=self._key)
        except Exception:
            return None
        metadata = {k.lower(): v for k, v in (head.get("Metadata") or {}).items()}
        if metadata.get(WRITE_TOKEN) == self._token and head.get("ContentLength") == self._written:
            return str(head.get("ETag") or "").strip('"')
        return None

    async def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        self._pending = []
        if self._upload_id is not None:
            try:
                await self._target.client.call(
                    "abort_multipart_upload", Bucket=self._bucket, Key=self._key, UploadId=self._upload_id)
            except Exception as exc:
                if not is_no_such_upload(exc):  # gone already: completed, or aborted by a retry
                    log.warning("could not abort the upload of %s (remoteckpt.gc will): %s",
                                self._what, type(exc).__name__)
        await self._abort_strays()

    async def _abort_strays(self) -> None:
        """Abort uploads of our key that a retried CreateMultipartUpload may have begun (any
        upload of this key but ours: no other writer of it can be legitimately running)."""
        if not self._stray_uploads:
            return
        self._stray_uploads = False
        try:
            page = await self._target.client.call("list_multipart_uploads", Bucket=self._bucket, Prefix=self._key)
            for upload in page.get("Uploads", []):
                if upload["Key"] == self._key and upload["UploadId"] != self._upload_id:
                    await self._target.client.call("abort_multipart_upload", Bucket=self._bucket, Key=self._key,
                                                   UploadId=upload["UploadId"])
        except Exception as exc:
            log.warning("could not clear stray uploads of %s (remoteckpt.gc will): %s",
                        self._what, type(exc).__name__)

