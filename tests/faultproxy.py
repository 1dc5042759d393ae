"""A fault-injecting HTTP/1.1 reverse proxy for S3 on loopback, for reliability tests.

    with FaultProxy(server.endpoint_url, seed=7, slowdown=0.1, cut_response=0.05) as proxy:
        opts = {"endpoint_url": proxy.endpoint_url}
        remoteckpt.save(tensors, "s3://bucket/x", storage_options=opts)
        print(proxy.counters)          # {"requests": 40, "slowdown": 4, "cut-response": 2, ...}

It listens on 127.0.0.1 only, forwards raw HTTP to one upstream (``http://127.0.0.1:PORT``,
loopback only) and, per request, may inject one fault:

  slowdown        answer ``503 SlowDown`` with S3's XML error body (the request is consumed,
                  never forwarded)
  cut-request     read part of the request body, then close the connection (never forwarded)
  cut-response    forward the request, relay the response head and part of its body (or part
                  of the head when there is no body), then close
  drop-response   forward the request whole, read the whole response, close without sending
                  a byte of it: the lost acknowledgement (the server DID act)
  stall           hold the request without answering for `stall_seconds`, then close
  conflict        answer ``409 ConditionalRequestConflict`` (AWS's answer to a conditional
                  write racing another one; never forwarded)
  deny            answer ``403 AccessDenied`` (never forwarded)
  latency         (in addition to the above) sleep a random 0..`latency` seconds first

``throttle_above=R`` answers ``503 SlowDown`` (counted as "throttled") to every request that
arrives while R requests were served in the last second, as S3 does to a prefix that suddenly
takes more than its partition serves.

Two ways of being another S3, for every request: ``opaque_etags=True`` replaces every object
ETag the server sends (headers and XML bodies; not those of parts) with a value that is not an
MD5, as SSE-KMS and SSE-C objects have (and maps them back in ``If-Match`` headers), and
``ignore_conditions=True`` drops ``If-None-Match`` and ``If-Match`` from requests, as servers
that accept and ignore them do.

Faults are drawn from a `random.Random(seed)` in request arrival order, so one seed gives one
sequence of decisions.  `Rule`s target specific requests first (e.g. "drop the response of
the PUT of *.index"), each for a limited number of matches.  `counters` counts requests,
injected faults and the bytes of responses relayed whole ("response-bytes", heads included); `log` keeps (method, path, fault) of every request, `ranges` (path, Range header or "") of every
GET.

Counting requests (the benchmarks: benchmarks/scale, benchmarks/incremental), in a process of
its own so that its CPU time is its own:

    proxy = ProxyProcess(server.endpoint_url).start()
    proxy.control("phase", name="save")          # later requests are recorded under "save"
    ... clients use proxy.endpoint_url ...
    stats = proxy.control("dump", path=path)     # the records to `path` (JSON), the proxy's CPU seconds
    proxy.stop()

With ``record=True`` (as ProxyProcess runs it) every request is recorded in `records` as
``[start, end, phase, method, kind, key, rank, status, received, answered, sent]``: times on
the system's monotonic clock (the same in every process of this machine; `start` when its head
arrived, `received` once its body was in, `answered` when the server's answer began, `end`
once the answer was relayed), `kind` one of PUT, GET, HEAD, LIST, DELETE, POST (a GET on the
bucket, ListObjectsV2 or ListMultipartUploads, is a LIST: one page), `key` the object key (for
a LIST, ``LIST <prefix>``) and `rank` read from the access key of the request's credentials
(``Credential=<access key>/...`` in the Authorization header, or ``X-Amz-Credential`` in a
presigned URL's query): the scale benchmark gives every simulated rank its own access key,
``rank<R>``, which the server (no identities configured) accepts like any other.  `sent` is
the request body's length in bytes (its Content-Length; 0 for a chunked body): what a client
uploaded.  ``throttle_above={"write": W, "read": R}`` throttles writes (PUT, POST, DELETE) and
reads (GET, HEAD, LIST) apart, each as above.

With ``pool_upstream=True`` (as ProxyProcess runs it) upstream connections are pooled and
reused; a pooled connection that the server closed while idle is replaced, and the request
sent again, when its body was kept (bodies up to `REPLAY_LIMIT`).  Otherwise every request
goes on a fresh upstream connection (an idle one the upstream closed meanwhile would look like
an injected fault).  Requests to ``/__proxy__/...`` are the proxy's own control endpoint
(`ProxyProcess.control`: ``phase``, ``dump``, ``throttle``).
"""

