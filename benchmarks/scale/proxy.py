"""A request-counting HTTP/1.1 reverse proxy for S3 on loopback: one asyncio thread, in a
process of its own (so that its CPU time is its own), logging every request.

    proxy = ProxyProcess(server.endpoint_url).start()
    proxy.control("phase", "save")         # later requests are logged under "save"
    ... clients use proxy.endpoint_url ...
    stats = proxy.control("dump", path)    # the log to `path` (JSON), the proxy's CPU seconds
    proxy.stop()

Every request is logged as ``[start, end, phase, method, kind, key, rank, status, received,
answered, sent]``: times on the system's monotonic clock (the same in every process of this
machine; `start` when its head arrived, `received` once its body was in, `answered` when the
server's answer began, `end` once the answer was relayed), `kind` one of PUT,
GET, HEAD, LIST, DELETE, POST (a GET on the bucket, ListObjectsV2 or ListMultipartUploads, is
a LIST: one page), `key` the object key (for a LIST, ``LIST <prefix>``) and `rank` read from
the access key of the request's credentials (``Credential=<access key>/...`` in the
Authorization header, or ``X-Amz-Credential`` in a presigned URL's query): the fleet gives
every simulated rank its own access key, ``rank<R>``, which the server (no identities
configured) accepts like any other.  `sent` is the request body's length in bytes (its
Content-Length; 0 for a chunked body): what a client uploaded.

``throttle={"write": W, "read": R}`` answers ``503 SlowDown`` (never forwarded) to a write
(PUT, POST, DELETE) arriving while W writes were served in the last second, or a read (GET,
HEAD, LIST) while R reads were, as S3 does on a prefix taking more than its partition serves:
all keys here count as one prefix (S3's starting point for a new prefix).

Upstream connections (to the server) are pooled and reused; a pooled connection that the
server closed while idle is replaced, and the request sent again, when its body was kept
(bodies up to `REPLAY_LIMIT`).  Requests to ``/__scale__/...`` are the proxy's own control
endpoint (`control`).
"""

from __future__ import annotations

import asyncio
import collections
import json
import multiprocessing
import os
import resource
import time
import urllib.parse
import urllib.request
from typing import Any

REPLAY_LIMIT = 8 * 2**20
"""Request bodies up to this size are kept until answered, so that a request whose pooled
upstream connection turns out closed can be sent again on a fresh one."""

IDLE_REUSE = 3.0
"""Seconds an upstream connection may sit idle and still be reused."""

CHUNK = 256 * 1024
MAX_HEAD = 64 * 1024

SLOWDOWN_BODY = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
                 b"<Message>Please reduce your request rate.</Message>"
                 b"<RequestId>SCALEPROXY</RequestId><HostId>scaleproxy</HostId></Error>")
SLOWDOWN = (b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
            + f"Content-Length: {len(SLOWDOWN_BODY)}\r\n".encode()
            + b"x-amz-request-id: SCALEPROXY\r\n\r\n" + SLOWDOWN_BODY)

WRITES = frozenset({"PUT", "POST", "DELETE"})


class _Closed(Exception):
    pass


def classify(method: str, target: str) -> tuple[str, str]:
    """(kind, key) of a path-style S3 request, ``/bucket/key?query`` (the fleet's clients
    address a loopback IP, which botocore always addresses path-style)."""
    path, _, query = target.partition("?")
    parts = urllib.parse.unquote(path).lstrip("/").split("/", 1)
    key = parts[1] if len(parts) > 1 else ""
    if method == "GET" and not key:
        params = urllib.parse.parse_qs(query)
        return "LIST", "LIST " + params.get("prefix", [""])[0]
    return method, key


def credential_of(head_lines: list[bytes], target: str) -> str:
    for line in head_lines:
        if line[:14].lower() == b"authorization:":
            text = line.decode("latin-1")
            at = text.find("Credential=")
            if at >= 0:
                return text[at + 11:].split("/", 1)[0]
    at = target.find("X-Amz-Credential=")
    if at >= 0:
        return urllib.parse.unquote(target[at + 17:].split("&", 1)[0]).split("/", 1)[0]
    return ""


