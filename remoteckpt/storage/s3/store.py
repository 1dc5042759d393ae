"""S3 (and S3-compatible servers): the store.

    S3Store("bucket/run", url)          keys are object names below ``run/``
      head / get_object / list_info      HeadObject, GetObject, ListObjectsV2 (ETags included)
      read_scatter                       ranged GETs into the caller's buffers (`reads`)
      writer / put                       single PUT or multipart upload (`uploads`)
      delete                             DeleteObject, with ``If-Match`` when conditional

Conditional writes are what the save protocol stands on, and some S3-compatible servers
accept the headers and ignore them.  `prepare_conditional_writes` probes the bucket once per
process (a scratch object written create-only twice, replaced with a wrong ``If-Match``):
where they are ignored, `capabilities.conditional_writes` turns False and saves that could
race are refused.  ``storage_options={"conditional_writes": "trust"}`` skips the probe.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from ...errors import StorageError
from ..base import (
    PROBE_PREFIX,
    ObjectInfo,
    ObjectWriter,
    PendingUpload,
    ScatterResult,
    Store,
    StoreCapabilities,
    StoredObject,
    too_large,
)
from ..errors import is_not_found, is_precondition_failed, translate
from .client import S3Client, quoted
from .direct import DirectGets
from .reads import BODY_ERRORS, READ_ATTEMPTS, ScatterSink, pause, read_object, read_range
from .uploads import MAX_PARTS_IN_FLIGHT, MIN_PART_SIZE, PART_SIZE, S3Writer, UploadTarget, parts_for

log = logging.getLogger("remoteckpt")

LIST_PAGE = 1000
"""Keys per ListObjectsV2 page: S3's maximum, so a listing costs one request per thousand."""

DELETE_BATCH = 1000
"""Keys per DeleteObjects request: S3's maximum, so a save's cleanup of N reports and
acknowledgements costs 2N/1,000 requests, not 2N."""

DELETE_BATCHES_IN_FLIGHT = 4
"""DeleteObjects requests at once: each is a thousand deletes for the server."""

_probed: dict[tuple[str, str], tuple[bool, bool]] = {}
"""(endpoint, bucket) -> (conditional writes enforced, conditional deletes enforced), per process."""