from __future__ import annotations

import asyncio
import collections
import json
import multiprocessing
import random
import re
import resource
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

FAULTS = ("slowdown", "cut-request", "cut-response", "drop-response", "stall", "conflict", "deny")

CANNED = {
    "conflict": (409, "Conflict", "ConditionalRequestConflict",
                 "A conflicting conditional operation is currently in progress against this resource."),
    "deny": (403, "Forbidden", "AccessDenied", "Access Denied"),
}
"""Faults answered by the proxy itself: (status, reason, S3 error code, message)."""

SLOWDOWN_BODY = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
                 b"<Message>Please reduce your request rate.</Message>"
                 b"<RequestId>FAULTPROXY</RequestId><HostId>faultproxy</HostId></Error>")

SLOWDOWN = (b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
            + f"Content-Length: {len(SLOWDOWN_BODY)}\r\n".encode()
            + b"x-amz-request-id: FAULTPROXY\r\n\r\n" + SLOWDOWN_BODY)

WRITES = frozenset({"PUT", "POST", "DELETE"})
"""Methods that a ``{"write": W, "read": R}`` throttle counts as writes (all others: reads)."""

CONTROL = "/__proxy__/"
"""Targets under this path are the proxy's control endpoint, never forwarded (S3 bucket names
have no underscores)."""

REPLAY_LIMIT = 8 * 2**20
"""With ``pool_upstream``, request bodies up to this size are kept until answered, so that a
request whose pooled upstream connection turns out closed can be sent again on a fresh one."""

IDLE_REUSE = 3.0
"""Seconds a pooled upstream connection may sit idle and still be reused."""

_MAX_HEAD = 64 * 1024
_CHUNK = 256 * 1024


@dataclass
class Rule:
    """Inject `fault` into requests whose method and path (with query) match, `times` times."""

    fault: str
    method: str | None = None
    path: str | None = None  # a regular expression searched in the request target
    times: int = 1
    matched: int = 0

    def matches(self, method: str, target: str) -> bool:
        if self.matched >= self.times:
            return False
        if self.method is not None and method != self.method:
            return False
        return self.path is None or re.search(self.path, target) is not None


@dataclass
class _Request:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    head: bytes = b""

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None


@dataclass
class _Response:
    status: int
    head: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None


class _Closed(Exception):
    """The peer closed (or sent garbage): drop the connection."""


class _Window:
    """Requests served in the last second (a sliding window) and the most it admits."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.times: collections.deque[float] = collections.deque()

    def admit(self, now: float) -> bool:
        while self.times and self.times[0] <= now - 1.0:
            self.times.popleft()
        if len(self.times) >= self.limit:
            return False
        self.times.append(now)  # served: counts against the rate
        return True


def _windows(throttle: float | dict[str, float] | None) -> dict[str, _Window]:
    if throttle is None:
        return {}
    if isinstance(throttle, dict):
        return {k: _Window(v) for k, v in throttle.items()}
    return {"all": _Window(throttle)}


def classify(method: str, target: str) -> tuple[str, str]:
    """(kind, key) of a path-style S3 request, ``/bucket/key?query`` (clients addressing a
    loopback IP, as botocore always does, address it path-style)."""
    path, _, query = target.partition("?")
    parts = urllib.parse.unquote(path).lstrip("/").split("/", 1)
    key = parts[1] if len(parts) > 1 else ""
    if method == "GET" and not key:
        params = urllib.parse.parse_qs(query)
        return "LIST", "LIST " + params.get("prefix", [""])[0]
    return method, key


def credential_of(authorization: str | None, target: str) -> str:
    """The access key of a request's credentials (Authorization header or presigned query)."""
    if authorization:
        at = authorization.find("Credential=")
        if at >= 0:
            return authorization[at + 11:].split("/", 1)[0]
    at = target.find("X-Amz-Credential=")
    if at >= 0:
        return urllib.parse.unquote(target[at + 17:].split("&", 1)[0]).split("/", 1)[0]
    return ""


