"""S3 writes: one object as a single PUT or a multipart upload, committed create-only.

A writer buffers up to one part and uploads parts concurrently, at most `parts_in_flight` at a
time (each sent from the caller's buffers, see s3_body.py); its commit is the one request that
makes the object visible: the PUT, or CompleteMultipartUpload, with ``If-None-Match: *`` when
exclusive.  Nothing is visible before it, and a failed writer aborts its upload.
"""

from __future__ import annotations

import builtins

import asyncio
import hashlib
import logging
import time
from typing import TYPE_CHECKING

from .. import faults
from ..errors import CheckpointExistsError
from .base import Buffer, ObjectWriter
from .errors import translate
from .s3_body import PartBody

if TYPE_CHECKING:
    from .s3_store import S3Store

PART_SIZE = 16 * 2**20
"""S3 multipart part size: above S3's 5 MiB minimum, and large enough that per-request
overhead is small next to transfer time on loopback and in-region links."""

MIN_PART_SIZE = 5 * 2**20
"""S3 rejects smaller parts (all but the last) at CompleteMultipartUpload."""

MAX_PARTS_IN_FLIGHT = 4
"""Parts uploading at once per writer: bounds a writer's buffers to 4 x PART_SIZE."""

log = logging.getLogger("remoteckpt")


class S3Writer(ObjectWriter):
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
                if (is_precondition_failure(exc) or _is_no_such_upload(exc)) and await self._landed():
                    log.info("%s: the commit's acknowledgement was lost, but the object holds our bytes",
                             self._store.describe(self.key))
                else:
                    raise
            self._closed = True
        except Exception as exc:
            await self.abort()
            if self._exclusive and is_precondition_failure(exc):
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


def is_precondition_failure(exc: BaseException) -> bool:
    if isinstance(exc, FileExistsError):
        return True
    text = f"{exc} {getattr(exc, '__cause__', '')}"
    return "PreconditionFailed" in text or "412" in text or "At least one of the pre-conditions" in text
