"""Ranged GETs whose bodies the socket reads straight into the caller's buffers.

    GET /BUCKET/KEY?X-Amz-Algorithm=...&X-Amz-Signature=...  HTTP/1.1   (presigned, keep-alive)
    Range: bytes=A-B
    If-Match: "ETAG"                     (a resumed GET: the same version of the object)

    HTTP/1.1 206 Partial Content\\r\\n ... Content-Length: N\\r\\n\\r\\n | N body bytes
    └─ head: into a small scratch buffer, parsed here ─────────────┘ └─ body: recv_into the
                                                                         sink's next target view

aiobotocore hands a body over as ``bytes`` that the caller then copies into place: the kernel
copies into a new bytes object, aiohttp's parser and stream reader touch every 64 KiB, and the
caller copies again.  Here an asyncio `BufferedProtocol` asks the sink for the view the next
bytes belong in and the kernel writes them there: one copy, a few Python calls per socket
read.  On loopback that halves the client's CPU per GiB, which on a small machine is the CPU
the server needs.

Requests are presigned from the store's own botocore client, so credentials (refreshed when they
expire), region, addressing style and endpoint are botocore's (`presign`: the first URL of a
bucket by the client, the next ones by botocore's signer on the same base); a URL is reused for
a key for `PRESIGN_REUSE` seconds.  Only plain setups take this path: an ``http``/``https`` endpoint
reached without a proxy.  `DirectGets.usable` says; the store reads through aiobotocore
otherwise.  Presigned URLs carry credentials: they never appear in messages or logs here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import ssl
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from ..errors import ResponseError
from .pacing import Pacer
from .presign import Presigner

log = logging.getLogger("remoteckpt")

PRESIGN_REUSE = 300.0
"""Seconds a presigned URL is reused for more ranges of its key; it is signed for three times
as long, so a request sent at the end of the reuse window is still valid when it arrives."""

HEAD_LIMIT = 64 * 1024
"""Bytes of status line and headers accepted: S3's are under 2 KiB."""

ERROR_BODY_LIMIT = 64 * 1024
"""Bytes of an error response's XML kept for its code and message."""

RETRY_STATUSES = frozenset({500, 502, 503, 504})
"""Answers worth asking again (S3's InternalError and SlowDown among them)."""

ANSWER_BACKOFF_CAP = 20.0
"""Seconds an answer of `RETRY_STATUSES` is waited out at most before asking again: botocore's
``max_backoff``.  Such answers wait botocore's full jitter, ``random() * 2**attempt`` seconds,
not the short pause of a cut connection: a store that throttles by requests in the last second
must see the retries spread over seconds, or every retry is throttled again."""

HEADER_PARAMETERS = ("SSECustomerAlgorithm", "SSECustomerKey", "SSECustomerKeyMD5", "RequestPayer",
                     "ExpectedBucketOwner", "ChecksumMode")
"""Request parameters a GET must send as headers: where a store sets any of them, its reads take
aiobotocore's path."""

_PROXY_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


class BodySink(Protocol):
    """Where a body's bytes go, in order (the store's scatter sink)."""

    position: int

    def next_buffer(self, limit: int) -> memoryview:
        """A writable view (1..`limit` bytes) for the body's next bytes."""

    def advance(self, count: int) -> None:
        """`count` bytes were written into the last view."""


class BadResponse(ValueError):
    """An answer this reader does not accept (no length, wrong range, not HTTP)."""


class BodyCut(ConnectionError):
    """The connection failed after part of a body was delivered: resume from the sink's
    position, pinned to `etag` (the version those bytes came from)."""

    def __init__(self, etag: str | None, cause: BaseException) -> None:
        super().__init__(f"body cut short: {type(cause).__name__}")
        self.etag = etag