@dataclass
class _Exchange:
    """What `records` keeps of one request besides its method and target."""

    start: float
    sent: int
    status: int = 0
    received: float = 0.0
    answered: float = 0.0


def _parse_headers(lines: list[bytes]) -> list[tuple[str, str]]:
    headers = []
    for line in lines:
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep:
            raise _Closed(f"bad header line {line[:80]!r}")
        headers.append((name.decode("latin-1").strip(), value.decode("latin-1").strip()))
    return headers


async def _read_head(reader: asyncio.StreamReader) -> bytes | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise _Closed("connection closed inside a message head") from None
    except (asyncio.LimitOverrunError, ConnectionError) as exc:
        raise _Closed(str(exc)) from None
    if len(head) > _MAX_HEAD:
        raise _Closed("message head too large")
    return head


async def _exactly(reader: asyncio.StreamReader, count: int, what: str):  # type: ignore[no-untyped-def]
    """The next `count` bytes, as they come; _Closed if the connection ends first."""
    while count:
        data = await reader.read(min(_CHUNK, count))
        if not data:
            raise _Closed(f"connection closed inside {what}")
        count -= len(data)
        yield data


async def _body_chunks(reader: asyncio.StreamReader, length: int | None, chunked: bool, until_eof: bool = False):  # type: ignore[no-untyped-def]
    """The raw bytes of a message body as they arrive (chunked framing included, so that it
    can be relayed as is)."""
    try:
        if chunked:
            while True:
                size_line = await reader.readuntil(b"\r\n")
                yield size_line
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    while True:  # trailers, up to the empty line
                        line = await reader.readuntil(b"\r\n")
                        yield line
                        if line == b"\r\n":
                            return
                async for data in _exactly(reader, size + 2, "a chunk"):
                    yield data
        elif length is not None:
            async for data in _exactly(reader, length, "a body"):
                yield data
        elif until_eof:
            while data := await reader.read(_CHUNK):
                yield data
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError) as exc:
        raise _Closed(str(exc)) from None