class _Window:
    """Requests served in the last second (a sliding window)."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.times: collections.deque[float] = collections.deque()

    def admit(self, now: float) -> bool:
        while self.times and self.times[0] <= now - 1.0:
            self.times.popleft()
        if len(self.times) >= self.limit:
            return False
        self.times.append(now)
        return True


class CountingProxy:
    """The proxy itself (see the module docstring); runs on the current event loop."""

    def __init__(self, upstream: tuple[str, int], throttle: dict[str, float] | None = None) -> None:
        self.upstream = upstream
        self.phase = "setup"
        self.log: list[list[Any]] = []
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self.windows = {k: _Window(v) for k, v in (throttle or {}).items()}
        self.server: asyncio.base_events.Server | None = None
        self.port = 0
        self.connections = 0
        self.peak_connections = 0
        self.upstream_opened = 0

    async def start(self, port: int = 0) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", port, limit=2 * MAX_HEAD, backlog=4096)
        self.port = self.server.sockets[0].getsockname()[1]

    # --- serving -------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.peak_connections = max(self.peak_connections, self.connections)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                if not await self._one(head, reader, writer):
                    return
        except (_Closed, ConnectionError, asyncio.LimitOverrunError, asyncio.IncompleteReadError):
            return
        finally:
            self.connections -= 1
            writer.close()

    async def _one(self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        start = time.monotonic()
        lines = head[:-4].split(b"\r\n")
        try:
            method, target, _ = lines[0].decode("latin-1").split(" ", 2)
        except ValueError:
            raise _Closed("bad request line") from None
        length, chunked, expect = 0, False, False
        keep: list[bytes] = [lines[0]]
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            lname = name.strip().lower()
            if lname == b"content-length":
                length = int(value)
            elif lname == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif lname == b"expect":
                expect = b"100-continue" in value.lower()
                continue  # answered here: the server gets the body at once
            keep.append(line)
        if target.startswith("/__scale__/"):
            await self._drain_body(reader, length, chunked)
            return await self._control(target, writer)
        if expect:
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        kind, key = classify(method, target)
        rank = credential_of(lines[1:], target)
        window = self.windows.get("write" if kind in WRITES else "read")
        if window is not None and not window.admit(start):
            await self._drain_body(reader, length, chunked)
            writer.write(SLOWDOWN)
            await writer.drain()
            now = time.monotonic()
            self.log.append([start, now, self.phase, method, kind, key, rank, 503, now, now, length])
            return True
        request = b"\r\n".join(keep) + b"\r\n\r\n"
        body: list[bytes] | None = None
        if not chunked and length <= REPLAY_LIMIT:
            body = [await reader.readexactly(length)] if length else []
        received = time.monotonic()
        status, keep_alive, answered = await self._forward(method, request, body, reader, length, chunked, writer)
        self.log.append([start, time.monotonic(), self.phase, method, kind, key, rank, status, received, answered,
                         length])
        return keep_alive

    @staticmethod
    async def _drain_body(reader: asyncio.StreamReader, length: int, chunked: bool) -> None:
        async for _ in _body(reader, length, chunked):
            pass

    async def _connect(self, fresh: bool) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
        now = time.monotonic()
        while self.idle and not fresh:
            r, w, last = self.idle.pop()
            if now - last <= IDLE_REUSE and not r.at_eof():
                return r, w, True
            w.close()
        self.upstream_opened += 1
        r, w = await asyncio.open_connection(*self.upstream, limit=2 * MAX_HEAD)
        return r, w, False

    async def _forward(self, method: str, request: bytes, body: list[bytes] | None, reader: asyncio.StreamReader,
                       length: int, chunked: bool, writer: asyncio.StreamWriter) -> tuple[int, bool, float]:
        for attempt in range(2):
            up_r, up_w, pooled = await self._connect(fresh=attempt > 0 or body is None)
            try:
                up_w.write(request)
                if body is not None:
                    for piece in body:
                        up_w.write(piece)
                else:
                    async for piece in _body(reader, length, chunked):
                        up_w.write(piece)
                        await up_w.drain()
                await up_w.drain()
                response_head = await up_r.readuntil(b"\r\n\r\n")
                answered = time.monotonic()
            except (ConnectionError, asyncio.IncompleteReadError, OSError):
                up_w.close()
                if pooled and body is not None:
                    continue  # the server closed the idle connection: send again, fresh
                raise _Closed("upstream failed") from None
            break
        else:
            raise _Closed("upstream failed twice")
        lines = response_head[:-4].split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        r_length: int | None = None
        r_chunked = close = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            lname = name.strip().lower()
            if lname == b"content-length":
                r_length = int(value)
            elif lname == b"transfer-encoding":
                r_chunked = b"chunked" in value.lower()
            elif lname == b"connection":
                close = b"close" in value.lower()
        writer.write(response_head)
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            pass
        elif r_chunked or r_length is not None:
            async for piece in _body(up_r, r_length or 0, r_chunked):
                writer.write(piece)
                if writer.transport.get_write_buffer_size() > CHUNK:
                    await writer.drain()
        else:
            while piece := await up_r.read(CHUNK):
                writer.write(piece)
                await writer.drain()
            close = True
        await writer.drain()
        if close:
            up_w.close()
        else:
            self.idle.append((up_r, up_w, time.monotonic()))
        return status, not close, answered

    # --- control -------------------------------------------------------------------------

    async def _control(self, target: str, writer: asyncio.StreamWriter) -> bool:
        path, _, query = target.partition("?")
        command = path[len("/__scale__/"):]
        args = urllib.parse.parse_qs(query)
        answer: dict[str, Any] = {"ok": True}
        if command == "phase":
            self.phase = args["name"][0]
        elif command == "dump":
            out = args["path"][0]
            with open(out, "w") as f:
                json.dump(self.log, f, separators=(",", ":"))
            answer.update(requests=len(self.log))
            self.log = []
        elif command == "throttle":
            spec = json.loads(args["spec"][0])
            self.windows = {k: _Window(v) for k, v in spec.items()}
        answer.update(cpu=_cpu(), phase=self.phase, peak_connections=self.peak_connections,
                      upstream_opened=self.upstream_opened)
        data = json.dumps(answer).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                     + str(len(data)).encode() + b"\r\n\r\n" + data)
        await writer.drain()
        return True


async def _body(reader: asyncio.StreamReader, length: int, chunked: bool):  # type: ignore[no-untyped-def]
    """A message body's raw bytes as they come (chunked framing kept, to relay as is)."""
    if chunked:
        while True:
            size_line = await reader.readuntil(b"\r\n")
            yield size_line
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                while True:
                    line = await reader.readuntil(b"\r\n")
                    yield line
                    if line == b"\r\n":
                        return
            yield await reader.readexactly(size + 2)
    else:
        while length > 0:
            piece = await reader.read(min(CHUNK, length))
            if not piece:
                raise _Closed("body cut")
            length -= len(piece)
            yield piece


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _serve_forever(upstream: tuple[str, int], throttle: dict[str, float] | None, ready: Any) -> None:
    async def main() -> None:
        proxy = CountingProxy(upstream, throttle)
        await proxy.start()
        ready.send(proxy.port)
        await asyncio.Event().wait()

    asyncio.run(main())