class S3Store(Store):
    """Objects below `root` (``bucket`` or ``bucket/some/dir``) of an S3 bucket."""

    def __init__(self, client: S3Client, root: str, url: str, *, part_size: int = PART_SIZE,
                 parts_in_flight: int = MAX_PARTS_IN_FLIGHT, endpoint: str = "",
                 trust_conditional_writes: bool = False) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"S3 parts must be at least {MIN_PART_SIZE} bytes")
        self.client = client
        self.url = url.rstrip("/")
        bucket, _, base = root.strip("/").partition("/")
        self.bucket = bucket
        self._base = f"{base}/" if base else ""
        self.part_size = part_size
        self.parts_in_flight = max(1, parts_in_flight)
        self._endpoint = endpoint
        self._trust = trust_conditional_writes
        self._conditional_deletes = True
        self.capabilities = StoreCapabilities(conditional_writes=True)
        self._direct: DirectGets | None = None
        self._direct_checked = False

    def object_key(self, key: str) -> str:
        """The S3 object name of store key `key`."""
        return self._base + key

    # --- reads -------------------------------------------------------------------------------

    async def head(self, key: str) -> ObjectInfo | None:
        try:
            out = await self.client.call("head_object", Bucket=self.bucket, Key=self.object_key(key))
        except Exception as exc:
            if is_not_found(exc):
                return None
            raise translate(exc, self.describe(key)) from exc
        return _info(key, out.get("ContentLength"), out.get("LastModified"), out.get("ETag"))

    async def get_object(self, key: str, *, max_size: int | None = None) -> StoredObject:
        """One GET; a body cut short is fetched again (the whole object: this is for small
        ones).  `max_size` is checked against the answer's Content-Length before the body is
        read.  On the direct path where the client allows it (`reads.read_object`)."""
        direct = await self._direct_gets()
        if direct is not None:
            found = await read_object(direct, self.bucket, self.object_key(key), self.describe(key), max_size)
            if found is not None:
                return found
        for attempt in range(READ_ATTEMPTS):
            try:
                response = await self.client.call("get_object", Bucket=self.bucket, Key=self.object_key(key))
            except Exception as exc:
                raise translate(exc, self.describe(key)) from exc
            body = response["Body"]
            if max_size is not None and int(response.get("ContentLength") or 0) > max_size:
                body.close()
                raise too_large(self.describe(key), int(response["ContentLength"]), max_size)
            try:
                data = bytes(await body.read())  # checks the length against Content-Length
            except BODY_ERRORS as exc:
                if attempt + 1 == READ_ATTEMPTS:
                    raise translate(exc, self.describe(key)) from exc
                log.debug("GET %s: body cut (%s), fetching again", self.describe(key), type(exc).__name__)
                await pause(attempt)
                continue
            finally:
                body.close()
            return StoredObject(data, str(response.get("ETag") or "").strip('"'))
        raise AssertionError("unreachable")

    async def read_scatter(self, key: str, start: int, targets: Sequence[tuple[int, memoryview]], *,
                           etag: str | None = None) -> ScatterResult:
        """One ranged GET into the targets (see `reads`), pinned to version `etag` if given;
        the result names the version the answer came from and the object's size.
        The targets are checksummed once the body is in, in a worker thread (CRC32C releases
        the GIL), so that the event loop, which receives every stream, does only the receiving."""
        end = max((offset + len(view) for offset, view in targets), default=start)
        if end <= start:
            return ScatterResult.nothing(targets)
        return await read_range(self.client, await self._direct_gets(), self.bucket, self.object_key(key),
                                self.describe(key), ScatterSink(start, targets), end, etag)

    async def _direct_gets(self) -> DirectGets | None:
        """The socket-to-buffer reader (`direct`), where this store's client allows it."""
        if not self._direct_checked:
            client = await self.client.botocore_client()
            self._direct_checked = True
            if DirectGets.usable(client, self.client.request_parameters):
                self._direct = DirectGets(client, verify=self.client.verify, max_idle=4 * self.parts_in_flight + 16,
                                          pacer=self.client.pacer)
        return self._direct

    async def list(self, prefix: str = "") -> builtins.list[str]:
        return [info.key for info in await self.list_info(prefix)]

    async def list_info(self, prefix: str = "") -> builtins.list[ObjectInfo]:
        """ListObjectsV2 filtered by key prefix on the server: one request per `LIST_PAGE` keys
        that start with `prefix`, however many other keys the bucket holds."""
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.object_key(prefix), "MaxKeys": LIST_PAGE}
        infos: builtins.list[ObjectInfo] = []
        try:
            while True:
                page = await self.client.call("list_objects_v2", **params)
                for item in page.get("Contents", []):
                    name = str(item["Key"])
                    if name.endswith("/") or not name.startswith(self._base):
                        continue  # a directory marker (some servers list emptied directories)
                    infos.append(_info(name[len(self._base):], item.get("Size"), item.get("LastModified"),
                                       item.get("ETag")))
                if not page.get("IsTruncated") or not page.get("NextContinuationToken"):
                    break
                params["ContinuationToken"] = page["NextContinuationToken"]
        except Exception as exc:  # named by what was being listed for
            raise translate(exc, self.describe(prefix) + "*" if prefix else self.url) from exc
        return sorted(infos, key=lambda i: i.key)

    # --- writes ------------------------------------------------------------------------------

    def writer(self, key: str, *, exclusive: bool = False, if_match: str | None = None,
               size_hint: int | None = None) -> ObjectWriter:
        part_size, in_flight = parts_for(size_hint, self.part_size, self.parts_in_flight)
        target = UploadTarget(self.client, self.bucket, self.object_key(key), self.describe(key), part_size,
                              in_flight, self._base)
        return S3Writer(target, key, exclusive, if_match)

    async def delete(self, key: str, *, if_match: str | None = None) -> bool:
        name = self.object_key(key)
        if if_match is not None and not self._conditional_deletes:
            head = await self.head(key)  # the server ignores If-Match on DELETE: look first
            if head is None:
                return True
            if head.etag != if_match:
                return False
        try:
            params = {"IfMatch": quoted(if_match)} if if_match is not None and self._conditional_deletes else {}
            await self.client.call("delete_object", Bucket=self.bucket, Key=name, **params)
        except Exception as exc:
            if is_precondition_failed(exc):
                return await self.head(key) is None  # 412 for a missing key too, on some servers
            if is_not_found(exc):
                return True
            raise translate(exc, self.describe(key)) from exc
        return True

    async def delete_many(self, keys: Iterable[str]) -> None:
        """DeleteObjects, `DELETE_BATCH` keys a request (quiet: only failures are answered)."""
        unique = list(dict.fromkeys(keys))
        batches = [unique[i : i + DELETE_BATCH] for i in range(0, len(unique), DELETE_BATCH)]
        slots = asyncio.Semaphore(DELETE_BATCHES_IN_FLIGHT)

        async def one(batch: builtins.list[str]) -> None:
            objects = [{"Key": self.object_key(k)} for k in batch]
            async with slots:
                try:
                    out = await self.client.call("delete_objects", Bucket=self.bucket,
                                                 Delete={"Objects": objects, "Quiet": True})
                except Exception as exc:
                    raise translate(exc, self.describe(batch[0])) from exc
            failed = [e for e in out.get("Errors") or [] if e.get("Code") != "NoSuchKey"]
            if failed:
                first = failed[0]
                key = str(first.get("Key", ""))[len(self._base):]
                raise StorageError(f"{self.describe(key)}: could not be deleted ({first.get('Code')}: "
                                   f"{first.get('Message')}); {len(failed)} key(s) of {len(batch)} failed")

        await asyncio.gather(*(one(b) for b in batches))

    async def pending_uploads(self, prefix: str = "") -> builtins.list[PendingUpload]:
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.object_key(prefix)}
        uploads: builtins.list[PendingUpload] = []
        try:
            while True:
                page = await self.client.call("list_multipart_uploads", **params)
                for u in page.get("Uploads", []):
                    initiated = u.get("Initiated")
                    uploads.append(PendingUpload(str(u["Key"])[len(self._base):], u["UploadId"],
                                                 initiated.timestamp() if initiated else 0.0))
                if not page.get("IsTruncated"):
                    return uploads
                params.update(KeyMarker=page.get("NextKeyMarker"), UploadIdMarker=page.get("NextUploadIdMarker"))
        except Exception as exc:
            raise translate(exc, self.describe(prefix)) from exc

    async def abort_upload(self, upload: PendingUpload) -> None:
        try:
            await self.client.call("abort_multipart_upload", Bucket=self.bucket, Key=self.object_key(upload.key),
                                   UploadId=upload.upload_id)
        except Exception as exc:
            if not is_not_found(exc):
                raise translate(exc, self.describe(upload.key)) from exc

    # --- conditional writes ------------------------------------------------------------------

    async def prepare_conditional_writes(self) -> None:
        if self._trust:
            return
        where = (self._endpoint, self.bucket)
        if where not in _probed:
            _probed[where] = await self._probe()
            if not all(_probed[where]):
                log.warning("%s: the server ignores conditional %s", self.url,
                            "writes" if not _probed[where][0] else "deletes (If-Match on DELETE)")
        writes, deletes = _probed[where]
        self._conditional_deletes = deletes
        if not writes:
            self.capabilities = StoreCapabilities(conditional_writes=False)

    async def _probe(self) -> tuple[bool, bool]:
        """(conditional writes enforced, conditional deletes enforced), found by writing a
        scratch object beside the checkpoints."""
        key = f"{PROBE_PREFIX}{uuid.uuid4().hex}"
        name = self.object_key(key)
        try:
            first = await self.put(key, b"1", exclusive=True)
            writes = await _refused(self.client.call("put_object", Bucket=self.bucket, Key=name, Body=b"2",
                                                     IfNoneMatch="*"))
            writes = writes and await _refused(self.client.call("put_object", Bucket=self.bucket, Key=name,
                                                                Body=b"3", IfMatch=quoted(first + "0")))
            deletes = await _refused(self.client.call("delete_object", Bucket=self.bucket, Key=name,
                                                      IfMatch=quoted(first + "0")))
            return writes, deletes and await self.head(key) is not None
        finally:
            try:
                await self.client.call("delete_object", Bucket=self.bucket, Key=name)
            except Exception:
                log.debug("could not remove the probe object %s", self.describe(key), exc_info=True)

    def __reduce__(self) -> Any:
        raise TypeError(f"{type(self).__name__} cannot be pickled: it holds connections and credentials "
                        "(pickle the prefix and open the store again)")

    async def close(self) -> None:
        if self._direct is not None:
            await self._direct.close()
        await self.client.close()


async def _refused(call: Any) -> bool:
    """Whether the conditional request `call` was refused with 412, as it must be."""
    try:
        await call
    except Exception as exc:
        if is_precondition_failed(exc):
            return True
        raise StorageError(f"probing conditional writes: {type(exc).__name__}: {exc}") from exc
    return False


def _info(key: str, size: Any, modified: Any, etag: Any) -> ObjectInfo:
    mtime = modified.timestamp() if hasattr(modified, "timestamp") else 0.0
    return ObjectInfo(key, int(size or 0), mtime, str(etag or "").strip('"'))