def _loopback(upstream: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(upstream)
    if parts.scheme != "http" or parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError("FaultProxy forwards to a plain-http loopback endpoint only")
    return parts.hostname, parts.port or 80


class FaultProxy:
    """See the module docstring.  Probabilities are per request; at most one fault each."""

    def __init__(self, upstream: str, *, seed: int = 0, slowdown: float = 0.0, cut_request: float = 0.0,
                 cut_response: float = 0.0, drop_response: float = 0.0, stall: float = 0.0,
                 latency: float = 0.0, latency_probability: float = 0.0, stall_seconds: float = 30.0,
                 rules: list[Rule] | None = None, opaque_etags: bool = False, ignore_conditions: bool = False,
                 throttle_above: float | dict[str, float] | None = None, pool_upstream: bool = False,
                 record: bool = False) -> None:
        self.upstream = _loopback(upstream)
        self.seed = seed
        self.probabilities = {"slowdown": slowdown, "cut-request": cut_request, "cut-response": cut_response,
                              "drop-response": drop_response, "stall": stall, "conflict": 0.0, "deny": 0.0}
        self.opaque_etags = opaque_etags
        self._windows = _windows(throttle_above)
        self.ignore_conditions = ignore_conditions
        self._real_etags: dict[str, str] = {}
        if sum(self.probabilities.values()) > 1:
            raise ValueError("fault probabilities add up to more than 1")
        self.latency = latency
        self.latency_probability = latency_probability
        self.stall_seconds = stall_seconds
        self.rules = list(rules or [])
        self.counters: Counter[str] = Counter()
        self.log: list[tuple[str, str, str]] = []
        self.ranges: list[tuple[str, str]] = []
        self.records: list[list[Any]] | None = [] if record else None
        self.phase = "setup"
        self.pool_upstream = pool_upstream
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self.upstream_opened = 0
        self.peak_connections = 0
        self.enabled = True
        self._random = random.Random(seed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    # --- life cycle -------------------------------------------------------------------

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "FaultProxy":
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._handle, "127.0.0.1", 0, limit=_MAX_HEAD * 2, backlog=4096))
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:  # noqa: BLE001 - reported to start()
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=serve, name="faultproxy", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None or self._thread is None:
            return

        async def shutdown() -> None:
            assert self._server is not None
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(10)
        self._loop = self._thread = None

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def faults_injected(self) -> int:
        return sum(self.counters[f] for f in FAULTS)

    def reset(self, *, seed: int | None = None, **probabilities: float) -> None:
        """Change fault probabilities (keys as in `__init__`) between operations."""
        def apply() -> None:
            if seed is not None:
                self._random.seed(seed)
            for key, value in probabilities.items():
                name = key.replace("_", "-")
                if name in self.probabilities:
                    self.probabilities[name] = value
                elif key in ("latency", "latency_probability", "stall_seconds"):
                    setattr(self, key, value)
                else:
                    raise TypeError(f"unknown option {key}")
        if self._loop is not None:
            self._loop.call_soon_threadsafe(apply)
            asyncio.run_coroutine_threadsafe(asyncio.sleep(0), self._loop).result(10)
        else:
            apply()

    def add_rule(self, rule: Rule) -> Rule:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.rules.append, rule)
            asyncio.run_coroutine_threadsafe(asyncio.sleep(0), self._loop).result(10)
        else:
            self.rules.append(rule)
        return rule

    # --- decisions --------------------------------------------------------------------

    def _decide(self, method: str, target: str) -> tuple[str | None, float, float]:
        """(fault or None, latency, where to cut as a fraction) for the next request; always
        draws the same random values, so one seed gives one sequence of decisions."""
        draw, delay_draw, amount, fraction = (self._random.random() for _ in range(4))
        delay = self.latency * amount if delay_draw < self.latency_probability else 0.0
        if not self.enabled:
            return None, 0.0, fraction
        for rule in self.rules:
            if rule.matches(method, target):
                rule.matched += 1
                return rule.fault, delay, fraction
        edge = 0.0
        for fault in FAULTS:
            edge += self.probabilities[fault]
            if draw < edge:
                return fault, delay, fraction
        return None, delay, fraction

    # --- the proxy --------------------------------------------------------------------

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self.peak_connections = max(self.peak_connections, len(self._connections))
        self._writers.add(client_w)
        try:
            while True:
                head = await _read_head(client_r)
                if head is None:
                    return
                request = self._parse_request(head)
                if not await self._one(request, client_r, client_w):
                    return
        except (_Closed, ConnectionError, asyncio.IncompleteReadError):
            return
        except asyncio.CancelledError:
            return
        finally:
            self._connections.discard(task)
            self._writers.discard(client_w)
            client_w.close()

    @staticmethod
    def _parse_request(head: bytes) -> _Request:
        lines = head[:-4].split(b"\r\n")
        try:
            method, target, version = lines[0].decode("latin-1").split(" ", 2)
        except ValueError:
            raise _Closed(f"bad request line {lines[0][:80]!r}") from None
        return _Request(method, target, version, _parse_headers(lines[1:]), head)

    def _throttled(self, method: str, now: float) -> bool:
        window = self._windows.get("all") or self._windows.get("write" if method in WRITES else "read")
        return window is not None and not window.admit(now)

    async def _one(self, request: _Request, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> bool:
        """Serve one request (and record it); False: close the client connection."""
        start = time.monotonic()
        length_text = request.header("content-length")
        chunked = "chunked" in (request.header("transfer-encoding") or "").lower()
        length = int(length_text) if length_text is not None else (None if chunked else 0)
        body = _body_chunks(client_r, length, chunked)
        if request.target.startswith(CONTROL):
            async for _ in body:
                pass
            return await self._control(request.target, client_w)

        fault, delay, fraction = self._decide(request.method, request.target)
        if fault is None and self._throttled(request.method, start):
            fault = "slowdown"
            self.counters["throttled"] += 1
        self.counters["requests"] += 1
        if delay:
            self.counters["latency"] += 1
            await asyncio.sleep(delay)
        self.log.append((request.method, request.target, fault or ""))
        if request.method == "GET":
            self.ranges.append((request.target.split("?")[0], request.header("range") or ""))
        if fault:
            self.counters[fault] += 1
        expect = (request.header("expect") or "").lower() == "100-continue"
        if expect:  # answered here; the upstream gets the body in one go
            client_w.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await client_w.drain()
        exchange = _Exchange(start, int(length_text or 0))
        keep = await self._answer(request, fault, fraction, length, chunked, expect, body, exchange, client_w)
        if self.records is not None:
            end = time.monotonic()
            kind, key = classify(request.method, request.target)
            rank = credential_of(request.header("authorization"), request.target)
            self.records.append([start, end, self.phase, request.method, kind, key, rank, exchange.status,
                                 exchange.received or end, exchange.answered or end, exchange.sent])
        return keep

    async def _answer(self, request: _Request, fault: str | None, fraction: float, length: int | None,  # type: ignore[no-untyped-def]
                      chunked: bool, expect: bool, body, exchange: _Exchange, client_w: asyncio.StreamWriter) -> bool:
        """Inject `fault` or forward the request; False: close the client connection."""
        if fault == "stall":
            await asyncio.sleep(self.stall_seconds)
            return False
        if fault == "cut-request":
            budget = int(fraction * ((length or 0) // 2))
            async for data in body:
                budget -= len(data)
                if budget <= 0:
                    break
            return False
        if fault == "slowdown":
            async for _ in body:
                pass
            client_w.write(SLOWDOWN)
            await client_w.drain()
            exchange.status = 503
            return True
        if fault in CANNED:
            async for _ in body:
                pass
            status, reason, code, message = CANNED[fault]
            exchange.status = status
            xml = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
                   f"<RequestId>FAULTPROXY</RequestId></Error>").encode()
            client_w.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\n"
                           f"Content-Length: {len(xml)}\r\nx-amz-request-id: FAULTPROXY\r\n\r\n".encode() + xml)
            await client_w.drain()
            return True

        # Forward the request (on a fresh upstream connection unless pooling: see the module
        # docstring), its body kept to send again when a pooled connection turns out closed.
        kept: bytes | None = None
        if self.pool_upstream and not chunked and (length or 0) <= REPLAY_LIMIT:
            kept = b"".join([data async for data in body])
        exchange.received = time.monotonic()
        up_r, up_w, response_head = await self._send(self._rewrite_request(request.head, expect), kept, body)
        exchange.answered = time.monotonic()
        reuse = False
        try:
            keep, reuse = await self._forward(request, fault, fraction, response_head, up_r, exchange, client_w)
            return keep
        finally:
            if reuse:
                self._idle.append((up_r, up_w, time.monotonic()))
            else:
                up_w.close()

    async def _connect(self, fresh: bool) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
        """An upstream connection, and whether it is a pooled one (never when `fresh`)."""
        now = time.monotonic()
        while self._idle and not fresh:
            r, w, last = self._idle.pop()
            if now - last <= IDLE_REUSE and not r.at_eof():
                return r, w, True
            w.close()
        self.upstream_opened += 1
        try:
            r, w = await asyncio.open_connection(*self.upstream, limit=_MAX_HEAD * 2)
        except OSError as exc:
            raise _Closed(f"upstream unreachable: {exc}") from None
        return r, w, False

    async def _send(self, head: bytes, kept: bytes | None, body):  # type: ignore[no-untyped-def]
        """Send a request upstream (`kept`: its whole body, else `body` as it comes); the
        connection and the response's head."""
        fresh = kept is None
        while True:
            up_r, up_w, pooled = await self._connect(fresh)
            try:
                up_w.write(head)
                if kept is not None:
                    up_w.write(kept)
                else:
                    async for data in body:
                        up_w.write(data)
                        await up_w.drain()
                await up_w.drain()
                response_head = await _read_head(up_r)
                if response_head is None:
                    raise _Closed("upstream closed without answering")
                return up_r, up_w, response_head
            except (_Closed, ConnectionError, OSError):
                up_w.close()
                if not pooled:
                    raise
                fresh = True  # the server closed the idle connection: send again, fresh

    async def _forward(self, request: _Request, fault: str | None, fraction: float, response_head: bytes,
                       up_r: asyncio.StreamReader, exchange: _Exchange,
                       client_w: asyncio.StreamWriter) -> tuple[bool, bool]:
        """Relay the response; (keep the client connection, the upstream one is reusable)."""
        lines = response_head[:-4].split(b"\r\n")
        status = exchange.status = int(lines[0].split(b" ", 2)[1])
        response = _Response(status, response_head, _parse_headers(lines[1:]))
        no_body = request.method == "HEAD" or status in (204, 304) or 100 <= status < 200
        r_length_text = response.header("content-length")
        r_chunked = "chunked" in (response.header("transfer-encoding") or "").lower()
        close_after = (response.header("connection") or "").lower() == "close"
        if no_body:
            r_body = _body_chunks(up_r, 0, False)
        elif r_chunked:
            r_body = _body_chunks(up_r, None, True)
        elif r_length_text is not None:
            r_body = _body_chunks(up_r, int(r_length_text), False)
        else:
            r_body = _body_chunks(up_r, None, False, until_eof=True)
            close_after = True
        part = "partNumber=" in request.target
        if self.opaque_etags and not part:
            response_head, r_body, r_length_text = await self._opaque(response_head, r_body, no_body)
        keep = await self._relay(fault, fraction, response_head, r_body, r_length_text, no_body, client_w)
        return keep and not close_after, self.pool_upstream and keep and fault is None and not close_after

    # --- being another S3 -------------------------------------------------------------

    def _rewrite_request(self, head: bytes, expect: bool) -> bytes:
        lines = head[:-4].split(b"\r\n")
        out = [lines[0]]
        for line in lines[1:]:
            name = line.split(b":", 1)[0].strip().lower()
            if expect and name == b"expect":
                continue
            if self.ignore_conditions and name in (b"if-none-match", b"if-match"):
                self.counters["conditions-dropped"] += 1
                continue
            if self.opaque_etags and name == b"if-match":
                value = line.split(b":", 1)[1].strip().decode("latin-1")
                line = b"If-Match: " + self._real_etags.get(value.strip('"'), value.strip('"')).join('""').encode()
            out.append(line)
        return b"\r\n".join(out) + b"\r\n\r\n"

    def _fake(self, real: str) -> str:
        import hashlib

        fake = "kms" + hashlib.sha256(real.encode()).hexdigest()[:29]  # 32 characters, not hex: not an MD5
        self._real_etags[fake] = real
        return fake

    async def _opaque(self, head: bytes, body, no_body: bool):  # type: ignore[no-untyped-def]
        """The response with every object ETag replaced (headers, and small XML bodies)."""
        lines = head[:-4].split(b"\r\n")
        out = [lines[0]]
        xml = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"etag":
                real = value.strip().decode("latin-1").strip('"')
                line = b'ETag: "' + self._fake(real).encode() + b'"'
                self.counters["etags-replaced"] += 1
            if name.strip().lower() == b"content-type" and b"xml" in value.lower():
                xml = True
            out.append(line)
        if no_body or not xml:
            return b"\r\n".join(out) + b"\r\n\r\n", body, _header_of(out, b"content-length")
        data = b"".join([chunk async for chunk in body])
        if (_header_of(out, b"transfer-encoding") or "").lower().find("chunked") >= 0:
            data = _dechunk(data)
        text = re.sub(rb"<ETag>(&#34;|&quot;|\")?([^<&\"]+)(&#34;|&quot;|\")?</ETag>",
                      lambda m: b"<ETag>&quot;" + self._fake(m.group(2).decode()).encode() + b"&quot;</ETag>", data)
        out = [ln for ln in out if not ln.lower().startswith((b"content-length:", b"transfer-encoding:"))]
        out.append(f"Content-Length: {len(text)}".encode())

        async def replaced():  # type: ignore[no-untyped-def]
            yield text

        return b"\r\n".join(out) + b"\r\n\r\n", replaced(), str(len(text))

    async def _relay(self, fault: str | None, fraction: float, response_head: bytes, r_body, r_length_text: str | None,  # type: ignore[no-untyped-def]
                     no_body: bool, client_w: asyncio.StreamWriter) -> bool:
        """Send (or not) the response to the client; False: close the client connection."""

        if fault == "drop-response":
            async for _ in r_body:
                pass
            return False
        if fault == "cut-response":
            total = int(r_length_text) if (r_length_text and not no_body) else 0
            if total <= 0:
                async for _ in r_body:
                    pass
                client_w.write(response_head[: 1 + int(fraction * (len(response_head) - 2))])
                await client_w.drain()
                return False
            budget = int(fraction * total)
            client_w.write(response_head)
            async for data in r_body:
                take = data[: max(0, budget)]
                if take:
                    client_w.write(take)
                    await client_w.drain()
                budget -= len(data)
                if budget < 0:
                    break
            return False
        client_w.write(response_head)
        self.counters["response-bytes"] += len(response_head)
        async for data in r_body:
            client_w.write(data)
            self.counters["response-bytes"] += len(data)
            if client_w.transport.get_write_buffer_size() > _CHUNK:
                await client_w.drain()
        await client_w.drain()
        return True

    # --- control ----------------------------------------------------------------------

    async def _control(self, target: str, client_w: asyncio.StreamWriter) -> bool:
        """A request to the control endpoint: ``phase?name=N`` (later records are under N),
        ``dump?path=P`` (the records so far to P as JSON, then forgotten), ``throttle?spec=J``
        (a new `throttle_above`, as JSON); every answer gives the process's CPU seconds."""
        path, _, query = target.partition("?")
        command = path[len(CONTROL):]
        args = urllib.parse.parse_qs(query)
        answer: dict[str, Any] = {"ok": True}
        if command == "phase":
            self.phase = args["name"][0]
        elif command == "dump":
            records = self.records or []
            with open(args["path"][0], "w") as f:
                json.dump(records, f, separators=(",", ":"))
            answer.update(requests=len(records))
            if self.records is not None:
                self.records = []
        elif command == "throttle":
            self._windows = _windows(json.loads(args["spec"][0]))
        answer.update(cpu=_cpu(), phase=self.phase, peak_connections=self.peak_connections,
                      upstream_opened=self.upstream_opened)
        data = json.dumps(answer).encode()
        client_w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                       + str(len(data)).encode() + b"\r\n\r\n" + data)
        await client_w.drain()
        return True