class ProxyProcess:
    """`CountingProxy` in a process of its own, driven through its control endpoint."""

    def __init__(self, upstream_url: str, throttle: dict[str, float] | None = None) -> None:
        parts = urllib.parse.urlsplit(upstream_url)
        if parts.hostname not in ("127.0.0.1", "localhost"):
            raise ValueError("the proxy forwards to a loopback server only")
        self.upstream = (str(parts.hostname), int(parts.port or 80))
        self.throttle = throttle
        self.process: multiprocessing.process.BaseProcess | None = None
        self.port = 0

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ProxyProcess":
        context = multiprocessing.get_context("spawn")
        mine, theirs = context.Pipe()
        self.process = context.Process(target=_serve_forever, args=(self.upstream, self.throttle, theirs),
                                       name="scale-proxy", daemon=True)
        self.process.start()
        if not mine.poll(30):
            self.stop()
            raise RuntimeError("the counting proxy did not start")
        self.port = mine.recv()
        return self

    def control(self, command: str, **args: Any) -> dict[str, Any]:
        query = urllib.parse.urlencode(args)
        with urllib.request.urlopen(f"{self.endpoint_url}/__scale__/{command}?{query}", timeout=120) as answer:
            return dict(json.loads(answer.read()))

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.join(10)
            self.process = None

    def __enter__(self) -> "ProxyProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":  # a manual check: python -m benchmarks.scale.proxy UPSTREAM_URL
    import sys

    with ProxyProcess(sys.argv[1]) as p:
        print(p.endpoint_url, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    os._exit(0)