class _GetProtocol(asyncio.BufferedProtocol):
    """One keep-alive connection; `exchange` runs one request on it at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.alive = True
        self._scratch = bytearray(HEAD_LIMIT)
        self._head = bytearray()
        self._error_body = bytearray()
        self._sink: BodySink | None = None
        self._remaining = 0
        self._in_body = False
        self._done: asyncio.Future[None] | None = None
        self._start = 0
        self._wanted = 0
        self.status = 0
        self.headers: dict[str, str] = {}
        self.progress = 0.0

    # --- asyncio's side --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        self._fail(ConnectionResetError("the connection closed mid-response") if exc is None else exc)

    def eof_received(self) -> bool:
        self.alive = False
        return False

    def get_buffer(self, sizehint: int) -> memoryview:
        # The sink's view only while this answer's body still has bytes to come; anything else
        # (an idle connection's close or stray bytes) lands in scratch, never in an empty view.
        if (self._in_body and self._sink is not None and self.status // 100 == 2 and self._remaining > 0
                and self._done is not None and not self._done.done()):
            return self._sink.next_buffer(self._remaining)
        return memoryview(self._scratch)

    def buffer_updated(self, nbytes: int) -> None:
        self.progress = time.monotonic()
        if self._done is None or self._done.done():
            self.alive = False  # bytes nobody asked for: this connection is not reusable
            return
        if not self._in_body:
            self._head += self._scratch[:nbytes]
            self._parse_head()
        elif self.status // 100 == 2:
            assert self._sink is not None
            self._sink.advance(nbytes)
            self._remaining -= nbytes
        else:
            self._error_body += self._scratch[: min(nbytes, max(0, ERROR_BODY_LIMIT - len(self._error_body)))]
            self._remaining -= nbytes
        if self._in_body and self._remaining <= 0:
            self._done.set_result(None)

    # --- one request -----------------------------------------------------------------------

    async def exchange(self, request: bytes, sink: BodySink, wanted: int, timeout: float) -> None:
        """Send `request` (for `wanted` bytes from ``sink.position``); the body of a 2xx answer
        goes to `sink`, an error's is kept.  Raises on a cut connection or `timeout` seconds
        without a byte."""
        assert self.transport is not None
        self._sink, self._head, self._error_body, self._in_body = sink, bytearray(), bytearray(), False
        self._start, self._wanted = sink.position, wanted
        self.status, self.headers, self.progress = 0, {}, time.monotonic()
        self._done = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        try:
            while True:
                try:
                    await asyncio.wait_for(asyncio.shield(self._done),
                                           max(0.0, self.progress + timeout - time.monotonic()))
                    return
                except asyncio.TimeoutError:
                    if time.monotonic() - self.progress >= timeout:
                        self.close()
                        raise asyncio.TimeoutError(f"no byte received for {timeout:g} s") from None
        finally:
            self._sink = None  # an idle connection keeps no view of the caller's buffers

    def error(self) -> ResponseError:
        text = bytes(self._error_body).decode("utf-8", "replace")
        code = _xml_field(text, "Code") or "-"
        return ResponseError(self.status, code, _xml_field(text, "Message")[:200])

    def close(self) -> None:
        self.alive = False
        if self.transport is not None:
            self.transport.close()

    def _fail(self, exc: BaseException) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_exception(exc)

    def _parse_head(self) -> None:
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > HEAD_LIMIT:
                self.close()
                self._fail(BadResponse("response headers too long"))
            return
        lines = bytes(self._head[:end]).decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        try:
            self.status = int(parts[1])
        except (IndexError, ValueError):
            self.close()
            self._fail(BadResponse("not an HTTP response"))
            return
        self.headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = self.headers.get("content-length", "")
        if "chunked" in self.headers.get("transfer-encoding", "") or not length.isdigit():
            self.close()  # S3 always sends a length: an answer without one is not what we read
            self._fail(BadResponse(f"HTTP {self.status} without a Content-Length"))
            return
        if self.headers.get("connection", "").lower() == "close":
            self.alive = False
        if self.status // 100 == 2:
            try:  # bytes from elsewhere in the object must not land at this position
                check_range(self.status, self.headers.get("content-range", ""), int(length), self._start,
                            self._wanted)
            except BadResponse as exc:
                self.close()
                self._fail(exc)
                return
        self._remaining = int(length)
        self._in_body = True
        rest = memoryview(self._head)[end + 4 :]
        if self.status // 100 == 2:
            while len(rest) and self._remaining > 0:  # body bytes that came with the head
                view = self.get_buffer(len(rest))
                take = min(len(view), len(rest))
                view[:take] = rest[:take]
                rest = rest[take:]
                assert self._sink is not None
                self._sink.advance(take)
                self._remaining -= take
        else:
            self._error_body += rest[:ERROR_BODY_LIMIT]
            self._remaining -= len(rest)
            rest = rest[len(rest) :]
        if len(rest) > 0 or self._remaining < 0:
            self.alive = False  # bytes beyond the answer: this connection is not reusable
        del rest


def check_range(status: int, content_range: str, length: int, start: int, wanted: int) -> None:
    """Refuse an answer that is not bytes ``[start, start + wanted)`` or a prefix of them (an
    object may end early): a 206 must start at `start`; a 200 (the whole object) is only the
    range when the range is the whole object."""
    if status == 206:
        match = re.match(r"bytes\s+(\d+)-", content_range or "")
        if match is None or int(match.group(1)) != start:
            raise BadResponse(f"HTTP 206 does not start at byte {start} (Content-Range {content_range or '-'!r})")
    elif status == 200:
        if start != 0 or length > wanted:
            raise BadResponse(f"HTTP 200 with the whole object ({length} bytes) answered a range from byte {start}: "
                              "the server ignored the Range header")
    if length > wanted:
        raise BadResponse(f"HTTP {status} carries {length} bytes for a range of {wanted}")


def _xml_field(text: str, name: str) -> str:
    match = re.search(rf"<{name}>(.*?)</{name}>", text, re.S)
    return match.group(1).strip() if match else ""


class DirectGets:
    """Ranged GETs of one store's objects on a pool of keep-alive connections."""

    def __init__(self, client: Any, *, verify: bool | str | None, max_idle: int, pacer: Pacer | None = None) -> None:
        self._client = client
        self._pacer = pacer or Pacer()
        self._verify = verify
        self._max_idle = max_idle
        self._idle: dict[tuple[str, str, int], list[_GetProtocol]] = {}
        self._urls: dict[tuple[str, str], tuple[float, urllib.parse.SplitResult, bool]] = {}
        self._presigner = Presigner(client)
        self._ssl: ssl.SSLContext | None = None
        config = client.meta.config
        self.read_timeout = float(config.read_timeout or 60)
        self.connect_timeout = float(config.connect_timeout or 60)
        retries = getattr(config, "retries", None) or {}
        # botocore's meaning: total_max_attempts counts the first request, max_attempts does not
        total = retries.get("total_max_attempts") or 1 + int(retries.get("max_attempts", 4))
        self.attempts = max(1, int(total))

    @staticmethod
    def usable(client: Any, request_parameters: dict[str, Any] | None = None) -> bool:
        """Whether `client` reaches its endpoint plainly (http(s), no proxy) and its requests
        carry no parameters that must travel as headers of every GET (SSE-C keys,
        RequestPayer, ExpectedBucketOwner): those go through aiobotocore, which sends them."""
        scheme = urllib.parse.urlsplit(client.meta.endpoint_url).scheme
        if scheme not in ("http", "https") or any(os.environ.get(name) for name in _PROXY_ENV):
            return False
        if any(key in (request_parameters or {}) for key in HEADER_PARAMETERS):
            return False
        return not getattr(client.meta.config, "proxies", None)

    async def get(self, bucket: str, key: str, sink: BodySink, end: int, *, if_match: str | None,
                  pause: Callable[[int], Awaitable[None]]) -> tuple[int, dict[str, str]]:
        """GET bytes ``[sink.position, end)`` of `key` into `sink` (a 206 or 200 answer
        delivers its body; a 416, the range starting past the object, nothing); returns the
        answer's status and headers (lower-case names).  Retries answers of
        `RETRY_STATUSES` (after botocore's backoff) and connections that fail before any body byte; a body cut short
        raises `BodyCut` (the caller resumes from ``sink.position``), other answers
        `ResponseError`, a stalled one `asyncio.TimeoutError`."""
        doubted = False  # a cheaply signed URL of this read was refused: botocore's is asked now
        for attempt in range(self.attempts):
            url, cheap = await self._url(bucket, key, fresh=attempt > 0, botocore=doubted)
            lines = [f"GET {url.path}?{url.query} HTTP/1.1", f"Host: {url.netloc}",
                     f"Range: bytes={sink.position}-{end - 1}", "Accept-Encoding: identity",
                     "User-Agent: remoteckpt"]
            if if_match:
                lines.append(f"If-Match: {if_match}")
            request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
            what = f"GET {bucket}/{key} bytes={sink.position}-{end - 1}"  # never the presigned query
            started = time.monotonic()
            try:
                conn = await self._connection(url)
            except (OSError, asyncio.TimeoutError) as exc:
                if attempt + 1 == self.attempts:
                    raise
                log.warning("S3 %s: no connection to %s (%s); retrying (%d/%d)", what, url.netloc,
                            type(exc).__name__, attempt + 1, self.attempts - 1)
                await pause(attempt)
                continue
            before = sink.position
            try:
                async with self._pacer:
                    await conn.exchange(request, sink, end - sink.position, self.read_timeout)
            except (OSError, asyncio.TimeoutError) as exc:
                conn.close()
                if sink.position > before:
                    raise BodyCut(if_match or conn.headers.get("etag"), exc) from exc
                if attempt + 1 == self.attempts:
                    raise
                log.info("S3 %s: %s before the answer; retrying (%d/%d)", what, type(exc).__name__, attempt + 1,
                         self.attempts - 1)
                await pause(attempt)
                continue
            except BaseException:
                conn.close()
                raise
            self._release(url, conn)
            log.debug("S3 %s: %s, %.3f s", what, conn.status, time.monotonic() - started)
            if conn.status == 403 and cheap and attempt + 1 < self.attempts:
                doubted = True  # asked again, signed by botocore's client
                continue
            if doubted and conn.status != 403:
                self._presigner.refused()  # botocore's URL was taken where the cheap one was not
            if conn.status == 503:
                self._pacer.slow_down()
            elif conn.status < 500:
                self._pacer.succeeded()
            if conn.status in RETRY_STATUSES and attempt + 1 < self.attempts:
                log.info("S3 %s: HTTP %s; retrying (%d/%d)", what, conn.status, attempt + 1, self.attempts - 1)
                await asyncio.sleep(random.random() * min(ANSWER_BACKOFF_CAP, 2.0**attempt))
                continue
            if conn.status // 100 == 2 or conn.status == 416:
                return conn.status, conn.headers
            raise conn.error()
        raise AssertionError("unreachable")

    async def close(self) -> None:
        for pool in self._idle.values():
            for conn in pool:
                conn.close()
        self._idle.clear()
        self._urls.clear()

    async def _url(self, bucket: str, key: str, *, fresh: bool,
                   botocore: bool = False) -> tuple[urllib.parse.SplitResult, bool]:
        """A presigned URL of `key` and whether it was signed the cheap way (`presign`; never
        when `botocore`, nor once the cheap way was refused)."""
        now = time.monotonic()
        cached = self._urls.get((bucket, key))
        if (cached is not None and not fresh and now - cached[0] < PRESIGN_REUSE
                and not (cached[2] and (botocore or not self._presigner.cheap))):
            return cached[1], cached[2]
        text, cheap = await self._presigner.url(bucket, key, int(3 * PRESIGN_REUSE), botocore=botocore)
        url = urllib.parse.urlsplit(text)
        self._urls[bucket, key] = now, url, cheap
        return url, cheap

    async def _connection(self, url: urllib.parse.SplitResult) -> _GetProtocol:
        where = _endpoint(url)
        pool = self._idle.setdefault(where, [])
        while pool:
            conn = pool.pop()
            if conn.alive and conn.transport is not None and not conn.transport.is_closing():
                return conn
        tls = self._context() if url.scheme == "https" else None
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(
            loop.create_connection(_GetProtocol, where[1], where[2], ssl=tls,
                                   server_hostname=where[1] if tls else None),
            self.connect_timeout)
        return conn

    def _release(self, url: urllib.parse.SplitResult, conn: _GetProtocol) -> None:
        pool = self._idle.setdefault(_endpoint(url), [])
        if conn.alive and len(pool) < self._max_idle:
            pool.append(conn)
        else:
            conn.close()

    def _context(self) -> ssl.SSLContext:
        if self._ssl is None:
            if self._verify is False:
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            else:
                from botocore.httpsession import where

                cafile = self._verify if isinstance(self._verify, str) else os.environ.get("AWS_CA_BUNDLE") or where()
                context = ssl.create_default_context(cafile=cafile)
            self._ssl = context
        return self._ssl


def _endpoint(url: urllib.parse.SplitResult) -> tuple[str, str, int]:
    """(scheme, host, port): what a pooled connection is for."""
    return url.scheme, url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