def _dechunk(raw: bytes) -> bytes:
    out, pos = bytearray(), 0
    while True:
        end = raw.index(b"\r\n", pos)
        size = int(raw[pos:end].split(b";")[0].strip(), 16)
        if size == 0:
            return bytes(out)
        out += raw[end + 2 : end + 2 + size]
        pos = end + 2 + size + 2


def _header_of(lines: list[bytes], name: bytes) -> str | None:
    for line in lines[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip().decode("latin-1")
    return None


def wait_for(condition, timeout: float = 10.0, interval: float = 0.05) -> bool:  # type: ignore[no-untyped-def]
    """Poll `condition()` until it is true or `timeout` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return bool(value)
        time.sleep(interval)


# --- a proxy in a process of its own ---------------------------------------------------------

def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _serve_in_process(upstream: str, options: dict[str, Any], ready: Any) -> None:
    proxy = FaultProxy(upstream, **options).start()
    ready.send(proxy.port)
    threading.Event().wait()


class ProxyProcess:
    """A `FaultProxy` in a process of its own (so that its CPU time is its own: the benchmarks'
    counting proxy), recording every request and pooling upstream connections, driven through
    its control endpoint.  `options` are FaultProxy's."""

    def __init__(self, upstream_url: str, **options: Any) -> None:
        _loopback(upstream_url)
        self.upstream_url = upstream_url
        self.options = {"pool_upstream": True, "record": True, **options}
        self.process: multiprocessing.process.BaseProcess | None = None
        self.port = 0

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ProxyProcess:
        context = multiprocessing.get_context("spawn")
        mine, theirs = context.Pipe()
        self.process = context.Process(target=_serve_in_process, args=(self.upstream_url, self.options, theirs),
                                       name="faultproxy", daemon=True)
        self.process.start()
        if not mine.poll(30):
            self.stop()
            raise RuntimeError("the proxy's process did not start")
        self.port = mine.recv()
        return self

    def control(self, command: str, **args: Any) -> dict[str, Any]:
        """A command to the control endpoint (see `FaultProxy._control`); its JSON answer."""
        query = urllib.parse.urlencode(args)
        with urllib.request.urlopen(f"{self.endpoint_url}{CONTROL}{command}?{query}", timeout=120) as answer:
            return dict(json.loads(answer.read()))

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.join(10)
            self.process = None

    def __enter__(self) -> ProxyProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":  # a manual check: python tests/faultproxy.py UPSTREAM_URL
    import sys

    with ProxyProcess(sys.argv[1]) as p:
        print(p.endpoint_url, flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
